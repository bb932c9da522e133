"""A process that holds a planted number of mappings, for the benchmarks.

Run as ``python -m bench.workload REGIONS [--anonymous] [PATH]``; it prints its region
count and waits on stdin. Two layouts:

* file-backed (the default): maps a sparse file MAP_PRIVATE and splits it into
  single-page VMAs with mprotect on alternate pages, so each maps line carries a path,
  as the deleted-segment and memfd cases in the field do (~90 bytes a line);
* ``--anonymous``: one anonymous private mapping split the same way into read-only and
  no-access pages, as JVM thread stacks with their guards and allocator arenas look
  (~49 bytes a line, no path).

Either way one byte of every page is read first, so residency is non-zero, and the
splitting stops just below the host's vm.max_map_count.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import sys

PROT_NONE, PROT_READ = 0, 1


def map_count() -> int:
    with open("/proc/self/maps", "rb") as f:
        return f.read().count(b"\n")


def _split(area: mmap.mmap, pages: int, prot: int) -> None:
    """mprotect every other page of ``area`` to ``prot``, until the host's limit."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.mprotect.restype = ctypes.c_int
    page = mmap.PAGESIZE
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    for i in range(1, pages, 2):
        if libc.mprotect(base + i * page, page, prot) != 0:
            break  # at the host's limit: stop just below it


def plant(regions: int, path: str | None) -> int:
    page = mmap.PAGESIZE
    # The mapping itself counts as one; each page split off adds one.
    pages = max(1, regions - map_count())
    if path is None:
        area = mmap.mmap(-1, pages * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for i in range(pages):
            area[i * page] = 1  # a write: a read would only map the shared zero page
        # rw-p and ---p pages alternate, as a thread stack and its guard do.
        _split(area, pages, PROT_NONE)
    else:
        with open(path, "w+b") as f:
            f.truncate(pages * page)
            area = mmap.mmap(f.fileno(), pages * page, flags=mmap.MAP_PRIVATE)
        for i in range(pages):
            area[i * page]  # fault the page in: smaps then has something to count
        _split(area, pages, PROT_READ)
    plant.area = area  # type: ignore[attr-defined]  # keep the mapping alive
    return map_count()


def main() -> None:
    args = sys.argv[1:]
    anonymous = "--anonymous" in args
    args = [a for a in args if a != "--anonymous"]
    regions = int(args[0])
    if anonymous:
        print(plant(regions, None), flush=True)
        sys.stdin.read()
        return
    path = args[1] if len(args) > 1 else f"/tmp/vmatlas-bench-{os.getpid()}.dat"
    try:
        count = plant(regions, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # the mapping keeps the file; maps shows it (deleted)
    print(count, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
