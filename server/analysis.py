"""``vmatlas.v1.AnalysisService``: diffs of stored (or given) snapshots and the fleet
audit, computed by the shared :mod:`vmatlas.diff` and :mod:`vmatlas.audit` over what
the store holds."""

from __future__ import annotations

import time

import grpc

from vmatlas import errors, wire, wire_analysis
from vmatlas.audit import audit
from vmatlas.diff import DiffMode, diff
from vmatlas.grpcutil import maps_errors
from vmatlas.model import Host, ProcessSummary, Snapshot
from vmatlas.policy import DEFAULT_POLICY, parse_policy
from vmatlas.server.store import Store
from vmatlas.v1 import analysis_pb2, analysis_pb2_grpc

SERVICE_NAME = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name

# A process's history is read for its trend only when it holds at least this many maps
# (a process with a handful cannot be near any limit soon enough to matter).
TREND_MIN_MAP_COUNT = 64


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    def __init__(self, store: Store):
        self.store = store

    def _resolve(self, selector: analysis_pb2.SnapshotSelector, side: str) -> tuple[Snapshot, str]:
        which = selector.WhichOneof("selector")
        if which == "snapshot_id":
            _, record = self.store.get_snapshot(selector.snapshot_id)
            snapshot_id = selector.snapshot_id
        elif which == "latest":
            if not selector.latest.pid:
                raise errors.InvalidArgument(f"{side}: pid must be given")
            snapshot_id, record = self.store.latest_snapshot(
                selector.latest.host_id, selector.latest.pid
            )
        elif which == "inline":
            try:
                return wire.snapshot_from_pb(selector.inline), ""
            except ValueError as exc:
                raise errors.InvalidArgument(f"{side}: malformed snapshot: {exc}") from None
        else:
            raise errors.InvalidArgument(f"{side}: no snapshot selected")
        header = wire.snapshot_header_bytes(record.header)
        return wire.snapshot_from_bytes(wire.join_snapshot(header, record.regions)), snapshot_id

    @maps_errors
    def Diff(
        self, request: analysis_pb2.DiffRequest, context: grpc.ServicerContext
    ) -> analysis_pb2.DiffResponse:
        if request.mode not in analysis_pb2.DiffMode.values():
            raise errors.InvalidArgument(f"unknown diff mode {request.mode}")
        before, before_id = self._resolve(request.before, "before")
        after, after_id = self._resolve(request.after, "after")
        result = diff(before, after, DiffMode(request.mode))
        return wire_analysis.diff_to_pb(result, snapshot_ids=(before_id, after_id))

    @maps_errors
    def Audit(
        self, request: analysis_pb2.AuditRequest, context: grpc.ServicerContext
    ) -> analysis_pb2.AuditResponse:
        policy = (
            parse_policy(request.policy_json, source="policy_json")
            if request.policy_json
            else DEFAULT_POLICY
        )
        now = time.time()
        hosts: list[Host] = [status.host for status in self.store.hosts()]
        processes: dict[str, list[ProcessSummary]] = {}
        for fleet_process in self.store.latest_summaries_all_hosts():
            processes.setdefault(fleet_process.host_id, []).append(fleet_process.item)
        # Every trend point in the window in one read, then each process's own (a
        # reused pid is another process: its start time tells them apart).
        series = self.store.map_count_series(now - policy.trend.window_seconds, now)
        history: dict[tuple[str, int], list[tuple[float, int]]] = {}
        for host_id, items in processes.items():
            for item in items:
                if item.summary.map_count < TREND_MIN_MAP_COUNT:
                    continue
                key = (host_id, item.process.pid, item.process.start_time)
                history[(host_id, item.process.pid)] = series.get(key, [])
        report = audit(hosts, processes, history, policy=policy, now=now)
        return wire_analysis.report_to_pb(report)
