"""The snapshot exports (``vmatlas snapshot --format table|json|csv``) written from the
columns are byte for byte what the first, row-by-row exporter wrote
(:mod:`tests.export_reference`): on real planted processes, with and without
residency and free regions, through the real command, and on generated tables
with every odd value a path or a protection can hold. The Windows view has the same
checks in ``tests/windows/test_export.py``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import export_reference as reference
from tests.conftest import Planter, spaced_table
from vmatlas.agents.linux import LinuxReader
from vmatlas.cli.snapshot import write_table
from vmatlas.export import (
    BATCH_ROWS,
    CSV_COLUMNS,
    snapshot_from_document,
    snapshot_to_csv,
    snapshot_to_document,
    write_csv,
    write_json,
)
from vmatlas.model import (
    RESIDENCY_FIELDS,
    Host,
    OperatingSystem,
    Process,
    RegionTable,
    Residency,
    Snapshot,
    SnapshotView,
    Summary,
)

VMATLAS = [sys.executable, "-m", "vmatlas"]
FORMATS: dict[str, tuple[Callable[[Snapshot], str], Callable[[Snapshot, io.StringIO], None]]] = {
    "json": (reference.snapshot_to_json, write_json),
    "csv": (reference.snapshot_to_csv, write_csv),
    "table": (reference.snapshot_to_table, write_table),
}


def written(write: Callable[[Snapshot, io.StringIO], None], snapshot: Snapshot) -> str:
    out = io.StringIO()
    write(snapshot, out)
    return out.getvalue()


def assert_same_exports(snapshot: Snapshot) -> None:
    for name, (old, new) in FORMATS.items():
        expected, got = old(snapshot), written(new, snapshot)
        if got != expected:  # the first differing line says more than two megabytes
            pairs = zip(expected.splitlines(), got.splitlines(), strict=False)
            line = next(((e, g) for e, g in pairs if e != g), (len(expected), len(got)))
            raise AssertionError(f"{name} differs: {line!r}")


def test_the_documented_columns_and_residency_fields_are_unchanged() -> None:
    assert CSV_COLUMNS == reference.CSV_COLUMNS
    assert tuple(Residency.__dataclass_fields__) == RESIDENCY_FIELDS


@pytest.fixture
def planted(planter: Planter, tmp_path: Path) -> Iterator[Planter]:
    """A child holding every kind of region a Linux snapshot shows: anonymous ones of
    each protection, reserved ones, split ones, shared file mappings whose names need
    quoting in CSV and escaping in JSON, a deleted file, touched pages (residency)."""
    base = planter.map(12)
    planter.touch(base, 12)
    planter.alternate(base, 12)
    planter.protect(planter.map(3), 3, "rwx")
    planter.protect(planter.map(2), 2, "")
    planter.reserve(5)
    for name in ('comma, "quoted" name', "back\\slash and é", "trailing space "):
        planter.touch(planter.mapfile(tmp_path / name, 2), 2)
    gone = tmp_path / "deleted,later"
    planter.mapfile(gone, 3)
    gone.unlink()
    yield planter


@pytest.mark.parametrize("residency", [False, True], ids=["maps", "smaps"])
@pytest.mark.parametrize("free", [False, True], ids=["mapped", "free"])
def test_planted_process_exports_unchanged(planted: Planter, residency: bool, free: bool) -> None:
    snapshot = LinuxReader(host_id="export").snapshot(
        planted.pid, include_free=free, include_residency=residency
    )
    paths = set(snapshot.regions.path)
    assert any(p.endswith('comma, "quoted" name') for p in paths)
    assert any(snapshot.regions.deleted)
    assert bool(snapshot.regions.residency) == residency
    assert_same_exports(snapshot)


def test_this_interpreter_exports_unchanged() -> None:
    """A real process with hundreds of image mappings (shared libraries)."""
    snapshot = LinuxReader().snapshot(os.getpid(), include_residency=True, include_free=True)
    assert len(snapshot.regions) > 50
    assert_same_exports(snapshot)


@pytest.mark.parametrize("options", [[], ["--residency", "--free"]], ids=["plain", "all"])
def test_command_json_is_the_reference_document(
    planted: Planter, tmp_path: Path, options: list[str]
) -> None:
    """What the command writes reads back (as `vmatlas diff` reads it) into a snapshot
    the reference exporter writes to the very same bytes; CSV and table alike."""
    outputs = {}
    for fmt in ("json", "csv", "table"):
        out = tmp_path / f"snapshot.{fmt}"
        argv = ["snapshot", "--local", str(planted.pid), *options, "--format", fmt, "-o", str(out)]
        result = subprocess.run(
            [*VMATLAS, *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        outputs[fmt] = out.read_text(encoding="utf-8", errors="surrogateescape")
    snapshot = snapshot_from_document(json.loads(outputs["json"]))
    assert reference.snapshot_to_json(snapshot) == outputs["json"]
    if options:  # residency (PSS) moves with every other process mapping the same files
        return
    # The csv and table runs took snapshots of their own; the child has not changed
    # since, so their regions agree with the JSON run's.
    csv_lines = outputs["csv"].splitlines()
    assert csv_lines == reference.snapshot_to_csv(snapshot).splitlines()
    table_lines = outputs["table"].splitlines()
    assert table_lines[0].split()[0] == f"{planted.pid}:"
    assert table_lines[1:] == reference.snapshot_to_table(snapshot).splitlines()[1:]


# -- generated tables ------------------------------------------------------------------

# Paths as readers produce them: text, with surrogate escapes for undecodable bytes,
# and the characters JSON escapes, CSV quotes and the table strips.
PATHS = st.one_of(
    st.sampled_from(["", "[heap]", "/usr/lib/libc.so.6", "a,b", 'q"q', "x\\y", "tail  "]),
    st.text(
        st.characters(codec="utf-8") | st.sampled_from('\udcff\n\r\t,"'),
        max_size=12,
    ),
)

DEVICES = st.tuples(st.integers(0, 4095), st.integers(0, 2**20 - 1))


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n = draw(st.integers(0, 30))
    windows = draw(st.booleans())
    residency = draw(st.booleans())
    starts = sorted(draw(st.sets(st.integers(0, 2**47), min_size=n, max_size=n)))
    ends = [s + draw(st.integers(1, 2**40)) for s in starts]
    table = RegionTable(
        start=starts,
        end=ends,
        state=draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)),
        type=draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
        protection=draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)),
        protection_raw=draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)),
        kind=draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)),
        path=draw(st.lists(PATHS, min_size=n, max_size=n)),
        offset=draw(st.lists(st.integers(0, 2**44), min_size=n, max_size=n)),
        device=[
            os.makedev(major, minor)
            for major, minor in draw(st.lists(DEVICES, min_size=n, max_size=n))
        ],
        inode=draw(st.lists(st.integers(0, 2**63), min_size=n, max_size=n)),
        deleted=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
    )
    if windows and n:
        table.allocation_base = draw(
            st.lists(st.sampled_from([0, 0x10000, 2**63 + 4096]), min_size=n, max_size=n)
        )
        table.allocation_protection = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
        table.allocation_protection_raw = draw(
            st.lists(st.sampled_from([0, 1, 4, 0x40]), min_size=n, max_size=n)
        )
    if residency:
        table.residency = {
            name: draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))
            for name in RESIDENCY_FIELDS
        }
    return Snapshot(
        host=Host(host_id=draw(st.text(max_size=5)), hostname="h", os=OperatingSystem.LINUX),
        process=Process(
            pid=draw(st.integers(1, 2**22)),
            name=draw(st.text(max_size=5)),
            command_line=tuple(draw(st.lists(st.text(max_size=4), max_size=3))),
        ),
        capture_time=draw(st.floats(0, 2e9)),
        summary=Summary(region_count=n, headroom_fraction=draw(st.floats(0, 1))),
        regions=table,
        view=SnapshotView.WINDOWS if windows else SnapshotView.NATIVE,
        includes_free=draw(st.booleans()),
        includes_residency=residency,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_generated_tables_export_unchanged(snapshot: Snapshot) -> None:
    assert_same_exports(snapshot)
    assert snapshot_to_csv(snapshot) == reference.snapshot_to_csv(snapshot)
    assert snapshot_to_document(snapshot) == reference.snapshot_to_document(snapshot)


def test_output_is_written_in_batches_not_whole() -> None:
    n = 3 * BATCH_ROWS
    table = spaced_table(n)
    snapshot = Snapshot(
        host=Host("h", "h", OperatingSystem.LINUX),
        process=Process(pid=1),
        capture_time=0.0,
        summary=Summary(region_count=n),
        regions=table,
    )

    class Writes(io.StringIO):
        sizes: list[int] = []

        def write(self, text: str) -> int:
            self.sizes.append(len(text))
            return super().write(text)

    for name, (old, new) in FORMATS.items():
        out = Writes()
        out.sizes = []
        new(snapshot, out)
        assert out.getvalue() == old(snapshot), name
        assert max(out.sizes) < len(out.getvalue()) / 2, (name, max(out.sizes))
