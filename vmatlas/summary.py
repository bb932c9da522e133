"""The summary formulas: the one place that turns regions into the figures that audits,
lists and alerts use. The agent, the server and the client all call :func:`summarize`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import compress
from operator import sub
from types import ModuleType
from typing import Any

from vmatlas import native
from vmatlas.model import (
    ACCESS_MASK,
    ALLOCATION_COLUMNS,
    ROW_COLUMNS,
    Host,
    IntColumn,
    Process,
    Protection,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Summary,
)

FREE = int(RegionState.FREE)
RESERVED = int(RegionState.RESERVED)
COMMITTED = int(RegionState.COMMITTED)
VSYSCALL = int(RegionKind.VSYSCALL)
PRIVATE = int(RegionType.PRIVATE)
GUARD = int(Protection.GUARD)
ACCESS = int(ACCESS_MASK)

# A no-access private reservation this small, directly below committed memory, is a
# guard (glibc and the JVM put one below every thread stack).
GUARD_MAX_BYTES = 64 * 1024


def headroom(map_count: int, max_map_count: int) -> float:
    """Fraction of ``max_map_count`` left; 1.0 where the OS has no limit."""
    if max_map_count <= 0:
        return 1.0
    return max(0.0, 1.0 - map_count / max_map_count)


def free_gaps(table: RegionTable, range_min: int, range_max: int) -> list[tuple[int, int]]:
    """The unmapped ``(start, end)`` gaps of ``[range_min, range_max)``."""
    accel = native.accel
    if accel is not None:
        found = accel.free_gaps(table.start, table.end, table.state, FREE, [range_min, range_max])
        if found is not None:
            return found  # type: ignore[no-any-return]
    gaps: list[tuple[int, int]] = []
    cursor = range_min
    for start, end, state in zip(table.start, table.end, table.state, strict=True):
        if state == FREE or end <= cursor:
            continue
        if start >= range_max:
            break
        if start > cursor:
            gaps.append((cursor, start))
        cursor = end
    if cursor < range_max:
        gaps.append((cursor, range_max))
    return gaps


def unusable_bytes(gap_start: int, gap_end: int, granularity: int) -> int:
    """Of the free gap ``[gap_start, gap_end)``, the bytes below the first
    allocation-granularity boundary at or after its start: no allocation can begin
    there (Windows allocates in 64 KiB granules), so they can never be used."""
    return min(gap_end - gap_start, -gap_start % granularity)


def _totals(gaps: list[tuple[int, int]]) -> tuple[int, int]:
    """(bytes of all the gaps, bytes of the largest)."""
    sizes = [end - start for start, end in gaps]
    return sum(sizes), max(sizes, default=0)


def _free_totals(table: RegionTable, range_min: int, range_max: int) -> tuple[int, int]:
    """:func:`_totals` of :func:`free_gaps`, natively without listing the gaps."""
    accel = native.accel
    if accel is not None:
        found = accel.free_gaps(
            table.start, table.end, table.state, FREE, [range_min, range_max], True
        )
        if found is not None:
            return found  # type: ignore[no-any-return]
    return _totals(free_gaps(table, range_min, range_max))


def _guard_by_itself(state: int, type_: int, protection: int) -> bool:
    """The guard rule's test of a region's own attributes: a private reservation with
    no access and no PAGE_GUARD (that one is a guard whatever its neighbours)."""
    return (
        state == RESERVED
        and type_ == PRIVATE
        and not protection & GUARD
        and not protection & ACCESS
    )


# ... and of its neighbour: the next region starts at its end and is in one of these.
GUARD_NEXT_STATES = frozenset({COMMITTED})


def _guard_before(state: int, type_: int, protection: int, next_state: int | None) -> bool:
    """The guard rule for a region no longer than GUARD_MAX_BYTES, given the state of
    the next region where that starts at its end (None where it does not)."""
    return next_state in GUARD_NEXT_STATES and _guard_by_itself(state, type_, protection)


def guard_indices(table: RegionTable) -> list[int]:
    """Indices of the guard regions: PAGE_GUARD ones, and each small no-access private
    reservation directly below committed memory (glibc and the JVM put one below every
    thread stack; malloc debuggers one beside every block)."""
    found = _page_guards(table.protection)
    return sorted(found + _reservation_guards(table))


def is_guard(table: RegionTable, i: int) -> bool:
    """Whether region ``i`` is one that :func:`guard_indices` lists, asked of it alone
    (for a few regions, where listing every guard would cost more)."""
    return bool(table.protection[i] & GUARD) or _is_reservation_guard(
        table.start, table.end, table.state, table.type, table.protection, i
    )


def guard_count(table: RegionTable, keys: set[tuple[int, int, int]] | None = None) -> int:
    """``len(guard_indices(table))``, without listing them; ``keys``, where the caller
    has them, are the distinct (state, type, protection) of the table's regions."""
    # The two kinds do not overlap: a reservation guard has no PAGE_GUARD bit.
    protections = None if keys is None else {key[2] for key in keys}
    return _page_guard_count(table.protection, protections) + _reservation_guard_count(table, keys)


