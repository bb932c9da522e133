"""The Python client library.

>>> from vmatlas.client import Client
>>> with Client("127.0.0.1:50551") as c:          # an agent (or the server)
...     snap = c.snapshot(1234)
...     for region in snap.regions:               # rows: start, end, size, state, perms, ...
...         print(hex(region.start), region.perms, region.path)

Failed calls raise the :mod:`vmatlas.errors` hierarchy (``NoSuchProcess``,
``AccessDenied``, ``Unavailable``, ...), never a raw ``grpc.RpcError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpc

from vmatlas import errors, wire
from vmatlas.grpcutil import channel_options, error_from_rpc, is_loopback
from vmatlas.model import Host, ProcessSummary, Snapshot, SnapshotView
from vmatlas.security import tls
from vmatlas.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["Client", "ProcessList", "errors"]

ORDERS = {
    "regions": agent_pb2.PROCESS_ORDER_REGION_COUNT,
    "headroom": agent_pb2.PROCESS_ORDER_HEADROOM,
    "pid": agent_pb2.PROCESS_ORDER_PID,
}


class ProcessList(list[ProcessSummary]):
    """Process summaries, plus the host they came from and how many were unreadable."""

    def __init__(self, items: list[ProcessSummary], host: Host, access_denied_count: int):
        super().__init__(items)
        self.host = host
        self.access_denied_count = access_denied_count


class Client:
    """A connection to a vmatlas agent or server.

    ``timeout`` (seconds) bounds every unary call. For TLS give ``ca`` (the fleet CA
    that signed the server's certificate; else the system roots are trusted) and, where
    the server requires mutual TLS, ``cert`` and ``key``; or give ready ``credentials``.
    ``token`` is sent as a bearer token, and never in clear beyond loopback.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50551",
        *,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
    ):
        if credentials is None and (ca or cert or key):
            credentials = tls.channel_credentials(ca, cert, key)
        if token and credentials is None and not is_loopback(target):
            raise errors.FailedPrecondition(
                f"refusing to send a token to {target} without TLS; give ca= (--ca)"
            )
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=channel_options())
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options())
        self._agent = agent_pb2_grpc.AgentServiceStub(self._channel)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> errors.Error:
        error = error_from_rpc(exc)
        if isinstance(error, errors.Unavailable):
            return errors.Unavailable(f"cannot reach {self.target}: {error}")
        return error

    # -- agent calls --------------------------------------------------------------------

    def host(self) -> Host:
        """The agent's host facts."""
        response = self._call(self._agent.GetHost, agent_pb2.GetHostRequest())
        return wire.host_from_pb(response.host)

    def processes(self, *, order: str = "regions", limit: int = 0, name: str = "") -> ProcessList:
        """Process summaries of the agent's host, by region count (or ``headroom``,
        ``pid``), at most ``limit`` (0 = all), only names containing ``name``."""
        if order not in ORDERS:
            raise errors.InvalidArgument(f"order must be one of {', '.join(ORDERS)}")
        request = agent_pb2.ListProcessesRequest(order=ORDERS[order], limit=limit, name_filter=name)
        response = self._call(self._agent.ListProcesses, request)
        return ProcessList(
            [wire.process_summary_from_pb(p) for p in response.processes],
            wire.host_from_pb(response.host),
            response.access_denied_count,
        )

    def snapshot(
        self,
        pid: int,
        *,
        include_free: bool = False,
        include_residency: bool = False,
        view: SnapshotView = SnapshotView.NATIVE,
    ) -> Snapshot:
        """One process's address space. Raises NoSuchProcess, AccessDenied, ..."""
        request = agent_pb2.GetSnapshotRequest(
            pid=pid,
            include_free=include_free,
            include_residency=include_residency,
            view=int(view),  # type: ignore[arg-type]
        )
        response = self._call(self._agent.GetSnapshot, request)
        return wire.snapshot_from_pb(response.snapshot)

    def watch(
        self, pid: int, *, interval: float = 5.0, poll: float = 0.5
    ) -> Iterator[tuple[ProcessSummary, bool]]:
        """``(summary, region_count_changed)`` now, every ``interval`` seconds and at
        once when the region count changes; ends with NoSuchProcess when it exits."""
        request = agent_pb2.WatchProcessRequest(
            pid=pid, interval_seconds=interval, poll_seconds=poll
        )
        stream = self._agent.WatchProcess(request, metadata=self._metadata)
        try:
            for response in stream:
                yield wire.process_summary_from_pb(response.summary), response.region_count_changed
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error(exc) from None
        finally:
            stream.cancel()
