"""The ``vmatlas`` command as a user runs it: a real agent process, real output."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Planter

VMATLAS = [sys.executable, "-m", "vmatlas"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*VMATLAS, *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"vmatlas {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def agent_target() -> Iterator[str]:
    proc = subprocess.Popen(
        [*VMATLAS, "agent", "--listen", "127.0.0.1:0", "--host-id", "cli-test"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("vmatlas agent listening on 127.0.0.1:"), line
    yield line.split()[-1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_console_script_is_installed() -> None:
    assert shutil.which("vmatlas") or (
        shutil.which("vmatlas", path=str(__import__("pathlib").Path(sys.executable).parent))
    )


def test_snapshot_json_document(agent_target: str, planter: Planter) -> None:
    base = planter.reserve(5)
    doc = json.loads(
        run("snapshot", str(planter.pid), "--target", agent_target, "--format", "json").stdout
    )
    assert doc["format"] == "vmatlas.snapshot/v1"
    assert set(doc) >= {"host", "process", "summary", "regions"}
    assert doc["host"]["host_id"] == "cli-test"
    assert doc["process"]["pid"] == planter.pid
    (region,) = [r for r in doc["regions"] if r["start"] == hex(base)]
    assert region["end"] == hex(base + 5 * 4096)
    assert region["size"] == 5 * 4096
    assert (region["state"], region["perms"], region["type"]) == ("reserved", "---p", "private")
    for key in ("path", "offset", "inode"):
        assert key in region
    assert doc["summary"]["region_count"] == len(doc["regions"])


def test_snapshot_local_csv_to_file(planter: Planter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "snap.csv"
    run(
        "snapshot",
        "--local",
        str(planter.pid),
        "--format",
        "csv",
        "--output",
        str(out),
        "--residency",
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    with open(f"/proc/{planter.pid}/maps") as f:
        assert len(rows) == len(f.readlines())
    assert {
        "start",
        "end",
        "size",
        "state",
        "perms",
        "type",
        "path",
        "offset",
        "inode",
        "rss_bytes",
    } <= set(rows[0])


def test_snapshot_table_with_free(agent_target: str, planter: Planter) -> None:
    text = run("snapshot", str(planter.pid), "--target", agent_target, "--free").stdout
    assert "free" in text
    assert "headroom" in text
    assert "planter" in text


def test_ps_top(agent_target: str, planter: Planter) -> None:
    planter.grow(400)
    lines = run("ps", "--target", agent_target, "--top", "3").stdout.splitlines()
    assert lines[0].split()[:4] == ["PID", "NAME", "USER", "MAPS"]
    assert len([line for line in lines[1:] if line and line[0] != "("]) == 3
    doc = json.loads(run("ps", "--local", "--format", "json").stdout)
    assert any(p["process"]["pid"] == planter.pid for p in doc["processes"])


def test_errors_are_one_line_with_non_zero_status(agent_target: str, planter: Planter) -> None:
    pid = planter.pid
    planter.close()
    for where in (["--target", agent_target], ["--local"]):
        result = run("snapshot", str(pid), *where, check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == f"vmatlas snapshot: no such process: pid {pid}"
    result = run("snapshot", "1", "--target", "127.0.0.1:1", "--timeout", "2", check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1


def test_agent_refuses_to_listen_beyond_loopback_without_tls() -> None:
    result = run("agent", "--listen", "0.0.0.0:0", check=False)
    assert result.returncode == 1
    assert "refusing" in result.stderr


def test_a_taken_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        for command in (["agent"], ["server", "--data-dir", str(tmp_path), "--http", "off"]):
            result = run(*command, "--listen", address, check=False)
            assert result.returncode == 1
            assert result.stderr == (
                f"vmatlas {command[0]}: cannot listen on {address}: "
                "the address is in use or not on this host\n"
            )
