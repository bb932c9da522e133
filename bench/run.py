"""Run every benchmark side by side and print one table.

Method (printed under the table too):

* Each row pairs a vmatlas figure with a reference measured in the same run. Rounds are
  interleaved (reference, vmatlas, then vmatlas, reference, ...) so that the noise of a
  shared 2-core machine falls on both; the table gives the median ratio of the rounds
  and its min-max spread, with the median absolute times beside.
* References are external commands run as subprocesses and timed as whole processes
  (fork, exec, read, exit: ``cat`` itself costs ~1 ms of that).
* vmatlas is timed inside a resident worker process (bench.worker), as the agent and
  the server are resident: imports are paid once, before timing; caches that would
  favour a repeat (the path classifier and the maps-line facts) are cleared before each round.
* Peak memory is the VmHWM of a fresh process doing one capture, vmatlas and psutil
  each in their own.

No row is a pass/fail test: the command always exits 0 once the table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MIB = 1024 * 1024


# -- workloads ---------------------------------------------------------------------------


class Workload:
    """A child process holding about ``regions`` mappings (bench.workload)."""

    def __init__(self, regions: int, *, anonymous: bool = False):
        self.anonymous = anonymous
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.workload", str(regions), *(["--anonymous"] if anonymous else [])],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.regions = int(self.proc.stdout.readline())
        self.pid = self.proc.pid
        self.maps_path = f"/proc/{self.pid}/maps"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:  # a loaded machine; its work is done anyway
            self.proc.kill()
            self.proc.wait()


# The capture paths compared: the C extension's loops and the pure-Python ones, chosen
# in each vmatlas process by VMATLAS_NO_NATIVE.
PATHS = ("native", "pure")


def path_env(path: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VMATLAS_NO_NATIVE", None)
    if path == "pure":
        env["VMATLAS_NO_NATIVE"] = "1"
    return env


class Worker:
    """The resident vmatlas process (bench.worker) on one capture path; with ``client``,
    a program calling the client library (its heap left as any program has it)."""

    def __init__(self, path: str = "native", *, client: bool = False) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.worker", *(["client"] if client else [])],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=path_env(path),
        )
        ready = json.loads(self._readline())
        assert ready["ready"]
        self.path_description: str = ready["path"]

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker exited with {self.proc.wait()}")
        return line

    def __call__(self, op: str, **args: object) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, float] = json.loads(self._readline())
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:  # a loaded machine; its work is done anyway
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def vmatlas_process(
    command: str, *args: str, path: str = "native", env: Mapping[str, str | None] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``vmatlas COMMAND --listen 127.0.0.1:0 ARGS``: (process, target). stderr goes to
    a temporary file (a busy server logs a lot; a pipe nobody reads would fill).
    ``env`` sets variables over the path's environment (None unsets one)."""
    environment = path_env(path)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    errlog = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed in the finally below
    proc = subprocess.Popen(
        [PYTHON, "-m", "vmatlas", command, "--listen", "127.0.0.1:0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=errlog,
        text=True,
        env=environment,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if not match:
            proc.wait(10)
            errlog.seek(0)
            last = (line or errlog.read()).strip().splitlines() or ["no output"]
            raise RuntimeError(f"vmatlas {command} did not start: {last[-1][:80]}")
        yield proc, match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errlog.close()


def agent_process(
    *args: str, path: str = "native", env: Mapping[str, str | None] | None = None
) -> contextlib.AbstractContextManager[tuple[subprocess.Popen[str], str]]:
    """``vmatlas agent`` on a loopback port: (process, target)."""
    return vmatlas_process("agent", *args, path=path, env=env)


@contextlib.contextmanager
def server_process(*args: str, path: str = "native") -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``vmatlas server`` on a loopback port with its store in a temporary directory,
    keeping everything; the per-client rate limit raised where the server has one (the
    benchmarks are one client making many calls)."""
    extra = list(args)
    if "--rate-limit" in _server_help():
        extra += ["--rate-limit", "1000000", "--rate-burst", "1000000"]
    if "--http" in _server_help():
        extra += ["--http", "off"]
    with (
        tempfile.TemporaryDirectory(prefix="vmatlas-bench-server-") as data,
        vmatlas_process(
            "server", "--data-dir", data, "--retain", "0", *extra, path=path
        ) as started,
    ):
        yield started


@functools.cache
def _server_help() -> str:
    return subprocess.run(
        [PYTHON, "-m", "vmatlas", "server", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def wait_online(target: str, host_id: str, seconds: float = 20.0) -> None:
    """Until the server lists ``host_id`` online."""
    from vmatlas.client import Client

    deadline = time.monotonic() + seconds
    with Client(target, timeout=5.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if any(h.host_id == host_id and h.online for h in client.hosts()):
                    return
            time.sleep(0.1)
    raise RuntimeError(f"host {host_id} did not come online at the server")


def time_command(argv: list[str], shell: bool = False, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(
        argv if not shell else argv[0],
        shell=shell,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - start


def cpu_command(argv: list[str]) -> float:
    """CPU seconds (user + system) of one run of ``argv``: its own work, whatever else
    the machine is doing."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


# -- rows --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    target: str = ""
    reference: str = ""
    # Filled by a measurement: per-round figures, or a note when there is none.
    values: list[float] = field(default_factory=list)  # vmatlas, per round
    refs: list[float] = field(default_factory=list)  # reference, per round
    unit: str = "s"  # "s", "bytes", "MiB", "%", "/s"
    goal: Callable[[float], bool] | None = None  # applied to the median ratio (or value)
    ratio: bool = True
    note: str = ""
    # The same benchmark on the pure-Python path (None where the path does not matter).
    pure: Row | None = None

    def ratios(self) -> list[float]:
        return [v / r for v, r in zip(self.values, self.refs, strict=False) if r]


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:,.1f} ms" if value < 10 else f"{value:,.2f} s"
    if unit == "bytes":
        return f"{value / 1024:,.0f} KiB" if value >= 1024 else f"{value:.0f} B"
    if unit == "MiB":
        return f"{value / MIB:,.1f} MiB"
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:g}"


