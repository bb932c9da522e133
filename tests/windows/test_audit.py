"""Windows fragmentation through the audit: small allocations planted under Wine raise
unusable bytes by exactly their granule slack, and the audit flags it."""

from __future__ import annotations

from vmatlas.agents.windows.reader import WindowsReader
from vmatlas.agents.windows.wine import WineApi
from vmatlas.audit import Check, Severity, audit
from vmatlas.model import ProcessSummary
from vmatlas.policy import parse_policy

from .planting import Planter

KIB = 1024


def test_small_allocations_raise_unusable_bytes_and_the_audit_flags_them(
    wine_api: WineApi, short_planter: Planter
) -> None:
    reader = WindowsReader(wine_api)
    pid = short_planter.windows_pid
    before = reader.snapshot(pid).summary
    short_planter.allocate_small(100)
    snap = reader.snapshot(pid)
    after = snap.summary
    # Each 4 KiB allocation starts a fresh 64 KiB granule; the other 60 KiB of it can
    # never be allocated.
    assert after.unusable_bytes - before.unusable_bytes == 100 * 60 * KIB
    assert after.allocation_count - before.allocation_count == 100

    policy = parse_policy(
        f'{{"windows": {{"unusable_warn_bytes": {before.unusable_bytes + 50 * 60 * KIB}}}}}'
    )
    item = ProcessSummary(process=snap.process, summary=after, capture_time=snap.capture_time)
    report = audit([snap.host], {snap.host.host_id: [item]}, policy=policy)
    (finding,) = [f for f in report.findings if f.check is Check.UNUSABLE]
    assert finding.pid == pid
    assert finding.severity >= Severity.WARNING
    assert finding.value == after.unusable_bytes

    quiet = audit([snap.host], {snap.host.host_id: [item]})  # the default threshold: 64 MiB
    assert not [f for f in quiet.findings if f.check is Check.UNUSABLE]
