"""``vmatlas server``: the fleet server. Agents stream in; clients ask it about hosts,
processes, fresh and stored snapshots, and history."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from vmatlas import defaults, errors
from vmatlas.cli import COMMANDS
from vmatlas.security.options import add_server_security_args

if TYPE_CHECKING:
    import grpc

    from vmatlas.security.options import ServerSecurity
    from vmatlas.server.app import ServerConfig
    from vmatlas.server.http.listener import HttpConfig

log = logging.getLogger("vmatlas.server")

DEFAULT_LISTEN = defaults.SERVER_LISTEN
DEFAULT_HEARTBEAT_SECONDS = defaults.HEARTBEAT_SECONDS
DEFAULT_GRACE_SECONDS = defaults.GRACE_SECONDS
DEFAULT_HTTP_LISTEN = defaults.HTTP_LISTEN


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The options ``server`` and ``up`` share."""
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"the embedded SQLite store's directory (default {defaults.data_dir()})",
    )
    p.add_argument(
        "--retain",
        default="30d",
        metavar="DURATION",
        help="prune history older than this: 30d, 12h, 90m; 0 keeps everything (default 30d)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT_SECONDS,
        metavar="SECONDS",
        help="the shortest interval between an agent's heartbeats, which the server tells "
        f"its agents (default {DEFAULT_HEARTBEAT_SECONDS:.0f}); longer when it holds more "
        "agents than --heartbeat-budget allows",
    )
    p.add_argument(
        "--heartbeat-budget",
        type=float,
        default=defaults.HEARTBEAT_BUDGET,
        metavar="PER_SECOND",
        help="heartbeats a second this server answers at most from all its agents together: "
        "past that many per --heartbeat interval it tells them a longer one; 0: no limit "
        f"(default {defaults.HEARTBEAT_BUDGET:.0f})",
    )
    p.add_argument(
        "--offline-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="mark a host offline when its agent's connection stopped answering for this "
        "long (the server pings it), or its agent sent nothing for this or three of its "
        "heartbeat intervals, whichever is longer (default 6 x --heartbeat); also "
        "how long a server's hold on the singleton jobs (retention, offline marking, "
        "partition upkeep) lasts unrenewed, so how soon another server takes them over "
        "from one that died",
    )
    p.add_argument(
        "--agent-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for an agent's answer to a fresh snapshot (default 30)",
    )
    p.add_argument(
        "--max-agents",
        type=int,
        default=defaults.MAX_AGENTS,
        metavar="N",
        help="most agents connected at once (an idle one costs no thread and about "
        f"55 KiB; default {defaults.MAX_AGENTS})",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, refuse new calls and give the ones in flight this "
        f"long to finish (fresh snapshots included) before exiting (default "
        f"{DEFAULT_GRACE_SECONDS:.0f})",
    )
    p.add_argument(
        "--http",
        default=DEFAULT_HTTP_LISTEN,
        metavar="HOST:PORT",
        help=f"serve HTTP here: /metrics for Prometheus (default {DEFAULT_HTTP_LISTEN}; "
        "port 0 picks one; 'off' serves none). It uses the same TLS certificate and "
        "tokens as gRPC; the 'scrape' role reads /metrics only",
    )
    p.add_argument(
        "--metrics-config",
        metavar="FILE",
        help="a TOML file whose [metrics] table says which processes and groups "
        "/metrics shows (top_processes, warn_fraction, groups, ...; see README)",
    )
    add_server_security_args(p)


def http_config(args: argparse.Namespace, security: ServerSecurity) -> HttpConfig | None:
    """The HTTP listener's configuration, or None for ``--http off``; beyond loopback
    it needs TLS and tokens as gRPC does, unless ``--insecure``."""
    if (args.http or "off").strip().lower() in ("off", "none", "no", ""):
        return None
    from vmatlas.addresses import split_address
    from vmatlas.security.options import check_exposure
    from vmatlas.server.http.listener import HttpConfig

    split_address(args.http, port_zero=True)  # InvalidArgument for anything but HOST:PORT
    check_exposure(args.http, security, bool(args.insecure))
    return HttpConfig(
        listen=args.http, tls_cert=args.tls_cert, tls_key=args.tls_key, tokens=security.tokens
    )


