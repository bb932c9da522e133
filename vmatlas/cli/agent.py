"""``vmatlas agent``: serve this host's address spaces over gRPC.

Beyond loopback it needs TLS and tokens (``--tls-cert --tls-key --tokens``), or
``--insecure``; see :mod:`vmatlas.security.options`."""

from __future__ import annotations

import argparse
import logging

from vmatlas.agents import default_reader, windows_view
from vmatlas.agents.service import SERVICE_NAME, AgentServicer
from vmatlas.grpcutil import build_server, serve_until_signalled
from vmatlas.security.options import add_server_security_args, apply_config, server_security
from vmatlas.security.policy import AGENT_POLICY
from vmatlas.v1 import agent_pb2_grpc

log = logging.getLogger("vmatlas.agent")

DEFAULT_LISTEN = "127.0.0.1:50551"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="serve this host's address spaces over gRPC")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    p.add_argument("--host-id", help="this host's name in the fleet (default: hostname)")
    add_server_security_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_config(args, "agent")
    listen = args.listen or DEFAULT_LISTEN
    security = server_security(args, AGENT_POLICY, listen=listen)
    reader = default_reader(args.host_id)
    servicer = AgentServicer(reader, windows_view=windows_view(args.host_id))
    server, port, health = build_server(
        services=[(agent_pb2_grpc.add_AgentServiceServicer_to_server, servicer, SERVICE_NAME)],
        address=listen,
        credentials=security.credentials,
        interceptors=security.interceptors,
    )
    server.start()
    host = listen.rsplit(":", 1)[0]
    log.info("serving with %s", security.describe())
    print(f"vmatlas agent listening on {host}:{port}", flush=True)
    serve_until_signalled(server, health)
    return 0
