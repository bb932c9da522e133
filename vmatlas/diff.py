"""Diffing two snapshots: the one module the server, the client and the CLI all call.

Two modes:

* **By address** (one process over time): regions added, removed, grown, shrunk,
  split, merged, and changed in state or protection.
* **By identity** (two processes or two hosts, whose addresses differ under ASLR):
  regions are matched by what they are (path and offset, type, protection, pseudo
  kind) and compared as multisets.

Both group what changed by class (deleted files, anonymous private, stacks and guard
pages, named anonymous and memfd regions, each library or file), so the first line a
user reads is the kind of thing "+3,308 regions: /memfd:doublemapper (deleted)".

Everything works on the :class:`~vmatlas.model.RegionTable` columns (lists or typed
arrays): the merge-walk that finds the regions without an identical twin runs in C
where the extension is built (in Python it skips unchanged runs with slice
comparisons), identities are counted with :class:`collections.Counter`, and per-region
Python work (the class, the guard rule) happens only for what changed.
"""

from __future__ import annotations

import enum
import gc
import operator
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress, repeat

from vmatlas import native
from vmatlas.model import (
    Protection,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
    Summary,
    perms_text,
    same_column,
)
from vmatlas.summary import GUARD, PRIVATE, guard_indices, is_guard

IMAGE = int(RegionType.IMAGE)
SHARED = int(Protection.SHARED)
STACK = int(RegionKind.STACK)
MEMFD = int(RegionKind.MEMFD)
ANON_NAMED = int(RegionKind.ANON_NAMED)
SYSV_SHM = int(RegionKind.SYSV_SHM)

# Summary figures a diff reports the change of, in the order it prints them.
SUMMARY_FIELDS = (
    "region_count",
    "map_count",
    "committed_bytes",
    "reserved_bytes",
    "free_bytes",
    "largest_free_bytes",
    "unusable_bytes",
    "single_page_region_count",
    "guard_region_count",
)


class DiffMode(enum.IntEnum):
    UNSPECIFIED = 0
    ADDRESS = 1
    IDENTITY = 2


class RegionClass(enum.IntEnum):
    """The broad class a region belongs to; a diff groups by class and label."""

    UNSPECIFIED = 0
    DELETED_FILE = 1
    MEMFD = 2
    ANON_NAMED = 3
    STACK_GUARD = 4
    ANONYMOUS_PRIVATE = 5
    ANONYMOUS_SHARED = 6
    IMAGE = 7
    FILE = 8
    SHARED_MEMORY = 9
    PSEUDO = 10


class ChangeKind(enum.IntEnum):
    UNSPECIFIED = 0
    ADDED = 1
    REMOVED = 2
    GROWN = 3
    SHRUNK = 4
    SPLIT = 5
    MERGED = 6
    PROTECTION = 7
    STATE = 8
    # Same range, different backing (path, offset, inode, type or kind).
    REPLACED = 9
    # Several regions became several others.
    REARRANGED = 10


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """Which snapshot a side of a diff is."""

    host_id: str
    pid: int
    name: str
    capture_time: float
    process_start_time: float = 0.0


@dataclass(frozen=True, slots=True)
class ClassDelta:
    """One class's change. By address the counts cover the regions that took part in a
    change; by identity they are the class's totals in each snapshot."""

    region_class: RegionClass
    label: str
    regions_before: int
    regions_after: int
    bytes_before: int
    bytes_after: int
    # By address: how many changes touched this class; by identity: how many regions
    # matched nothing on the other side (both sides together).
    change_count: int

    @property
    def region_delta(self) -> int:
        return self.regions_after - self.regions_before

    @property
    def byte_delta(self) -> int:
        return self.bytes_after - self.bytes_before


