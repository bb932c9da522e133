"""``vmatlas.v1.ReplicaService``: the link between servers on one store, both ends.

:class:`ReplicaServicer` answers a forwarded fresh snapshot from this server's own
agent streams (:meth:`FleetQueries.held_snapshot_async`), and a peer's word that it
took a host over (:meth:`Hub.fence_now`). :class:`ReplicaLinks` is the
:class:`~vmatlas.server.domain.fleet.Peers` the domain forwards through and the
:class:`~vmatlas.server.domain.hub.Fencer` a claim tells the old holder through: one
``grpc.aio`` channel per peer address, mutual TLS with this server's replica
certificate when TLS is on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

from vmatlas import errors
from vmatlas.grpcutil import channel_options, error_from_rpc, maps_errors
from vmatlas.security.tokens import Role
from vmatlas.server.domain.fleet import Caller, FleetQueries, HostSnapshot
from vmatlas.server.domain.hub import Replica, SnapshotRequest
from vmatlas.server.rpc.fleet import snapshot_request_from_pb, time_left
from vmatlas.server.store import HostOwnership
from vmatlas.v1 import replica_pb2, replica_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"].full_name

# Beyond the agent's own timeout, for the answer to come back over the link: the
# holder's DeadlineExceeded, not the link's, tells the caller the agent was slow.
LINK_SLACK_SECONDS = 2.0
# How long to wait for a connection to a peer: an address nobody answers on (a dead
# machine) must not hold a forwarded request up for the whole agent timeout.
CONNECT_SECONDS = 3.0
# For a peer to check one lease in the store and end a stream.
FENCE_SECONDS = 10.0

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def caller_from_pb(message: replica_pb2.ForwardedCaller) -> Caller:
    role = Role.parse(message.role) if message.role else None
    return Caller(message.name, role)


class ReplicaServicer(replica_pb2_grpc.ReplicaServiceServicer):
    def __init__(self, queries: FleetQueries):
        self.queries = queries

    @maps_errors
    async def TakeHostSnapshot(
        self, request: replica_pb2.TakeHostSnapshotRequest, context: Context
    ) -> replica_pb2.TakeHostSnapshotResponse:
        caller = caller_from_pb(request.caller)
        # The forwarding server checked the role already; a link is no way around it.
        if caller.role is None or caller.role < Role.INSPECTOR:
            raise errors.AccessDenied(
                f"{caller.name or 'the caller'} ({caller.role or 'no role'}) may not take "
                "snapshots (needs inspector)"
            )
        log.info(
            "fresh snapshot of %s pid %d for %s (%s), forwarded by %s",
            request.host_id,
            request.pid,
            caller.name,
            caller.role,
            request.forwarded_by or context.peer(),
        )
        found = await self.queries.held_snapshot_async(
            request.host_id,
            snapshot_request_from_pb(request),
            timeout_seconds=time_left(context),
        )
        if found is None:
            return replica_pb2.TakeHostSnapshotResponse(held=False)
        return replica_pb2.TakeHostSnapshotResponse(
            held=True,
            snapshot_header=found.serialized_header(),  # as the agent sent it
            regions=found.regions,
            snapshot_id=found.snapshot_id,
        )

    @maps_errors
    async def FenceHost(
        self, request: replica_pb2.FenceHostRequest, context: Context
    ) -> replica_pb2.FenceHostResponse:
        if not request.host_id or not request.epoch:
            raise errors.InvalidArgument("host_id and epoch must be given")
        ended = await self.queries.hub.fence_now(
            request.host_id, request.epoch, request.claimed_by or context.peer()
        )
        return replica_pb2.FenceHostResponse(ended=ended)


# What gRPC says when a connection attempt's TLS handshake fails, and what it means.
_NOT_TRUSTED_THERE = (
    "the TLS handshake was refused there: that server does not accept this one's "
    "replica certificate (is it issued by the CA it trusts, its --tls-client-ca?)"
)
_TLS_FAILURES = (
    (
        "CERTIFICATE_VERIFY_FAILED",
        "this server does not trust that one's certificate (is it issued by the CA "
        "this one trusts, its --tls-client-ca?)",
    ),
    ("ALERT_UNKNOWN_CA", _NOT_TRUSTED_THERE),
    ("ALERT_BAD_CERTIFICATE", _NOT_TRUSTED_THERE),
    ("ALERT_CERTIFICATE_REQUIRED", _NOT_TRUSTED_THERE),
    ("ALERT_HANDSHAKE_FAILURE", "the TLS handshake failed there"),
)


def link_failure(details: str, *, tls: bool) -> str:
    """``details`` of a call that did not reach a replica, led by what a failed TLS
    handshake means. A connection that closes before it was ever ready is, on a TLS
    link, the peer's refusal of this server's certificate: with TLS 1.3 the peer
    checks it after this side has finished its part, and only closes."""
    if not tls or "failed to connect" not in details:
        return details
    for marker, meaning in _TLS_FAILURES:
        if marker in details:
            return f"{meaning}; {details}"
    if "Socket closed" in details:
        return (
            "the connection closed in the TLS handshake: most likely that server does "
            f"not accept this one's replica certificate; {details}"
        )
    return details


async def _connect_attempt(channel: grpc.aio.Channel) -> None:
    """Until ``channel`` is connected or its attempt failed. A call that does not
    wait for readiness fails at once on a failed channel, with the attempt's error;
    waiting for READY instead would hide that error behind a timeout."""
    state = channel.get_state(try_to_connect=True)
    while state not in (
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    ):
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


class ReplicaLinks:
    """Channels to the other replicas, made on first use and kept. Lives on the
    server's event loop. ``credentials`` (None: plain text, for loopback) are this
    server's client side of mutual TLS."""

    def __init__(
        self,
        replica: Callable[[], Replica],
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self._replica = replica
        self.credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def _stub(self, address: str) -> replica_pb2_grpc.ReplicaServiceStub:
        """A stub on a channel to ``address`` that is connected, or that failed to
        connect (a call on it then fails at once, UNAVAILABLE with the reason: refused,
        a TLS handshake the peer or this server rejected); Unavailable when it neither
        connects nor fails within CONNECT_SECONDS (nobody answers there)."""
        channel = self._channels.get(address)
        if channel is None:
            options = channel_options()
            channel = (
                grpc.aio.secure_channel(address, self.credentials, options=options)
                if self.credentials is not None
                else grpc.aio.insecure_channel(address, options=options)
            )
            self._channels[address] = channel
        try:
            await asyncio.wait_for(_connect_attempt(channel), CONNECT_SECONDS)
        except TimeoutError:
            raise errors.Unavailable(
                f"server {address} did not answer within {CONNECT_SECONDS:.0f} s"
            ) from None
        return replica_pb2_grpc.ReplicaServiceStub(channel)

    async def take_snapshot(
        self,
        address: str,
        host_id: str,
        request: SnapshotRequest,
        *,
        timeout_seconds: float,
        caller: Caller | None,
    ) -> HostSnapshot | None:
        message = replica_pb2.TakeHostSnapshotRequest(
            host_id=host_id,
            pid=request.pid,
            include_free=request.include_free,
            include_residency=request.include_residency,
            view=int(request.view),  # type: ignore[arg-type]
            forwarded_by=self._replica().replica_id,
        )
        if caller is not None:
            message.caller.name = caller.name
            message.caller.role = str(caller.role) if caller.role is not None else ""
        stub = await self._stub(address)
        try:
            response = await stub.TakeHostSnapshot(
                message, timeout=timeout_seconds + LINK_SLACK_SECONDS
            )
        except grpc.RpcError as exc:
            error = error_from_rpc(exc)
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise await self._unreachable(address, error) from None
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                # The caller's role was checked here already: a refusal there is the
                # link's configuration (certificates, CA), not the caller's doing.
                raise errors.Unavailable(
                    f"server {address} refused the forwarded request: {error}"
                ) from None
            raise error from None
        if not response.held:
            return None
        # Sent on as received; decoded only where a front end needs the model.
        return HostSnapshot(
            response.snapshot_id,
            host_id,
            response.regions,
            header_bytes=response.snapshot_header,
        )

    async def fence_host(self, lost: HostOwnership, claimed: HostOwnership) -> bool:
        stub = await self._stub(lost.address)
        message = replica_pb2.FenceHostRequest(
            host_id=claimed.host_id, epoch=claimed.epoch, claimed_by=claimed.replica_id
        )
        try:
            response = await stub.FenceHost(message, timeout=FENCE_SECONDS)
        except grpc.RpcError as exc:
            error = error_from_rpc(exc)
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise error from None
            # Down, slow, or refusing this link: the peer learns at its renewal.
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise errors.Unavailable(
                    f"server {lost.address} refused the message: {error}"
                ) from None
            raise await self._unreachable(lost.address, error) from None
        return bool(response.ended)

    async def _unreachable(self, address: str, error: errors.Error) -> errors.Unavailable:
        """Unavailable for a call that did not reach ``address``, saying why in plain
        words where gRPC's text is a TLS library's (kept after them). A channel whose
        connection attempt failed is dropped: the next call tries a new one at once,
        not after the failed channel's growing backoff."""
        channel = self._channels.get(address)
        if (
            channel is not None
            and channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE
        ):
            del self._channels[address]
            await channel.close()
        return errors.Unavailable(
            f"server {address}: {link_failure(str(error), tls=self.credentials is not None)}"
        )

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
