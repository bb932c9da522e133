"""The Python client library.

>>> from vmatlas.client import Client
>>> with Client("127.0.0.1:50551") as c:          # an agent (or the server)
...     snap = c.snapshot(1234)
...     for region in snap.regions:               # rows: start, end, size, state, perms, ...
...         print(hex(region.start), region.perms, region.path)

Calls that name a ``host`` go to a server's fleet service:

>>> with Client("127.0.0.1:50550") as c:          # vmatlas server / vmatlas up
...     for h in c.hosts():
...         print(h.host_id, h.online, h.host.max_map_count, h.process_count)
...     top = c.processes(host="web-1", order="headroom", limit=5)
...     snap = c.snapshot(4242, host="web-1")         # fresh, through the agent's stream
...     old = c.snapshot(4242, host="web-1", fresh=False)  # the latest stored one
...     hist = c.history(host="web-1", pid=4242, since=time.time() - 3600)
...     again = c.stored_snapshot(hist.snapshots[-1].snapshot_id)

Failed calls raise the :mod:`vmatlas.errors` hierarchy (``NoSuchProcess``,
``AccessDenied``, ``Unavailable``, ...), never a raw ``grpc.RpcError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpc

from vmatlas import errors, wire, wire_analysis
from vmatlas.audit import AuditReport
from vmatlas.diff import Diff, DiffMode, diff
from vmatlas.fleet import FleetProcess, History, HostStatus
from vmatlas.grpcutil import channel_options, error_from_rpc, is_loopback, method_path
from vmatlas.model import Host, ProcessOrder, ProcessSummary, Snapshot, SnapshotView
from vmatlas.policy import Policy, policy_to_document
from vmatlas.security import tls
from vmatlas.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    analysis_pb2,
    analysis_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
)

__all__ = [
    "Client",
    "FleetProcess",
    "History",
    "HostStatus",
    "ProcessList",
    "ProcessOrder",
    "errors",
]


_GET_SNAPSHOT_PATH = method_path(agent_pb2, "AgentService", "GetSnapshot")
_GET_HOST_SNAPSHOT_PATH = method_path(fleet_pb2, "FleetService", "GetHostSnapshot")
_GET_STORED_SNAPSHOT_PATH = method_path(fleet_pb2, "FleetService", "GetStoredSnapshot")


class ProcessList(list[ProcessSummary]):
    """Process summaries, plus the host they came from and how many were unreadable."""

    def __init__(self, items: list[ProcessSummary], host: Host, access_denied_count: int):
        super().__init__(items)
        self.host = host
        self.access_denied_count = access_denied_count


class Client:
    """A connection to a vmatlas agent or server.

    ``timeout`` (seconds) bounds every unary call. For TLS give ``ca`` (the fleet CA
    that signed the server's certificate; else the system roots are trusted) and, where
    the server requires mutual TLS, ``cert`` and ``key``; or give ready ``credentials``.
    ``token`` is sent as a bearer token, and never in clear beyond loopback.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50551",
        *,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
    ):
        if credentials is None and (ca or cert or key):
            credentials = tls.channel_credentials(ca, cert, key)
        if token and credentials is None and not is_loopback(target):
            raise errors.FailedPrecondition(
                f"refusing to send a token to {target} without TLS; give ca= (--ca)"
            )
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=channel_options())
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options())
        self._agent = agent_pb2_grpc.AgentServiceStub(self._channel)
        # GetSnapshot's answer arrives as bytes, read by wire.snapshot_from_response_bytes:
        # the region table is decoded from them directly, not parsed into messages first.
        self._get_snapshot_bytes = self._channel.unary_unary(
            _GET_SNAPSHOT_PATH,
            request_serializer=agent_pb2.GetSnapshotRequest.SerializeToString,
            _registered_method=True,
        )
        self._fleet = fleet_pb2_grpc.FleetServiceStub(self._channel)
        # The server's snapshot answers likewise arrive as bytes, read by
        # wire.snapshot_from_message_bytes.
        self._get_host_snapshot_bytes = self._channel.unary_unary(
            _GET_HOST_SNAPSHOT_PATH,
            request_serializer=fleet_pb2.GetHostSnapshotRequest.SerializeToString,
            _registered_method=True,
        )
        self._get_stored_snapshot_bytes = self._channel.unary_unary(
            _GET_STORED_SNAPSHOT_PATH,
            request_serializer=fleet_pb2.GetStoredSnapshotRequest.SerializeToString,
            _registered_method=True,
        )
        self._analysis = analysis_pb2_grpc.AnalysisServiceStub(self._channel)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> errors.Error:
        error = error_from_rpc(exc)
        if isinstance(error, errors.Unavailable):
            return errors.Unavailable(f"cannot reach {self.target}: {error}")
        return error

    # -- agent calls --------------------------------------------------------------------

    def host(self) -> Host:
        """The agent's host facts."""
        response = self._call(self._agent.GetHost, agent_pb2.GetHostRequest())
        return wire.host_from_pb(response.host)

    def processes(
        self,
        *,
        order: ProcessOrder | str = ProcessOrder.REGIONS,
        limit: int = 0,
        name: str = "",
        host: str | None = None,
    ) -> ProcessList:
        """Process summaries of the agent's host in ``order`` (a :class:`ProcessOrder`
        or its keyword: ``regions``, ``headroom``, ``pid``), at most ``limit`` (0 =
        all), only names containing ``name``. With ``host``, the latest ones that
        host's agent pushed to the server."""
        order = ProcessOrder.parse(order)
        if host is not None:
            if not host:
                raise errors.InvalidArgument("host must name a host")
            statuses = {h.host_id: h for h in self.hosts()}
            if host not in statuses:
                raise errors.NotFound(f"no host {host!r}")
            items = self.fleet_processes(host=host, order=order, limit=limit, name=name)
            status = statuses[host]
            return ProcessList([p.item for p in items], status.host, status.access_denied_count)
        request = agent_pb2.ListProcessesRequest(
            order=wire.process_order_to_pb(order), limit=limit, name_filter=name
        )
        response = self._call(self._agent.ListProcesses, request)
        return ProcessList(
            [wire.process_summary_from_pb(p) for p in response.processes],
            wire.host_from_pb(response.host),
            response.access_denied_count,
        )

    def snapshot(
        self,
        pid: int,
        *,
        include_free: bool = False,
        include_residency: bool = False,
        view: SnapshotView = SnapshotView.NATIVE,
        host: str | None = None,
        fresh: bool = True,
    ) -> Snapshot:
        """One process's address space. Raises NoSuchProcess, AccessDenied, ...

        With ``host``, through the server: taken now by that host's agent (``fresh``;
        Unavailable when the host is offline) or the latest stored one."""
        if host is not None:
            return self.host_snapshot(
                host,
                pid,
                fresh=fresh,
                include_free=include_free,
                include_residency=include_residency,
                view=view,
            )[1]
        request = agent_pb2.GetSnapshotRequest(
            pid=pid,
            include_free=include_free,
            include_residency=include_residency,
            view=int(view),  # type: ignore[arg-type]
        )
        data = self._call(self._get_snapshot_bytes, request)
        try:
            return wire.snapshot_from_response_bytes(data)
        except ValueError as exc:
            raise self._malformed(exc) from None

    def _malformed(self, exc: ValueError) -> errors.Error:
        return errors.Error(f"{self.target} answered a malformed snapshot: {exc}")

    def _snapshot_call(self, method: Any, request: Any, message_class: Any) -> tuple[Snapshot, Any]:
        """A call answering a serialized Snapshot in a message's ``snapshot`` field:
        the snapshot, read from the answer's bytes, and the message's other fields."""
        data = self._call(method, request)
        try:
            return wire.snapshot_from_message_bytes(data, message_class)
        except ValueError as exc:
            raise self._malformed(exc) from None

    def watch(
        self, pid: int, *, interval: float = 5.0, poll: float = 0.5
    ) -> Iterator[tuple[ProcessSummary, bool]]:
        """``(summary, region_count_changed)`` now, every ``interval`` seconds and at
        once when the region count changes; ends with NoSuchProcess when it exits."""
        request = agent_pb2.WatchProcessRequest(
            pid=pid, interval_seconds=interval, poll_seconds=poll
        )
        stream = self._agent.WatchProcess(request, metadata=self._metadata)
        try:
            for response in stream:
                yield wire.process_summary_from_pb(response.summary), response.region_count_changed
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error(exc) from None
        finally:
            stream.cancel()

    # -- fleet calls (a server) ---------------------------------------------------------

    def hosts(self) -> list[HostStatus]:
        """Every host the server knows, online or not, by host id."""
        response = self._call(self._fleet.ListHosts, fleet_pb2.ListHostsRequest())
        return [wire.host_status_from_pb(h) for h in response.hosts]

    def fleet_processes(
        self,
        *,
        host: str = "",
        order: ProcessOrder | str = ProcessOrder.REGIONS,
        limit: int = 0,
        name: str = "",
    ) -> list[FleetProcess]:
        """Latest process summaries across hosts (or of ``host``), each with its host id,
        by region count, ``headroom`` or ``pid``."""
        request = fleet_pb2.ListFleetProcessesRequest(
            host_id=host,
            name_filter=name,
            order=wire.process_order_to_pb(ProcessOrder.parse(order)),
            limit=limit,
        )
        response = self._call(self._fleet.ListFleetProcesses, request)
        return [wire.fleet_process_from_pb(p) for p in response.processes]

    def host_snapshot(
        self,
        host: str,
        pid: int,
        *,
        fresh: bool = True,
        include_free: bool = False,
        include_residency: bool = False,
        view: SnapshotView = SnapshotView.NATIVE,
    ) -> tuple[str, Snapshot]:
        """``(snapshot_id, snapshot)`` of ``pid`` on ``host``: fresh from its agent or
        the latest stored."""
        request = fleet_pb2.GetHostSnapshotRequest(
            host_id=host,
            pid=pid,
            fresh=fresh,
            include_free=include_free,
            include_residency=include_residency,
            view=int(view),  # type: ignore[arg-type]
        )
        snapshot, response = self._snapshot_call(
            self._get_host_snapshot_bytes, request, fleet_pb2.GetHostSnapshotResponse
        )
        return response.snapshot_id, snapshot

    def history(
        self, *, host: str, pid: int, since: float | None = None, until: float | None = None
    ) -> History:
        """Stored summaries of ``pid`` on ``host`` (seconds since the epoch bounds,
        inclusive), oldest first, and the snapshots stored meanwhile."""
        request = fleet_pb2.ListProcessHistoryRequest(host_id=host, pid=pid)
        if since is not None:
            wire.timestamp_to_pb(since, request.since_time)
        if until is not None:
            wire.timestamp_to_pb(until, request.until_time)
        response = self._call(self._fleet.ListProcessHistory, request)
        return History(
            summaries=[wire.process_summary_from_pb(p) for p in response.summaries],
            snapshots=[wire.stored_info_from_pb(s, host) for s in response.snapshots],
        )

    def stored_snapshot(self, snapshot_id: str) -> Snapshot:
        """A snapshot the server stored, by id. NotFound when pruned or unknown."""
        request = fleet_pb2.GetStoredSnapshotRequest(snapshot_id=snapshot_id)
        return self._snapshot_call(
            self._get_stored_snapshot_bytes, request, fleet_pb2.GetStoredSnapshotResponse
        )[0]

    # -- analysis calls (a server) ------------------------------------------------------

    def diff(
        self,
        before: Snapshot | str,
        after: Snapshot | str,
        *,
        mode: DiffMode = DiffMode.UNSPECIFIED,
    ) -> Diff:
        """What changed from ``before`` to ``after``; each is a :class:`Snapshot`, a
        stored snapshot id, or ``"HOST:PID"`` for that process's latest stored snapshot.
        Two snapshots in hand are diffed here; otherwise the server does it."""
        if isinstance(before, Snapshot) and isinstance(after, Snapshot):
            return diff(before, after, mode)
        request = analysis_pb2.DiffRequest(mode=int(mode))  # type: ignore[arg-type]
        wire_analysis.selector_to_pb(before, request.before)
        wire_analysis.selector_to_pb(after, request.after)
        return wire_analysis.diff_from_pb(self._call(self._analysis.Diff, request))

    def audit(self, *, policy: Policy | None = None) -> AuditReport:
        """The server's audit of every host's latest data and history, under ``policy``
        (the built-in defaults when None)."""
        request = analysis_pb2.AuditRequest(
            policy_json=json.dumps(policy_to_document(policy)) if policy is not None else ""
        )
        return wire_analysis.report_from_pb(self._call(self._analysis.Audit, request))
