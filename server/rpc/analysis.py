"""``vmatlas.v1.AnalysisService`` over :class:`vmatlas.server.domain.analysis.Analysis`,
on ``grpc.aio``: each call runs on the server's thread pool (store reads and CPU work),
never on the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from vmatlas import errors, wire, wire_analysis
from vmatlas.diff import DiffMode
from vmatlas.grpcutil import maps_errors
from vmatlas.policy import DEFAULT_POLICY, parse_policy
from vmatlas.server.domain.analysis import (
    Analysis,
    LatestSnapshot,
    SnapshotSelector,
    StoredSnapshotId,
)
from vmatlas.v1 import analysis_pb2, analysis_pb2_grpc

T = TypeVar("T")


class Blocking(Protocol):
    """Runs a blocking call off the event loop (:meth:`Hub.blocking`)."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


SERVICE_NAME = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name


def selector_from_pb(message: analysis_pb2.SnapshotSelector, side: str) -> SnapshotSelector:
    which = message.WhichOneof("selector")
    if which == "snapshot_id":
        return StoredSnapshotId(message.snapshot_id)
    if which == "latest":
        return LatestSnapshot(message.latest.host_id, message.latest.pid)
    if which == "inline":
        try:
            return wire.snapshot_from_pb(message.inline)
        except ValueError as exc:
            raise errors.InvalidArgument(f"{side}: malformed snapshot: {exc}") from None
    raise errors.InvalidArgument(f"{side}: no snapshot selected")


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    def __init__(self, analysis: Analysis, blocking: Blocking):
        self.analysis = analysis
        self.blocking = blocking

    @maps_errors
    async def Diff(
        self, request: analysis_pb2.DiffRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analysis_pb2.DiffResponse:
        return await self.blocking(self._diff, request)

    def _diff(self, request: analysis_pb2.DiffRequest) -> analysis_pb2.DiffResponse:
        if request.mode not in analysis_pb2.DiffMode.values():
            raise errors.InvalidArgument(f"unknown diff mode {request.mode}")
        result = self.analysis.diff(
            selector_from_pb(request.before, "before"),
            selector_from_pb(request.after, "after"),
            DiffMode(request.mode),
        )
        return wire_analysis.diff_to_pb(
            result.diff, snapshot_ids=(result.before_id, result.after_id)
        )

    @maps_errors
    async def Audit(
        self, request: analysis_pb2.AuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analysis_pb2.AuditResponse:
        return await self.blocking(self._audit, request)

    def _audit(self, request: analysis_pb2.AuditRequest) -> analysis_pb2.AuditResponse:
        policy = (
            parse_policy(request.policy_json, source="policy_json")
            if request.policy_json
            else DEFAULT_POLICY
        )
        return wire_analysis.report_to_pb(self.analysis.audit(policy))
