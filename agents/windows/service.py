"""The agent as a Windows service: the Service Control Manager through advapi32.

Six calls through ctypes (as the reader makes its own) rather than pywin32: pywin32's
service host needs its post-install step (DLLs copied beside the interpreter, a .pth
file), which an unpacked or embedded Python never runs; these calls need nothing
beyond the standard library.

The service runs ``python.exe -m vmatlas agent service run [agent options]``. That
process reports RUNNING to the manager, runs the agent in its main thread, and turns
the manager's STOP or SHUTDOWN into SIGTERM, on which the agent drains as it does on
Linux. The agent's log and anything it prints go to a file.

Importing this module is safe anywhere; the calls work on Windows only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from ctypes import wintypes
from pathlib import Path
from typing import Any

from vmatlas import defaults, errors

DEFAULT_NAME = defaults.SERVICE_NAME
DISPLAY_NAME = "vmatlas agent"

SC_MANAGER_CONNECT = 0x0001
SC_MANAGER_CREATE_SERVICE = 0x0002
SERVICE_QUERY_STATUS = 0x0004
SERVICE_START = 0x0010
SERVICE_STOP = 0x0020
DELETE = 0x00010000
SERVICE_ALL_ACCESS = 0x000F01FF
SERVICE_WIN32_OWN_PROCESS = 0x00000010
SERVICE_AUTO_START = 0x00000002
SERVICE_DEMAND_START = 0x00000003
SERVICE_ERROR_NORMAL = 0x00000001
SERVICE_CONTROL_STOP = 0x00000001
SERVICE_CONTROL_INTERROGATE = 0x00000004
SERVICE_CONTROL_SHUTDOWN = 0x00000005
SERVICE_ACCEPT_STOP = 0x00000001
SERVICE_ACCEPT_SHUTDOWN = 0x00000004
NO_ERROR = 0
ERROR_CALL_NOT_IMPLEMENTED = 120
ERROR_SERVICE_NOT_ACTIVE = 1062
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_EXISTS = 1073
ERROR_SERVICE_SPECIFIC_ERROR = 1066

STATES = {
    1: "stopped",
    2: "start pending",
    3: "stop pending",
    4: "running",
    5: "continue pending",
    6: "pause pending",
    7: "paused",
}
STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
START_TYPES = {"auto": SERVICE_AUTO_START, "demand": SERVICE_DEMAND_START}

log = logging.getLogger(__name__)


class ServiceStatus(ctypes.Structure):
    _fields_ = [
        ("dwServiceType", wintypes.DWORD),
        ("dwCurrentState", wintypes.DWORD),
        ("dwControlsAccepted", wintypes.DWORD),
        ("dwWin32ExitCode", wintypes.DWORD),
        ("dwServiceSpecificExitCode", wintypes.DWORD),
        ("dwCheckPoint", wintypes.DWORD),
        ("dwWaitHint", wintypes.DWORD),
    ]


def default_log_file(name: str) -> Path:
    """``%ProgramData%\\vmatlas\\NAME.log``."""
    return Path(os.environ.get("PROGRAMDATA", "C:\\ProgramData"), "vmatlas", f"{name}.log")


def _advapi32() -> Any:
    if sys.platform == "win32":
        return ctypes.WinDLL("advapi32", use_last_error=True)
    raise errors.FailedPrecondition("Windows services exist on Windows only")


def _last_error() -> int:
    if sys.platform == "win32":
        return ctypes.get_last_error()
    return 0


class _Api:
    """advapi32's service calls, bound with their types."""

    def __init__(self) -> None:
        advapi32 = _advapi32()
        # The stdcall callback type; typed Any since ctypes defines it on Windows only.
        winfunctype: Any = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)
        handle, dword, bool_, wstr = (
            wintypes.HANDLE,
            wintypes.DWORD,
            wintypes.BOOL,
            wintypes.LPCWSTR,
        )

        def bind(name: str, restype: Any, *argtypes: Any) -> Any:
            function = getattr(advapi32, name)
            function.restype, function.argtypes = restype, list(argtypes)
            return function

        self.OpenSCManagerW = bind("OpenSCManagerW", handle, wstr, wstr, dword)
        self.CreateServiceW = bind(
            "CreateServiceW",
            handle,
            handle,
            wstr,
            wstr,
            dword,
            dword,
            dword,
            dword,
            wstr,
            wstr,
            ctypes.c_void_p,
            wstr,
            wstr,
            wstr,
        )
        self.OpenServiceW = bind("OpenServiceW", handle, handle, wstr, dword)
        self.StartServiceW = bind("StartServiceW", bool_, handle, dword, ctypes.c_void_p)
        self.ControlService = bind(
            "ControlService", bool_, handle, dword, ctypes.POINTER(ServiceStatus)
        )
        self.QueryServiceStatus = bind(
            "QueryServiceStatus", bool_, handle, ctypes.POINTER(ServiceStatus)
        )
        self.DeleteService = bind("DeleteService", bool_, handle)
        self.CloseServiceHandle = bind("CloseServiceHandle", bool_, handle)
        self.SetServiceStatus = bind(
            "SetServiceStatus", bool_, handle, ctypes.POINTER(ServiceStatus)
        )
        self.HandlerEx: Any = winfunctype(dword, dword, dword, ctypes.c_void_p, ctypes.c_void_p)
        self.ServiceMain: Any = winfunctype(None, dword, ctypes.POINTER(wintypes.LPWSTR))
        self.RegisterServiceCtrlHandlerExW = bind(
            "RegisterServiceCtrlHandlerExW", handle, wstr, self.HandlerEx, ctypes.c_void_p
        )

        class TableEntry(ctypes.Structure):
            _fields_ = [("lpServiceName", wintypes.LPWSTR), ("lpServiceProc", self.ServiceMain)]

        self.TableEntry = TableEntry
        self.StartServiceCtrlDispatcherW = bind(
            "StartServiceCtrlDispatcherW", bool_, ctypes.POINTER(TableEntry)
        )

    def fail(self, what: str, name: str) -> errors.Error:
        code = _last_error()
        if code == ERROR_SERVICE_DOES_NOT_EXIST:
            return errors.NotFound(f"no service {name!r}")
        if code == ERROR_SERVICE_EXISTS:
            return errors.AlreadyExists(f"service {name!r} exists already")
        if code == 5:
            return errors.AccessDenied(f"{what} {name!r}: access denied (run as administrator)")
        return errors.Error(f"{what} {name!r} failed: Windows error {code}")

    def manager(self, access: int) -> int:
        handle = self.OpenSCManagerW(None, None, access)
        if not handle:
            raise self.fail("opening the service manager for", "")
        return int(handle)

    def service(self, name: str, access: int) -> int:
        manager = self.manager(SC_MANAGER_CONNECT)
        try:
            handle = self.OpenServiceW(manager, name, access)
            if not handle:
                raise self.fail("opening service", name)
            return int(handle)
        finally:
            self.CloseServiceHandle(manager)


