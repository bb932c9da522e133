"""TLS credentials for servers and channels, and who the peer's certificate names.

A server given a client CA requires and verifies a client certificate from every peer
(mutual TLS). The identity a certificate carries is read from the verified leaf that
gRPC hands the servicer (``context.auth_context()``), never from anything the peer
merely says. cryptography is loaded only to read such a certificate: a server or
agent without certificates never needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from vmatlas import errors

if TYPE_CHECKING:
    from cryptography import x509

PathLike = str | os.PathLike[str]


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(
    cert: PathLike, key: PathLike, client_ca: PathLike | None = None
) -> grpc.ServerCredentials:
    """Credentials to serve TLS with ``cert``/``key``; with ``client_ca``, every client
    must present a certificate that CA signed (mutual TLS)."""
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    roots = _read(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )


def channel_credentials(
    ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None
) -> grpc.ChannelCredentials:
    """Credentials to reach a TLS server: trust ``ca`` (else the system roots) and, for
    mutual TLS, present ``cert``/``key``."""
    if (cert is None) != (key is None):
        raise errors.InvalidArgument("a client certificate needs its key, and the reverse")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate") if ca else None,
        private_key=_read(key, "client key") if key else None,
        certificate_chain=_read(cert, "client certificate") if cert else None,
    )


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a verified peer certificate says: its common name and kind (``agent``,
    ``client``, ``server``, ``replica``: the OU vmatlas certificates carry), and its
    DNS SANs."""

    common_name: str
    kind: str
    dns_names: tuple[str, ...] = ()

    @property
    def agent_host_id(self) -> str | None:
        """The host id an agent certificate names, or None for any other certificate."""
        from vmatlas.security.certs import KIND_AGENT

        return self.common_name if self.kind == KIND_AGENT else None

    @property
    def replica_id(self) -> str | None:
        """The server a replica certificate names, or None for any other certificate."""
        from vmatlas.security.certs import KIND_REPLICA

        return self.common_name if self.kind == KIND_REPLICA else None


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    value = values[0].value if values else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def identity_of_certificate(pem: bytes) -> PeerIdentity:
    """The identity in one PEM certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from vmatlas.security.certs import ORGANIZATION

    cert = x509.load_pem_x509_certificate(pem)
    subject = cert.subject
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    organization = _first(subject, NameOID.ORGANIZATION_NAME)
    kind = _first(subject, NameOID.ORGANIZATIONAL_UNIT_NAME) if organization == ORGANIZATION else ""
    return PeerIdentity(_first(subject, NameOID.COMMON_NAME), kind, dns)


def peer_identity(context: Any) -> PeerIdentity | None:
    """The identity in the peer's verified certificate, or None when the peer
    presented none (or the connection is not TLS)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or ()
    if not pems or not context.peer_identities():
        return None
    try:
        return identity_of_certificate(pems[0])
    except ValueError:
        return None


def peer_host_id(context: Any) -> str | None:
    """The host id the peer's agent certificate names, or None."""
    identity = peer_identity(context)
    return identity.agent_host_id if identity else None
