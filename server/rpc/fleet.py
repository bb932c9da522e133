"""``vmatlas.v1.FleetService`` over :class:`vmatlas.server.domain.fleet.FleetQueries`,
on ``grpc.aio``: each call's blocking part (store reads, building the response from
them) runs on the hub's thread pool, in one hop, never on the event loop. A fresh
snapshot, stored on the pool on its way, is framed on the loop: a copy of bytes in
hand costs less than the two thread hops it would take.

Snapshots leave as one serialized ``Snapshot`` whose region table is spliced in as
the store keeps it, never encoded again here: the response is written as its bytes,
the table copied into them once (:func:`add_to_server`).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from vmatlas import errors, wire
from vmatlas.grpcutil import maps_errors
from vmatlas.model import SnapshotView
from vmatlas.security.auth import caller as current_caller
from vmatlas.server.domain.fleet import Caller, FleetQueries, HostSnapshot
from vmatlas.server.domain.hub import SnapshotRequest
from vmatlas.v1 import fleet_pb2, fleet_pb2_grpc, replica_pb2

SERVICE_NAME = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name

# Left of the caller's deadline for the answer to travel back.
DEADLINE_MARGIN_SECONDS = 0.05

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def snapshot_view_from_pb(value: int) -> SnapshotView:
    try:
        return SnapshotView(value)
    except ValueError:
        raise errors.InvalidArgument(f"unknown snapshot view {value}") from None


def snapshot_request_from_pb(
    request: fleet_pb2.GetHostSnapshotRequest | replica_pb2.TakeHostSnapshotRequest,
) -> SnapshotRequest:
    """The request's snapshot options, as a client asked for them or as a peer
    forwarded them: both messages carry the same four fields."""
    return SnapshotRequest(
        pid=request.pid,
        include_free=request.include_free,
        include_residency=request.include_residency,
        view=snapshot_view_from_pb(request.view),
    )


def time_left(context: Context) -> float | None:
    """What is left of the caller's deadline, less the way back (None: no deadline)."""
    remaining: float | None = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - DEADLINE_MARGIN_SECONDS)


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, queries: FleetQueries):
        self.queries = queries
        self.blocking = queries.hub.blocking

    @maps_errors
    async def ListHosts(
        self, request: fleet_pb2.ListHostsRequest, context: Context
    ) -> fleet_pb2.ListHostsResponse:
        return await self.blocking(self._list_hosts)

    def _list_hosts(self) -> fleet_pb2.ListHostsResponse:
        response = fleet_pb2.ListHostsResponse()
        for status in self.queries.hosts():
            wire.host_status_to_pb(status, response.hosts.add())
        return response

    @maps_errors
    async def ListFleetProcesses(
        self, request: fleet_pb2.ListFleetProcessesRequest, context: Context
    ) -> fleet_pb2.ListFleetProcessesResponse:
        return await self.blocking(self._list_processes, request)

    def _list_processes(
        self, request: fleet_pb2.ListFleetProcessesRequest
    ) -> fleet_pb2.ListFleetProcessesResponse:
        found = self.queries.processes(
            host_id=request.host_id,
            name_contains=request.name_filter,
            order=wire.process_order_from_pb(request.order),
            limit=request.limit,
        )
        response = fleet_pb2.ListFleetProcessesResponse()
        for item in found:
            wire.fleet_process_to_pb(item, response.processes.add())
        return response

    @maps_errors
    async def GetHostSnapshot(  # type: ignore[override]  # its bytes, see add_to_server
        self, request: fleet_pb2.GetHostSnapshotRequest, context: Context
    ) -> wire.Serialized:
        if not request.fresh:
            return await self.blocking(self._latest_snapshot, request)
        principal = current_caller()
        found = await self.queries.fresh_snapshot_async(
            request.host_id,
            snapshot_request_from_pb(request),
            timeout_seconds=time_left(context),
            caller=Caller(principal.name, principal.role) if principal else None,
        )
        return _snapshot_response(
            fleet_pb2.GetHostSnapshotResponse, found, {"snapshot_id": found.snapshot_id}
        )

    def _latest_snapshot(self, request: fleet_pb2.GetHostSnapshotRequest) -> wire.Serialized:
        found = self.queries.latest_snapshot(request.host_id, request.pid)
        return _snapshot_response(
            fleet_pb2.GetHostSnapshotResponse, found, {"snapshot_id": found.snapshot_id}
        )

    @maps_errors
    async def ListProcessHistory(
        self, request: fleet_pb2.ListProcessHistoryRequest, context: Context
    ) -> fleet_pb2.ListProcessHistoryResponse:
        return await self.blocking(self._history, request)

    def _history(
        self, request: fleet_pb2.ListProcessHistoryRequest
    ) -> fleet_pb2.ListProcessHistoryResponse:
        since = (
            wire.timestamp_from_pb(request.since_time) if request.HasField("since_time") else 0.0
        )
        until = (
            wire.timestamp_from_pb(request.until_time)
            if request.HasField("until_time")
            else float("inf")
        )
        history = self.queries.history(request.host_id, request.pid, since, until)
        response = fleet_pb2.ListProcessHistoryResponse()
        for item in history.summaries:
            wire.process_summary_to_pb(item, response.summaries.add())
        for info in history.snapshots:
            wire.stored_info_to_pb(info, response.snapshots.add())
        return response

    @maps_errors
    async def GetStoredSnapshot(  # type: ignore[override]  # its bytes, see add_to_server
        self, request: fleet_pb2.GetStoredSnapshotRequest, context: Context
    ) -> wire.Serialized:
        return await self.blocking(self._stored_snapshot, request.snapshot_id)

    def _stored_snapshot(self, snapshot_id: str) -> wire.Serialized:
        found = self.queries.stored_snapshot(snapshot_id)
        return _snapshot_response(
            fleet_pb2.GetStoredSnapshotResponse, found, {"host_id": found.host_id}
        )


def _snapshot_response(
    message_class: type[Any], found: HostSnapshot, fields: dict[str, str]
) -> wire.Serialized:
    """The response carrying ``found``, written as its bytes (see :func:`add_to_server`)."""
    return wire.snapshot_bytes_response(
        message_class, found.serialized_header(), found.regions, **fields
    )


def add_to_server(servicer: FleetServicer, server: grpc.aio.Server) -> None:
    """``fleet_pb2_grpc.add_FleetServiceServicer_to_server``, except that an answer may
    be sent as the bytes it already is (:class:`vmatlas.wire.Serialized`): a snapshot's
    region table goes into the response's bytes once, never into a message first."""
    service = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=getattr(fleet_pb2, method.input_type.name).FromString,
            response_serializer=wire.serialize_response,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