def command_line(arguments: Sequence[str]) -> str:
    """What the manager runs: this interpreter, ``-m vmatlas agent service run`` and the
    agent's options."""
    return subprocess.list2cmdline(
        [sys.executable, "-m", "vmatlas", "agent", "service", "run", *arguments]
    )


def install(name: str, arguments: Sequence[str], *, start: str = "auto") -> str:
    """Creates the service (LocalSystem, ``start``: auto or demand); its command line."""
    api = _Api()
    binary = command_line(arguments)
    manager = api.manager(SC_MANAGER_CREATE_SERVICE)
    try:
        handle = api.CreateServiceW(
            manager,
            name,
            DISPLAY_NAME if name == DEFAULT_NAME else f"{DISPLAY_NAME} ({name})",
            SERVICE_ALL_ACCESS,
            SERVICE_WIN32_OWN_PROCESS,
            START_TYPES[start],
            SERVICE_ERROR_NORMAL,
            binary,
            None,
            None,
            None,
            None,
            None,
        )
        if not handle:
            raise api.fail("creating service", name)
        api.CloseServiceHandle(handle)
    finally:
        api.CloseServiceHandle(manager)
    return binary


def _status(api: _Api, handle: int, name: str) -> ServiceStatus:
    status = ServiceStatus()
    if not api.QueryServiceStatus(handle, ctypes.byref(status)):
        raise api.fail("querying service", name)
    return status


def state(name: str) -> str:
    """ "running", "stopped", ... as the manager reports the service."""
    api = _Api()
    handle = api.service(name, SERVICE_QUERY_STATUS)
    try:
        return STATES.get(_status(api, handle, name).dwCurrentState, "unknown")
    finally:
        api.CloseServiceHandle(handle)


def start(name: str) -> None:
    api = _Api()
    handle = api.service(name, SERVICE_START)
    try:
        if not api.StartServiceW(handle, 0, None):
            raise api.fail("starting service", name)
    finally:
        api.CloseServiceHandle(handle)