def spread(values: list[float], unit: str, scale: Callable[[float], str]) -> str:
    med = statistics.median(values)
    if len(values) < 2 or min(values) == max(values):
        return scale(med)
    return f"{scale(med)} [{scale(min(values))}-{scale(max(values))}]"


def _share(x: float) -> str:
    return f"{x:.1%}"


def _times(x: float) -> str:
    return f"{x:.2f}x"


def _cells(row: Row) -> tuple[str, str, str]:
    """(reference, figure, met) of one path's row."""
    if row.note and not row.values:
        return row.reference, row.note, ""
    ref = (
        f"{fmt(statistics.median(row.refs), row.unit)} ({row.reference})"
        if row.refs
        else row.reference
    )
    vm = fmt(statistics.median(row.values), row.unit)
    if row.ratio and row.refs:
        rs = row.ratios()
        figure = statistics.median(rs)
        cell = f"{spread(rs, '', _share if row.unit in ('bytes', 'MiB') else _times)} ({vm})"
    else:
        figure = statistics.median(row.values)
        cell = vm
    if row.note:
        cell += f" ({row.note})"
    met = "" if row.goal is None else ("yes" if row.goal(figure) else "no")
    return ref, cell, met


def render(rows: list[Row]) -> str:
    header = (
        "benchmark",
        "target",
        "reference",
        "native [min-max]",
        "met",
        "pure [min-max]",
        "met",
    )
    lines = []
    for row in rows:
        ref, native_cell, native_met = _cells(row)
        pure_cell, pure_met = ("same", "") if row.pure is None else _cells(row.pure)[1:]
        lines.append((row.name, row.target, ref, native_cell, native_met, pure_cell, pure_met))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        out.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        )
    return "\n".join(out)


def interleaved(
    rounds: int, reference: Callable[[], float], candidate: Callable[[], float], row: Row
) -> Row:
    for i in range(rounds):
        if i % 2 == 0:
            row.refs.append(reference())
            row.values.append(candidate())
        else:
            row.values.append(candidate())
            row.refs.append(reference())
    return row


