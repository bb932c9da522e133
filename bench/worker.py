"""The vmatlas side of the benchmarks, in a process of its own.

``python -m bench.worker`` serves one operation per JSON line on stdin and answers one
JSON line on stdout: a resident process, as an agent or a server is, whose imports are
paid once and whose heap keeps what it frees (vmatlas.heap). Each operation times only
the work it names (time.perf_counter). ``python -m bench.worker client`` is a program
calling the client library instead: its heap as any program has it.

``python -m bench.worker peak-snapshot PID`` and ``peak-psutil PID`` run one capture in
a fresh process and print its peak RSS (VmHWM), for the memory comparison.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil


def _rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that across
    exec from the process that forked it, so a child of a large parent (the benchmark
    harness, tens of MiB by then) reports the parent's size, whatever it did itself."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _fresh_caches() -> None:
    from vmatlas.agents import linux

    linux.classify_path.cache_clear()
    linux.parse_rest.cache_clear()


def op_snapshot(pid: int, residency: bool = False) -> dict[str, Any]:
    """Capture and encode: what the agent does for a snapshot, serialization included
    (as it sends one to the server: a header and the region table's bytes)."""
    from vmatlas import wire
    from vmatlas.agents.linux import LinuxReader

    reader = LinuxReader()
    _fresh_caches()
    start, cpu = time.perf_counter(), time.process_time()
    snapshot = reader.snapshot(pid, include_residency=residency)
    data = wire.join_snapshot(*wire.snapshot_parts(snapshot))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "wire_bytes": len(data),
        "gzip_bytes": len(gzip.compress(data, 6)),
        "regions": len(snapshot.regions),
    }


def op_sweep() -> dict[str, Any]:
    """Every process's summary, encoded as the agent pushes them."""
    from vmatlas import errors, wire
    from vmatlas.agents.linux import LinuxReader
    from vmatlas.v1 import snapshot_pb2

    reader = LinuxReader()
    _fresh_caches()
    start, cpu = time.perf_counter(), time.process_time()
    count = 0
    size = 0
    for item in reader.process_summaries():
        if isinstance(item, errors.Error):
            continue
        size += len(
            wire.process_summary_to_pb(item, snapshot_pb2.ProcessSummary()).SerializeToString()
        )
        count += 1
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "processes": count,
        "wire_bytes": size,
    }


def op_psutil(pid: int) -> dict[str, Any]:
    start = time.perf_counter()
    maps = psutil.Process(pid).memory_maps(grouped=False)
    return {"seconds": time.perf_counter() - start, "regions": len(maps)}


_clients: dict[str, Any] = {}


def op_client_snapshot(target: str, pid: int) -> dict[str, Any]:
    """A fresh snapshot through gRPC on loopback, decoded by the client library."""
    from vmatlas.client import Client

    client = _clients.get(target)
    if client is None:
        client = _clients[target] = Client(target)
        client.host()  # connect outside the timing
    start = time.perf_counter()
    snapshot = client.snapshot(pid)
    return {"seconds": time.perf_counter() - start, "regions": len(snapshot.regions)}


def op_fleet_snapshot(target: str, host: str, pid: int) -> dict[str, Any]:
    """A fresh snapshot through the server: client -> server -> agent stream -> back,
    decoded by the client library (the server files it in its store on the way)."""
    from vmatlas.client import Client

    client = _clients.get(target)
    if client is None:
        client = _clients[target] = Client(target)
        client.hosts()  # connect outside the timing
    start = time.perf_counter()
    snapshot = client.snapshot(pid, host=host, fresh=True)
    return {"seconds": time.perf_counter() - start, "regions": len(snapshot.regions)}


_audit_inputs: dict[tuple[int, int, int], Any] = {}


