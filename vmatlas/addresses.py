"""``HOST:PORT`` addresses: the one parser of them (listening, advertised and server
addresses alike), the lists agents take, and a name's DNS records. Light to import
(no grpc): the command line parses ``--server`` with it."""

from __future__ import annotations

import ipaddress
import socket

from vmatlas import errors


def server_addresses(text: str) -> tuple[str, ...]:
    """``"a:50550,b:50550"`` as ``("a:50550", "b:50550")``: each a HOST:PORT, with
    IPv6 literals in brackets (``[fd00::1]:50550``). InvalidArgument otherwise."""
    addresses = tuple(part.strip() for part in text.split(","))
    for address in addresses:
        try:
            split_address(address)
        except errors.InvalidArgument:
            raise errors.InvalidArgument(
                f"bad server address {address!r}: use HOST:PORT, several separated by commas"
            ) from None
    return addresses


def split_address(address: str, *, port_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` of a HOST:PORT (the host without brackets; an IPv6 literal
    only in brackets); InvalidArgument for anything else. Port 0 (any free port) only
    with ``port_zero``, for an address to listen on."""
    host, sep, port = address.rpartition(":")
    bare = host.removeprefix("[").removesuffix("]")
    lowest = 0 if port_zero else 1
    ok = bool(sep and bare and port.isdigit() and lowest <= int(port) < 65536)
    if ok and ":" in bare:  # IPv6: only as a bracketed literal
        ok = host.startswith("[") and is_ip(bare)
    if not ok:
        raise errors.InvalidArgument(
            f"bad address {address!r}: use HOST:PORT, an IPv6 literal in brackets"
        )
    return bare, int(port)


def join_address(host: str, port: int) -> str:
    """The HOST:PORT of :func:`split_address`'s two halves (an IPv6 host bracketed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve_address(address: str) -> list[str]:
    """The addresses ``address`` (HOST:PORT) stands for: itself for an IP literal,
    else one per distinct A or AAAA record of the name, in the resolver's order.
    Unavailable when the name does not resolve."""
    host, port = split_address(address)
    if is_ip(host):
        return [address]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise errors.Unavailable(f"cannot resolve {host}: {exc.strerror or exc}") from None
    found: list[str] = []
    for *_, sockaddr in infos:
        resolved = join_address(str(sockaddr[0]), port)
        if resolved not in found:
            found.append(resolved)
    return found
