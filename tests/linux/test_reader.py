"""The Linux reader against real children with planted layouts."""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PAGE, Planter
from vmatlas import errors
from vmatlas.agents import linux
from vmatlas.agents.linux import LinuxReader, parse_maps, parse_smaps
from vmatlas.model import Protection, RegionKind, RegionState, RegionTable, RegionType

# Every test here runs over both capture paths: the C loops and the pure-Python ones.
pytestmark = pytest.mark.usefixtures("capture_path")

reader = LinuxReader()


def regions_in(table: RegionTable, start: int, end: int) -> list[tuple[int, int, str]]:
    return [(r.start, r.end, r.perms) for r in table if r.start < end and r.end > start]


def isolated_mapping(planter: Planter, pages: int) -> int:
    """A read-write mapping with a no-access page on each side, so the kernel cannot
    merge it with a neighbour."""
    base = planter.reserve(pages + 2) + PAGE
    planter.protect(base, pages, "rw")
    return base


def test_unmapping_the_middle_splits_one_region_into_two(planter: Planter) -> None:
    base = isolated_mapping(planter, 16)
    before = reader.snapshot(planter.pid)
    assert regions_in(before.regions, base, base + 16 * PAGE) == [(base, base + 16 * PAGE, "rw-p")]
    planter.unmap(base + 4 * PAGE, 8)
    after = reader.snapshot(planter.pid)
    assert regions_in(after.regions, base, base + 16 * PAGE) == [
        (base, base + 4 * PAGE, "rw-p"),
        (base + 12 * PAGE, base + 16 * PAGE, "rw-p"),
    ]
    assert after.summary.region_count == before.summary.region_count + 1
    assert after.summary.committed_bytes == before.summary.committed_bytes - 8 * PAGE


def test_mprotect_of_alternate_pages_adds_exactly_that_many_regions(planter: Planter) -> None:
    base = isolated_mapping(planter, 16)
    before = reader.snapshot(planter.pid).summary.region_count
    planter.alternate(base, 16)  # pages 0, 2, ..., 14 become read-only
    after = reader.snapshot(planter.pid)
    assert after.summary.region_count == before + 15
    inside = regions_in(after.regions, base, base + 16 * PAGE)
    assert [p for _, _, p in inside] == ["r--p", "rw-p"] * 8
    assert all(e - s == PAGE for s, e, _ in inside)


def test_prot_none_reservation_is_reserved(planter: Planter) -> None:
    base = planter.reserve(32)
    snap = reader.snapshot(planter.pid)
    (region,) = [r for r in snap.regions if r.start == base]
    assert region.state is RegionState.RESERVED
    assert region.type is RegionType.PRIVATE
    assert region.protection == Protection.NONE
    assert region.size == 32 * PAGE
    assert snap.summary.reserved_bytes >= 32 * PAGE


def test_deleted_file_is_flagged(planter: Planter, tmp_path: Path) -> None:
    path = tmp_path / "data file with spaces.bin"
    base = planter.mapfile(path, 4)
    path.unlink()
    snap = reader.snapshot(planter.pid)
    (region,) = [r for r in snap.regions if r.start == base]
    assert region.path == str(path)
    assert region.deleted
    assert region.type is RegionType.MAPPED
    assert region.protection == Protection.READ | Protection.WRITE | Protection.SHARED
    assert region.perms == "rw-s"
    assert region.inode != 0


def test_named_anonymous_region_carries_its_name(planter: Planter) -> None:
    base = planter.map(4)
    try:
        planter.name(base, 4, "vmatlas-test")
    except OSError as exc:
        pytest.skip(f"kernel without CONFIG_ANON_VMA_NAME ({exc})")
    (region,) = [r for r in reader.snapshot(planter.pid).regions if r.start == base]
    assert region.kind is RegionKind.ANON_NAMED
    assert region.path == "[anon:vmatlas-test]"
    assert region.type is RegionType.PRIVATE


def test_pseudo_regions_are_classified() -> None:
    snap = reader.snapshot(os.getpid())
    kinds = {r.path: r.kind for r in snap.regions if r.path.startswith("[")}
    assert kinds["[heap]"] is RegionKind.HEAP
    assert kinds["[stack]"] is RegionKind.STACK
    assert kinds["[vdso]"] is RegionKind.VDSO
    images = [r for r in snap.regions if r.path == snap.process.executable]
    assert images and all(r.type is RegionType.IMAGE for r in images)