def _fleet_inputs(hosts: int, processes: int, history_points: int) -> Any:
    """``hosts`` hosts of ``processes`` processes each, as plain model objects, and
    ``history_points`` earlier map counts for every process."""
    import dataclasses

    from bench.fleet import _host, summary_item

    now = time.time()
    host_list = []
    by_host = {}
    history = {}
    for h in range(hosts):
        host = _host(f"host-{h:04d}")
        # A few groups with different limits, so recommendations have work.
        host = dataclasses.replace(host, max_map_count=(65530, 262144, 1048576)[h % 3])
        host_list.append(host)
        items = [summary_item(1000 + i * 7 + h, now) for i in range(processes)]
        by_host[host.host_id] = items
        if history_points:
            for item in items:
                count = item.summary.map_count
                history[(host.host_id, item.process.pid)] = [
                    (now - 3600.0 * (k + 1), count - 50 * (k + 1)) for k in range(history_points)
                ]
    return host_list, by_host, history


def op_audit(hosts: int, processes: int, history_points: int = 0) -> dict[str, Any]:
    """The pure fleet audit over synthetic plain-model inputs (built once, untimed)."""
    from vmatlas import audit

    key = (hosts, processes, history_points)
    if key not in _audit_inputs:
        _audit_inputs[key] = _fleet_inputs(*key)
    host_list, by_host, history = _audit_inputs[key]
    start = time.perf_counter()
    report = audit.audit(host_list, by_host, history or None)
    return {
        "seconds": time.perf_counter() - start,
        "findings": len(report.findings),
        "processes": report.process_count,
    }


_diff_inputs: dict[int, Any] = {}


def _changed_copy(snapshot: Any) -> Any:
    """The same process a moment later: every 1,000th region gone, every 100th with
    other permissions; each column in the container the capture gave it (a list or a
    typed array), as a second capture would."""
    import dataclasses
    from array import array

    from vmatlas.model import RegionTable

    def like(column: Any, values: list[Any]) -> Any:
        return array(column.typecode, values) if isinstance(column, array) else values

    table = snapshot.regions
    keep = [i for i in range(len(table)) if i % 1000 != 999]
    columns = {
        name: like(column, [column[i] for i in keep] if column else [])
        for name in RegionTable.__dataclass_fields__
        if name != "residency"
        for column in (getattr(table, name),)
    }
    changed = [p ^ 2 if k % 100 == 50 else p for k, p in enumerate(columns["protection"])]
    columns["protection"] = like(table.protection, changed)
    columns["protection_raw"] = like(table.protection_raw, changed)
    return dataclasses.replace(snapshot, regions=RegionTable(**columns))


def op_diff(pid: int) -> dict[str, Any]:
    from vmatlas import diff
    from vmatlas.agents.linux import LinuxReader

    if pid not in _diff_inputs:
        before = LinuxReader().snapshot(pid)
        _diff_inputs[pid] = (before, _changed_copy(before))
    before, after = _diff_inputs[pid]
    start = time.perf_counter()
    diff.diff(before, after)
    return {"seconds": time.perf_counter() - start}


OPS: dict[str, Callable[..., dict[str, Any]]] = {
    "snapshot": op_snapshot,
    "sweep": op_sweep,
    "psutil": op_psutil,
    "client_snapshot": op_client_snapshot,
    "diff": op_diff,
    "fleet_snapshot": op_fleet_snapshot,
    "audit": op_audit,
}


def serve(resident: bool = True) -> None:
    import vmatlas.agents.linux
    import vmatlas.wire  # noqa: F401
    from vmatlas import heap, native

    if resident:
        heap.keep_freed()

    print(json.dumps({"ready": True, "path": native.describe()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = OPS[request.pop("op")](**request)
        except Exception as exc:  # reported, not raised: the harness prints n/a
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


def peak(kind: str, pid: int) -> None:
    """One capture in this fresh process; prints its peak and its RSS before the work."""
    if kind == "peak-snapshot":
        from vmatlas import wire
        from vmatlas.agents.linux import LinuxReader

        before = _rss_bytes()
        data = wire.join_snapshot(*wire.snapshot_parts(LinuxReader().snapshot(pid)))
        assert data
    else:
        before = _rss_bytes()
        assert psutil.Process(pid).memory_maps(grouped=False)
    peak_bytes = _peak_rss_bytes()
    print(json.dumps({"peak_bytes": peak_bytes, "before_bytes": before}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        peak(sys.argv[1], int(sys.argv[2]))
    else:
        serve(resident=sys.argv[1:] != ["client"])
