"""``vmatlas.v1.FleetService``: hosts, processes, fresh and stored snapshots, history.

Snapshots leave this service as the bytes the agent (or the store) produced: a fresh
one is the agent's header joined to its serialized region table, never decoded here;
only the small header is parsed, to file the snapshot in the store.
"""

from __future__ import annotations

import logging

import grpc

from vmatlas import errors, wire
from vmatlas.grpcutil import maps_errors
from vmatlas.server.hub import Hub
from vmatlas.server.store import ProcessFilter, SnapshotRecord, Store
from vmatlas.v1 import agent_pb2, fleet_pb2, fleet_pb2_grpc
from vmatlas.validate import validate_snapshot_parts

log = logging.getLogger(__name__)

SERVICE_NAME = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name

DEFAULT_AGENT_TIMEOUT_SECONDS = 30.0

_ORDERS = {
    agent_pb2.PROCESS_ORDER_UNSPECIFIED: "regions",
    agent_pb2.PROCESS_ORDER_REGION_COUNT: "regions",
    agent_pb2.PROCESS_ORDER_HEADROOM: "headroom",
    agent_pb2.PROCESS_ORDER_PID: "pid",
}


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(
        self,
        store: Store,
        hub: Hub,
        *,
        agent_timeout_seconds: float = DEFAULT_AGENT_TIMEOUT_SECONDS,
    ):
        self.store = store
        self.hub = hub
        self.agent_timeout_seconds = agent_timeout_seconds

    @maps_errors
    def ListHosts(
        self, request: fleet_pb2.ListHostsRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ListHostsResponse:
        response = fleet_pb2.ListHostsResponse()
        for status in self.store.hosts():
            wire.host_status_to_pb(status, response.hosts.add())
        return response

    @maps_errors
    def ListFleetProcesses(
        self, request: fleet_pb2.ListFleetProcessesRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ListFleetProcessesResponse:
        if request.order not in _ORDERS:
            raise errors.InvalidArgument(f"unknown process order {request.order}")
        where = ProcessFilter(
            host_id=request.host_id,
            name_contains=request.name_filter,
            order=_ORDERS[request.order],
            limit=request.limit,
        )
        response = fleet_pb2.ListFleetProcessesResponse()
        for item in self.store.processes(where):
            wire.fleet_process_to_pb(item, response.processes.add())
        return response

    @maps_errors
    def GetHostSnapshot(
        self, request: fleet_pb2.GetHostSnapshotRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.GetHostSnapshotResponse:
        if not request.fresh:
            return self._host_snapshot(request, context)
        # A fresh snapshot in flight when the server is told to stop is answered and
        # stored before the agents' streams close.
        with self.hub.serving():
            return self._host_snapshot(request, context)

    def _host_snapshot(
        self, request: fleet_pb2.GetHostSnapshotRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.GetHostSnapshotResponse:
        if request.pid == 0:
            raise errors.InvalidArgument("pid must be given (pid 0 is not a process)")
        if not request.fresh:
            self.store.host(request.host_id)
            snapshot_id, record = self.store.latest_snapshot(request.host_id, request.pid)
            return fleet_pb2.GetHostSnapshotResponse(
                snapshot=_join(record), snapshot_id=snapshot_id
            )
        session = self.hub.session(request.host_id)
        result = session.request_snapshot(
            agent_pb2.GetSnapshotRequest(
                pid=request.pid,
                include_free=request.include_free,
                include_residency=request.include_residency,
                view=request.view,
            ),
            self._timeout(context),
        )
        if result.HasField("error"):
            raise wire.error_from_pb(result.error)
        try:
            header = wire.snapshot_header_from_bytes(result.snapshot_header)
        except ValueError as exc:
            bad = f"host {request.host_id!r} sent a bad snapshot: {exc}"
            raise errors.Unavailable(bad) from None
        if header.host.host_id != request.host_id:
            raise errors.Unavailable(
                f"host {request.host_id!r} answered as {header.host.host_id!r}"
            )
        try:
            validate_snapshot_parts(result.snapshot_header, result.regions, session.host)
        except errors.InvalidArgument as exc:
            raise errors.Unavailable(
                f"host {request.host_id!r} sent a bad snapshot: {exc}"
            ) from None
        snapshot_id = self.store.put_snapshot(
            request.host_id, SnapshotRecord(header=header, regions=result.regions)
        )
        return fleet_pb2.GetHostSnapshotResponse(
            snapshot=wire.join_snapshot(result.snapshot_header, result.regions),
            snapshot_id=snapshot_id,
        )

    def _timeout(self, context: grpc.ServicerContext) -> float:
        """The agent gets the server's limit or what is left of the caller's deadline,
        whichever is shorter."""
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return self.agent_timeout_seconds
        return max(0.0, min(self.agent_timeout_seconds, remaining - 0.05))

    @maps_errors
    def ListProcessHistory(
        self, request: fleet_pb2.ListProcessHistoryRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ListProcessHistoryResponse:
        since = (
            wire.timestamp_from_pb(request.since_time) if request.HasField("since_time") else 0.0
        )
        until = (
            wire.timestamp_from_pb(request.until_time)
            if request.HasField("until_time")
            else float("inf")
        )
        if until < since:
            raise errors.InvalidArgument("until_time is before since_time")
        history = self.store.history(request.host_id, request.pid, since, until)
        response = fleet_pb2.ListProcessHistoryResponse()
        for item in history.summaries:
            wire.process_summary_to_pb(item, response.summaries.add())
        for info in history.snapshots:
            wire.stored_info_to_pb(info, response.snapshots.add())
        return response

    @maps_errors
    def GetStoredSnapshot(
        self, request: fleet_pb2.GetStoredSnapshotRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.GetStoredSnapshotResponse:
        host_id, record = self.store.get_snapshot(request.snapshot_id)
        return fleet_pb2.GetStoredSnapshotResponse(snapshot=_join(record), host_id=host_id)


def _join(record: SnapshotRecord) -> bytes:
    """A stored snapshot as one serialized Snapshot, its region table spliced in as
    stored (not decoded)."""
    return wire.join_snapshot(wire.snapshot_header_bytes(record.header), record.regions)