def _guard_protections(protections: Sequence[int], distinct: set[int] | None) -> set[int]:
    """The protections with the PAGE_GUARD bit among ``protections`` (``distinct``:
    the distinct ones, where the caller has them)."""
    return {p for p in (set(protections) if distinct is None else distinct) if p & GUARD}


def _page_guards(protections: Sequence[int]) -> list[int]:
    guard_protections = _guard_protections(protections, None)
    if not guard_protections:
        return []
    return [i for i, p in enumerate(protections) if p in guard_protections]


def _page_guard_count(protections: Sequence[int], distinct: set[int] | None) -> int:
    """``len(_page_guards(protections))``, without listing them."""
    guard_protections = _guard_protections(protections, distinct)
    if not guard_protections:
        return 0
    return sum(map(guard_protections.__contains__, protections))


def _reservation_guards(table: RegionTable) -> list[int]:
    """Indices of the small reservations the guard rule names, directly below memory."""
    accel = native.accel
    if accel is not None:
        walk = _guard_walk(accel, table, None)
        if walk is None:
            return []
        found = accel.followed_by(*walk)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return list(_reservation_guards_pure(table))


def _reservation_guard_count(table: RegionTable, keys: set[tuple[int, int, int]] | None) -> int:
    """``len(_reservation_guards(table))``, without listing them; ``keys`` as for
    :func:`guard_count`."""
    accel = native.accel
    if accel is not None:
        walk = _guard_walk(accel, table, keys)
        if walk is None:
            return 0
        found = accel.followed_by(*walk, True)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return sum(1 for _ in _reservation_guards_pure(table))


def _guard_walk(
    accel: ModuleType, table: RegionTable, keys: set[tuple[int, int, int]] | None
) -> tuple[Any, ...] | None:
    """The arguments of the native walk (``followed_by``) for the reservation guards,
    or None where no region can be one: nothing to walk. The rule is decided here for
    each distinct (state, type, protection) (``keys``, else tallied); the loop over the
    regions, with their sizes and neighbours, runs in C."""
    if keys is None:
        tallied = accel.tally(table.start, table.end, 0, table.state, table.type, table.protection)
        # Where the tally leaves the columns to Python, so does the choice of keys.
        keys = (
            set(tallied)
            if tallied is not None
            else set(zip(table.state, table.type, table.protection, strict=True))
        )
    own = frozenset(key for key in keys if _guard_by_itself(*key))
    if not own:
        return None
    return (
        table.start, table.end, table.state, table.type, table.protection,
        own, GUARD_MAX_BYTES, GUARD_NEXT_STATES,
    )  # fmt: skip


def _is_reservation_guard(
    starts: Sequence[int],
    ends: Sequence[int],
    states: Sequence[int],
    types: Sequence[int],
    protections: Sequence[int],
    i: int,
) -> bool:
    """The guard rule for reservations: region ``i`` is a small no-access private
    reservation and the next region, committed, starts at its end."""
    if ends[i] - starts[i] > GUARD_MAX_BYTES:
        return False
    adjacent = i + 1 < len(starts) and starts[i + 1] == ends[i]
    return _guard_before(states[i], types[i], protections[i], states[i + 1] if adjacent else None)


def _reservation_guards_pure(table: RegionTable) -> Iterator[int]:
    """:func:`_reservation_guards` in Python."""
    columns = table.start, table.end, table.state, table.type, table.protection
    # Reservations are rare enough to look at one by one.
    return (
        i
        for i in compress(range(len(table)), map(RESERVED.__eq__, table.state))
        if _is_reservation_guard(*columns, i)
    )


def _tally(table: RegionTable, page_size_bytes: int) -> dict[tuple[int, ...], list[int]]:
    """[count, bytes, single pages] per distinct (state, kind, type, protection)."""
    starts, ends = table.start, table.end
    key_columns = (table.state, table.kind, table.type, table.protection)
    accel = native.accel
    tallied = accel.tally(starts, ends, page_size_bytes, *key_columns) if accel else None
    if tallied is not None:
        return tallied  # type: ignore[no-any-return]
    # Counted in C (Counter over key tuples); only the byte sums take a Python step a
    # region: a 65K-region table costs a few milliseconds instead of tens.
    keys = list(zip(*key_columns, strict=True))
    sizes = list(map(sub, ends, starts))
    counts = Counter(keys)
    singles = Counter(compress(keys, map(page_size_bytes.__eq__, sizes)))
    sums: dict[tuple[int, ...], int] = dict.fromkeys(counts, 0)
    for key, size in zip(keys, sizes, strict=True):
        sums[key] += size
    return {key: [count, sums[key], singles[key]] for key, count in counts.items()}


def _counts(tallied: dict[tuple[int, ...], list[int]]) -> dict[str, int]:
    """The summary's counts from the tally: the live (not FREE) regions, the bytes
    committed and reserved, the vsyscall gates among the live regions, and the live
    regions one page long. One pass with plain sums: a small process's tally has a
    few dozen keys, and this runs for every process of a sweep."""
    region_count = committed = reserved = gate_count = single_page = 0
    for (state, kind, _, _), (count, size, single) in tallied.items():
        if state == FREE:
            continue
        region_count += count
        single_page += single
        if state == COMMITTED:
            committed += size
        elif state == RESERVED:
            reserved += size
        if kind == VSYSCALL:
            gate_count += count
    return {
        "region_count": region_count,
        "committed": committed,
        "reserved": reserved,
        "gate_count": gate_count,
        "single_page": single_page,
    }


