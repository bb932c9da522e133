"""``vmatlas agent``: serve this host's address spaces over gRPC."""

from __future__ import annotations

import argparse
import logging

from vmatlas import errors
from vmatlas.agents import default_reader
from vmatlas.agents.service import SERVICE_NAME, AgentServicer
from vmatlas.grpcutil import build_server, is_loopback, serve_until_signalled
from vmatlas.v1 import agent_pb2_grpc

log = logging.getLogger("vmatlas.agent")

DEFAULT_LISTEN = "127.0.0.1:50551"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="serve this host's address spaces over gRPC")
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    p.add_argument("--host-id", help="this host's name in the fleet (default: hostname)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without TLS and authentication",
    )
    p.set_defaults(func=run)


def windows_view_for_this_host():  # type: ignore[no-untyped-def]
    """The Wine Windows view where this host can provide it, else None."""
    try:
        from vmatlas.agents.windows import wine_view
    except ImportError:
        return None
    return wine_view


def run(args: argparse.Namespace) -> int:
    if not is_loopback(args.listen) and not args.insecure:
        raise errors.FailedPrecondition(
            f"refusing to serve address layouts on {args.listen} without TLS and "
            "authentication; listen on 127.0.0.1, or pass --insecure to accept the risk"
        )
    if args.insecure and not is_loopback(args.listen):
        log.warning(
            "INSECURE: serving address layouts on %s without TLS or authentication; "
            "anyone who can reach this port can defeat ASLR on this host",
            args.listen,
        )
    reader = default_reader(args.host_id)
    servicer = AgentServicer(reader, windows_view=windows_view_for_this_host())
    server, port, health = build_server(
        services=[(agent_pb2_grpc.add_AgentServiceServicer_to_server, servicer, SERVICE_NAME)],
        address=args.listen,
    )
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"vmatlas agent listening on {host}:{port}", flush=True)
    serve_until_signalled(server, health)
    return 0
