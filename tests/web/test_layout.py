"""The picture's classes, gaps and Windows slivers, and the type summary, on region
tables laid out by hand (the real readers' tables are covered through the pages)."""

from __future__ import annotations

from vmatlas.layout import (
    PictureClass,
    gaps_before,
    picture_classes,
    type_summary,
    unusable_before,
)
from vmatlas.model import (
    Host,
    OperatingSystem,
    Process,
    Protection,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
    Summary,
)

R, RW, NONE = int(Protection.READ), int(Protection.READ | Protection.WRITE), 0
KIB = 1024


def _table(
    rows: list[tuple[int, int, RegionState, int, RegionType, RegionKind, str]],
) -> RegionTable:
    t = RegionTable()
    for start, end, state, prot, type_, kind, path in rows:
        t.start.append(start)
        t.end.append(end)
        t.state.append(int(state))
        t.protection.append(prot)
        t.protection_raw.append(prot)
        t.type.append(int(type_))
        t.kind.append(int(kind))
        t.path.append(path)
        t.offset.append(0)
        t.device.append(0)
        t.inode.append(0)
        t.deleted.append(False)
    return t


C, RES = RegionState.COMMITTED, RegionState.RESERVED
P, IMG, M = RegionType.PRIVATE, RegionType.IMAGE, RegionType.MAPPED
U = RegionKind.UNSPECIFIED


def test_windows_reserved_committed_and_unusable_slivers() -> None:
    # An image, then a 4 KiB private allocation ending off a 64 KiB boundary: the 60 KiB
    # after it, up to the boundary, can never be allocated.
    table = _table(
        [
            (0x10000, 0x20000, C, R, IMG, U, "C:\\app.exe"),
            (0x30000, 0x31000, C, RW, P, U, ""),
            (0x40000, 0x50000, RES, NONE, P, U, ""),
        ]
    )
    classes = picture_classes(table, OperatingSystem.WINDOWS)
    assert classes == [PictureClass.IMAGE, PictureClass.ANONYMOUS, PictureClass.RESERVED]
    gaps = gaps_before(table, 0x10000)
    assert gaps == [0, 0x10000, 0xF000]
    assert unusable_before(table, 0x10000, 64 * KIB, 4 * KIB) == [0, 0, 0xF000]
    # Linux has no granularity above the page: nothing is unusable there.
    assert unusable_before(table, 0x10000, 4 * KIB, 4 * KIB) == [0, 0, 0]
    # A snapshot taken with its free regions lists the gaps as FREE rows: the sliver is
    # the same, before the region after them, and the free rows get none themselves.
    with_free = _table(
        [
            (0x10000, 0x20000, C, R, IMG, U, "C:\\app.exe"),
            (0x20000, 0x30000, RegionState.FREE, NONE, P, U, ""),
            (0x30000, 0x31000, C, RW, P, U, ""),
            (0x31000, 0x40000, RegionState.FREE, NONE, P, U, ""),
            (0x40000, 0x50000, RES, NONE, P, U, ""),
        ]
    )
    assert gaps_before(with_free, 0x10000) == [0, 0, 0, 0, 0]
    assert unusable_before(with_free, 0x10000, 64 * KIB, 4 * KIB) == [0, 0, 0, 0, 0xF000]


def test_linux_classes_and_type_summary() -> None:
    table = _table(
        [
            (0x1000, 0x3000, C, R, IMG, U, "/usr/bin/app"),
            (0x3000, 0x4000, C, RW, P, RegionKind.HEAP, "[heap]"),
            (0x10000, 0x11000, RES, NONE, P, U, ""),
            (0x11000, 0x19000, C, RW, P, RegionKind.STACK, "[stack]"),
            (0x20000, 0x21000, C, RW, M, RegionKind.MEMFD, "/memfd:x"),
            (0x30000, 0x32000, C, RW, P, RegionKind.ANON_NAMED, "[anon:pool]"),
            (0x40000, 0x41000, C, R, M, U, "/data/file"),
            (0x50000, 0x54000, C, RW, P, U, ""),
        ]
    )
    classes = picture_classes(table, OperatingSystem.LINUX)
    assert [PictureClass(c) for c in classes] == [
        PictureClass.IMAGE,
        PictureClass.HEAP,
        PictureClass.GUARD,
        PictureClass.STACK,
        PictureClass.SHARED,
        PictureClass.NAMED,
        PictureClass.FILE,
        PictureClass.ANONYMOUS,
    ]
    snapshot = Snapshot(
        host=Host("h", "h", OperatingSystem.LINUX),
        process=Process(1),
        capture_time=0.0,
        summary=Summary(),
        regions=table,
    )
    rows = {row.picture_class: row for row in type_summary(snapshot, classes)}
    assert rows[PictureClass.ANONYMOUS].size_bytes == 0x4000
    assert rows[PictureClass.GUARD].committed_bytes == 0
    assert rows[PictureClass.IMAGE].blocks == 1 and rows[PictureClass.IMAGE].largest_bytes == 0x2000
    assert all(row.resident_bytes is None for row in rows.values())
    assert next(iter(rows)) == PictureClass.STACK  # largest first
