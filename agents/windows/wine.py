"""The Win32 seam on Linux: the same calls, made by a small Win32 program under Wine.

``helper.c`` (shipped beside this module) is built on demand with
``x86_64-w64-mingw32-gcc`` into the user cache, keyed by the hash of its source, and
started once per :class:`WineApi` with ``wine``. It then serves one request after
another over its standard handles and answers with what each call returned, raw; this
module only frames the bytes, and :mod:`.win32` decodes them.

The helper sees the processes of its own wineserver only, so it must run in the
``WINEPREFIX`` of the processes it reads.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path
from types import TracebackType

import platformdirs

from vmatlas import errors
from vmatlas.agents.windows.reader import WindowsReader
from vmatlas.agents.windows.win32 import (
    ERROR_INVALID_PARAMETER,
    PROCESS_ACCESS,
    ProcessEntry,
    SystemInfo,
    Win32Error,
    decode_multi_wide,
    decode_process_entries,
    decode_system_info,
    decode_wide,
    filetime_to_epoch,
    open_error,
)
from vmatlas.model import Snapshot, SnapshotView

MINGW_GCC = "x86_64-w64-mingw32-gcc"
MINGW_GCC_32 = "i686-w64-mingw32-gcc"
WINE = "wine"
# Where distributions put the loaders when no `wine` command is on PATH (Debian's
# wine64 package alone installs only these); the second is the 32-bit one (wine32).
WINE_LOADERS = ("/usr/lib/wine/wine64", "/usr/lib/wine/wine")
WINESERVERS = ("/usr/lib/wine/wineserver64", "/usr/lib/wine/wineserver")
WINE_INSTALL_HINT = "on Debian or Ubuntu, as root: apt-get install wine wine64"

# Operation codes; they match helper.c.
OP_SYSTEM_INFO = 1
OP_PROCESSES = 2
OP_OPEN_PROCESS = 3
OP_CLOSE_HANDLE = 4
OP_IS_WOW64 = 5
OP_VIRTUAL_QUERY = 6
OP_VIRTUAL_QUERY_WALK = 7
OP_MAPPED_FILE_NAME = 8
OP_QUERY_DOS_DEVICE = 9
OP_LOGICAL_DRIVES = 10
OP_EXIT_CODE = 11
OP_IMAGE_NAME = 12
OP_PROCESS_TIMES = 13

_REPLY = struct.Struct("<III")
_REQUEST = struct.Struct("<II")


def helper_source() -> bytes:
    return resources.files("vmatlas.agents.windows").joinpath("helper.c").read_bytes()


def build_helper(
    cache_dir: str | os.PathLike[str] | None = None, compiler: str = MINGW_GCC
) -> Path:
    """The helper executable, compiled unless the cache already holds this source's
    build. FailedPrecondition when the compiler is missing or fails."""
    source = helper_source()
    digest = hashlib.sha256(source + compiler.encode()).hexdigest()[:16]
    directory = Path(cache_dir or platformdirs.user_cache_dir("vmatlas")) / "wine-helper"
    target = directory / f"vmatlas-helper-{digest}.exe"
    if target.exists():
        return target
    compiler_path = shutil.which(compiler)
    if compiler_path is None:
        raise errors.FailedPrecondition(
            f"the Windows view needs the MinGW-w64 compiler ({compiler}) to build its Wine "
            "helper; on Debian or Ubuntu: apt-get install gcc-mingw-w64-x86-64"
        )
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        source_path = Path(work) / "helper.c"
        source_path.write_bytes(source)
        built = Path(work) / "helper.exe"
        result = subprocess.run(
            [compiler_path, "-O2", "-municode", "-o", str(built), str(source_path), "-lpsapi"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise errors.FailedPrecondition(
                f"building the Wine helper failed:\n{result.stderr.strip()}"
            )
        os.replace(built, target)  # atomic: concurrent builders agree on the result
    return target


def find_wine(wine: str = WINE, loaders: tuple[str, ...] = WINE_LOADERS) -> str | None:
    """The command that runs a 64-bit Windows program as a process of its own: the
    distribution's 64-bit loader (the first of ``loaders``), else ``wine``, else the
    other loaders. Not ``wine`` first: once the 32-bit loader is installed, Debian's
    ``wine`` is that loader, and it runs a 64-bit program as the child of a
    ``start.exe`` of its own."""
    for candidate in (*loaders[:1], wine, *loaders[1:]):
        path = shutil.which(candidate)
        if path is not None:
            return path
    return None


def find_wineserver() -> str | None:
    for candidate in ("wineserver", *WINESERVERS):
        path = shutil.which(candidate)
        if path is not None:
            return path
    return None


def loader_env(env: dict[str, str], wine: str) -> dict[str, str]:
    """``env`` for running ``wine``: a bare loader needs WINELOADER to start further
    Windows programs (the ``wine`` script sets it)."""
    if os.path.realpath(wine) in WINE_LOADERS and "WINELOADER" not in env:
        env = {**env, "WINELOADER": os.path.realpath(wine)}
    return env


def default_prefix() -> str:
    return os.environ.get("WINEPREFIX") or os.path.join(os.path.expanduser("~"), ".wine")


class WineApi:
    """:class:`~.win32.Win32Api` through one long-lived helper under Wine.

    Thread-safe (one request at a time). Close it, or use it as a context manager, to
    end the helper.
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str] | None = None,
        *,
        wine: str = WINE,
        loaders: tuple[str, ...] = WINE_LOADERS,
        cache_dir: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.prefix = os.fspath(prefix) if prefix is not None else default_prefix()
        wine_path = find_wine(wine, loaders)
        if wine_path is None:
            searched = ", ".join((wine, *loaders))
            raise errors.FailedPrecondition(
                f"the Windows view needs Wine (none of {searched} found); " + WINE_INSTALL_HINT
            )
        self.loader = wine_path
        helper = build_helper(cache_dir)
        child_env = loader_env(dict(os.environ if env is None else env), wine_path)
        child_env["WINEPREFIX"] = self.prefix
        child_env.setdefault("WINEDEBUG", "-all")
        # A new prefix would otherwise offer to install Mono and Gecko.
        child_env.setdefault("WINEDLLOVERRIDES", "mscoree,mshtml=")
        # Kept open for the helper's life: its tail explains a helper that died.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [wine_path, str(helper)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env,
        )
        self._dos_devices: dict[str, str] | None = None

    # -- framing ------------------------------------------------------------------------

    def call(self, op: int, arguments: bytes = b"") -> tuple[bool, int, bytes]:
        """One request: (the call's success, its GetLastError value, its results)."""
        with self._lock:
            stdin, stdout = self._process.stdin, self._process.stdout
            assert stdin is not None and stdout is not None
            try:
                stdin.write(_REQUEST.pack(op, len(arguments)) + arguments)
                stdin.flush()
                header = stdout.read(_REPLY.size)
                if len(header) < _REPLY.size:
                    raise EOFError
                ok, last_error, length = _REPLY.unpack(header)
                data = stdout.read(length)
                if len(data) < length:
                    raise EOFError
            except (OSError, EOFError):
                raise errors.FailedPrecondition(self._died_message()) from None
        return bool(ok), last_error, data

    def _died_message(self) -> str:
        self._process.poll()
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
        return (
            f"the Wine helper stopped (exit status {self._process.returncode}) in prefix "
            f"{self.prefix}" + (f":\n{tail}" if tail else "")
        )

    def _checked(self, function: str, op: int, arguments: bytes = b"") -> bytes:
        ok, last_error, data = self.call(op, arguments)
        if not ok:
            raise Win32Error(function, last_error)
        return data

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            assert process.stdin is not None
            try:
                process.stdin.close()
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> WineApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the Win32Api calls ----------------------------------------------------------------

    def get_system_info(self) -> SystemInfo:
        return decode_system_info(self._checked("GetSystemInfo", OP_SYSTEM_INFO))

    def process_entries(self) -> list[ProcessEntry]:
        return decode_process_entries(self._checked("Process32NextW", OP_PROCESSES))

    def open_process(self, pid: int) -> int:
        ok, last_error, data = self.call(OP_OPEN_PROCESS, struct.pack("<QQ", PROCESS_ACCESS, pid))
        if not ok:
            raise open_error(pid, last_error)
        handle: int = struct.unpack("<Q", data)[0]
        return handle

    def close_handle(self, handle: int) -> None:
        self._checked("CloseHandle", OP_CLOSE_HANDLE, struct.pack("<Q", handle))

    def is_wow64_process(self, handle: int) -> bool:
        data = self._checked("IsWow64Process", OP_IS_WOW64, struct.pack("<Q", handle))
        wow64: int = struct.unpack("<i", data)[0]
        return wow64 != 0

    def virtual_query_ex(self, handle: int, address: int) -> bytes | None:
        ok, last_error, data = self.call(OP_VIRTUAL_QUERY, struct.pack("<QQ", handle, address))
        if ok:
            return data
        if last_error == ERROR_INVALID_PARAMETER:
            return None
        raise Win32Error("VirtualQueryEx", last_error)

    def virtual_query_walk(self, handle: int, start: int, end: int) -> list[bytes]:
        ok, last_error, data = self.call(
            OP_VIRTUAL_QUERY_WALK, struct.pack("<QQQ", handle, start, end)
        )
        if not ok and last_error != ERROR_INVALID_PARAMETER:
            raise Win32Error("VirtualQueryEx", last_error)
        return [data[i : i + 48] for i in range(0, len(data), 48)]

    def get_mapped_file_name(self, handle: int, address: int) -> str:
        ok, _last_error, data = self.call(OP_MAPPED_FILE_NAME, struct.pack("<QQ", handle, address))
        return decode_wide(data) if ok else ""

    def dos_devices(self) -> dict[str, str]:
        if self._dos_devices is None:
            mask = struct.unpack("<I", self._checked("GetLogicalDrives", OP_LOGICAL_DRIVES))[0]
            devices = {}
            for i in range(26):
                if mask & (1 << i):
                    drive = f"{chr(ord('A') + i)}:"
                    ok, _, data = self.call(OP_QUERY_DOS_DEVICE, (drive + "\0").encode("utf-16-le"))
                    targets = decode_multi_wide(data) if ok else []
                    if targets:
                        devices[drive] = targets[0]
            self._dos_devices = devices
        return dict(self._dos_devices)

    def get_exit_code_process(self, handle: int) -> int:
        data = self._checked("GetExitCodeProcess", OP_EXIT_CODE, struct.pack("<Q", handle))
        code: int = struct.unpack("<I", data)[0]
        return code

    def query_full_process_image_name(self, handle: int) -> str:
        return decode_wide(
            self._checked("QueryFullProcessImageNameW", OP_IMAGE_NAME, struct.pack("<Q", handle))
        )

    def get_process_creation_time(self, handle: int) -> int:
        data = self._checked("GetProcessTimes", OP_PROCESS_TIMES, struct.pack("<Q", handle))
        creation: int = struct.unpack_from("<Q", data)[0]
        return creation

    def local_path(self, path: str) -> str:
        """``C:\\dir\\file`` -> the file through the prefix's ``dosdevices`` links."""
        if path.startswith(("\\??\\", "\\\\?\\")):
            path = path[4:]
        if len(path) >= 2 and path[1] == ":":
            rest = path[2:].replace("\\", "/").lstrip("/")
            return os.path.join(self.prefix, "dosdevices", path[:2].lower(), rest)
        return path