def test_splitting_until_enomem_leaves_no_headroom(planter: Planter) -> None:
    planter.split_until_enomem()
    snap = reader.snapshot(planter.pid)
    limit = snap.host.max_map_count
    # The kernel refuses a split once map_count reaches the limit: the count headroom
    # uses is the kernel's, which leaves out the [vsyscall] gate page maps shows.
    assert snap.summary.map_count == limit
    assert snap.summary.headroom_fraction == 0.0
    gate = sum(1 for r in snap.regions if r.kind is RegionKind.VSYSCALL)
    assert snap.summary.region_count == limit + gate


def _independent_maps(pid: int) -> list[tuple[int, int, str, int, int, int, str]]:
    """A plain line-by-line reading of maps, sharing no code with the reader."""
    rows = []
    with open(f"/proc/{pid}/maps", "rb") as f:
        for raw in f.read().decode("utf-8", "surrogateescape").splitlines():
            parts = raw.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            path = parts[5] if len(parts) > 5 else ""
            rows.append(
                (
                    start,
                    end,
                    parts[1],
                    int(parts[2], 16),
                    os.makedev(major, minor),
                    int(parts[4]),
                    path,
                )
            )
    return rows


def test_every_field_equals_an_independent_reading(planter: Planter, tmp_path: Path) -> None:
    planter.map(8)
    planter.reserve(4)
    path = tmp_path / "gone"
    planter.mapfile(path, 2)
    path.unlink()
    expected = _independent_maps(planter.pid)
    got = [
        (
            r.start,
            r.end,
            r.perms,
            r.offset,
            r.device,
            r.inode,
            r.path + (" (deleted)" if r.deleted else ""),
        )
        for r in reader.snapshot(planter.pid).regions
    ]
    assert got == expected


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f.readlines()[1:]:
            key, value = line.split(":", 1)
            if value.strip().endswith("kB"):
                values[key] = int(value.split()[0]) * 1024
    return values


def test_residency_sums_equal_smaps_rollup(planter: Planter) -> None:
    base = isolated_mapping(planter, 64)
    planter.touch(base, 40)
    snap = reader.snapshot(planter.pid, include_residency=True)
    rollup = _rollup(planter.pid)
    residency = snap.regions.residency
    for field, key in [
        ("rss_bytes", "Rss"),
        ("pss_bytes", "Pss"),
        ("shared_clean_bytes", "Shared_Clean"),
        ("shared_dirty_bytes", "Shared_Dirty"),
        ("private_clean_bytes", "Private_Clean"),
        ("private_dirty_bytes", "Private_Dirty"),
        ("anonymous_bytes", "Anonymous"),
        ("swap_bytes", "Swap"),
        ("swap_pss_bytes", "SwapPss"),
        ("locked_bytes", "Locked"),
        ("anon_huge_pages_bytes", "AnonHugePages"),
    ]:
        # smaps_rollup sums exact Pss before rounding to kB; per-region kB round down.
        tolerance = 1024 * len(snap.regions) if field in ("pss_bytes", "swap_pss_bytes") else 0
        assert abs(sum(residency[field]) - rollup[key]) <= tolerance, field
    (touched,) = [r for r in snap.regions if r.start == base]
    assert touched.residency is not None
    assert touched.residency.rss_bytes == 40 * PAGE
    assert touched.residency.private_dirty_bytes == 40 * PAGE


def test_free_gaps_are_listed_only_when_asked(planter: Planter) -> None:
    plain = reader.snapshot(planter.pid)
    assert all(r.state is not RegionState.FREE for r in plain.regions)
    full = reader.snapshot(planter.pid, include_free=True)
    free = [r for r in full.regions if r.state is RegionState.FREE]
    assert free
    assert sum(r.size for r in free) == full.summary.free_bytes
    assert max(r.size for r in free) == full.summary.largest_free_bytes
    rows = list(full.regions)
    assert all(a.end <= b.start for a, b in itertools.pairwise(rows))
    assert rows[0].start == full.process.user_address_min


def test_vanished_pid_is_no_such_process(planter: Planter) -> None:
    pid = planter.pid
    planter.close()
    with pytest.raises(errors.NoSuchProcess) as info:
        reader.snapshot(pid)
    assert info.value.pid == pid


def test_zombie_has_an_empty_address_space() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    try:
        snap = reader.snapshot(child.pid)
        assert snap.process.address_space_empty
        assert len(snap.regions) == 0
        assert snap.summary.region_count == 0
    finally:
        child.wait()