@dataclass(frozen=True, slots=True)
class Change:
    """One change by address: a run of adjacent regions that differ (several added or
    removed regions of one class in a row are one change)."""

    kind: ChangeKind
    start: int
    end: int
    regions_before: int
    regions_after: int
    bytes_before: int
    bytes_after: int
    region_class: RegionClass
    label: str
    # e.g. "rw-p -> r--p"; empty when there is nothing more to say.
    detail: str = ""

    @property
    def region_delta(self) -> int:
        return self.regions_after - self.regions_before

    @property
    def byte_delta(self) -> int:
        return self.bytes_after - self.bytes_before


@dataclass(frozen=True, slots=True)
class Diff:
    mode: DiffMode
    before: SnapshotRef
    after: SnapshotRef
    summary_before: Summary
    summary_after: Summary
    # Biggest first: by |region delta|, then |byte delta|.
    classes: tuple[ClassDelta, ...]
    # By address only; biggest first.
    changes: tuple[Change, ...] = ()

    def summary_delta(self, name: str) -> int:
        return int(getattr(self.summary_after, name)) - int(getattr(self.summary_before, name))

    @property
    def unchanged(self) -> bool:
        return not self.classes and not self.changes


# -- classes ------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def classify(
    path: str, deleted: bool, kind: int, type_: int, protection: int, stack_guard: bool
) -> tuple[RegionClass, str]:
    """``(class, label)`` of a region; the label names the group a diff line reports."""
    if stack_guard or kind == STACK:
        return RegionClass.STACK_GUARD, "stacks and guard pages"
    if kind == MEMFD:
        return RegionClass.MEMFD, path + (" (deleted)" if deleted else "")
    if kind == ANON_NAMED:
        return RegionClass.ANON_NAMED, path
    if kind == SYSV_SHM:
        return RegionClass.SHARED_MEMORY, path
    if path.startswith("["):
        return RegionClass.PSEUDO, path
    if deleted and path:
        # Thousands of distinct deleted files (Lucene's .dvd segments) are one problem:
        # group them by extension, not by name.
        ext = os.path.splitext(path)[1]
        return RegionClass.DELETED_FILE, f"deleted files *{ext}" if ext else "deleted files"
    if path:
        return (RegionClass.IMAGE if type_ == IMAGE else RegionClass.FILE), path
    if protection & SHARED or type_ != PRIVATE:
        return RegionClass.ANONYMOUS_SHARED, "anonymous shared"
    return RegionClass.ANONYMOUS_PRIVATE, "anonymous private"


def stack_guard_indices(table: RegionTable) -> set[int]:
    """Guard regions (summary.guard_indices) and the anonymous stack or block each
    no-access one guards, which sits directly above it."""
    found = set(guard_indices(table))
    protection, paths = table.protection, table.path
    for i in list(found):
        if not protection[i] & GUARD and not paths[i + 1]:
            found.add(i + 1)
    return found


def is_stack_guard(table: RegionTable, i: int) -> bool:
    """Whether region ``i`` is in :func:`stack_guard_indices`, asked of it alone."""
    return is_guard(table, i) or (
        i > 0
        and not table.path[i]
        and not table.protection[i - 1] & GUARD
        and is_guard(table, i - 1)
    )


def _class_of(table: RegionTable, i: int, stack_guard: set[int]) -> tuple[RegionClass, str]:
    return classify(
        table.path[i],
        table.deleted[i],
        table.kind[i],
        table.type[i],
        table.protection[i],
        i in stack_guard,
    )


# -- entry points -------------------------------------------------------------------------


def ref_of(snapshot: Snapshot) -> SnapshotRef:
    p = snapshot.process
    return SnapshotRef(snapshot.host.host_id, p.pid, p.name, snapshot.capture_time, p.start_time)


def same_process(a: Snapshot, b: Snapshot) -> bool:
    """Whether two snapshots are of one process (same host, pid and start time)."""
    return (
        a.host.host_id == b.host.host_id
        and a.process.pid == b.process.pid
        and abs(a.process.start_time - b.process.start_time) < 1.0
    )