def _walk(
    table: RegionTable, page_size_bytes: int, range_min: int, range_max: int
) -> tuple[dict[tuple[int, ...], list[int]], int, tuple[int, int]] | None:
    """The tally, the reservation guard count and the free totals of a table of typed
    columns (the native scan's), in one native pass; None where that pass does not
    take the table (the figures are then worked out one by one)."""
    accel = native.accel
    if accel is None:
        return None
    walked = accel.walk(
        table.start, table.end, page_size_bytes, GUARD_MAX_BYTES, FREE, [range_min, range_max],
        table.state, table.kind, table.type, table.protection,
    )  # fmt: skip
    if walked is None:
        return None
    by_next, free_totals = walked
    # Each key comes split by what follows its regions: the rule is applied here, per
    # split key, and the splits added up.
    tallied: dict[tuple[int, ...], list[int]] = {}
    guards = 0
    for (state, kind, type_, protection, next_state), counts in by_next.items():
        if _guard_before(state, type_, protection, next_state):
            guards += counts[0]
        sums = tallied.setdefault((state, kind, type_, protection), [0, 0, 0])
        for k, value in enumerate(counts):
            sums[k] += value
    return tallied, guards, free_totals


def summarize(
    table: RegionTable,
    *,
    range_min: int,
    range_max: int,
    page_size_bytes: int,
    allocation_granularity_bytes: int,
    max_map_count: int,
) -> Summary:
    """Figures for one address space whose user range is ``[range_min, range_max)``."""
    walked = _walk(table, page_size_bytes, range_min, range_max)
    if walked is None:
        tallied = _tally(table, page_size_bytes)
        guard = guard_count(
            table, {(state, type_, protection) for state, _, type_, protection in tallied}
        )
        free_totals = None
    else:
        tallied, reservation_guards, free_totals = walked
        guard = reservation_guards + _page_guard_count(
            table.protection, {protection for *_, protection in tallied}
        )
    counts = _counts(tallied)

    unusable = 0
    if allocation_granularity_bytes <= page_size_bytes:
        free, largest_free = free_totals or _free_totals(table, range_min, range_max)
    else:
        gaps = free_gaps(table, range_min, range_max)
        free, largest_free = _totals(gaps)
        unusable = sum(
            unusable_bytes(start, end, allocation_granularity_bytes) for start, end in gaps
        )

    bases = table.allocation_base
    allocation_count = (
        len({b for b, state in zip(bases, table.state, strict=True) if state != FREE and b})
        if bases
        else 0
    )
    region_count = counts["region_count"]
    map_count = region_count - counts["gate_count"]
    return Summary(
        region_count=region_count,
        map_count=map_count,
        max_map_count=max_map_count,
        headroom_fraction=headroom(map_count, max_map_count),
        committed_bytes=counts["committed"],
        reserved_bytes=counts["reserved"],
        free_bytes=free,
        largest_free_bytes=largest_free,
        single_page_region_count=counts["single_page"],
        guard_region_count=guard,
        allocation_count=allocation_count,
        unusable_bytes=unusable,
    )


def summarize_process(table: RegionTable, host: Host, process: Process) -> Summary:
    """:func:`summarize` over ``process``'s own user range (a 32-bit process has 4 GiB
    at most) with ``host``'s page size, granularity and map limit."""
    return summarize(
        table,
        range_min=process.user_address_min or host.user_address_min,
        range_max=process.user_address_max or host.user_address_max,
        page_size_bytes=host.page_size_bytes,
        allocation_granularity_bytes=host.allocation_granularity_bytes,
        max_map_count=host.max_map_count,
    )


def insert_free(table: RegionTable, range_min: int, range_max: int) -> RegionTable:
    """A copy of ``table`` with the free gaps of ``[range_min, range_max)`` listed as
    FREE regions, in address order."""
    gaps = free_gaps(table, range_min, range_max)
    if not gaps:
        return table
    out = RegionTable()
    columns = [*ROW_COLUMNS, *(name for name in ALLOCATION_COLUMNS if getattr(table, name))]
    defaults = {"path": "", "deleted": False}
    residency: dict[str, IntColumn] = {name: [] for name in table.residency}
    g = 0
    n = len(table)
    for i in range(n + 1):
        limit = table.start[i] if i < n else range_max + 1
        while g < len(gaps) and gaps[g][0] < limit:
            start, end = gaps[g]
            for name in columns:
                getattr(out, name).append(defaults.get(name, 0))
            out.start[-1], out.end[-1], out.state[-1] = start, end, FREE
            for column in residency.values():
                column.append(0)
            g += 1
        if i < n:
            for name in columns:
                getattr(out, name).append(getattr(table, name)[i])
            for key, column in residency.items():
                column.append(table.residency[key][i])
    out.residency = residency
    return out