def test_kernel_thread_has_an_empty_address_space() -> None:
    snap = reader.snapshot(2)  # kthreadd
    assert snap.process.address_space_empty
    assert snap.summary.region_count == 0


@contextmanager
def unprivileged():
    """Run the block as nobody (when root), so /proc refuses other users' maps."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        if libc.seteuid(0) != 0:
            raise OSError(ctypes.get_errno(), "cannot regain root")
        os.setegid(0)


def test_permission_refusal_is_access_denied_naming_the_pid() -> None:
    with unprivileged(), pytest.raises(errors.AccessDenied) as info:
        reader.snapshot(1)
    assert info.value.pid == 1
    assert "pid 1" in str(info.value)


def test_recorded_procfs_tree(tmp_path: Path) -> None:
    """The procfs root is a parameter: the same reader reads a recorded tree."""
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "sys" / "vm").mkdir(parents=True)
    (proc / "sys" / "vm" / "max_map_count").write_text("100\n")
    (proc / "sys" / "vm" / "mmap_min_addr").write_text("65536\n")
    (proc / "stat").write_text("btime 1700000000\n")
    (proc / "42" / "stat").write_text(
        "42 (my (odd) name) S 1 42 42 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"
    )
    (proc / "42" / "cmdline").write_bytes(b"/opt/app\0--flag\0")
    (proc / "42" / "maps").write_text(
        "00400000-00401000 r-xp 00000000 08:01 1234                       /opt/my app\n"
        "00401000-00402000 rw-p 00001000 08:01 1234                       /opt/my app\n"
        "00402000-00404000 ---p 00000000 00:00 0 \n"
        "7f0000000000-7f0000001000 rw-s 00000000 00:01 99                 /memfd:pool (deleted)\n"
        "7f0000001000-7f0000002000 rw-p 00000000 00:00 0                  [anon:jit]\n"
        "7f0000200000-7f0000400000 rw-s 00000000 00:0f 4026   /anon_hugepage (deleted)\n"
        "7f0000400000-7f0000600000 rw-p 00200000 fd:1a 77                 /dev/hugepages/buf\n"
        "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                  [stack]\n"
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0          [vsyscall]\n"
    )
    fixture = LinuxReader(procfs=str(proc), host_id="recorded")
    assert fixture.pids() == [42]
    snap = fixture.snapshot(42)
    assert snap.host.host_id == "recorded"
    assert snap.host.max_map_count == 100
    assert snap.process.name == "my (odd) name"
    assert snap.process.command_line == ("/opt/app", "--flag")
    rows = list(snap.regions)
    assert [r.path for r in rows] == [
        "/opt/my app",
        "/opt/my app",
        "",
        "/memfd:pool",
        "[anon:jit]",
        "/anon_hugepage",
        "/dev/hugepages/buf",
        "[stack]",
        "[vsyscall]",
    ]
    assert [r.type for r in rows[:3]] == [RegionType.IMAGE, RegionType.IMAGE, RegionType.PRIVATE]
    assert rows[0].device == os.makedev(8, 1)
    assert rows[1].offset == 0x1000
    assert rows[2].state is RegionState.RESERVED
    assert (
        rows[3].deleted and rows[3].kind is RegionKind.MEMFD and rows[3].type is RegionType.MAPPED
    )
    assert rows[4].kind is RegionKind.ANON_NAMED
    # Huge-page mappings: shared anonymous huge pages and a hugetlbfs file, whose
    # device numbers are hex (fd:1a is 253:26).
    assert (rows[5].deleted, rows[5].type, rows[5].perms) == (True, RegionType.MAPPED, "rw-s")
    assert rows[5].size == 2 << 20
    assert rows[6].device == os.makedev(0xFD, 0x1A)
    assert (rows[6].offset, rows[6].inode, rows[6].type) == (0x200000, 77, RegionType.MAPPED)
    assert rows[8].kind is RegionKind.VSYSCALL
    assert snap.summary.region_count == 9
    assert snap.summary.map_count == 8
    assert snap.summary.headroom_fraction == pytest.approx(0.92)
    assert snap.summary.reserved_bytes == 0x2000
    assert snap.summary.single_page_region_count == 5


def test_parsing_in_batches_changes_nothing(
    planter: Planter, monkeypatch: pytest.MonkeyPatch
) -> None:
    planter.grow(3000)
    with open(f"/proc/{planter.pid}/maps", "rb") as f:
        data = f.read()
    with open(f"/proc/{planter.pid}/smaps", "rb") as f:
        smaps = f.read()
    whole, whole_smaps = parse_maps(data), parse_smaps(smaps)
    monkeypatch.setattr(linux, "_BATCH_BYTES", 97)  # cuts inside nearly every line
    assert parse_maps(data) == whole
    assert parse_smaps(smaps) == whole_smaps
    assert len(whole) == data.count(b"\n") == len(whole_smaps)
    assert whole_smaps.residency["rss_bytes"] and len(whole_smaps.residency["rss_bytes"]) == len(
        whole
    )


def test_a_sweep_tells_of_every_process_what_its_snapshot_does() -> None:
    """The summaries of a sweep (kernel threads' worked out without reading their
    empty maps) equal the snapshots' process and summary, process by process."""
    sweeper = LinuxReader()
    compared = kernel_threads = 0
    for item in sweeper.process_summaries():
        if isinstance(item, errors.Error):
            continue
        pid = item.process.pid
        for _attempt in range(5):
            try:
                snap = sweeper.snapshot(pid)
                again = sweeper.process_summary(pid)
            except errors.Error:
                break
            if (item.process, item.summary) == (snap.process, snap.summary):
                compared += 1
                kernel_threads += item.process.address_space_empty and not snap.regions.start
                break
            item = again  # the process changed between the two reads: compare anew
        else:
            raise AssertionError(f"pid {pid}: {item} != {snap}")
    assert compared >= 3
    assert kernel_threads or not _kernel_threads_seen()