def diff(before: Snapshot, after: Snapshot, mode: DiffMode = DiffMode.UNSPECIFIED) -> Diff:
    """What changed from ``before`` to ``after``. ``mode`` UNSPECIFIED picks ADDRESS for
    two snapshots of one process and IDENTITY otherwise."""
    if mode == DiffMode.UNSPECIFIED:
        mode = DiffMode.ADDRESS if same_process(before, after) else DiffMode.IDENTITY
    a, b = before.regions.without_free(), after.regions.without_free()
    with _no_gc():
        if mode == DiffMode.ADDRESS:
            classes, changes = diff_by_address(a, b)
        else:
            classes, changes = diff_by_identity(a, b), ()
    return Diff(
        mode=mode,
        before=ref_of(before),
        after=ref_of(after),
        summary_before=before.summary,
        summary_after=after.summary,
        classes=classes,
        changes=changes,
    )


@contextmanager
def _no_gc() -> Iterator[None]:
    # A diff makes one short-lived tuple per region and frees them all together; the
    # cyclic collector would otherwise rescan them several times over (4x the cost).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _biggest_first(item: ClassDelta | Change) -> tuple[int, int, str]:
    return (-abs(item.region_delta), -abs(item.byte_delta), item.label)


# -- by address ---------------------------------------------------------------------------

# The columns that must all agree for a region to count as unchanged.
_SAME_COLUMNS = ("start", "end", "state", "protection", "type", "path", "offset", "inode")


def _unchanged_run(
    a_cols: Sequence[Sequence[object]],
    b_cols: Sequence[Sequence[object]],
    i: int,
    j: int,
    limit: int,
) -> int:
    """How many rows from ``a[i]`` and ``b[j]`` on are equal in every column (at most
    ``limit``): gallop with slice comparisons, then bisect the last step."""

    def equal(lo: int, hi: int) -> bool:
        return all(
            ac[i + lo : i + hi] == bc[j + lo : j + hi]
            for ac, bc in zip(a_cols, b_cols, strict=True)
        )

    good, step = 0, 1
    while good < limit:
        hi = min(good + step, limit)
        if equal(good, hi):
            good = hi
            step *= 2
            continue
        # The first mismatch lies in [good, hi): bisect it.
        lo = good
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if equal(lo, mid):
                lo = mid
            else:
                hi = mid
        return lo if not equal(lo, lo + 1) else lo + 1
    return good


def changed_rows(a: RegionTable, b: RegionTable) -> tuple[list[int], list[int]]:
    """Indices of the regions of ``a`` and of ``b`` that have no identical region (same
    range and attributes) on the other side: a merge-walk on the sorted starts, in C
    where the extension is built, else in Python skipping unchanged runs with slice
    comparisons."""
    a_cols = tuple(getattr(a, name) for name in _SAME_COLUMNS)
    b_cols = tuple(getattr(b, name) for name in _SAME_COLUMNS)
    accel = native.accel
    if accel is not None:
        found = accel.differing(a_cols, b_cols)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return _changed_rows_pure(a_cols, b_cols)


def _changed_rows_pure(
    a_cols: Sequence[Sequence[object]], b_cols: Sequence[Sequence[object]]
) -> tuple[list[int], list[int]]:
    """:func:`changed_rows` in Python."""
    # A list's slice never equals an array's: compare values where the two sides hold
    # a column in different representations.
    same_kind = [type(ac) is type(bc) for ac, bc in zip(a_cols, b_cols, strict=True)]
    a_cols = [ac if same else list(ac) for ac, same in zip(a_cols, same_kind, strict=True)]
    b_cols = [bc if same else list(bc) for bc, same in zip(b_cols, same_kind, strict=True)]
    a_start, b_start = a_cols[0], b_cols[0]
    na, nb = len(a_start), len(b_start)
    a_only: list[int] = []
    b_only: list[int] = []
    i = j = 0
    while i < na and j < nb:
        sa, sb = a_start[i], b_start[j]
        if sa == sb:
            run = _unchanged_run(a_cols, b_cols, i, j, min(na - i, nb - j))
            if run:
                i += run
                j += run
            else:
                a_only.append(i)
                b_only.append(j)
                i += 1
                j += 1
        elif sa < sb:  # type: ignore[operator]
            a_only.append(i)
            i += 1
        else:
            b_only.append(j)
            j += 1
    a_only.extend(range(i, na))
    b_only.extend(range(j, nb))
    return a_only, b_only


