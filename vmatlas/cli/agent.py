"""``vmatlas agent``: serve this host's address spaces over gRPC.

Beyond loopback it needs TLS and tokens (``--tls-cert --tls-key --tokens``), or
``--insecure``; see :mod:`vmatlas.security.options`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from vmatlas import defaults, errors
from vmatlas.cli import COMMANDS, EXIT_ERROR
from vmatlas.security.options import add_server_security_args, add_uplink_security_args

if TYPE_CHECKING:
    from vmatlas.agents import Reader
    from vmatlas.agents.service import AgentServicer
    from vmatlas.agents.uplink import Uplink
    from vmatlas.security.options import ServerSecurity

log = logging.getLogger("vmatlas.agent")

DEFAULT_LISTEN = defaults.AGENT_LISTEN
DEFAULT_INTERVAL_SECONDS = defaults.INTERVAL_SECONDS
DEFAULT_JUMP_REGIONS = defaults.JUMP_REGIONS
DEFAULT_BUFFER_PUSHES = defaults.BUFFER_PUSHES
DEFAULT_GRACE_SECONDS = defaults.GRACE_SECONDS


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # The agent's options, shared with `agent service install|run` (see agent_service).
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    p.add_argument("--host-id", help="this host's name in the fleet (default: hostname)")
    p.add_argument(
        "--server",
        type=_server_addresses,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="also connect to a fleet server and keep pushing summaries to it: one of "
        "these replicas (a name with several DNS records stands for each of them); when "
        "the server goes away, move to the next, after a random delay below a cap that "
        "doubles with each failed attempt",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"push every process's summary this often (default {DEFAULT_INTERVAL_SECONDS:.0f})",
    )
    p.add_argument(
        "--jump",
        type=int,
        default=DEFAULT_JUMP_REGIONS,
        metavar="REGIONS",
        help="push at once when a map count moves this much between pushes "
        f"(default {DEFAULT_JUMP_REGIONS})",
    )
    p.add_argument(
        "--buffer",
        type=int,
        default=DEFAULT_BUFFER_PUSHES,
        metavar="PUSHES",
        help="keep at most this many pushes the server has not acknowledged (while it is "
        "unreachable), delivering them in order on reconnect; when full the oldest is "
        f"dropped and the drop reported (default {DEFAULT_BUFFER_PUSHES})",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, refuse new calls, answer the ones in flight, deliver "
        "buffered pushes and close the server stream within this long "
        f"(default {DEFAULT_GRACE_SECONDS:.0f})",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="also serve this host's Prometheus metrics (hosts, groups, the processes "
        "closest to their limit) at http://HOST:PORT/metrics; with --tls-cert over "
        "HTTPS, with --tokens for the 'scrape' role and above",
    )
    p.add_argument(
        "--metrics-config",
        metavar="FILE",
        help="a TOML file whose [metrics] table says which processes and groups "
        "--metrics shows (as for the server)",
    )
    add_server_security_args(p)
    add_uplink_security_args(p)
    agent = sub.add_parser("agent", parents=[p], help=COMMANDS["agent"])
    agent.set_defaults(func=run)
    _register_service(agent, p)


def _register_service(agent: argparse.ArgumentParser, options: argparse.ArgumentParser) -> None:
    """`agent service ACTION`, the Windows service (run by vmatlas.cli.agent_service)."""
    commands = agent.add_subparsers(dest="agent_command", metavar="{service}")
    service = commands.add_parser(
        "service",
        help="run the agent as a Windows service",
        description="Install the agent as a Windows service (LocalSystem; its log in "
        "%ProgramData%\\vmatlas\\NAME.log unless --log-file), start, stop, query or "
        "remove it. Needs an administrator's rights.",
    )
    actions = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)

    def action(name: str, help: str, *, agent_options: bool = False) -> argparse.ArgumentParser:
        parents = [options] if agent_options else []
        p = actions.add_parser(name, parents=parents, help=help)
        p.add_argument(
            "--name",
            default=defaults.SERVICE_NAME,
            help=f"service name (default {defaults.SERVICE_NAME})",
        )
        p.set_defaults(func=_service)
        return p

    install = action("install", "create the service with these agent options", agent_options=True)
    install.add_argument(
        "--start",
        choices=("auto", "demand"),
        default="auto",
        help="start with Windows (auto, the default) or only when asked (demand)",
    )
    install.add_argument(
        "--log-file",
        metavar="PATH",
        help="the service's log (default %%ProgramData%%\\vmatlas\\NAME.log)",
    )
    action("remove", "stop the service if it runs, and delete it")
    action("start", "start the service")
    action("stop", "stop the service (the agent drains as on SIGTERM)")
    action("status", "print the service's state (running, stopped, ...)")
    run_action = action(
        "run", "what the service manager runs (not for use by hand)", agent_options=True
    )
    run_action.add_argument("--log-file", metavar="PATH", help=argparse.SUPPRESS)


def _server_addresses(text: str) -> tuple[str, ...]:
    from vmatlas.addresses import server_addresses

    try:
        return server_addresses(text)
    except errors.InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# A config file may list the servers as an array of strings.
_server_addresses.config_list = True  # type: ignore[attr-defined]


def _service(args: argparse.Namespace) -> int:
    from vmatlas.cli import agent_service

    return agent_service.run(args)


def _load_grpc_without_python_ssl() -> None:
    """Import grpc while Python's ssl module cannot load. gRPC does its TLS in its own
    BoringSSL (inside cygrpc), and asyncio, which grpc imports, takes ssl only where it
    is there: so an agent keeps OpenSSL's libraries (about 4 MiB resident) out of
    memory. Only the --metrics listener's HTTPS uses Python's ssl; it imports it then."""
    if "grpc" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` fail
    try:
        import grpc
        import grpc.aio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def run(args: argparse.Namespace) -> int:
    if not args.metrics:
        _load_grpc_without_python_ssl()
    from vmatlas import heap
    from vmatlas.agents import default_reader, windows_view
    from vmatlas.agents.service import SERVICE_NAME, AgentServicer, add_to_server
    from vmatlas.grpcutil import StopSignals, build_server, serve_until_signalled
    from vmatlas.security.options import server_security
    from vmatlas.security.policy import AGENT_POLICY

    listen = args.listen or DEFAULT_LISTEN
    security = server_security(args, AGENT_POLICY, listen=listen)
    reader = default_reader(args.host_id)
    servicer = AgentServicer(reader, windows_view=windows_view(args.host_id))
    server, port, health = build_server(
        services=[(add_to_server, servicer, SERVICE_NAME)],
        address=listen,
        credentials=security.credentials,
        interceptors=security.interceptors,
    )
    uplink = _uplink(args, reader, servicer)
    metrics = _metrics(args, reader, security) if args.metrics else None
    signals = StopSignals(every=heap.resident())
    server.start()
    host = listen.rsplit(":", 1)[0]
    log.info("serving with %s", security.describe())
    print(f"vmatlas agent listening on {host}:{port}", flush=True)
    if metrics is not None:
        metrics.start()
        print(f"vmatlas agent metrics on {metrics.url}", flush=True)
    if uplink is not None:
        # An uplink that gives up for good (its host id is held by a live agent) ends
        # the agent: a process that serves locally but never reports would look healthy.
        uplink.on_fatal = lambda _exc: signals.event.set()
        uplink.start()
        print(f"vmatlas agent connecting to server {','.join(args.server)}", flush=True)
    serve_until_signalled(
        server,
        health,
        signals=signals,
        grace_seconds=args.grace,
        on_stop=(lambda: uplink.stop(args.grace)) if uplink else None,
    )
    if metrics is not None:
        metrics.stop()
    if uplink is not None and uplink.error is not None:
        servers = ",".join(args.server)
        print(f"vmatlas agent: uplink to {servers} stopped: {uplink.error}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _metrics(args: argparse.Namespace, reader: Reader, security: ServerSecurity) -> Any:
    """The ``--metrics`` listener (imported only then: the agent at rest stays light);
    beyond loopback it needs TLS and tokens, as the gRPC port does, or ``--insecure``."""
    from vmatlas.security.options import check_exposure

    check_exposure(args.metrics, security, bool(args.insecure))
    from vmatlas.agents.metrics import AgentMetricsServer
    from vmatlas.metrics import DEFAULT_SETTINGS, load_settings

    return AgentMetricsServer(
        reader,
        args.metrics,
        settings=load_settings(args.metrics_config) if args.metrics_config else DEFAULT_SETTINGS,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tokens=security.tokens,
    )


def _uplink(args: argparse.Namespace, reader: Reader, servicer: AgentServicer) -> Uplink | None:
    """The stream to one of the ``--server`` replicas, tried in a random order of this
    agent's own (so that a fleet of agents spreads over them): TLS with
    ``--server-ca``, presenting the agent's certificate (``--agent-cert``/
    ``--agent-key``); beyond loopback never in plain text unless ``--insecure``."""
    if not args.server:
        return None
    import random

    from vmatlas.agents.uplink import Uplink
    from vmatlas.security.options import uplink_credentials

    credentials = None
    for address in args.server:
        credentials = uplink_credentials(args, address)
    if args.interval <= 0 or args.jump <= 0 or args.buffer <= 0:
        raise errors.InvalidArgument("--interval, --jump and --buffer must be positive")
    return Uplink(
        reader,
        random.sample(args.server, len(args.server)),
        servicer=servicer,
        interval_seconds=args.interval,
        jump_regions=args.jump,
        buffer_pushes=args.buffer,
        credentials=credentials,
    )
