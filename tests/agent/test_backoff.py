"""The agent's reconnect delays and server addresses, as pure functions: full jitter
spreads a fleet's returns evenly below a cap that doubles per failed attempt, and
the address lists ``--server`` takes are parsed and resolved."""

from __future__ import annotations

import random
import statistics

import pytest

from vmatlas import errors
from vmatlas.addresses import resolve_address, server_addresses, split_address
from vmatlas.agents.uplink import backoff_delay

SAMPLES = 20_000


def delays(attempt: int, initial: float = 0.5, maximum: float = 30.0) -> list[float]:
    rng = random.Random(20261130 + attempt)
    return [backoff_delay(attempt, initial, maximum, rng) for _ in range(SAMPLES)]


@pytest.mark.parametrize(("attempt", "cap"), [(0, 0.5), (1, 1.0), (3, 4.0), (5, 16.0), (6, 30.0)])
def test_delays_are_uniform_below_a_doubling_cap(attempt: int, cap: float) -> None:
    drawn = delays(attempt)
    assert min(drawn) >= 0.0 and max(drawn) <= cap
    # Full jitter: the whole range is used, not only its upper half.
    assert min(drawn) < 0.01 * cap and max(drawn) > 0.99 * cap
    # Uniform: each tenth of the range holds a tenth of the draws (a fleet returns
    # spread evenly over the window, never in a burst), and so do the quartiles.
    tenths = [0] * 10
    for delay in drawn:
        tenths[min(9, int(delay / cap * 10))] += 1
    for count in tenths:
        assert abs(count - SAMPLES / 10) < 0.1 * SAMPLES / 10, tenths
    quartiles = statistics.quantiles(drawn, n=4)
    for q, expected in zip(quartiles, (0.25, 0.5, 0.75), strict=True):
        assert abs(q / cap - expected) < 0.02


def test_agents_that_lost_one_server_do_not_return_in_step() -> None:
    # A thousand agents, each with its own generator, drawing their first delay after
    # their server went away (a 1 s window): no 10 ms of it takes more than 2.5 times
    # its share (10 agents), and nearly every 10 ms takes some.
    first = [backoff_delay(0, 1.0, 30.0, random.Random(seed)) for seed in range(1000)]
    buckets = [0] * 100
    for delay in first:
        buckets[min(99, int(delay * 100))] += 1
    assert max(buckets) <= 25, buckets
    assert sum(1 for count in buckets if count) >= 95


def test_the_cap_holds_at_any_attempt() -> None:
    rng = random.Random(7)
    for attempt in (60, 61, 1000, 10**9):
        assert 0.0 <= backoff_delay(attempt, 0.5, 30.0, rng) <= 30.0


def test_server_addresses_are_parsed_and_bad_ones_named() -> None:
    assert server_addresses("a.example:50550, 10.0.0.2:50550,[fd00::1]:50550") == (
        "a.example:50550",
        "10.0.0.2:50550",
        "[fd00::1]:50550",
    )
    for bad in ("a.example", "a:0", "a:70000", "a:http", ":50550", "fd00::1:50550", "a:1,"):
        with pytest.raises(errors.InvalidArgument, match="bad server address"):
            server_addresses(bad)
    # The same parser reads listening addresses, where port 0 means any free port.
    assert split_address("[::1]:0", port_zero=True) == ("::1", 0)
    with pytest.raises(errors.InvalidArgument):
        split_address("::1:0", port_zero=True)


def test_a_name_resolves_to_its_records_and_a_literal_to_itself() -> None:
    # /etc/hosts may map localhost to ::1 as well (Debian's default does).
    localhost = resolve_address("localhost:50550")
    assert "127.0.0.1:50550" in localhost
    assert set(localhost) <= {"127.0.0.1:50550", "[::1]:50550"}
    assert len(localhost) == len(set(localhost))
    assert resolve_address("127.0.0.2:9") == ["127.0.0.2:9"]
    assert resolve_address("[::1]:9") == ["[::1]:9"]
    with pytest.raises(errors.Unavailable, match="cannot resolve"):
        resolve_address("no-such-host.invalid:50550")