def diff_by_address(
    a: RegionTable, b: RegionTable
) -> tuple[tuple[ClassDelta, ...], tuple[Change, ...]]:
    """Changes from ``a`` to ``b`` (one process at two times), grouped by class."""
    a_only, b_only = changed_rows(a, b)
    if not a_only and not b_only:
        return (), ()
    # Only the changed regions are classified: ask the guard rule of those alone.
    a_guard = {i for i in a_only if is_stack_guard(a, i)}
    b_guard = {j for j in b_only if is_stack_guard(b, j)}
    changes: list[Change] = []
    for cluster_a, cluster_b in _clusters(a, b, a_only, b_only):
        change = _describe(a, b, cluster_a, cluster_b, a_guard, b_guard)
        last = changes[-1] if changes else None
        if (
            last is not None
            and change.kind in (ChangeKind.ADDED, ChangeKind.REMOVED)
            and last.kind == change.kind
            and last.label == change.label
        ):
            changes[-1] = Change(
                kind=last.kind,
                start=last.start,
                end=change.end,
                regions_before=last.regions_before + change.regions_before,
                regions_after=last.regions_after + change.regions_after,
                bytes_before=last.bytes_before + change.bytes_before,
                bytes_after=last.bytes_after + change.bytes_after,
                region_class=last.region_class,
                label=last.label,
            )
        else:
            changes.append(change)
    totals: dict[tuple[RegionClass, str], list[int]] = {}
    for c in changes:
        t = totals.setdefault((c.region_class, c.label), [0, 0, 0, 0, 0])
        t[0] += c.regions_before
        t[1] += c.regions_after
        t[2] += c.bytes_before
        t[3] += c.bytes_after
        t[4] += 1
    classes = [ClassDelta(cls, label, *t) for (cls, label), t in totals.items()]
    return tuple(sorted(classes, key=_biggest_first)), tuple(sorted(changes, key=_biggest_first))


def _clusters(
    a: RegionTable, b: RegionTable, a_only: list[int], b_only: list[int]
) -> list[tuple[list[int], list[int]]]:
    """The changed regions of both sides in address order, grouped where they overlap."""
    events = sorted(
        [(a.start[i], a.end[i], 0, i) for i in a_only]
        + [(b.start[j], b.end[j], 1, j) for j in b_only]
    )
    clusters: list[tuple[list[int], list[int]]] = []
    reach = -1
    for start, end, side, index in events:
        if start >= reach:
            clusters.append(([], []))
        clusters[-1][side].append(index)
        reach = max(reach, end)
    return clusters


