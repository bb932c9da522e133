"""The one address-stripping function, on real snapshots."""

from __future__ import annotations

import os

from google.protobuf import descriptor_pool

from vmatlas import wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.security import redact
from vmatlas.v1 import agent_pb2, analysis_pb2, fleet_pb2, hub_pb2  # noqa: F401  # registered


def test_strip_addresses_leaves_the_summary_and_no_layout() -> None:
    snapshot = LinuxReader().snapshot(os.getpid(), include_free=True)
    response = agent_pb2.GetSnapshotResponse()
    wire.snapshot_to_pb(snapshot, response.snapshot)
    assert "snapshot.regions" in redact.address_fields_set(response)
    redact.strip_addresses(response)
    assert redact.address_fields_set(response) == []
    assert not response.snapshot.HasField("regions")
    assert response.snapshot.summary.region_count == snapshot.summary.region_count
    assert response.snapshot.process.pid == os.getpid()
    # What is left still decodes: a snapshot with an empty table.
    assert len(wire.snapshot_from_pb(response.snapshot).regions) == 0


def test_a_response_still_in_bytes_is_stripped_as_its_message() -> None:
    snapshot = LinuxReader().snapshot(os.getpid())
    as_message = agent_pb2.GetSnapshotResponse()
    wire.snapshot_to_pb(snapshot, as_message.snapshot)
    stripped = redact.strip_addresses(wire.snapshot_response(snapshot))
    assert isinstance(stripped, agent_pb2.GetSnapshotResponse)
    assert redact.address_fields_set(stripped) == []
    assert stripped == redact.strip_addresses(as_message)


def test_messages_without_addresses_are_untouched() -> None:
    response = agent_pb2.ListProcessesResponse(access_denied_count=3)
    wire.process_summary_to_pb(LinuxReader().process_summary(os.getpid()), response.processes.add())
    before = response.SerializeToString()
    assert redact.strip_addresses(response).SerializeToString() == before


def test_scrub_text_hides_addresses() -> None:
    text = "pid 12 at 0x7f3a2c000000, maps 55d0c8a4e000-55d0c8a50000 rw-p, deadbeef00"
    scrubbed = redact.scrub_text(text)
    assert "7f3a2c" not in scrubbed and "55d0c8" not in scrubbed and "deadbeef" not in scrubbed
    assert scrubbed.startswith("pid 12 at <address>")
    assert redact.scrub_text("no such process: pid 4194304") == "no such process: pid 4194304"


def test_every_address_field_names_a_field_of_the_schema() -> None:
    # A renamed field would otherwise drop out of the list silently.
    pool = descriptor_pool.Default()
    for name in redact.ADDRESS_FIELDS:
        assert pool.FindFieldByName(name).full_name == name
    for name in redact.LAYOUT_MESSAGES:
        assert pool.FindMessageTypeByName(name).full_name == name