# -- the Windows view of Wine processes -------------------------------------------------


def _proc_text(pid: int, name: str, procfs: str) -> str:
    try:
        with open(f"{procfs}/{pid}/{name}", "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise errors.NoSuchProcess(pid=pid) from None
    except PermissionError:
        raise errors.AccessDenied(f"access denied reading pid {pid}", pid=pid) from None


def wine_process_prefix(linux_pid: int, procfs: str = "/proc") -> str | None:
    """The WINEPREFIX of a Linux process running under Wine, or None when ``linux_pid``
    is not a Wine process. NoSuchProcess or AccessDenied as /proc answers."""
    maps = _proc_text(linux_pid, "maps", procfs)
    if "/ntdll.so" not in maps:
        return None
    environ = dict(
        item.split("=", 1)
        for item in _proc_text(linux_pid, "environ", procfs).split("\0")
        if "=" in item
    )
    prefix = environ.get("WINEPREFIX")
    if prefix:
        return prefix
    return os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".wine")


def windows_pid_of(api: WineApi, linux_pid: int, procfs: str = "/proc") -> int:
    """The Windows pid of the Wine process ``linux_pid`` in ``api``'s prefix.

    Wine does not publish the mapping, so it is worked out: a Wine process's Linux name
    is its image name (cut to 15 characters), and its Windows creation time is set by
    the wineserver as the Linux process starts. The only Windows process of that name
    is the one; among several, the one created nearest the Linux start time, within
    two seconds. (A process that started a new prefix is created in Windows only once
    the prefix is made, seconds after its Linux start: hence no time check for one.)
    """
    from vmatlas.agents.linux import LinuxReader

    linux = LinuxReader(procfs).process(linux_pid)
    name = linux.name.casefold()
    candidates = [e.pid for e in api.process_entries() if e.exe_file.casefold()[:15] == name]
    if len(candidates) == 1:
        return candidates[0]
    best: tuple[float, int] | None = None
    for pid in candidates:
        try:
            handle = api.open_process(pid)
        except errors.Error:
            continue
        try:
            created = filetime_to_epoch(api.get_process_creation_time(handle))
        except Win32Error:
            continue
        finally:
            api.close_handle(handle)
        distance = abs(created - linux.start_time)
        if best is None or distance < best[0]:
            best = (distance, pid)
    if best is None or best[0] > 2.0:
        what = (
            "several Windows processes, none started with it,"
            if candidates
            else "no Windows process"
        )
        raise errors.NoSuchProcess(
            f"pid {linux_pid} ({linux.name}) has {what} in prefix {api.prefix}",
            pid=linux_pid,
            name=linux.name,
        )
    return best[1]


