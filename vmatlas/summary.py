"""The summary formulas: the one place that turns regions into the figures that audits,
lists and alerts use. The agent, the server and the client all call :func:`summarize`."""

from __future__ import annotations

from itertools import compress
from operator import sub

from vmatlas.model import (
    ACCESS_MASK,
    ALLOCATION_COLUMNS,
    ROW_COLUMNS,
    Host,
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


def guard_indices(table: RegionTable) -> list[int]:
    """Indices of the guard regions: PAGE_GUARD ones, and each small no-access private
    reservation directly below committed memory (glibc and the JVM put one below every
    thread stack; malloc debuggers one beside every block)."""
    protections, states = table.protection, table.state
    starts, ends, types = table.start, table.end, table.type
    n = len(table)
    guard_protections = {p for p in set(protections) if p & GUARD}
    found = (
        [i for i, p in enumerate(protections) if p in guard_protections]
        if guard_protections
        else []
    )
    # Reservations are rare enough to look at one by one.
    for i in compress(range(n), map(RESERVED.__eq__, states)):
        protection = protections[i]
        if (
            not protection & GUARD
            and not protection & ACCESS
            and ends[i] - starts[i] <= GUARD_MAX_BYTES
            and types[i] == PRIVATE
            and i + 1 < n
            and starts[i + 1] == ends[i]
            and states[i + 1] == COMMITTED
        ):
            found.append(i)
    return sorted(found)


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
    # Column at a time (C loops over lists) rather than row at a time: a 65K-region
    # table costs a few milliseconds instead of tens.
    starts, ends, states, kinds = table.start, table.end, table.state, table.kind
    sizes = list(map(sub, ends, starts))
    live = list(map(FREE.__ne__, states))
    region_count = sum(live)
    committed = sum(compress(sizes, map(COMMITTED.__eq__, states)))
    reserved = sum(compress(sizes, map(RESERVED.__eq__, states)))
    gate_count = sum(compress(map(VSYSCALL.__eq__, kinds), live))
    single_page = sum(compress(map(page_size_bytes.__eq__, sizes), live))
    guard = len(guard_indices(table))

    gaps = free_gaps(table, range_min, range_max)
    free = sum(end - start for start, end in gaps)
    largest_free = max((end - start for start, end in gaps), default=0)
    unusable = 0
    if allocation_granularity_bytes > page_size_bytes:
        granularity = allocation_granularity_bytes
        for start, end in gaps:
            slack = -start % granularity
            if slack:
                unusable += min(end - start, slack)

    bases = table.allocation_base
    allocation_count = (
        len({base for base, state in zip(bases, states, strict=True) if state != FREE and base})
        if bases
        else 0
    )
    map_count = region_count - gate_count
    return Summary(
        region_count=region_count,
        map_count=map_count,
        max_map_count=max_map_count,
        headroom_fraction=headroom(map_count, max_map_count),
        committed_bytes=committed,
        reserved_bytes=reserved,
        free_bytes=free,
        largest_free_bytes=largest_free,
        single_page_region_count=single_page,
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
    residency: dict[str, list[int]] = {name: [] for name in table.residency}
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