def stop(name: str) -> None:
    """Asks the service to stop; it drains and reports STOPPED on its own."""
    api = _Api()
    handle = api.service(name, SERVICE_STOP)
    try:
        status = ServiceStatus()
        stopped = api.ControlService(handle, SERVICE_CONTROL_STOP, ctypes.byref(status))
        if not stopped and _last_error() != ERROR_SERVICE_NOT_ACTIVE:
            raise api.fail("stopping service", name)
    finally:
        api.CloseServiceHandle(handle)


def remove(name: str) -> None:
    """Stops the service if it runs, then deletes it."""
    api = _Api()
    handle = api.service(name, SERVICE_STOP | SERVICE_QUERY_STATUS | DELETE)
    try:
        status = ServiceStatus()
        if _status(api, handle, name).dwCurrentState != STOPPED:
            api.ControlService(handle, SERVICE_CONTROL_STOP, ctypes.byref(status))
        if not api.DeleteService(handle):
            raise api.fail("removing service", name)
    finally:
        api.CloseServiceHandle(handle)


def log_to(path: Path) -> None:
    """Logging and the standard streams into ``path`` (a service has no console)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (the process's life)
    sys.stdout = sys.stderr = stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)


def run(name: str, body: Callable[[], int]) -> int:
    """Runs ``body`` (the agent) as service ``name``: the manager's dispatcher on a
    thread, RUNNING reported, STOP and SHUTDOWN turned into SIGTERM, and STOPPED with
    ``body``'s exit status. FailedPrecondition when the manager did not start us."""
    api = _Api()
    connected = threading.Event()
    finished = threading.Event()
    failure: list[int] = []
    exit_code = [0]
    status = ServiceStatus(dwServiceType=SERVICE_WIN32_OWN_PROCESS)
    handle = [0]

    def report(current: int, wait_hint_ms: int = 0) -> None:
        status.dwCurrentState = current
        status.dwControlsAccepted = (
            SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN if current == RUNNING else 0
        )
        status.dwWaitHint = wait_hint_ms
        if current == STOPPED and exit_code[0]:
            status.dwWin32ExitCode = ERROR_SERVICE_SPECIFIC_ERROR
            status.dwServiceSpecificExitCode = exit_code[0]
        if not api.SetServiceStatus(handle[0], ctypes.byref(status)):
            log.warning("SetServiceStatus failed: Windows error %d", _last_error())

    def on_control(control: int, _type: int, _data: Any, _context: Any) -> int:
        if control in (SERVICE_CONTROL_STOP, SERVICE_CONTROL_SHUTDOWN):
            log.info("service %s: stop requested", name)
            report(STOP_PENDING, 30_000)
            # The agent's own SIGTERM handling drains it; the main thread runs it.
            signal.raise_signal(signal.SIGTERM)
            return NO_ERROR
        if control == SERVICE_CONTROL_INTERROGATE:
            return NO_ERROR
        return ERROR_CALL_NOT_IMPLEMENTED

    def service_main(_argc: int, _argv: Any) -> None:
        handle[0] = api.RegisterServiceCtrlHandlerExW(name, handler, None) or 0
        if not handle[0]:
            failure.append(_last_error())
            connected.set()
            return
        report(RUNNING)
        connected.set()
        finished.wait()
        report(STOPPED)

    # Kept referenced for as long as the manager may call them.
    handler = api.HandlerEx(on_control)
    main = api.ServiceMain(service_main)
    table = (api.TableEntry * 2)(api.TableEntry(name, main), api.TableEntry())

    def dispatch() -> None:
        if not api.StartServiceCtrlDispatcherW(table):
            failure.append(_last_error())
            connected.set()

    dispatcher = threading.Thread(target=dispatch, name="service-dispatcher", daemon=True)
    dispatcher.start()
    connected.wait()
    if failure:
        if failure[0] == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
            raise errors.FailedPrecondition(
                "`vmatlas agent service run` is what the service manager starts; install "
                "the service with `vmatlas agent service install` and start it instead"
            )
        raise errors.Error(f"service {name}: Windows error {failure[0]}")
    log.info("service %s running", name)
    try:
        exit_code[0] = body()
    except BaseException:
        exit_code[0] = 1
        log.exception("service %s failed", name)
        raise
    finally:
        finished.set()
        dispatcher.join(timeout=30)
    log.info("service %s stopped (exit status %d)", name, exit_code[0])
    return exit_code[0]