class WineView:
    """The Win32 view of Wine processes on this Linux host (``SNAPSHOT_VIEW_WINDOWS``).

    Call it with a pid: a Linux pid of a Wine process is read in its own prefix (found
    from its environment) after mapping it to its Windows pid; any other pid is taken
    as a Windows pid in ``prefix`` (default: $WINEPREFIX, else ~/.wine). One helper runs
    per prefix, started on first use. Raises FailedPrecondition when Wine or MinGW-w64
    is missing.
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str] | None = None,
        *,
        host_id: str | None = None,
        procfs: str = "/proc",
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        self.prefix = os.fspath(prefix) if prefix is not None else default_prefix()
        self._host_id = host_id
        self._procfs = procfs
        self._cache_dir = cache_dir
        self._apis: dict[str, WineApi] = {}
        self._lock = threading.Lock()

    def api(self, prefix: str | None = None) -> WineApi:
        key = os.path.realpath(prefix or self.prefix)
        with self._lock:
            api = self._apis.get(key)
            if api is None or api._process.poll() is not None:
                api = self._apis[key] = WineApi(key, cache_dir=self._cache_dir)
            return api

    def reader(self, prefix: str | None = None) -> WindowsReader:
        return WindowsReader(
            self.api(prefix),
            host_id=self._host_id,
            os_version=wine_version(),
            kernel_version=platform.release(),
            view=SnapshotView.WINDOWS,
        )

    def resolve(self, pid: int) -> tuple[str, int]:
        """(prefix, Windows pid) for a Linux pid of a Wine process, or for a Windows pid."""
        try:
            prefix = wine_process_prefix(pid, self._procfs)
        except errors.NoSuchProcess:
            prefix = None
        if prefix is None:
            return self.prefix, pid
        return prefix, windows_pid_of(self.api(prefix), pid, self._procfs)

    def __call__(
        self, pid: int, include_free: bool = False, include_residency: bool = False
    ) -> Snapshot:
        prefix, windows_pid = self.resolve(pid)
        return self.reader(prefix).snapshot(
            windows_pid, include_free=include_free, include_residency=include_residency
        )

    def close(self) -> None:
        with self._lock:
            apis, self._apis = list(self._apis.values()), {}
        for api in apis:
            api.close()


def wine_view_snapshot(
    pid: int,
    include_free: bool = False,
    include_residency: bool = False,
    *,
    prefix: str | os.PathLike[str] | None = None,
) -> Snapshot:
    """One Windows-view snapshot with a helper started for it alone (see
    :class:`WineView`, which keeps helpers between calls)."""
    view = WineView(prefix)
    try:
        return view(pid, include_free, include_residency)
    finally:
        view.close()


def wine_version(wine: str = WINE) -> str:
    """``wine --version``'s answer ("wine-8.0 (Debian 8.0~repack-4)"), or "Wine"."""
    path = find_wine(wine)
    if path is None:
        return "Wine"
    try:
        result = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "Wine"
    return result.stdout.strip() or "Wine"