def _describe(
    a: RegionTable,
    b: RegionTable,
    ia: list[int],
    ib: list[int],
    a_guard: set[int],
    b_guard: set[int],
) -> Change:
    bytes_a = sum(a.end[i] - a.start[i] for i in ia)
    bytes_b = sum(b.end[j] - b.start[j] for j in ib)
    start = min([a.start[i] for i in ia] + [b.start[j] for j in ib])
    end = max([a.end[i] for i in ia] + [b.end[j] for j in ib])
    region_class, label = _class_of(b, ib[0], b_guard) if ib else _class_of(a, ia[0], a_guard)
    detail = ""
    if not ia:
        kind = ChangeKind.ADDED
    elif not ib:
        kind = ChangeKind.REMOVED
    elif len(ia) == 1 and len(ib) == 1:
        i, j = ia[0], ib[0]
        prot_a, prot_b = a.protection[i], b.protection[j]
        if prot_a != prot_b:
            detail = f"{perms_text(prot_a)} -> {perms_text(prot_b)}"
        if (a.start[i], a.end[i]) != (b.start[j], b.end[j]):
            kind = (
                ChangeKind.GROWN
                if bytes_b > bytes_a
                else ChangeKind.SHRUNK
                if bytes_b < bytes_a
                else ChangeKind.REPLACED
            )
        elif prot_a != prot_b:
            kind = ChangeKind.PROTECTION
        elif a.state[i] != b.state[j]:
            kind = ChangeKind.STATE
            detail = (
                f"{RegionState(a.state[i]).name.lower()} -> {RegionState(b.state[j]).name.lower()}"
            )
        else:
            kind = ChangeKind.REPLACED
    elif len(ia) == 1:
        kind = ChangeKind.SPLIT
    elif len(ib) == 1:
        kind = ChangeKind.MERGED
    else:
        kind = ChangeKind.REARRANGED
    if kind in (ChangeKind.SPLIT, ChangeKind.MERGED, ChangeKind.REARRANGED):
        perms_a = sorted({perms_text(a.protection[i]) for i in ia})
        perms_b = sorted({perms_text(b.protection[j]) for j in ib})
        if perms_a != perms_b:
            detail = f"{','.join(perms_a)} -> {','.join(perms_b)}"
    return Change(
        kind=kind,
        start=start,
        end=end,
        regions_before=len(ia),
        regions_after=len(ib),
        bytes_before=bytes_a,
        bytes_after=bytes_b,
        region_class=region_class,
        label=label,
        detail=detail,
    )


# -- by identity --------------------------------------------------------------------------

# What a region is, independent of where it is (offset is 0 for anonymous memory).
_IDENTITY_COLUMNS = ("path", "deleted", "kind", "type", "protection", "offset")
# Above this many classes that differ, one Python pass beats one C pass per class.
_PER_CLASS_PASSES = 8


def _identity_keys(table: RegionTable, stack_guard: set[int]) -> list[tuple[object, ...]]:
    keys: list[tuple[object, ...]] = list(
        zip(*(getattr(table, c) for c in _IDENTITY_COLUMNS), strict=True)
    )
    for i in stack_guard:
        keys[i] = (*keys[i], True)
    return keys


def _class_of_key(key: tuple[object, ...]) -> tuple[RegionClass, str]:
    path, deleted, kind, type_, protection = key[:5]
    return classify(
        str(path),
        bool(deleted),
        int(kind),  # type: ignore[call-overload]
        int(type_),  # type: ignore[call-overload]
        int(protection),  # type: ignore[call-overload]
        len(key) > len(_IDENTITY_COLUMNS),
    )


def _bytes_by_class(
    keys: list[tuple[object, ...]],
    table: RegionTable,
    key_class: dict[tuple[object, ...], tuple[RegionClass, str]],
) -> dict[tuple[RegionClass, str], int]:
    """Total size of the regions of each class named in ``key_class``."""
    classes = list(dict.fromkeys(key_class.values()))
    number = {cls: k for k, cls in enumerate(classes)}
    # One hashing pass over the keys; after it only small ints are compared.
    ids = list(map({key: number[cls] for key, cls in key_class.items()}.get, keys))
    sizes = list(map(operator.sub, table.end, table.start))
    if len(classes) <= _PER_CLASS_PASSES:
        return {
            cls: sum(compress(sizes, map(operator.eq, ids, repeat(k))))
            for k, cls in enumerate(classes)
        }
    totals = [0] * len(classes)
    for k, size in zip(ids, sizes, strict=True):
        if k is not None:
            totals[k] += size
    return dict(zip(classes, totals, strict=True))


