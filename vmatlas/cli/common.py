"""What several commands share: where to read from (an agent, a server, or this host
directly) and how to print tables. Light to import: the client, grpc and the agent's
reader load when a command connects or reads, not when the parser is built."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from vmatlas import defaults, errors

if TYPE_CHECKING:
    from vmatlas.client import Client

DEFAULT_AGENT = defaults.AGENT_LISTEN
DEFAULT_SERVER = defaults.SERVER_LISTEN


def add_target_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"the agent or server to ask (default {DEFAULT_AGENT})",
    )
    where.add_argument(
        "--local", action="store_true", help="read this host's /proc directly, no agent"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per-call deadline"
    )
    add_connection_args(parser)


def add_host_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--host",
        metavar="NAME",
        help=f"a fleet host: {what}, through the server at --target (default {DEFAULT_SERVER})",
    )


def fleet_target(args: argparse.Namespace) -> dict[str, str]:
    """With --host, point --target at the server by default; the options that pass
    the host on to the client."""
    if not args.host:
        return {}
    if args.local:
        raise errors.InvalidArgument("--host and --local exclude each other")
    args.target = args.target or DEFAULT_SERVER
    return {"host": args.host}


TOKEN_ENV = "VMATLAS_TOKEN"


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """TLS and token flags for every command that talks to an agent or server."""
    tls = parser.add_argument_group("TLS and authentication")
    tls.add_argument("--ca", metavar="PEM", help="connect with TLS, trusting this CA")
    tls.add_argument("--cert", metavar="PEM", help="client certificate, for mutual TLS")
    tls.add_argument("--key", metavar="PEM", help="the private key of --cert")
    tls.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"bearer token (default ${TOKEN_ENV}; prefer it: a flag shows in ps)",
    )


def client_for(args: argparse.Namespace, target: str) -> Client:
    """A Client for ``target`` with the command's TLS and token options."""
    from vmatlas.client import Client

    return Client(
        target,
        timeout=args.timeout,
        ca=getattr(args, "ca", None),
        cert=getattr(args, "cert", None),
        key=getattr(args, "key", None),
        token=getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None,
    )


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    with client_for(args, args.target or DEFAULT_AGENT) as client:
        yield client


def short_container(container_id: str) -> str:
    """A container id as ``docker ps`` shows it: its first 12 digits ("-" for none)."""
    return container_id[:12] or "-"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    out: TextIO = sys.stdout,
    right: Sequence[int] = (),
) -> None:
    """Columns padded to width; the last column is left ragged."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                parts.append(cell)
            elif i in right:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell.ljust(widths[i]))
        out.write("  ".join(parts).rstrip() + "\n")


@contextmanager
def source(args: argparse.Namespace) -> Iterator[Any]:
    """A Client for --target (or the default agent), or this host for --local."""
    if getattr(args, "local", False):
        from vmatlas.cli.local import LocalSource

        local = LocalSource()
        try:
            yield local
        finally:
            local.close()
    else:
        with connect(args) as client:
            yield client


def add_format_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE, not stdout")


@contextmanager
def output(args: argparse.Namespace) -> Iterator[TextIO]:
    if args.output:
        with open(args.output, "w", encoding="utf-8", errors="surrogateescape") as f:
            yield f
    else:
        yield sys.stdout
