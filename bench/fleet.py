"""Fake agents for the server benchmarks, in a process of their own.

``python -m bench.fleet ingest TARGET STREAMS PUSHES BATCH TAG`` opens STREAMS agent
streams (``AgentHubService.Connect``, as the uplink does), registers each, then pushes
PUSHES complete summary batches of BATCH processes on every stream at once, and ends
each stream's burst with a heartbeat: the server handles one stream's messages in
order, so its heartbeat ack means every push before it is committed. Messages are
built and serialized before the clock starts. Prints one JSON line.

``python -m bench.fleet hold TARGET COUNT TAG [beat]`` opens COUNT agent streams,
each on its own connection with an agent's channel options (keepalive included;
grpc.aio in one process), registers them, prints ``{"ready": COUNT}`` and holds them
open until stdin closes. With ``beat`` each behaves as an idle agent does: it sends a
heartbeat every interval the server told it (at registration, then in each answer),
the first at a random point of the first interval, as agents started at different
times do. Each line read from stdin is answered with one JSON line: heartbeats sent so
far and the shortest and longest interval the agents keep now.

``python -m bench.fleet soak TARGET COUNT INTERVAL PUSHES BATCH`` opens COUNT agent
streams as ``hold`` does, then each sends PUSHES sequenced pushes of BATCH processes,
each with a heartbeat, one every INTERVAL on a fixed schedule, as the uplink does;
then it ends its stream and reads to the end, so every acknowledgement the server
sends is counted (the server reads a stream in order: it acknowledges each push before
it sees the end). A loaded machine stretches the schedule but never changes the count.
Prints ``{"ready": COUNT}`` once registered, then one JSON line: pushes sent and
acknowledged, and the errors seen (an acknowledgement out of order or refused is one).
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator

import grpc

from vmatlas import wire
from vmatlas.grpcutil import agent_channel_options
from vmatlas.model import Host, OperatingSystem, Process, ProcessSummary, Summary
from vmatlas.v1 import hub_pb2, hub_pb2_grpc


def _host(host_id: str) -> Host:
    return Host(
        host_id=host_id,
        hostname=host_id,
        os=OperatingSystem.LINUX,
        kernel_version="6.1.0",
        user_address_max=(1 << 47) - 1,
        max_map_count=65530,
        cpu_count=8,
        memory_total_bytes=32 << 30,
    )


def _register(host_id: str) -> hub_pb2.ConnectRequest:
    message = hub_pb2.ConnectRequest()
    wire.host_to_pb(_host(host_id), message.register.host)
    message.register.instance_id = f"bench-{host_id}"
    message.register.agent_version = "bench"
    return message


def summary_item(pid: int, capture_time: float) -> ProcessSummary:
    """A process summary like the sweep produces for a typical server process."""
    maps = 200 + pid % 5000
    return ProcessSummary(
        process=Process(
            pid=pid,
            parent_pid=1,
            name=f"app-{pid % 37}",
            executable=f"/usr/bin/app-{pid % 37}",
            command_line=(f"/usr/bin/app-{pid % 37}", "--serve", f"--port={8000 + pid % 100}"),
            user="svc",
            start_time=1_700_000_000.0 + pid,
            user_address_max=(1 << 47) - 1,
        ),
        summary=Summary(
            region_count=maps * 2,
            map_count=maps,
            max_map_count=65530,
            headroom_fraction=1 - maps / 65530,
            committed_bytes=maps * 1 << 20,
            reserved_bytes=maps * 2 << 20,
            free_bytes=1 << 46,
            largest_free_bytes=1 << 45,
            single_page_region_count=maps // 10,
            guard_region_count=maps // 20,
            allocation_count=maps // 2,
        ),
        capture_time=capture_time,
    )


def _push(batch: int, capture_time: float) -> hub_pb2.ConnectRequest:
    message = hub_pb2.ConnectRequest()
    message.summaries.complete = True
    for pid in range(1000, 1000 + batch):
        wire.process_summary_to_pb(
            summary_item(pid, capture_time), message.summaries.processes.add()
        )
    return message


def ingest(target: str, streams: int, pushes: int, batch: int, tag: str) -> dict[str, float]:
    base = time.time()
    # Serialized once; every stream sends the same bytes (capture times differ per push).
    payloads = [_push(batch, base + i).SerializeToString() for i in range(pushes)]
    heartbeat = hub_pb2.ConnectRequest()
    wire.timestamp_to_pb(base, heartbeat.heartbeat.send_time)
    go = threading.Event()
    registered = threading.Barrier(streams + 1)
    done: list[float] = []
    errors: list[str] = []
    channels = []

    def run(index: int) -> None:
        outbox: queue.Queue[hub_pb2.ConnectRequest | None] = queue.Queue()
        outbox.put(_register(f"bench-ingest-{tag}-{index}"))

        def requests() -> Iterator[hub_pb2.ConnectRequest]:
            while (message := outbox.get()) is not None:
                yield message

        channel = grpc.insecure_channel(target, options=agent_channel_options())
        channels.append(channel)
        # Pre-parsed so the clock sees only the send, not our own decoding.
        messages = [hub_pb2.ConnectRequest.FromString(p) for p in payloads]
        call = hub_pb2_grpc.AgentHubServiceStub(channel).Connect(requests())
        try:
            responses = iter(call)
            first = next(responses)
            assert first.WhichOneof("message") == "registered"
            registered.wait()
            go.wait()
            for message in messages:
                outbox.put(message)
            outbox.put(heartbeat)
            for response in responses:
                if response.WhichOneof("message") == "heartbeat_ack":
                    done.append(time.perf_counter())
                    break
        except Exception as exc:  # reported in the JSON line
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            registered.abort()
        finally:
            outbox.put(None)
            call.cancel()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    registered.wait(60)
    start = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join(120)
    for channel in channels:
        channel.close()
    if errors or len(done) != streams:
        return {"error": errors[0] if errors else f"{len(done)} of {streams} streams finished"}
    seconds = max(done) - start
    total = streams * pushes * batch
    return {"seconds": seconds, "summaries": total, "per_second": total / seconds}


async def _hold(target: str, count: int, tag: str, beating: bool = False) -> None:
    from grpc import aio

    calls = []
    channels = []
    beats: list[asyncio.Task[None]] = []
    # Each agent's interval as last told, and the heartbeats sent in all.
    intervals: list[float] = []
    sent = 0

    async def beat(call: aio.StreamStreamCall, index: int) -> None:
        async def read_answers() -> None:
            while (message := await call.read()) is not aio.EOF:
                told = message.heartbeat_ack.heartbeat_interval_seconds
                if told:
                    intervals[index] = told

        nonlocal sent
        reading = asyncio.create_task(read_answers())
        try:
            await asyncio.sleep(random.uniform(0, intervals[index]))
            while True:
                message = hub_pb2.ConnectRequest()
                wire.timestamp_to_pb(time.time(), message.heartbeat.send_time)
                await call.write(message)
                sent += 1
                # The answer comes at once; the interval it carries is the next wait.
                await asyncio.sleep(intervals[index])
        finally:
            reading.cancel()

    async def connect(index: int) -> None:
        channel = aio.insecure_channel(target, options=agent_channel_options())
        channels.append(channel)
        call = hub_pb2_grpc.AgentHubServiceStub(channel).Connect()
        calls.append(call)
        await call.write(_register(f"bench-idle-{tag}-{index}"))
        response = await call.read()
        assert response.WhichOneof("message") == "registered", response
        intervals.append(response.registered.heartbeat_interval_seconds)
        if beating:
            beats.append(asyncio.create_task(beat(call, len(intervals) - 1)))

    # In waves, so the server's accept queue is not the thing measured.
    for first in range(0, count, 50):
        await asyncio.gather(*(connect(i) for i in range(first, min(count, first + 50))))
    print(json.dumps({"ready": len(calls)}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        state = {"heartbeats": sent, "intervals": [min(intervals), max(intervals)]}
        print(json.dumps(state), flush=True)
    for task in beats:
        task.cancel()
    for call in calls:
        call.cancel()
    await asyncio.gather(*(channel.close() for channel in channels))


async def _soak(target: str, count: int, interval: float, pushes: int, batch: int) -> None:
    from grpc import aio

    sent = acked = 0
    problems: list[str] = []

    async def agent(index: int, ready: asyncio.Event, go: asyncio.Event) -> None:
        nonlocal sent, acked
        channel = aio.insecure_channel(target, options=agent_channel_options())
        try:
            call = hub_pb2_grpc.AgentHubServiceStub(channel).Connect()
            await call.write(_register(f"soak-{index:03d}"))
            response = await call.read()
            assert response.WhichOneof("message") == "registered", response
            ready.set()
            await go.wait()
            last_acked = 0

            async def reader() -> None:
                nonlocal acked, last_acked
                while (message := await call.read()) is not aio.EOF:
                    if message.WhichOneof("message") != "summaries_ack":
                        continue
                    ack = message.summaries_ack
                    if ack.sequence != last_acked + 1 or ack.refused_code:
                        raise AssertionError(
                            f"push {ack.sequence} acknowledged after {last_acked}"
                            + (f", refused: {ack.refused_message}" if ack.refused_code else "")
                        )
                    acked += 1
                    last_acked = ack.sequence

            reading = asyncio.create_task(reader())
            # Spread the agents over the interval, as independent agents would be.
            start = time.monotonic() + interval * index / count
            for sequence in range(1, pushes + 1):
                await asyncio.sleep(max(0.0, start + (sequence - 1) * interval - time.monotonic()))
                push = _push(batch, time.time())
                push.summaries.sequence = sequence
                await call.write(push)
                sent += 1
                heartbeat = hub_pb2.ConnectRequest()
                wire.timestamp_to_pb(time.time(), heartbeat.heartbeat.send_time)
                await call.write(heartbeat)
            await call.done_writing()
            # Only bounds a hang: the server ends the stream once it has read it all.
            await asyncio.wait_for(reading, 120)
        except Exception as exc:  # reported in the JSON line
            problems.append(f"agent {index}: {type(exc).__name__}: {exc}"[:200])
            ready.set()
        finally:
            await channel.close()

    go = asyncio.Event()
    readies = [asyncio.Event() for _ in range(count)]
    tasks = []
    for first in range(0, count, 50):
        for i in range(first, min(count, first + 50)):
            tasks.append(asyncio.create_task(agent(i, readies[i], go)))
        await asyncio.gather(*(r.wait() for r in readies[first : first + 50]))
    print(json.dumps({"ready": count}), flush=True)
    go.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"sent": sent, "acked": acked, "errors": problems}), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "ingest":
        target, streams, pushes, batch, tag = argv[1:6]
        try:
            answer = ingest(target, int(streams), int(pushes), int(batch), tag)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        print(json.dumps(answer), flush=True)
    elif argv[0] == "hold":
        asyncio.run(_hold(argv[1], int(argv[2]), argv[3], argv[4:] == ["beat"]))
    elif argv[0] == "soak":
        target, count, interval, pushes, batch = argv[1:6]
        asyncio.run(_soak(target, int(count), float(interval), int(pushes), int(batch)))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
