"""Pushes through a real agent stream that fail validation: refused with
INVALID_ARGUMENT in their acknowledgement, logged, and nothing of them stored, whatever
is wrong with them (hypothesis draws the faults)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmatlas import wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.client import Client
from vmatlas.model import ProcessSummary
from vmatlas.server.app import FleetServer
from vmatlas.v1 import hub_pb2

from .conftest import Stream

HOST_NUMBERS = itertools.count()

# Ways to break one summary of a push; each is invalid whatever else the push holds.
FAULTS: dict[str, Callable[[ProcessSummary], ProcessSummary]] = {
    "pid 0": lambda p: replace(p, process=replace(p.process, pid=0)),
    "map count above region count": lambda p: replace(
        p, summary=replace(p.summary, map_count=p.summary.region_count + 1)
    ),
    "largest free above free": lambda p: replace(
        p, summary=replace(p.summary, largest_free_bytes=p.summary.free_bytes + 1)
    ),
    "headroom above one": lambda p: replace(p, summary=replace(p.summary, headroom_fraction=1.5)),
    "name with NUL": lambda p: replace(p, process=replace(p.process, name="a\0b")),
    "range beyond the host": lambda p: replace(
        p, process=replace(p.process, user_address_max=1 << 63)
    ),
    "capture before 1970": lambda p: replace(p, capture_time=-5.0),
}


def push(sequence: int, items: list[ProcessSummary]) -> hub_pb2.ConnectRequest:
    message = hub_pb2.ConnectRequest()
    message.summaries.sequence = sequence
    message.summaries.complete = True
    for item in items:
        wire.process_summary_to_pb(item, message.summaries.processes.add())
    return message


def acknowledgement(stream: Stream) -> hub_pb2.SummaryPushAck:
    while True:
        response = stream.next()
        if response.WhichOneof("message") == "summaries_ack":
            return response.summaries_ack


@pytest.fixture(scope="module")
def summaries() -> list[ProcessSummary]:
    reader = LinuxReader()
    found = [s for s in reader.process_summaries() if isinstance(s, ProcessSummary)]
    return found[:6]


def stored(client: Client, host_id: str) -> list[tuple[int, float]]:
    found = client.fleet_processes(host=host_id, order="pid")
    return sorted((p.item.process.pid, p.item.capture_time) for p in found)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_malformed_pushes_are_refused_and_store_nothing(
    server: FleetServer,
    stream: Callable[..., Stream],
    summaries: list[ProcessSummary],
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
) -> None:
    host = replace(LinuxReader().host(), host_id=f"pushy-{next(HOST_NUMBERS)}")
    agent = stream(server.address, host)
    assert agent.next().HasField("registered")
    with Client(server.address) as client:
        agent.outbox.put(push(1, summaries))
        assert acknowledgement(agent).refused_code == 0
        before = stored(client, host.host_id)
        assert before

        fault = data.draw(st.sampled_from(sorted(FAULTS)))
        victims = data.draw(st.sets(st.integers(0, len(summaries) - 1), min_size=1))
        bad = [FAULTS[fault](s) if i in victims else s for i, s in enumerate(summaries)]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vmatlas.server.domain.hub"):
            agent.outbox.put(push(2, bad))
            ack = acknowledgement(agent)
        assert (ack.sequence, ack.refused_code) == (2, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        assert f"processes[{min(victims)}]" in ack.refused_message
        assert any("refused a bad summary push" in r.message for r in caplog.records)
        assert (
            stored(client, host.host_id) == before
        )  # nothing of the bad push, not even its good rows

        agent.outbox.put(push(3, summaries[:2]))
        assert acknowledgement(agent).refused_code == 0
        assert stored(client, host.host_id) == sorted(
            (s.process.pid, s.capture_time) for s in summaries[:2]
        )
    agent.close()
