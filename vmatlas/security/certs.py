"""A small private certificate authority for one vmatlas fleet.

Layout of a PKI directory (private keys are written mode 0600 and never overwritten):

- ``ca.pem`` / ``ca.key``: the fleet CA;
- ``server.pem`` / ``server.key``: the central server's certificate (serverAuth);
- ``agents/HOST_ID.pem`` / ``.key``: one per agent: CN and OU name the host id and the
  ``agent`` kind, usable both to serve (serverAuth) and for the uplink (clientAuth);
- ``replicas/NAME.pem`` / ``.key``: one per server when several share one store: CN
  and OU name the server and the ``replica`` kind, usable both to serve (serverAuth)
  and on the link to the other servers (clientAuth);
- ``clients/NAME.pem`` / ``.key``: operator client certificates for mutual TLS;
- ``tokens.json``: bearer-token hashes (see :mod:`vmatlas.security.tokens`).

Keys are ECDSA P-256: quick to make, and every gRPC TLS stack accepts them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmatlas import defaults, errors

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
TOKENS_FILE = "tokens.json"
AGENTS_DIR, CLIENTS_DIR, REPLICAS_DIR = "agents", "clients", "replicas"

# Organizational unit values: which kind of peer a certificate names.
KIND_AGENT = "agent"
KIND_SERVER = "server"
KIND_CLIENT = "client"
KIND_REPLICA = "replica"
ORGANIZATION = "vmatlas"

DEFAULT_SERVER_NAMES = defaults.SERVER_NAMES
CA_DAYS = 3650
LEAF_DAYS = 397

# Host ids and names go into DNS SANs and file names: keep them to hostname characters.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Issued:
    cert_path: Path
    key_path: Path


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a hostname-like identifier, else InvalidArgument."""
    if not _NAME.match(name) or ".." in name:
        raise errors.InvalidArgument(
            f"{what} {name!r} must be letters, digits, '.', '_' or '-' (at most 253)"
        )
    return name


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` mode 0600; refuse to replace an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise errors.AlreadyExists(f"{path} exists; remove it first to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, kind: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(check_name(name, "subject alternative name")))
    return out


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError:
        raise errors.NotFound(
            f"no CA in {directory}; run `vmatlas certs init {directory}` first"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.InvalidArgument(f"{directory / CA_KEY} is not an EC key")
    return cert, key


def init_ca(directory: Path, *, days: int = CA_DAYS) -> Issued:
    """Make a fleet CA in ``directory`` (refuses to replace one)."""
    if (directory / CA_KEY).exists():
        raise errors.AlreadyExists(f"{directory / CA_KEY} exists; this directory has a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("vmatlas fleet CA", "ca")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, _key_pem(key))
    _write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return Issued(directory / CA_CERT, directory / CA_KEY)


def _issue(
    directory: Path,
    stem: Path,
    *,
    common_name: str,
    kind: str,
    sans: list[str],
    usages: list[x509.ObjectIdentifier],
    days: int,
) -> Issued:
    ca_cert, ca_key = _load_ca(directory)
    cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
    if key_path.exists():
        raise errors.AlreadyExists(f"{key_path} exists; remove it first to replace it")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, kind))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_general_names(sans)), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path)


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def issue_server(
    directory: Path,
    names: list[str] | None = None,
    *,
    stem: str = "server",
    days: int = LEAF_DAYS,
) -> Issued:
    """A serving certificate for ``names`` (DNS names or IP addresses)."""
    sans = _unique(list(names) if names else list(DEFAULT_SERVER_NAMES))
    return _issue(
        directory,
        directory / check_name(stem),
        common_name=sans[0],
        kind=KIND_SERVER,
        sans=sans,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        days=days,
    )


def issue_agent(
    directory: Path, host_id: str, names: list[str] | None = None, *, days: int = LEAF_DAYS
) -> Issued:
    """An agent's certificate: it names ``host_id`` (CN, OU=agent) and serves as the
    agent's TLS certificate (for ``host_id`` and ``names``) and its uplink client
    certificate."""
    check_name(host_id, "host id")
    return _issue(
        directory,
        directory / AGENTS_DIR / host_id,
        common_name=host_id,
        kind=KIND_AGENT,
        sans=_unique([host_id, *(names or [])]),
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )


def issue_replica(
    directory: Path, name: str, names: list[str] | None = None, *, days: int = LEAF_DAYS
) -> Issued:
    """A replica's certificate: it names the server ``name`` (CN, OU=replica), serves
    its TLS (for ``name`` and ``names``: include the host it advertises) and is its
    client certificate on the link to the other servers on the same store."""
    check_name(name)
    return _issue(
        directory,
        directory / REPLICAS_DIR / name,
        common_name=name,
        kind=KIND_REPLICA,
        sans=_unique([name, *(names or [])]),
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )


def issue_client(directory: Path, name: str, *, days: int = LEAF_DAYS) -> Issued:
    """An operator's client certificate, for servers that require mutual TLS. It
    proves only that the holder belongs to the fleet: the role comes from a token."""
    check_name(name)
    return _issue(
        directory,
        directory / CLIENTS_DIR / name,
        common_name=name,
        kind=KIND_CLIENT,
        sans=[],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )
