"""A process that holds a planted number of mappings, for the benchmarks.

Run as ``python -m bench.workload REGIONS [PATH]``: maps a sparse file MAP_PRIVATE,
splits it into single-page VMAs with mprotect on alternate pages until the process
holds REGIONS mappings (or the host's vm.max_map_count stops it), reads one byte of
every page so residency is non-zero, prints its region count and waits on stdin.

A file-backed mapping makes each maps line carry a path, as the deleted-segment and
memfd cases in the field do (~90 bytes a line, like FIELD.md's measurements).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import sys

PROT_READ, PROT_WRITE = 1, 2


def map_count() -> int:
    with open("/proc/self/maps", "rb") as f:
        return f.read().count(b"\n")


def plant(regions: int, path: str) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.mprotect.restype = ctypes.c_int
    page = mmap.PAGESIZE
    # The mapping itself counts as one; each page split off adds one.
    pages = max(1, regions - map_count())
    with open(path, "w+b") as f:
        f.truncate(pages * page)
        area = mmap.mmap(f.fileno(), pages * page, flags=mmap.MAP_PRIVATE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    for i in range(pages):
        area[i * page]  # fault the page in: smaps then has something to count
    for i in range(1, pages, 2):
        if libc.mprotect(base + i * page, page, PROT_READ) != 0:
            break  # at the host's limit: stop just below it
    plant.area = area  # type: ignore[attr-defined]  # keep the mapping alive
    return map_count()


def main() -> None:
    regions = int(sys.argv[1])
    path = sys.argv[2] if len(sys.argv) > 2 else f"/tmp/vmatlas-bench-{os.getpid()}.dat"
    try:
        count = plant(regions, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # the mapping keeps the file; maps shows it (deleted)
    print(count, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
