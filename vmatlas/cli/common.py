"""What several commands share: where to read from (an agent, a server, or this host
directly) and how to print tables."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from vmatlas.client import Client
from vmatlas.model import Snapshot, SnapshotView

DEFAULT_AGENT = "127.0.0.1:50551"


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


class LocalSource:
    """This host read directly, with the same calls as :class:`Client`: the agent's
    service without the gRPC around it."""

    def __init__(self) -> None:
        from vmatlas.agents import default_reader, windows_view
        from vmatlas.agents.service import AgentServicer

        self._view = windows_view()
        self.agent = AgentServicer(default_reader(), windows_view=self._view)

    def processes(self, *, order: str = "regions", limit: int = 0, name: str = "") -> Any:
        from vmatlas.client import ProcessList
        from vmatlas.model import ProcessOrder

        items, denied = self.agent.process_list(ProcessOrder.parse(order), limit, name)
        return ProcessList(items, self.agent.reader.host(), denied)

    def snapshot(
        self,
        pid: int,
        *,
        include_free: bool = False,
        include_residency: bool = False,
        view: SnapshotView = SnapshotView.NATIVE,
    ) -> Snapshot:
        return self.agent.snapshot(pid, include_free, include_residency, int(view))

    def close(self) -> None:
        close = getattr(self._view, "close", None)
        if close is not None:
            close()


@contextmanager
def source(args: argparse.Namespace) -> Iterator[Any]:
    """A Client for --target (or the default agent), or this host for --local."""
    if getattr(args, "local", False):
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
