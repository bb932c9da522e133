"""The agent's gRPC service (``vmatlas.v1.AgentService``) over any platform reader."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator

import grpc

from vmatlas import errors, wire
from vmatlas.agents.base import Reader
from vmatlas.agents.core import Agent, WindowsView
from vmatlas.grpcutil import maps_errors, maps_stream_errors
from vmatlas.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

# Watches at once (each holds one of the server's threads) and their fastest poll.
MAX_WATCHES = 8
MIN_POLL_SECONDS = 0.05

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


class AgentServicer(Agent, agent_pb2_grpc.AgentServiceServicer):
    """:class:`~vmatlas.agents.core.Agent` over gRPC."""

    def __init__(self, reader: Reader, windows_view: WindowsView | None = None):
        super().__init__(reader, windows_view)
        self._watches = threading.BoundedSemaphore(MAX_WATCHES)

    @maps_errors
    def GetHost(
        self, request: agent_pb2.GetHostRequest, context: grpc.ServicerContext
    ) -> agent_pb2.GetHostResponse:
        response = agent_pb2.GetHostResponse()
        wire.host_to_pb(self.reader.host(), response.host)
        return response

    @maps_errors
    def ListProcesses(
        self, request: agent_pb2.ListProcessesRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ListProcessesResponse:
        order = wire.process_order_from_pb(request.order)
        items, denied = self.process_list(order, request.limit, request.name_filter)
        response = agent_pb2.ListProcessesResponse(access_denied_count=denied)
        wire.host_to_pb(self.reader.host(), response.host)
        for item in items:
            wire.process_summary_to_pb(item, response.processes.add())
        return response

    @maps_errors
    def GetSnapshot(  # type: ignore[override]  # the response's bytes, see add_to_server
        self, request: agent_pb2.GetSnapshotRequest, context: grpc.ServicerContext
    ) -> wire.Serialized:
        """The response as bytes (registered by :func:`add_to_server`): a large region
        table is written once, natively, not parsed into a message and written again."""
        snapshot = self.snapshot(
            request.pid, request.include_free, request.include_residency, request.view
        )
        return wire.snapshot_response(snapshot)

    @maps_stream_errors
    def WatchProcess(
        self, request: agent_pb2.WatchProcessRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.WatchProcessResponse]:
        if request.pid == 0:
            raise errors.InvalidArgument("pid must be given (pid 0 is not a process)")
        interval = request.interval_seconds or 5.0
        poll = request.poll_seconds or 0.5
        if not (math.isfinite(interval) and math.isfinite(poll)) or interval < 0 or poll < 0:
            raise errors.InvalidArgument("interval and poll must be positive numbers of seconds")
        # Each watch holds a server thread and rereads the process's maps every poll:
        # bounded in rate and in number, so watches cannot starve the agent's other calls.
        poll = min(max(poll, MIN_POLL_SECONDS), max(interval, MIN_POLL_SECONDS))
        if not self._watches.acquire(blocking=False):
            raise errors.ResourceExhausted(
                f"this agent already serves {MAX_WATCHES} watches; try again later"
            )
        try:
            yield from self._watch(request.pid, interval, poll, context)
        finally:
            self._watches.release()

    def _watch(
        self, pid: int, interval: float, poll: float, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.WatchProcessResponse]:
        first = self.reader.process(pid)
        last_count: int | None = None
        next_tick = 0.0
        while context.is_active():
            item = self.reader.process_summary(pid)
            if item.process.start_time != first.start_time:
                raise errors.NoSuchProcess(pid=pid, name=first.name)
            now = time.monotonic()
            changed = last_count is not None and item.summary.region_count != last_count
            if changed or now >= next_tick:
                response = agent_pb2.WatchProcessResponse(region_count_changed=changed)
                wire.process_summary_to_pb(item, response.summary)
                yield response
                if now >= next_tick:
                    next_tick = now + interval
            last_count = item.summary.region_count
            time.sleep(poll)


def add_to_server(servicer: AgentServicer, server: grpc.Server) -> None:
    """``agent_pb2_grpc.add_AgentServiceServicer_to_server``, except that GetSnapshot's
    answer is sent as the bytes it already is (:func:`vmatlas.wire.serialize_response`)."""
    handlers = {
        "GetHost": grpc.unary_unary_rpc_method_handler(
            servicer.GetHost,
            request_deserializer=agent_pb2.GetHostRequest.FromString,
            response_serializer=agent_pb2.GetHostResponse.SerializeToString,
        ),
        "ListProcesses": grpc.unary_unary_rpc_method_handler(
            servicer.ListProcesses,
            request_deserializer=agent_pb2.ListProcessesRequest.FromString,
            response_serializer=agent_pb2.ListProcessesResponse.SerializeToString,
        ),
        "GetSnapshot": grpc.unary_unary_rpc_method_handler(
            servicer.GetSnapshot,
            request_deserializer=agent_pb2.GetSnapshotRequest.FromString,
            response_serializer=wire.serialize_response,
        ),
        "WatchProcess": grpc.unary_stream_rpc_method_handler(
            servicer.WatchProcess,
            request_deserializer=agent_pb2.WatchProcessRequest.FromString,
            response_serializer=agent_pb2.WatchProcessResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
