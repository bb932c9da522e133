"""``vmatlas up``: a fleet server on the embedded store and this host's agent connected
to it, in one process, with a live view of the fleet until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from vmatlas import defaults, errors
from vmatlas.cli import COMMANDS
from vmatlas.cli.common import print_table
from vmatlas.cli.server import add_server_args, config_from_args
from vmatlas.security.options import add_uplink_security_args

if TYPE_CHECKING:
    from vmatlas.fleet import FleetProcess, HostStatus
    from vmatlas.server.app import FleetServer

DEFAULT_INTERVAL_SECONDS = defaults.INTERVAL_SECONDS
TOP_PROCESSES = 10
_CLEAR = "\x1b[H\x1b[2J"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help=COMMANDS["up"])
    add_server_args(p)
    add_uplink_security_args(p)
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"how often the local agent pushes summaries (default {DEFAULT_INTERVAL_SECONDS:.0f})",
    )
    p.add_argument("--host-id", help="this host's name in the fleet (default: hostname)")
    p.add_argument(
        "--refresh",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="redraw the view this often (default 2 on a terminal, 30 otherwise)",
    )
    p.set_defaults(func=run)


def fleet_view(hosts: list[HostStatus], processes: list[FleetProcess], now: float) -> str:
    """The live view as text: every host, then the processes closest to their limit."""
    import io

    out = io.StringIO()
    online = sum(h.online for h in hosts)
    out.write(f"vmatlas fleet at {time.strftime('%H:%M:%S', time.localtime(now))}: ")
    out.write(f"{len(hosts)} hosts, {online} online\n\n")
    print_table(
        ("HOST", "STATE", "OS", "MAX_MAP_COUNT", "PROCESSES", "LAST SEEN"),
        [
            (
                h.host_id,
                "online" if h.online else "offline",
                h.host.os.name.lower(),
                h.host.max_map_count or "-",
                h.process_count,
                f"{max(0.0, now - h.last_seen_time):.0f}s ago",
            )
            for h in hosts
        ],
        out=out,
        right=(3, 4),
    )
    out.write(f"\nclosest to their map limit (top {TOP_PROCESSES}):\n")
    print_table(
        ("HOST", "PID", "NAME", "MAPS", "LIMIT", "HEADROOM"),
        [
            (
                p.host_id,
                p.item.process.pid,
                p.item.process.name,
                p.item.summary.map_count,
                p.item.summary.max_map_count or "-",
                f"{100 * p.item.summary.headroom_fraction:.1f}%",
            )
            for p in processes
        ],
        out=out,
        right=(1, 3, 4, 5),
    )
    return out.getvalue()


def _show(fleet: FleetServer, out: TextIO, stop: threading.Event, refresh: float) -> None:
    from vmatlas.model import ProcessOrder

    tty = out.isatty()
    while True:
        hosts = fleet.queries.hosts()
        top = fleet.queries.processes(order=ProcessOrder.HEADROOM, limit=TOP_PROCESSES)
        text = fleet_view(hosts, top, time.time())
        out.write(_CLEAR + text if tty else text + "\n")
        out.flush()
        if stop.wait(refresh):
            return


def run(args: argparse.Namespace) -> int:
    from vmatlas import heap
    from vmatlas.agents import default_reader, windows_view
    from vmatlas.agents.service import SERVICE_NAME as AGENT_SERVICE
    from vmatlas.agents.service import AgentServicer, add_to_server
    from vmatlas.agents.uplink import Uplink
    from vmatlas.grpcutil import StopSignals
    from vmatlas.security.options import uplink_credentials
    from vmatlas.server.app import FleetServer

    config = config_from_args(args)
    # With TLS the local agent dials its own server like any agent: trusting the fleet
    # CA (the client CA, unless --server-ca says otherwise) with its own certificate.
    credentials = uplink_credentials(args, "127.0.0.1", fallback_ca=args.tls_client_ca)
    if config.credentials is not None and credentials is None:
        raise errors.InvalidArgument("with --tls-cert the local agent needs --server-ca")
    if args.tls_client_ca and not args.agent_cert:
        raise errors.InvalidArgument(
            "with --tls-client-ca the local agent needs --agent-cert and --agent-key "
            "(`vmatlas certs agent DIR HOST_ID`)"
        )
    reader = default_reader(args.host_id)
    agent = AgentServicer(reader, windows_view=windows_view(args.host_id))
    signals = StopSignals(every=heap.resident())
    fleet = FleetServer(
        config,
        extra_services=[(add_to_server, agent, AGENT_SERVICE)],
    ).start()
    host = fleet.address.rsplit(":", 1)[0]
    dial = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::", "") else host
    uplink = Uplink(
        reader,
        f"{dial}:{fleet.port}",
        servicer=agent,
        interval_seconds=args.interval,
        backoff_max_seconds=5.0,
        credentials=credentials,
    ).start()
    print(f"vmatlas up: server listening on {fleet.address}", flush=True)
    if fleet.http_url:
        print(f"vmatlas up: web view and metrics on {fleet.http_url}", flush=True)
    print(f"vmatlas up: data in {config.data_dir}", flush=True)
    print(f"vmatlas up: local agent is host {reader.host().host_id}", flush=True)
    # The first view is worth showing once this host's first push is stored.
    deadline = time.monotonic() + 10.0
    while not uplink.acked_sequence and time.monotonic() < deadline:
        if signals.event.wait(0.05):
            break
    stop = threading.Event()
    refresh = args.refresh or (2.0 if sys.stdout.isatty() else 30.0)
    view = threading.Thread(
        target=_show, args=(fleet, sys.stdout, stop, refresh), name="vmatlas-view", daemon=True
    )
    view.start()

    def stopping() -> None:
        # The local agent answers what it was asked and closes its stream, and the
        # view stops reading, before the server closes the streams and the store.
        stop.set()
        uplink.stop(args.grace)
        view.join(5.0)

    fleet.serve_until_signalled(signals, args.grace, on_draining=stopping)
    return 0
