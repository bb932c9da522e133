"""The shared diff module against real children whose layouts the tests plant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmatlas.agents.linux import LinuxReader
from vmatlas.diff import ChangeKind, DiffMode, RegionClass, diff, diff_to_document
from vmatlas.export import snapshot_from_document, snapshot_to_document

# Every test here runs over both capture paths: the C loops and the pure-Python ones.
pytestmark = pytest.mark.usefixtures("capture_path")

PAGE = os.sysconf("SC_PAGE_SIZE")
reader = LinuxReader()


def test_unmapping_the_middle_of_a_mapping_is_one_split(planter):
    address = planter.map(16)
    before = reader.snapshot(planter.pid)
    planter.unmap(address + 4 * PAGE, 8)
    after = reader.snapshot(planter.pid)

    d = diff(before, after)

    assert d.mode == DiffMode.ADDRESS
    assert len(d.changes) == 1, d.changes
    change = d.changes[0]
    assert change.kind == ChangeKind.SPLIT
    assert (change.regions_before, change.regions_after) == (1, 2)
    assert change.bytes_before - change.bytes_after == 8 * PAGE
    assert change.start <= address and change.end >= address + 16 * PAGE
    assert [(c.region_class, c.region_delta, c.byte_delta) for c in d.classes] == [
        (RegionClass.ANONYMOUS_PRIVATE, 1, -8 * PAGE)
    ]
    assert d.summary_delta("region_count") == 1
    assert d.summary_delta("committed_bytes") == -8 * PAGE


def test_protection_change_and_growth_by_address(planter):
    low = planter.map(4)
    before = reader.snapshot(planter.pid)
    planter.protect(low, 4, "r")
    after = reader.snapshot(planter.pid)

    kinds = {c.kind for c in diff(before, after).changes}
    # The 4 pages either stand alone (a protection change) or were part of a larger
    # rw- mapping that the mprotect split.
    assert kinds <= {ChangeKind.PROTECTION, ChangeKind.SPLIT}, kinds
    assert kinds


def test_two_runs_of_one_program_have_no_identity_differences(make_planter):
    first, second = make_planter(), make_planter()
    a, b = reader.snapshot(first.pid), reader.snapshot(second.pid)

    d = diff(a, b)

    assert d.mode == DiffMode.IDENTITY
    assert d.unchanged, d.classes


def plant_500_anonymous_regions(child) -> None:
    # 17 no-access pages (too large to pass for a guard), 498 pages alternating r-- and
    # rw-, 17 no-access pages: exactly 500 regions that cannot merge with one another or
    # with a neighbour.
    edge = 17
    base = child.reserve(edge + 498 + edge)
    child.protect(base + edge * PAGE, 498, "rw")
    child.alternate(base + edge * PAGE, 498)


def test_identity_diff_names_the_class_and_count_of_planted_regions(make_planter):
    first, second = make_planter(), make_planter()
    plant_500_anonymous_regions(second)
    a, b = reader.snapshot(first.pid), reader.snapshot(second.pid)

    d = diff(a, b)

    assert [(c.region_class, c.label, c.region_delta) for c in d.classes] == [
        (RegionClass.ANONYMOUS_PRIVATE, "anonymous private", 500)
    ]
    assert d.classes[0].change_count == 500
    assert d.classes[0].byte_delta == (17 + 498 + 17) * PAGE
    # The reverse direction is the same class, negative.
    assert [c.region_delta for c in diff(b, a).classes] == [-500]


def test_deleted_files_are_grouped_by_extension(planter, tmp_path):
    before = reader.snapshot(planter.pid)
    for _ in range(3):
        planter.mapfile(tmp_path / "segment.dvd", 2)
    gone = tmp_path / "segment.dvd"
    gone.unlink()
    after = reader.snapshot(planter.pid)
    d = diff(before, after, DiffMode.IDENTITY)
    assert [(c.region_class, c.label, c.region_delta) for c in d.classes] == [
        (RegionClass.DELETED_FILE, "deleted files *.dvd", 3)
    ]


def test_snapshot_files_diff_through_the_command(planter, tmp_path):
    address = planter.map(16)
    files = []
    for step in ("before", "after"):
        path = tmp_path / f"{step}.json"
        path.write_text(json.dumps(snapshot_to_document(reader.snapshot(planter.pid))))
        files.append(path)
        if step == "before":
            planter.unmap(address + 4 * PAGE, 8)

    table = _vmatlas("diff", *map(str, files))
    assert table.returncode == 0, table.stderr
    assert "split" in table.stdout
    assert "regions +1" in table.stdout

    as_json = _vmatlas("diff", "--format", "json", *map(str, files))
    doc = json.loads(as_json.stdout)
    assert doc["mode"] == "address"
    assert [c["kind"] for c in doc["changes"]] == ["split"]
    # The document is what diff_to_document makes of the same two files.
    a, b = (snapshot_from_document(json.loads(Path(f).read_text())) for f in files)
    assert doc == json.loads(json.dumps(diff_to_document(diff(a, b))))


def _vmatlas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmatlas", *args], capture_output=True, text=True, timeout=60
    )


def test_diff_survives_the_wire_and_enums_match_the_schema(planter):
    from vmatlas.v1 import analysis_pb2
    from vmatlas.wire_analysis import diff_from_pb, diff_to_pb

    address = planter.map(16)
    before = reader.snapshot(planter.pid)
    planter.unmap(address + 4 * PAGE, 8)
    planter.protect(address, 2, "r")
    d = diff(before, reader.snapshot(planter.pid))
    assert (
        diff_from_pb(analysis_pb2.DiffResponse.FromString(diff_to_pb(d).SerializeToString())) == d
    )
    for model, wire_enum, prefix in (
        (DiffMode, analysis_pb2.DiffMode, "DIFF_MODE_"),
        (RegionClass, analysis_pb2.RegionClass, "REGION_CLASS_"),
        (ChangeKind, analysis_pb2.ChangeKind, "CHANGE_KIND_"),
    ):
        assert {prefix + m.name: m.value for m in model} == dict(wire_enum.items())
