"""The protobuf boundary for analysis results: diffs and audits to and from
``vmatlas.v1.analysis``. Part of the one wire layer (beside :mod:`vmatlas.wire`, whose
snapshot and summary conversions it uses); nothing else touches these messages."""

from __future__ import annotations

from vmatlas import wire
from vmatlas.audit import Application, AuditReport, Check, Finding, Recommendation, Severity
from vmatlas.diff import (
    Change,
    ChangeKind,
    ClassDelta,
    Diff,
    DiffMode,
    RegionClass,
    SnapshotRef,
)
from vmatlas.model import Snapshot, Summary
from vmatlas.v1 import analysis_pb2 as pb


def selector_to_pb(
    side: Snapshot | str, message: pb.SnapshotSelector | None = None
) -> pb.SnapshotSelector:
    """One side of a diff: a snapshot sent inline, ``HOST:PID`` (its latest stored
    snapshot) or a stored snapshot id."""
    message = pb.SnapshotSelector() if message is None else message
    if isinstance(side, Snapshot):
        wire.snapshot_to_pb(side, message.inline)
        return message
    host, sep, pid = side.rpartition(":")
    if sep and host and pid.isdigit():
        message.latest.host_id = host
        message.latest.pid = int(pid)
    else:
        message.snapshot_id = side
    return message


# -- diff ---------------------------------------------------------------------------------


def _side_to_pb(ref: SnapshotRef, summary: Summary, message: pb.DiffSide) -> None:
    message.host_id = ref.host_id
    message.pid = ref.pid
    message.name = ref.name
    wire.timestamp_to_pb(ref.capture_time, message.capture_time)
    if ref.process_start_time:
        wire.timestamp_to_pb(ref.process_start_time, message.process_start_time)
    wire.summary_to_pb(summary, message.summary)


def _side_from_pb(message: pb.DiffSide) -> SnapshotRef:
    return SnapshotRef(
        host_id=message.host_id,
        pid=message.pid,
        name=message.name,
        capture_time=wire.timestamp_from_pb(message.capture_time),
        process_start_time=wire.timestamp_from_pb(message.process_start_time),
    )


def diff_to_pb(
    d: Diff, message: pb.DiffResponse | None = None, snapshot_ids: tuple[str, str] = ("", "")
) -> pb.DiffResponse:
    message = pb.DiffResponse() if message is None else message
    message.mode = int(d.mode)  # type: ignore[assignment]
    _side_to_pb(d.before, d.summary_before, message.before)
    _side_to_pb(d.after, d.summary_after, message.after)
    message.before.snapshot_id, message.after.snapshot_id = snapshot_ids
    for c in d.classes:
        message.classes.add(
            region_class=int(c.region_class),
            label=c.label,
            regions_before=c.regions_before,
            regions_after=c.regions_after,
            bytes_before=c.bytes_before,
            bytes_after=c.bytes_after,
            change_count=c.change_count,
        )
    for ch in d.changes:
        message.changes.add(
            kind=int(ch.kind),
            start_address=ch.start,
            end_address=ch.end,
            regions_before=ch.regions_before,
            regions_after=ch.regions_after,
            bytes_before=ch.bytes_before,
            bytes_after=ch.bytes_after,
            region_class=int(ch.region_class),
            label=ch.label,
            detail=ch.detail,
        )
    return message


def diff_from_pb(message: pb.DiffResponse) -> Diff:
    return Diff(
        mode=DiffMode(message.mode),
        before=_side_from_pb(message.before),
        after=_side_from_pb(message.after),
        summary_before=wire.summary_from_pb(message.before.summary),
        summary_after=wire.summary_from_pb(message.after.summary),
        classes=tuple(
            ClassDelta(
                region_class=RegionClass(c.region_class),
                label=c.label,
                regions_before=c.regions_before,
                regions_after=c.regions_after,
                bytes_before=c.bytes_before,
                bytes_after=c.bytes_after,
                change_count=c.change_count,
            )
            for c in message.classes
        ),
        changes=tuple(
            Change(
                kind=ChangeKind(ch.kind),
                start=ch.start_address,
                end=ch.end_address,
                regions_before=ch.regions_before,
                regions_after=ch.regions_after,
                bytes_before=ch.bytes_before,
                bytes_after=ch.bytes_after,
                region_class=RegionClass(ch.region_class),
                label=ch.label,
                detail=ch.detail,
            )
            for ch in message.changes
        ),
    )


# -- audit --------------------------------------------------------------------------------


def report_to_pb(report: AuditReport, message: pb.AuditResponse | None = None) -> pb.AuditResponse:
    message = pb.AuditResponse() if message is None else message
    wire.timestamp_to_pb(report.generated_at, message.generated_time)
    message.host_count = report.host_count
    message.process_count = report.process_count
    for f in report.findings:
        item = message.findings.add(
            severity=int(f.severity),
            check=int(f.check),
            host_id=f.host_id,
            pid=f.pid,
            process=f.process,
            value=f.value,
            threshold=f.threshold,
            limit=f.limit,
            message=f.message,
            pointer_bits=f.pointer_bits,
            container_id=f.container_id,
            pod_uid=f.pod_uid,
        )
        if f.forecast_seconds is not None:
            item.forecast_seconds = f.forecast_seconds
    for a in report.applications:
        message.applications.add(
            executable=a.executable,
            instances=a.instances,
            host_count=a.host_count,
            map_count_max=a.map_count_max,
            map_count_mean=a.map_count_mean,
            map_count_min=a.map_count_min,
            peak_host_id=a.peak_host_id,
            peak_pid=a.peak_pid,
        )
    for r in report.recommendations:
        message.recommendations.add(
            group=r.group,
            host_ids=r.host_ids,
            current_values=r.current_values,
            peak_map_count=r.peak_map_count,
            peak_process=r.peak_process,
            peak_host_id=r.peak_host_id,
            headroom_factor=r.headroom_factor,
            recommended_max_map_count=r.recommended_max_map_count,
            reasoning=r.reasoning,
        )
    return message


def report_from_pb(message: pb.AuditResponse) -> AuditReport:
    return AuditReport(
        generated_at=wire.timestamp_from_pb(message.generated_time),
        host_count=message.host_count,
        process_count=message.process_count,
        findings=tuple(
            Finding(
                severity=Severity(f.severity),
                check=Check(f.check),
                host_id=f.host_id,
                pid=f.pid,
                process=f.process,
                value=f.value,
                threshold=f.threshold,
                limit=f.limit,
                message=f.message,
                forecast_seconds=f.forecast_seconds if f.HasField("forecast_seconds") else None,
                pointer_bits=f.pointer_bits,
                container_id=f.container_id,
                pod_uid=f.pod_uid,
            )
            for f in message.findings
        ),
        applications=tuple(
            Application(
                executable=a.executable,
                instances=a.instances,
                host_count=a.host_count,
                map_count_max=a.map_count_max,
                map_count_mean=a.map_count_mean,
                map_count_min=a.map_count_min,
                peak_host_id=a.peak_host_id,
                peak_pid=a.peak_pid,
            )
            for a in message.applications
        ),
        recommendations=tuple(
            Recommendation(
                group=r.group,
                host_ids=tuple(r.host_ids),
                current_values=tuple(r.current_values),
                peak_map_count=r.peak_map_count,
                peak_process=r.peak_process,
                peak_host_id=r.peak_host_id,
                headroom_factor=r.headroom_factor,
                recommended_max_map_count=r.recommended_max_map_count,
                reasoning=r.reasoning,
            )
            for r in message.recommendations
        ),
    )
