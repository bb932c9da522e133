"""The JSON API against a real server, a real agent and a planted child."""

from __future__ import annotations

from tests.web.conftest import HOST_ID, PLANTED_REGIONS, Fleet, request


def test_smoke(fleet: Fleet) -> None:
    r = request(f"{fleet.url}/api/v1/fleet")
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["host_count"] == 1
    r = request(
        f"{fleet.url}/api/v1/hosts/{HOST_ID}/processes/{fleet.pid}/snapshot",
        method="POST",
        headers={"X-Vmatlas-Request": "1"},
    )
    assert r.status == 200, r.body
    r = request(f"{fleet.url}/api/v1/hosts/{HOST_ID}/processes/{fleet.pid}/snapshot")
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["summary"]["region_count"] >= PLANTED_REGIONS
    assert doc["regions"]["count"] == doc["summary"]["region_count"]
