"""The protobuf boundary: lossless round trips, enum values equal to the schema's."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Planter
from vmatlas import wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import (
    OperatingSystem,
    Protection,
    RegionKind,
    RegionState,
    RegionType,
    SnapshotView,
)
from vmatlas.v1 import snapshot_pb2 as pb


@pytest.mark.parametrize(
    ("model_enum", "pb_enum", "prefix"),
    [
        (OperatingSystem, pb.OperatingSystem, "OPERATING_SYSTEM_"),
        (RegionState, pb.RegionState, "REGION_STATE_"),
        (RegionType, pb.RegionType, "REGION_TYPE_"),
        (RegionKind, pb.RegionKind, "REGION_KIND_"),
        (SnapshotView, pb.SnapshotView, "SNAPSHOT_VIEW_"),
    ],
)
def test_model_enums_equal_the_schema(model_enum, pb_enum, prefix) -> None:  # type: ignore[no-untyped-def]
    schema = {name.removeprefix(prefix): value for name, value in pb_enum.items()}
    assert {m.name: int(m) for m in model_enum} == schema


def test_protection_bits_equal_the_schema() -> None:
    schema = {
        name.removeprefix("PROTECTION_FLAG_"): value
        for name, value in pb.ProtectionFlag.items()
        if value
    }
    assert {f.name: int(f) for f in Protection if f} == schema


def test_snapshot_round_trips_through_bytes(planter: Planter) -> None:
    planter.reserve(3)
    base = planter.map(5)
    planter.touch(base, 2)
    for options in ({}, {"include_free": True}, {"include_residency": True}):
        snap = LinuxReader().snapshot(planter.pid, **options)
        data = wire.snapshot_to_pb(snap).SerializeToString()
        back = wire.snapshot_from_pb(pb.Snapshot.FromString(data))
        assert back == snap


def test_wire_is_smaller_than_the_maps_text() -> None:
    snap = LinuxReader().snapshot(os.getpid())
    with open(f"/proc/{os.getpid()}/maps", "rb") as f:
        text = f.read()
    assert len(wire.table_to_pb(snap.regions).SerializeToString()) < len(text) / 2


def test_malformed_tables_are_refused() -> None:
    table = pb.RegionTable(size_bytes=[4096, 4096], start_delta_bytes=[4096])
    with pytest.raises(ValueError, match="differ in length"):
        wire.table_from_pb(table)
    snap = wire.table_to_pb(LinuxReader().snapshot(os.getpid()).regions)
    snap.path_index[0] = len(snap.strings) + 5
    with pytest.raises(ValueError, match="out of range"):
        wire.table_from_pb(snap)
