"""One error hierarchy for every part of vmatlas (after psutil's ``_common``).

Platform readers translate ``OSError`` (errno or winerror) into these; the servers map
them to gRPC status codes in one function (:func:`vmatlas.grpcutil.status_of`); the
client maps status codes back to the same classes.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every vmatlas error."""

    def __init__(self, message: str = "", *, pid: int | None = None, name: str | None = None):
        self.pid = pid
        self.name = name
        super().__init__(message or self._default_message())

    def _default_message(self) -> str:
        return self.__class__.__name__


class NoSuchProcess(Error):
    """The process does not exist, or exited while it was being read."""

    def _default_message(self) -> str:
        return f"no such process: pid {self.pid}"


class ZombieProcess(NoSuchProcess):
    """The process has exited but not been reaped; it has no address space."""

    def _default_message(self) -> str:
        return f"pid {self.pid} is a zombie"


class AccessDenied(Error):
    """The caller may not read the process (or may not make the call)."""

    def _default_message(self) -> str:
        return f"access denied to pid {self.pid}" if self.pid is not None else "access denied"


class InvalidArgument(Error):
    """The request itself is malformed."""


class NotFound(Error):
    """A host, snapshot or other named object does not exist."""


class Unavailable(Error):
    """The peer (an agent, the server) cannot be reached now; retrying may succeed."""


class Aborted(Error):
    """Another writer won a race (a lease taken over, a transaction that lost): read
    the state again before deciding whether to retry."""


class FailedPrecondition(Error):
    """The request is valid but the system is not in a state to serve it."""


class AlreadyExists(Error):
    """The name is taken (for example a host id claimed by a live agent)."""


class Unauthenticated(Error):
    """No valid credentials were presented."""


class ResourceExhausted(Error):
    """A limit (rate, size, queue) was hit."""


class DeadlineExceeded(Error):
    """The call did not finish in time."""


# Store errors: each is also one of the kinds above, so the one mapping to gRPC status
# codes holds for them, and a caller can tell "retry" from "give up" by type.


class StoreError(Error):
    """Base of every error a store raises beyond NotFound and InvalidArgument."""


class StoreClosed(StoreError, FailedPrecondition):
    """The store was closed (the server is stopping): give up, retrying cannot work."""


class StoreUnavailable(StoreError, Unavailable):
    """The database cannot be reached or is busy now (connection lost, pool exhausted,
    lock timeout, serialization failure): the same call may succeed later."""


class StoreConflict(StoreError, Aborted):
    """A concurrent writer holds what was asked for (a lease or an ownership record
    with a newer epoch): retrying the same call is wrong; re-read, or stop (fence)."""