def replica_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """This server's side of the link to the other servers on its store: with TLS,
    its own certificate (a replica certificate, `vmatlas certs replica`) as the client
    certificate, trusting --tls-client-ca; None without TLS."""
    if not args.tls_cert:
        return None
    from vmatlas.security import tls

    return tls.channel_credentials(args.tls_client_ca, args.tls_cert, args.tls_key)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server's configuration from its flags (and ``--config``), TLS and
    authentication included; refuses to serve beyond loopback without them unless
    ``--insecure``."""
    from vmatlas.metrics import DEFAULT_SETTINGS, load_settings
    from vmatlas.security.options import server_security
    from vmatlas.security.policy import SERVER_POLICY
    from vmatlas.server.app import ServerConfig
    from vmatlas.server.store import parse_duration

    args.listen = args.listen or DEFAULT_LISTEN
    security = server_security(args, SERVER_POLICY, listen=args.listen)
    if security.authenticated and not security.mutual_tls:
        log.warning(
            "with --tokens and no --tls-client-ca, agents cannot connect: they "
            "authenticate with their certificates (mutual TLS)"
        )
    if args.heartbeat <= 0 or args.offline_after < 0 or args.agent_timeout <= 0:
        raise errors.InvalidArgument("--heartbeat and --agent-timeout must be positive")
    if args.heartbeat_budget < 0:
        raise errors.InvalidArgument("--heartbeat-budget must not be negative")
    if args.grace < 0:
        raise errors.InvalidArgument("--grace must not be negative")
    metrics = load_settings(args.metrics_config) if args.metrics_config else DEFAULT_SETTINGS
    return ServerConfig(
        listen=args.listen,
        http=http_config(args, security),
        metrics=metrics,
        data_dir=args.data_dir or defaults.data_dir(),
        store_url=getattr(args, "store", None) or "",
        retain_seconds=parse_duration(args.retain),
        heartbeat_seconds=args.heartbeat,
        heartbeat_budget=args.heartbeat_budget,
        offline_after_seconds=args.offline_after,
        agent_timeout_seconds=args.agent_timeout,
        max_agents=args.max_agents,
        advertise=getattr(args, "advertise", None) or "",
        credentials=security.credentials,
        replica_credentials=replica_credentials(args),
        interceptors=security.interceptors,
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("server", help=COMMANDS["server"])
    add_server_args(p)
    p.add_argument(
        "--store",
        metavar="URL",
        help="the store: sqlite:///PATH (a SQLite file) or postgresql://USER@HOST:PORT/DB "
        "(made or migrated at start; several servers may share one); default: SQLite "
        "in --data-dir",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="where the other servers on the same --store reach this one (it also names "
        "this server in `vmatlas hosts`); a fresh snapshot of a host whose agent is "
        "connected elsewhere is forwarded there. Default: the --listen address (this "
        "machine's name when listening on 0.0.0.0 or [::]), with the bound port",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="do not serve: verify the store (--store, or the one in --data-dir: "
        "database integrity, references, every snapshot's region table present and "
        "decodable) and exit non-zero if anything is wrong; safe beside a running server",
    )
    p.set_defaults(func=run)


def check(url: str) -> int:
    from vmatlas.server.store import open_store, redact

    store = open_store(url, read_only=True)
    try:
        problems = store.check()
    finally:
        store.close()
    if problems:
        for problem in problems:
            print(problem)
        print(f"vmatlas store {redact(url)}: {len(problems)} problems", file=sys.stderr)
        return 1
    print(f"vmatlas store {redact(url)}: consistent")
    return 0


def run(args: argparse.Namespace) -> int:
    from vmatlas import heap
    from vmatlas.grpcutil import StopSignals
    from vmatlas.server.app import FleetServer
    from vmatlas.server.store import redact, sqlite_url

    if args.store and args.data_dir:
        raise errors.InvalidArgument("give --store or --data-dir, not both")
    if args.check:
        return check(args.store or sqlite_url(args.data_dir or defaults.data_dir()))
    signals = StopSignals(every=heap.resident())
    fleet = FleetServer(config_from_args(args)).start()
    print(f"vmatlas server listening on {fleet.address}", flush=True)
    if fleet.http_url:
        print(f"vmatlas server HTTP on {fleet.http_url} (Prometheus: /metrics)", flush=True)
    if args.store:
        print(f"vmatlas server store {redact(args.store)}", flush=True)
        print(f"vmatlas server replica {fleet.replica.address}", flush=True)
    else:
        print(f"vmatlas server data in {fleet.config.data_dir}", flush=True)
    fleet.serve_until_signalled(signals, args.grace)
    return 0
