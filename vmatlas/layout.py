"""What the address-space picture and the type summary show: each region's picture
class, the free gap before it, and per-class totals in the manner of VMMap.

Computed over the region columns once, here, for every front end (the web view's API
sends these columns; a terminal view could print the same type summary).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from itertools import compress

from vmatlas.model import (
    ACCESS_MASK,
    OperatingSystem,
    Protection,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
)
from vmatlas.summary import guard_indices, unusable_bytes


class PictureClass(enum.IntEnum):
    """A region's colour in the picture (the web view's legend follows this order)."""

    IMAGE = 0
    FILE = 1
    ANONYMOUS = 2
    HEAP = 3
    STACK = 4
    # Guard pages and no-access (PROT_NONE) reservations.
    GUARD = 5
    # Shared memory: System V segments, memfd, shared anonymous.
    SHARED = 6
    # Anonymous regions named with PR_SET_VMA_ANON_NAME.
    NAMED = 7
    # [vdso], [vvar], [vsyscall] and other kernel-provided mappings.
    PSEUDO = 8
    # Windows: reserved but not committed.
    RESERVED = 9
    # Windows: free space below the next 64 KiB boundary after an allocation, which
    # no allocation can ever use.
    UNUSABLE = 10
    FREE = 11

    @property
    def keyword(self) -> str:
        return self.name.lower()


_FREE = int(RegionState.FREE)
_RESERVED = int(RegionState.RESERVED)
_COMMITTED = int(RegionState.COMMITTED)
_ACCESS = int(ACCESS_MASK)
_GUARD = int(Protection.GUARD)
_SHARED = int(Protection.SHARED)
_PRIVATE = int(RegionType.PRIVATE)
_IMAGE = int(RegionType.IMAGE)
_PSEUDO_KINDS = {
    int(RegionKind.VDSO),
    int(RegionKind.VVAR),
    int(RegionKind.VSYSCALL),
    int(RegionKind.OTHER_PSEUDO),
}
_KIND_CLASS = {
    int(RegionKind.HEAP): PictureClass.HEAP,
    int(RegionKind.STACK): PictureClass.STACK,
    int(RegionKind.ANON_NAMED): PictureClass.NAMED,
    int(RegionKind.MEMFD): PictureClass.SHARED,
    int(RegionKind.SYSV_SHM): PictureClass.SHARED,
    **dict.fromkeys(_PSEUDO_KINDS, PictureClass.PSEUDO),
}


def _class_of(
    state: int, protection: int, type_: int, kind: int, has_path: bool, windows: bool
) -> PictureClass:
    if state == _FREE:
        return PictureClass.FREE
    if protection & _GUARD:
        return PictureClass.GUARD
    if state == _RESERVED and windows:
        return PictureClass.RESERVED
    by_kind = _KIND_CLASS.get(kind)
    if by_kind is not None:
        return by_kind
    if not protection & _ACCESS:
        return PictureClass.GUARD
    if has_path:
        return PictureClass.IMAGE if type_ == _IMAGE else PictureClass.FILE
    if protection & _SHARED or type_ != _PRIVATE:
        return PictureClass.SHARED
    return PictureClass.ANONYMOUS


def picture_classes(table: RegionTable, os: OperatingSystem) -> list[int]:
    """Each region's :class:`PictureClass`. Distinct column tuples are few (thousands
    of regions share a handful), so each is classified once."""
    windows = os == OperatingSystem.WINDOWS
    cache: dict[tuple[int, int, int, int, bool], int] = {}
    out: list[int] = []
    append = out.append
    for key in zip(
        table.state,
        table.protection,
        table.type,
        table.kind,
        map(bool, table.path),
        strict=True,
    ):
        value = cache.get(key)
        if value is None:
            value = cache[key] = int(_class_of(*key, windows))
        append(value)
    # Small no-access reservations below committed memory are guards whatever else.
    for i in guard_indices(table):
        out[i] = int(PictureClass.GUARD)
    return out


def gaps_before(table: RegionTable, range_min: int) -> list[int]:
    """The free bytes between each region and the one before it (the first one's from
    ``range_min``); FREE rows listed in the table count as regions here."""
    out: list[int] = []
    previous_end = range_min
    for start, end in zip(table.start, table.end, strict=True):
        out.append(max(0, start - previous_end))
        previous_end = max(previous_end, end)
    return out


def unusable_before(table: RegionTable, range_min: int, granularity: int, page: int) -> list[int]:
    """For each region, the unusable bytes of the free space before it (from the end of
    the region in use before it, or ``range_min``; FREE rows listed in the table are
    that free space and get 0 themselves): the summary's rule, a region at a time.
    All zero unless the granularity exceeds the page (as on Windows)."""
    if granularity <= page:
        return [0] * len(table)
    out: list[int] = []
    previous_end = range_min
    for start, end, state in zip(table.start, table.end, table.state, strict=True):
        if state == _FREE:
            out.append(0)
            continue
        out.append(unusable_bytes(previous_end, start, granularity) if start > previous_end else 0)
        previous_end = max(previous_end, end)
    return out


@dataclass(frozen=True, slots=True)
class TypeSummaryRow:
    """One class of a process's regions, as VMMap's type summary shows it."""

    picture_class: PictureClass
    size_bytes: int
    committed_bytes: int
    # None when residency was not read.
    resident_bytes: int | None
    blocks: int
    largest_bytes: int


def type_summary(snapshot: Snapshot, classes: list[int]) -> list[TypeSummaryRow]:
    """Per class: total size, committed, resident (where known), blocks, largest;
    largest total size first. Free regions listed in the table are left out."""
    table = snapshot.regions
    sizes = [end - start for start, end in zip(table.start, table.end, strict=True)]
    committed_flags = [state == _COMMITTED for state in table.state]
    rss = table.residency.get("rss_bytes") if snapshot.includes_residency else None
    rows: list[TypeSummaryRow] = []
    for picture_class in PictureClass:
        if picture_class in (PictureClass.FREE, PictureClass.UNUSABLE):
            continue
        members = [c == picture_class for c in classes]
        class_sizes = list(compress(sizes, members))
        if not class_sizes:
            continue
        committed = sum(compress(class_sizes, compress(committed_flags, members)))
        resident = sum(compress(rss, members)) if rss else None
        rows.append(
            TypeSummaryRow(
                picture_class,
                size_bytes=sum(class_sizes),
                committed_bytes=committed,
                resident_bytes=resident,
                blocks=len(class_sizes),
                largest_bytes=max(class_sizes),
            )
        )
    rows.sort(key=lambda row: (-row.size_bytes, row.picture_class))
    return rows
