"""What decides whether an address stays on this machine, and the status mapping."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from vmatlas import errors, wire
from vmatlas.grpcutil import is_loopback, status_of


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50550", True),
        ("127.3.4.5:1", True),
        ("localhost:50551", True),
        ("[::1]:50550", True),
        ("::1", True),
        ("127.0.0.1:0", True),  # a listening address, any port
        ("127.example.com:50550", False),  # a name that merely starts like one
        ("localhost.example.com:1", False),
        ("0.0.0.0:50550", False),
        ("[::]:50550", False),
        ("10.0.0.5:50550", False),
        ("vmatlas.example.com:50550", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_every_error_has_its_own_status() -> None:
    classes = [
        errors.NoSuchProcess,
        errors.AccessDenied,
        errors.InvalidArgument,
        errors.FailedPrecondition,
        errors.AlreadyExists,
        errors.Unavailable,
        errors.Aborted,
        errors.Unauthenticated,
        errors.ResourceExhausted,
        errors.DeadlineExceeded,
    ]
    codes = [status_of(cls("x")) for cls in classes]
    assert len(set(codes)) == len(codes)
    assert status_of(errors.ZombieProcess(pid=3)) == status_of(errors.NoSuchProcess(pid=3))


def test_timestamps_carry_into_the_next_second() -> None:
    stamp = Timestamp()
    wire.timestamp_to_pb(1.9999999999, stamp)
    assert (stamp.seconds, stamp.nanos) == (2, 0)
    wire.timestamp_to_pb(1795672300.25, stamp)
    assert (stamp.seconds, stamp.nanos) == (1795672300, 250_000_000)