def diff_by_identity(a: RegionTable, b: RegionTable) -> tuple[ClassDelta, ...]:
    """What ``b`` has that ``a`` lacks and the reverse, matching regions by identity;
    one line per class that differs, with that class's totals on each side."""
    guard_a, guard_b = stack_guard_indices(a), stack_guard_indices(b)
    if guard_a == guard_b and all(
        same_column(getattr(a, c), getattr(b, c)) for c in _IDENTITY_COLUMNS
    ):  # the same regions in the same order: nothing to count
        return ()
    keys_a, keys_b = _identity_keys(a, guard_a), _identity_keys(b, guard_b)
    count_a, count_b = Counter(keys_a), Counter(keys_b)
    if count_a == count_b:
        return ()
    unmatched: dict[tuple[RegionClass, str], int] = {}
    for key in count_a.keys() ^ count_b.keys() | {
        k for k, n in count_a.items() if count_b.get(k, n) != n
    }:
        cls = _class_of_key(key)
        unmatched[cls] = unmatched.get(cls, 0) + abs(count_b.get(key, 0) - count_a.get(key, 0))
    counts: dict[tuple[RegionClass, str], list[int]] = {cls: [0, 0] for cls in unmatched}
    bytes_by_side = []
    for side, keys, counter, table in ((0, keys_a, count_a, a), (1, keys_b, count_b, b)):
        key_class = {}
        for key, n in counter.items():
            cls = _class_of_key(key)
            if cls in counts:
                counts[cls][side] += n
                key_class[key] = cls
        bytes_by_side.append(_bytes_by_class(keys, table, key_class))
    classes = [
        ClassDelta(
            region_class=cls[0],
            label=cls[1],
            regions_before=n[0],
            regions_after=n[1],
            bytes_before=bytes_by_side[0].get(cls, 0),
            bytes_after=bytes_by_side[1].get(cls, 0),
            change_count=unmatched[cls],
        )
        for cls, n in counts.items()
    ]
    return tuple(sorted(classes, key=_biggest_first))


# -- documents ----------------------------------------------------------------------------

FORMAT = "vmatlas.diff/v1"


def _ref_document(ref: SnapshotRef) -> dict[str, object]:
    return {
        "host_id": ref.host_id,
        "pid": ref.pid,
        "name": ref.name,
        "capture_time": ref.capture_time,
        "process_start_time": ref.process_start_time,
    }


def diff_to_document(d: Diff) -> dict[str, object]:
    """The documented JSON form of a diff (``vmatlas diff --format json``)."""
    return {
        "format": FORMAT,
        "mode": d.mode.name.lower(),
        "before": _ref_document(d.before),
        "after": _ref_document(d.after),
        "summary": {
            name: {
                "before": getattr(d.summary_before, name),
                "after": getattr(d.summary_after, name),
                "delta": d.summary_delta(name),
            }
            for name in SUMMARY_FIELDS
        },
        "classes": [
            {
                "class": c.region_class.name.lower(),
                "label": c.label,
                "region_delta": c.region_delta,
                "byte_delta": c.byte_delta,
                "regions_before": c.regions_before,
                "regions_after": c.regions_after,
                "bytes_before": c.bytes_before,
                "bytes_after": c.bytes_after,
                "change_count": c.change_count,
            }
            for c in d.classes
        ],
        "changes": [
            {
                "kind": c.kind.name.lower(),
                "start": hex(c.start),
                "end": hex(c.end),
                "class": c.region_class.name.lower(),
                "label": c.label,
                "region_delta": c.region_delta,
                "byte_delta": c.byte_delta,
                "regions_before": c.regions_before,
                "regions_after": c.regions_after,
                "bytes_before": c.bytes_before,
                "bytes_after": c.bytes_after,
                "detail": c.detail,
            }
            for c in d.changes
        ],
    }