def _kernel_threads_seen() -> bool:
    """Whether this pid namespace shows any kernel thread (PF_KTHREAD in stat)."""
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[6]) & 0x00200000:
                    return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def test_a_sweep_after_an_exec_tells_the_new_program() -> None:
    """An exec keeps the pid and the start time; what a sweep remembers of a process
    between sweeps must not outlive its program."""
    child = subprocess.Popen(
        ["sh", "-c", 'read line; exec sleep "$line"'], stdin=subprocess.PIPE, text=True
    )
    sweeper = LinuxReader()

    def swept() -> tuple[str, tuple[str, ...], float]:
        (found,) = [
            item
            for item in sweeper.process_summaries()
            if not isinstance(item, errors.Error) and item.process.pid == child.pid
        ]
        return found.process.executable, found.process.command_line, found.process.start_time

    def swept_once(command_line: tuple[str, ...]) -> tuple[str, tuple[str, ...], float]:
        """The sweep's view once the child runs ``command_line`` (it starts as a copy
        of this process and execs sh, then sleep)."""
        deadline = time.monotonic() + 10
        while (found := swept())[1][: len(command_line)] != command_line:
            assert time.monotonic() < deadline, found
            time.sleep(0.02)
        return found

    try:
        _, _, started = swept_once(("sh", "-c"))
        assert child.stdin is not None
        child.stdin.write("30\n")
        child.stdin.flush()
        new_exe, _, new_started = swept_once(("sleep", "30"))
        assert new_exe == os.path.realpath(
            subprocess.check_output(["which", "sleep"], text=True).strip()
        )
        assert new_started == started
    finally:
        child.kill()
        child.wait()


def _elf(path: Path, pointer_bits: int) -> Path:
    path.write_bytes(b"\x7fELF" + bytes([1 if pointer_bits == 32 else 2]) + bytes(59))
    return path


def test_a_process_images_pointer_width_follows_its_executable(tmp_path: Path) -> None:
    """In a recorded tree: the same pid and start time, first running a 32-bit
    executable, then (after an exec) a 64-bit one, then a 32-bit one again; each sweep
    tells the width of the executable it runs."""
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "stat").write_text("btime 1700000000\n")
    (proc / "7" / "stat").write_text(
        "7 (app) S 1 7 7 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"
    )
    (proc / "7" / "maps").write_text("00400000-00401000 r-xp 00000000 08:01 1234 /opt/app\n")
    programs = {bits: _elf(tmp_path / f"app{bits}", bits) for bits in (32, 64)}
    recorded = LinuxReader(procfs=str(proc))
    for bits in (32, 64, 32):
        exe = proc / "7" / "exe"
        exe.unlink(missing_ok=True)
        exe.symlink_to(programs[bits])
        (item,) = recorded.process_summaries()
        assert not isinstance(item, errors.Error)
        assert (item.process.executable, item.process.pointer_bits) == (str(programs[bits]), bits)
        assert (item.process.user_address_max == 0xFFFFE000) == (bits == 32)
