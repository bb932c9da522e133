"""Server addresses as agents take them: ``HOST:PORT`` lists, and a name's DNS
records. Light to import (no grpc): the command line parses ``--server`` with it."""

from __future__ import annotations

import ipaddress
import socket

from vmatlas import errors


def server_addresses(text: str) -> tuple[str, ...]:
    """``"a:50550,b:50550"`` as ``("a:50550", "b:50550")``: each a HOST:PORT, with
    IPv6 literals in brackets (``[fd00::1]:50550``). InvalidArgument otherwise."""
    addresses = tuple(part.strip() for part in text.split(","))
    for address in addresses:
        split_address(address)
    return addresses


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a HOST:PORT (the host without brackets); InvalidArgument
    for anything else."""
    host, sep, port = address.rpartition(":")
    bare = host.removeprefix("[").removesuffix("]")
    ok = bool(sep and bare and port.isdigit() and 0 < int(port) < 65536)
    if ok and ":" in bare:  # IPv6: only as a bracketed literal
        ok = host.startswith("[") and is_ip(bare)
    if not ok:
        raise errors.InvalidArgument(
            f"bad server address {address!r}: use HOST:PORT, several separated by commas"
        )
    return bare, int(port)


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
    for family, *_, sockaddr in infos:
        ip = str(sockaddr[0])
        resolved = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        if resolved not in found:
            found.append(resolved)
    return found
