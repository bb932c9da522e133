"""``vmatlas.v1.AgentHubService``: the agents' streams, over
:class:`vmatlas.server.domain.hub.Hub`, on ``grpc.aio`` (an idle stream holds no
thread). This module turns the stream's messages into hub calls and the hub's
:data:`AgentMessage` into ``ConnectResponse`` messages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from vmatlas import errors, wire
from vmatlas.grpcutil import abort_with_async
from vmatlas.security.auth import require_agent_host
from vmatlas.server.domain.hub import (
    AgentMessage,
    AgentSession,
    HeartbeatAck,
    Hub,
    SnapshotAnswer,
    SnapshotCommand,
    SummaryPush,
)
from vmatlas.v1 import agent_pb2, hub_pb2, hub_pb2_grpc
from vmatlas.validate import validate_host

log = logging.getLogger(__name__)

SERVICE_NAME = hub_pb2.DESCRIPTOR.services_by_name["AgentHubService"].full_name


def message_to_pb(message: AgentMessage) -> hub_pb2.ConnectResponse:
    out = hub_pb2.ConnectResponse()
    if isinstance(message, SnapshotCommand):
        command = out.snapshot_command
        command.request_id = message.request_id
        command.timeout_seconds = message.timeout_seconds
        request = message.request
        command.request.CopyFrom(
            agent_pb2.GetSnapshotRequest(
                pid=request.pid,
                include_free=request.include_free,
                include_residency=request.include_residency,
                view=int(request.view),  # type: ignore[arg-type]
            )
        )
    elif isinstance(message, HeartbeatAck):
        wire.timestamp_to_pb(message.server_time, out.heartbeat_ack.send_time)
        out.heartbeat_ack.heartbeat_interval_seconds = message.heartbeat_seconds
    else:
        out.summaries_ack.sequence = message.sequence
        if message.refused is not None:
            out.summaries_ack.refused_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            out.summaries_ack.refused_message = str(message.refused)
    return out


def answer_from_pb(result: hub_pb2.SnapshotResult) -> SnapshotAnswer:
    if result.HasField("error"):
        return SnapshotAnswer(result.request_id, error=wire.error_from_pb(result.error))
    return SnapshotAnswer(result.request_id, result.snapshot_header, result.regions)


def push_from_pb(push: hub_pb2.SummaryPush) -> SummaryPush:
    return SummaryPush(
        processes=push.processes,
        complete=push.complete,
        access_denied_count=push.access_denied_count,
        sequence=push.sequence,
        dropped_push_count=push.dropped_push_count,
    )


class AgentHubServicer(hub_pb2_grpc.AgentHubServiceServicer):
    """Each stream is one coroutine that writes the session's outbox and one task that
    reads the agent's messages in order (a push is stored before the next message is
    read, so an acknowledgement after it means it is committed)."""

    def __init__(self, hub: Hub):
        self.hub = hub

    async def Connect(
        self,
        request_iterator: AsyncIterator[hub_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[hub_pb2.ConnectResponse]:
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("message") != "register":
                raise errors.InvalidArgument("the first message must be a registration")
            host = wire.registered_host_from_pb(first.register.host)
            if not host.host_id:
                raise errors.InvalidArgument("the registration names no host id")
            validate_host(host)
            # The agent's certificate must name the host it registers as.
            require_agent_host(host.host_id)
            session = await self.hub.claim(host, first.register.instance_id)
        except errors.Error as exc:
            await abort_with_async(context, exc)
            return
        except grpc.RpcError:
            return  # the agent went away before it registered
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception:
            # Logged here; the agent learns only that the server failed, not how.
            log.exception("registering an agent failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error registering the agent")
            return
        registered = hub_pb2.ConnectResponse()
        registered.registered.heartbeat_interval_seconds = session.heartbeat_seconds
        wire.timestamp_to_pb(self.hub.clock(), registered.registered.server_time)
        reader: asyncio.Task[None] | None = None
        try:
            yield registered
            reader = asyncio.create_task(
                self._read(session, request_iterator), name=f"vmatlas-agent-{host.host_id}"
            )
            async for message in session.outgoing():
                yield message_to_pb(message)
            if session.ended_by is not None:
                # Fenced: the agent logs why its stream ended.
                await abort_with_async(context, session.ended_by)
        finally:
            if reader is not None:
                reader.cancel()
            # Shielded: a stream cancelled by its agent still records its host offline.
            await asyncio.shield(self.hub.release(session, "stream ended"))

    async def _read(
        self, session: AgentSession, messages: AsyncIterator[hub_pb2.ConnectRequest]
    ) -> None:
        reason = "agent disconnected"
        try:
            async for message in messages:
                self.hub.heard(session)
                kind = message.WhichOneof("message")
                if kind == "heartbeat":
                    self.hub.heartbeat(session)
                elif kind == "summaries":
                    await self.hub.accept_push(session, push_from_pb(message.summaries))
                elif kind == "snapshot_result":
                    session.resolve(answer_from_pb(message.snapshot_result))
                else:
                    log.warning("agent %s sent an unexpected %s message", session.host_id, kind)
        except asyncio.CancelledError:
            reason = "stream ended"
            raise
        except grpc.RpcError:
            reason = "stream broken"
        except Exception:
            log.exception("agent stream of %s failed", session.host_id)
            reason = "internal error"
        finally:
            await asyncio.shield(self.hub.release(session, reason))