def interleaved_paths(
    rounds: int,
    reference: Callable[[], float],
    candidates: dict[str, Callable[[], float]],
    row: Row,
) -> Row:
    """Like :func:`interleaved`, each round timing the reference and every path (in
    turn first); the native figures go to ``row``, the pure ones to ``row.pure``."""
    rows = {"native": row, "pure": row.pure or replace(row, values=[], refs=[])}
    row.pure = rows["pure"]
    order = [name for name in PATHS if name in candidates]
    for i in range(rounds):
        turn = order[i % len(order) :] + order[: i % len(order)]
        ref = reference()
        for name in turn:
            rows[name].values.append(candidates[name]())
            rows[name].refs.append(ref)
    for name in PATHS:
        if name not in candidates:
            rows[name].note = rows[name].note or "n/a (C extension not built)"
    return row


def pending(name: str, target: str, reference: str, module: str) -> Row:
    return Row(name, target, reference, note=f"n/a ({module} not present)")


# -- the benchmarks ----------------------------------------------------------------------


def run(quick: bool) -> tuple[list[Row], dict[str, str]]:
    rounds = 3 if quick else 7
    facts: dict[str, str] = {}
    rows: list[Row] = []
    workers = {path: Worker(path) for path in PATHS}
    if not workers["native"].path_description.startswith("native"):
        workers.pop("native").close()  # not built: the native column says so
    facts["capture paths"] = "; ".join(f"{p}: {w.path_description}" for p, w in workers.items())
    loads = {"file-backed": Workload(65_500), "anonymous": Workload(65_500, anonymous=True)}
    others = {} if quick else {size: Workload(size) for size in (10_000, 1_000)}
    for label, load in loads.items():
        data = Path(load.maps_path).read_bytes()
        facts[f"{label} workload"] = (
            f"{load.regions:,} regions (pid {load.pid}), maps {len(data):,} bytes "
            f"({len(data) / max(1, load.regions):.0f} a line)"
        )
    try:
        for label, load in loads.items():
            maps, smaps = load.maps_path, f"/proc/{load.pid}/smaps"
            rows.append(
                interleaved_paths(
                    rounds,
                    lambda m=maps: cpu_command(["cat", m]),  # type: ignore[misc]
                    {
                        p: lambda w=w, pid=load.pid: w("snapshot", pid=pid)["cpu_seconds"]
                        for p, w in workers.items()
                    },
                    Row(
                        f"capture and encode, {label}, {load.regions:,} regions",
                        "<= 1.5x",
                        "cat maps",
                        goal=lambda r: r <= 1.5,
                    ),
                )
            )
            rows.append(
                interleaved_paths(
                    rounds,
                    lambda m=smaps: cpu_command(["cat", m]),  # type: ignore[misc]
                    {
                        p: lambda w=w, pid=load.pid: w("snapshot", pid=pid, residency=True)[
                            "cpu_seconds"
                        ]
                        for p, w in workers.items()
                    },
                    Row("  same, with residency", "<= 1.3x", "cat smaps", goal=lambda r: r <= 1.3),
                )
            )
        sweep = interleaved_paths(
            rounds,
            lambda: cpu_command(["sh", "-c", "cat /proc/[0-9]*/maps > /dev/null 2>&1"]),
            {p: lambda w=w: w("sweep")["cpu_seconds"] for p, w in workers.items()},
            Row(
                "summary sweep, every process on the host",
                "<= 1.3x",
                "cat /proc/*/maps",
                goal=lambda r: r <= 1.3,
            ),
        )
        sweep.note = f"{len(psutil.pids())} processes"
        rows.append(sweep)
        rows.extend(fresh_snapshots(rounds, workers, loads))
        rows.extend(wire_sizes(workers, loads))
        rows.extend(peaks(max(2, rounds // 2), list(workers), loads))

        big = loads["file-backed"]
        cat_maps = lambda: time_command(["cat", big.maps_path])  # noqa: E731
        worker = next(iter(workers.values()))
        if find_spec("vmatlas.diff") is not None:
            try:
                rows.append(
                    interleaved_paths(
                        rounds,
                        cat_maps,
                        {
                            p: lambda w=w: w("diff", pid=big.pid)["seconds"]
                            for p, w in workers.items()
                        },
                        Row(
                            f"diff of two {big.regions:,}-region snapshots",
                            "<= 1.0x",
                            "cat maps",
                            goal=lambda r: r <= 1.0,
                        ),
                    )
                )
            except RuntimeError as exc:
                rows.append(
                    Row("diff of two snapshots", "<= 1.0x", "cat maps", note=f"n/a ({exc})")
                )
        else:
            rows.append(pending("diff of two snapshots", "<= 1.0x", "cat maps", "vmatlas.diff"))

        rows.append(server_ingest(2 if quick else 5))
        rows.extend(fleet_audit(worker, max(2, rounds // 2), quick))
        rows.append(agent_at_rest(3.0 if quick else 10.0))
        rows.append(connected_agents(500))

        # Other tools on the same workloads, against the same floor (wall time).
        for label, load in [*loads.items(), *((f"{k:,}", v) for k, v in others.items())]:
            cat = lambda path=load.maps_path: time_command(["cat", path])  # noqa: E731
            if load in others.values():
                rows.append(
                    interleaved_paths(
                        rounds,
                        cat,
                        {
                            p: lambda w=w, pid=load.pid: w("snapshot", pid=pid)["seconds"]
                            for p, w in workers.items()
                        },
                        Row(f"vmatlas snapshot, {load.regions:,} regions", "", "cat maps"),
                    )
                )
            rows.append(
                interleaved(
                    rounds,
                    cat,
                    lambda pid=load.pid: time_command(["pmap", "-x", str(pid)]),
                    Row(f"pmap -x, {label}, {load.regions:,} regions", "", "cat maps"),
                )
            )
            rows.append(
                interleaved(
                    max(2, rounds // 2),
                    cat,
                    lambda pid=load.pid: worker("psutil", pid=pid)["seconds"],
                    Row(f"psutil memory_maps, {label}, {load.regions:,} regions", "", "cat maps"),
                )
            )
        # Whole commands as a user runs them, beside pmap -x (bench.cli imports this
        # module, hence the late import).
        from bench import cli as bench_cli

        rows.extend(bench_cli.command_rows(rounds, big, tuple(workers)))
        # The web view's pages in headless Chromium, the process page over the same
        # 65,500-region workload (bench.web imports this module too).
        from bench import web as bench_web

        rows.extend(bench_web.rows(rounds, big))
    finally:
        for w in workers.values():
            w.close()
        for load in [*loads.values(), *others.values()]:
            load.close()
    return rows, facts


SERVER_HOST_ID = "bench-agent"


def fresh_snapshots(
    rounds: int, workers: dict[str, Worker], loads: dict[str, Workload]
) -> list[Row]:
    """A fresh snapshot from the agent's gRPC API, and through a real server with a real
    agent streaming to it, decoded by the client library (wall time: several processes
    take part). Each path runs its own agent and server."""
    direct = {
        label: Row(
            f"fresh snapshot from the agent's API, {label}",
            "<= 1.5x",
            "cat maps",
            goal=lambda r: r <= 1.5,
        )
        for label in loads
    }
    via_server = {
        label: Row(
            f"  same, through the server (client->server->agent), {label}",
            "<= 2.0x",
            "cat maps",
            goal=lambda r: r <= 2.0,
        )
        for label in loads
    }
    for table in (direct, via_server):
        for row in table.values():
            row.pure = replace(row, values=[], refs=[])
            row.pure.note = "n/a (C extension not built)"
            if "native" not in workers:
                row.note = row.pure.note
    # The calls come from a program using the client library: a process of its own,
    # whose heap is as any program has it (the agent and the server tune theirs).
    clients = {path: Worker(path, client=True) for path in workers}
    try:
        for path, worker in clients.items():
            for label, load in loads.items():
                cat = lambda m=load.maps_path: time_command(["cat", m])  # noqa: E731
                mine = direct[label] if path == "native" else direct[label].pure
                assert mine is not None
                mine.note = ""
                try:
                    with agent_process(path=path) as (_, target):
                        interleaved(
                            rounds,
                            cat,
                            lambda w=worker, t=target, pid=load.pid: w(  # type: ignore[misc]
                                "client_snapshot", target=t, pid=pid
                            )["seconds"],
                            mine,
                        )
                except (RuntimeError, OSError) as exc:
                    mine.note = f"n/a ({exc})"
            try:
                with (
                    server_process(path=path) as (_, target),
                    agent_process("--server", target, "--host-id", SERVER_HOST_ID, path=path),
                ):
                    wait_online(target, SERVER_HOST_ID)
                    for label, load in loads.items():
                        mine = via_server[label] if path == "native" else via_server[label].pure
                        assert mine is not None
                        mine.note = ""
                        snap = lambda w=worker, t=target, pid=load.pid: w(  # noqa: E731
                            "fleet_snapshot", target=t, host=SERVER_HOST_ID, pid=pid
                        )["seconds"]
                        snap()  # the first one also stores the region table; later ones dedupe
                        cat = lambda m=load.maps_path: time_command(["cat", m])  # noqa: E731
                        interleaved(rounds, cat, snap, mine)
            except (RuntimeError, OSError) as exc:
                for row in via_server.values():
                    mine = row if path == "native" else row.pure
                    assert mine is not None
                    mine.note = f"n/a ({exc})"
    finally:
        for client in clients.values():
            client.close()
    return [row for label in loads for row in (direct[label], via_server[label])]


def wire_sizes(workers: dict[str, Worker], loads: dict[str, Workload]) -> list[Row]:
    """Bytes of a serialized snapshot against the maps text: an ordinary process (a
    resting agent, a few hundred mappings) and the workloads. Both paths write the same
    bytes (the tests hold them to it), so one figure stands for both."""
    worker = next(iter(workers.values()))
    rows = []
    with agent_process() as (proc, _):
        time.sleep(1.0)  # its imports done: the mappings of a resting agent
        targets = [("an ordinary process (a resting agent)", proc.pid, "<= 10%")]
        targets += [(f"{label}, 65.5K regions", load.pid, "") for label, load in loads.items()]
        for label, pid, target in targets:
            maps_bytes = len(Path(f"/proc/{pid}/maps").read_bytes())
            answer = worker("snapshot", pid=pid)
            regions = int(answer["regions"])
            row = Row(
                f"bytes on the wire, {label}",
                target,
                "maps text",
                values=[answer["wire_bytes"]],
                refs=[maps_bytes],
                unit="bytes",
                goal=(lambda r: r <= 0.10) if target else None,
                note=f"{regions:,} regions",
            )
            rows.append(row)
            if target:
                rows.append(
                    Row(
                        "  same, gzip-compressed (gRPC gzip)",
                        "",
                        "maps text",
                        values=[answer["gzip_bytes"]],
                        refs=[maps_bytes],
                        unit="bytes",
                    )
                )
    return rows


def peaks(rounds: int, paths: list[str], loads: dict[str, Workload]) -> list[Row]:
    """Peak RSS of a fresh process taking one snapshot, against psutil's."""
    rows = []
    for label, load in loads.items():
        row = Row(
            f"agent peak RSS, snapshot of {label}, {load.regions:,} regions",
            "<= 25%",
            "psutil",
            unit="MiB",
            goal=lambda r: r <= 0.25,
        )
        growth = Row("  same, growth over the process's own baseline", "", "psutil", unit="MiB")
        row.pure = replace(row, values=[], refs=[], note="n/a (C extension not built)")
        growth.pure = replace(growth, values=[], refs=[], note="n/a (C extension not built)")
        for _ in range(rounds):
            reference = peak("peak-psutil", load.pid)
            for path in paths:
                mine, mine_growth = (row, growth) if path == "native" else (row.pure, growth.pure)
                mine.note = mine_growth.note = ""
                taken = peak("peak-snapshot", load.pid, path)
                mine.values.append(taken[0])
                mine.refs.append(reference[0])
                mine_growth.values.append(taken[0] - taken[1])
                mine_growth.refs.append(reference[0] - reference[1])
        if "native" not in paths:
            row.note = growth.note = "n/a (C extension not built)"
        rows += [row, growth]
    return rows


INGEST_STREAMS, INGEST_PUSHES, INGEST_BATCH = 4, 25, 200


def server_ingest(rounds: int) -> Row:
    """Summary pushes on real agent streams into a server process: summaries/s."""
    row = Row(
        "server ingest of process summaries (agent streams)",
        ">= 20,000/s",
        "",
        unit="/s",
        ratio=False,
        goal=lambda r: r >= 20_000,
    )
    cpu_shares = []
    try:
        with server_process() as (proc, target):
            server = psutil.Process(proc.pid)
            for i in range(rounds):
                cpu0 = sum(server.cpu_times()[:2])
                out = subprocess.run(
                    [PYTHON, "-m", "bench.fleet", "ingest", target, str(INGEST_STREAMS),
                     str(INGEST_PUSHES), str(INGEST_BATCH), str(i)],
                    cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                cpu = sum(server.cpu_times()[:2]) - cpu0
                lines = out.stdout.strip().splitlines()
                answer = json.loads(lines[-1]) if lines else {"error": out.stderr[-80:]}
                if "error" in answer:
                    raise RuntimeError(answer["error"])
                row.values.append(answer["per_second"])
                cpu_shares.append(cpu / answer["seconds"])
    except (RuntimeError, OSError, subprocess.TimeoutExpired, psutil.Error) as exc:
        row.values = []
        row.note = f"n/a ({exc})"
        return row
    row.note = (
        f"{INGEST_STREAMS} streams x {INGEST_PUSHES} pushes x {INGEST_BATCH}; "
        f"server CPU ~{statistics.median(cpu_shares):.2f} core"
    )
    return row


def fleet_audit(worker: Worker, rounds: int, quick: bool) -> list[Row]:
    name = "fleet audit, 1,000 hosts x 200 processes"
    if find_spec("vmatlas.audit") is None:
        return [pending(name, "<= 1 s", "", "vmatlas.audit")]
    cases = [(0, name, "<= 1 s")]
    if not quick:
        cases.append((4, "  same, with 4 history points per process", ""))
    rows = []
    for points, label, target in cases:
        row = Row(label, target, "", ratio=False, goal=(lambda v: v <= 1.0) if target else None)
        try:
            call = lambda p=points: worker(  # noqa: E731
                "audit", hosts=1000, processes=200, history_points=p
            )
            call()  # builds the inputs (untimed) and warms up
            row.values = [call()["seconds"] for _ in range(rounds)]
        except RuntimeError as exc:
            row.note = f"n/a ({exc})"
        rows.append(row)
    return rows


def connected_agents(count: int) -> Row:
    """(server RSS with ``count`` registered agent streams - RSS with none) / count."""
    row = Row(
        f"server with {count} connected agents",
        "<= 200 KiB/agent",
        "",
        unit="bytes",
        ratio=False,
    )
    try:
        # Long heartbeats: the held streams stay silent and must not be dropped.
        with server_process("--heartbeat", "600") as (proc, target):
            from vmatlas.client import Client

            server = psutil.Process(proc.pid)
            with Client(target, timeout=5.0) as client:
                client.hosts()  # the query path warmed, as a running server has it
            time.sleep(0.5)
            before = server.memory_info().rss
            holder = subprocess.Popen(
                [PYTHON, "-m", "bench.fleet", "hold", target, str(count), "idle"],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            try:
                assert holder.stdout is not None
                line = holder.stdout.readline()
                if not line or json.loads(line).get("ready") != count:
                    raise RuntimeError(f"the {count} agents did not all register")
                time.sleep(1.0)
                after = server.memory_info().rss
                threads = server.num_threads()
            finally:
                assert holder.stdin is not None
                holder.stdin.close()
                try:
                    holder.wait(20)
                except subprocess.TimeoutExpired:
                    holder.kill()
                    holder.wait()
    except (RuntimeError, OSError, psutil.Error) as exc:
        row.note = f"n/a ({exc})"
        return row
    per_agent = (after - before) / count
    row.values = [per_agent]
    row.note = f"RSS {before / MIB:,.0f} -> {after / MIB:,.0f} MiB, {threads} threads"
    row.goal = lambda v: v <= 200 * 1024
    return row


def peak(kind: str, pid: int, path: str = "native") -> tuple[int, int]:
    out = subprocess.run(
        [PYTHON, "-m", "bench.worker", kind, str(pid)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=path_env(path),
    ).stdout
    answer = json.loads(out)
    return answer["peak_bytes"], answer["before_bytes"]


def agent_at_rest(seconds: float) -> Row:
    """CPU and RSS of an idle ``vmatlas agent`` over ``seconds``, after its start."""
    row = Row(
        "agent at rest (default interval)", "<= 0.5% core, <= 40 MiB", "", ratio=False, unit="%"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="vmatlas-bench-bytecode-") as cache:
            # An installed agent runs its modules' compiled bytecode (pip writes it at
            # install). Where PYTHONDONTWRITEBYTECODE is set, every start would compile
            # the sources again and keep the compiler's leftovers in its heap: give the
            # agent a bytecode cache of its own, filled by a first start.
            bytecode = {"PYTHONPYCACHEPREFIX": cache, "PYTHONDONTWRITEBYTECODE": None}
            with agent_process(env=bytecode):
                pass
            rss, percent = _resting(seconds, bytecode)
    except (RuntimeError, OSError, psutil.Error) as exc:
        row.note = f"n/a ({exc})"
        return row
    row.values = [percent]
    row.note = f"{rss / MIB:.1f} MiB RSS, over {seconds:.0f} s"
    row.goal = lambda p: p <= 0.5 and rss <= 40 * MIB
    return row


def _resting(seconds: float, env: Mapping[str, str | None]) -> tuple[int, float]:
    """RSS and percent of a core of a started agent over ``seconds``."""
    with agent_process(env=env) as (proc, _):
        agent = psutil.Process(proc.pid)
        time.sleep(1.0)  # let start-up work finish
        cpu0 = sum(agent.cpu_times()[:2])
        start = time.perf_counter()
        time.sleep(seconds)
        cpu = sum(agent.cpu_times()[:2]) - cpu0
        wall = time.perf_counter() - start
        return agent.memory_info().rss, 100 * cpu / wall


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    limit = Path("/proc/sys/vm/max_map_count").read_text().strip()
    return (
        f"{os.cpu_count()} x {model}, {mem:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}, vm.max_map_count {limit}"
    )


FOOTNOTE = """\
Ratios: vmatlas / reference, median of interleaved rounds [min-max]; times are medians.
native / pure: the same benchmark with the C extension's loops and with the pure-Python
ones (VMATLAS_NO_NATIVE=1), each in its own processes; "same" where the path does not
matter. Capture, residency and sweep rows compare CPU time (user + system, the kernel's
formatting of procfs text included) of the vmatlas worker's work with the CPU time of
the reference command (fork, exec and exit included), so that other work on a shared
machine does not blur the ratio; every other row is wall time.
vmatlas is timed in a resident worker process (as the agent is resident): imports are
paid before timing, the path caches are cleared every round. Snapshot = read + parse +
summary + encode + serialize (a header and the region table's bytes, as the agent sends
them). Peak RSS: VmHWM of a fresh process doing one capture (vmatlas: capture+encode;
psutil: memory_maps(grouped=False)).
Server rows run `vmatlas server` as a subprocess (127.0.0.1:0, temporary data dir, rate
limit raised). Via server: a real `vmatlas agent --server` streams to it; the client's
fresh snapshot includes the server filing it in its store (first call untimed). Ingest:
stream-level, fake agents (bench.fleet) push complete 200-process batches on real
Connect streams; timed until each stream's trailing heartbeat is acked (all committed).
500 agents: grpc.aio streams, one connection each, registered and idle; (RSS after -
RSS before) / 500. Audit: vmatlas.audit.audit() on synthetic plain-model inputs.
Agent at rest: `vmatlas agent` on loopback with its modules' bytecode cached, as an
installed package has it (a cache of its own, PYTHONPYCACHEPREFIX, filled by a first
start; compiling the sources at every start keeps ~1.6 MiB more).
Web rows: headless Chromium, from navigation start to the page's own drawn mark, beside
the browser fetching and parsing the page's document alone (bench.web).
'n/a (X not present)': the row needs module X, which this checkout does not have yet."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer rounds and only the 65.5K-region workload (~1 minute)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, facts = run(args.quick)
    print(render(rows))
    print()
    from bench import cli as bench_cli

    print(FOOTNOTE)
    print(bench_cli.FOOTNOTE)
    print(f"Machine: {machine()}")
    for key, value in facts.items():
        print(f"{key.capitalize()}: {value}")
    print(f"Run: {'--quick, ' if args.quick else ''}{time.perf_counter() - started:.0f} s")
    return 0
