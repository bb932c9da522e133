"""deploy/systemd: the units pass systemd's own checks, and the agent with exactly the
capabilities its unit grants, as an unprivileged user, reads another user's process;
without them it reports access denied. Users and capabilities are set with setpriv(1),
so the test needs root."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Planter
from tests.deploy.conftest import DEPLOY

UNITS = DEPLOY / "systemd"
AGENT_UID = 65534  # nobody
TARGET_UID = 65533  # another unprivileged user, owner of the target


def unit_setting(unit: Path, key: str) -> str:
    values = re.findall(rf"^{key}=(.*)$", unit.read_text(), re.MULTILINE)
    assert len(values) == 1, (unit, key, values)
    return str(values[0]).strip()


@pytest.mark.parametrize("unit", ["vmatlas-agent.service", "vmatlas-server.service"])
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian's systemd package)")
    # verify checks that ExecStart's program exists: point it at this checkout's command.
    text = (UNITS / unit).read_text().replace("/usr/local/bin/vmatlas", str(vmatlas_command()))
    (tmp_path / unit).write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # The users exist once sysusers.d has run on the target host, not here.
        if line.strip() and "vmatlas" not in line.split(":", 1)[0]
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def vmatlas_command() -> Path:
    return Path(sys.executable).with_name("vmatlas")


def test_agent_unit_grants_only_what_reading_maps_needs() -> None:
    agent = UNITS / "vmatlas-agent.service"
    assert unit_setting(agent, "AmbientCapabilities") == "CAP_SYS_PTRACE"
    assert unit_setting(agent, "CapabilityBoundingSet") == "CAP_SYS_PTRACE"
    assert unit_setting(agent, "NoNewPrivileges") == "yes"
    assert unit_setting(agent, "User") == "vmatlas-agent"
    assert unit_setting(agent, "ProtectSystem") == "strict"
    server = UNITS / "vmatlas-server.service"
    assert unit_setting(server, "CapabilityBoundingSet") == ""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can read: the test's own temp dirs are root's alone."""
    directory = Path(tempfile.mkdtemp(prefix="vmatlas-caps-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def foreign_planter(planter_binary: Path, shared_dir: Path) -> Iterator[Planter]:
    """A planter child running as another unprivileged user."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run processes as other users")
    binary = shared_dir / "planter"
    shutil.copy(planter_binary, binary)
    binary.chmod(0o755)
    launcher = shared_dir / "as-target"
    launcher.write_text(
        f"#!/bin/sh\nexec setpriv --reuid={TARGET_UID} --regid={TARGET_UID} "
        f"--clear-groups --inh-caps=-all --bounding-set=-all {binary}\n"
    )
    launcher.chmod(0o755)
    child = Planter(launcher)
    try:
        yield child
    finally:
        child.close()


def run_agent_as_nobody(capabilities: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``vmatlas ARGV`` as an unprivileged user holding exactly ``capabilities``.

    The virtualenv's interpreter may live under root's home, which other users cannot
    enter, so the system's interpreter of the same version runs the same installed
    packages (site.addsitedir reads their .pth files, the editable install's too)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = Path(f"/usr/bin/python{version}")
    if not python.exists():
        pytest.skip(f"needs {python}, the system's Python {version}, readable by any user")
    sites = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    code = (
        "import site, sys\n"
        f"for path in {sites!r}: site.addsitedir(path)\n"
        "from vmatlas.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    caps = ",".join(["-all", *(f"+{c.lower().removeprefix('cap_')}" for c in capabilities)])
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={AGENT_UID}",
            f"--regid={AGENT_UID}",
            "--clear-groups",
            f"--inh-caps={caps}",
            f"--ambient-caps={caps}",
            f"--bounding-set={caps}",
            "--no-new-privs",
            str(python),
            "-c",
            code,
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"},
    )


def test_unprivileged_agent_reads_another_users_process_with_the_units_capabilities(
    foreign_planter: Planter,
) -> None:
    foreign_planter.grow(500)
    pid = str(foreign_planter.pid)
    granted = unit_setting(DEPLOY / "systemd" / "vmatlas-agent.service", "AmbientCapabilities")
    result = run_agent_as_nobody(granted.split(), "snapshot", "--local", pid, "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["process"]["pid"] == foreign_planter.pid
    assert doc["summary"]["map_count"] >= 500

    denied = run_agent_as_nobody([], "snapshot", "--local", pid)
    assert denied.returncode != 0
    assert denied.stderr.startswith("vmatlas snapshot: access denied")
    assert pid in denied.stderr and len(denied.stderr.splitlines()) == 1
