"""The JSON API against a real server, a real agent and a planted child."""

from __future__ import annotations

import json

import pytest

from tests.web.conftest import HOST_ID, PLANTED_REGIONS, Fleet, request
from vmatlas import errors
from vmatlas.security.auth import Principal
from vmatlas.security.tokens import Role
from vmatlas.server.domain.hub import SnapshotRequest


def test_smoke(fleet: Fleet) -> None:
    r = request(f"{fleet.url}/api/v1/fleet")
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["host_count"] == 1
    # The host's worst process is filled in (one of the agent's, with its figures).
    [row] = doc["hosts"]
    assert row["worst_pid"] > 0 and row["worst_map_count"] > 0
    assert 0 <= row["worst_headroom_fraction"] <= 1
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


def test_bad_input_is_a_json_4xx(fleet: Fleet) -> None:
    base = f"{fleet.url}/api/v1"
    cases = {
        f"{base}/hosts/{HOST_ID}/processes/abc/history": 400,
        f"{base}/hosts/{HOST_ID}/processes/0/history": 400,
        f"{base}/hosts/{HOST_ID}/processes/99999999999/history": 400,
        f"{base}/hosts/nope": 404,
        f"{base}/hosts/nope/groups": 404,
        f"{base}/processes?host=nope": 404,
        f"{base}/hosts/{HOST_ID}/groups?by=user": 400,
        f"{base}/processes?order=size": 400,
        f"{base}/processes?limit=-1": 400,
        f"{base}/hosts/{HOST_ID}/processes/{fleet.pid}/history?since=nan": 400,
        f"{base}/diff?a=&b=x": 400,
        f"{base}/diff?a=h:0&b=x": 400,
        f"{base}/diff?a=nope&b=nope": 404,
        f"{base}/snapshots/nope": 404,
        f"{base}/no/such/thing": 404,
    }
    for url, status in cases.items():
        r = request(url)
        assert r.status == status, (url, r.status, r.body)
        assert r.json()["error"]["status"] == status
    r = request(f"{base}/hosts", method="DELETE")
    assert r.status == 405 and r.json()["error"]["status"] == 405


def test_a_post_needs_the_request_header(fleet: Fleet) -> None:
    url = f"{fleet.url}/api/v1/hosts/{HOST_ID}/processes/{fleet.pid}/snapshot"
    before = len(fleet.server.queries.history(HOST_ID, fleet.pid).snapshots)
    r = request(url, method="POST")
    assert r.status == 403, r.body
    r = request(url, method="POST", headers={"X-Vmatlas-Request": "1", "Origin": "http://evil"})
    assert r.status == 403, r.body
    assert len(fleet.server.queries.history(HOST_ID, fleet.pid).snapshots) == before


def test_roles_as_on_grpc(secured_fleet: Fleet) -> None:
    fleet = secured_fleet
    base = f"{fleet.url}/api/v1"
    snapshot = f"{base}/hosts/{HOST_ID}/processes/{fleet.pid}/snapshot"
    assert request(f"{base}/hosts").status == 401
    assert request(f"{base}/hosts", token="vmat_unknown").status == 401
    viewer, inspector = fleet.tokens["viewer"], fleet.tokens["inspector"]
    assert request(f"{base}/hosts", token=viewer).status == 200
    # The layout itself needs inspector, fresh or stored.
    assert request(snapshot, token=viewer).status == 403
    r = request(snapshot, method="POST", token=viewer, headers={"X-Vmatlas-Request": "1"})
    assert r.status == 403
    r = request(snapshot, method="POST", token=inspector, headers={"X-Vmatlas-Request": "1"})
    assert r.status == 200, r.body
    assert request(snapshot, token=inspector).json()["regions"]["start"][0].startswith("0x")
    # Pages without a login lead to the form.
    r = request(f"{fleet.url}/hosts/{HOST_ID}")
    assert r.status == 303 and r.headers["Location"].startswith("/login?next=")


def test_the_login_cookie(secured_fleet: Fleet) -> None:
    fleet = secured_fleet
    form = f"token={fleet.tokens['viewer']}&next=/hosts/{HOST_ID}".encode()
    r = request(
        f"{fleet.url}/login",
        method="POST",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status == 303 and r.headers["Location"] == f"/hosts/{HOST_ID}"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    value = cookie.split(";")[0]
    r = request(f"{fleet.url}/api/v1/hosts", headers={"Cookie": value})
    assert r.status == 200
    # An offsite next is refused: the form only ever leads back into this server.
    form = f"token={fleet.tokens['viewer']}&next=//evil.example/".encode()
    r = request(
        f"{fleet.url}/login",
        method="POST",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.headers["Location"] == "/"


def test_without_tokens_only_loopback_names_are_served(fleet: Fleet) -> None:
    r = request(f"{fleet.url}/api/v1/hosts", headers={"Host": "attacker.example"})
    assert r.status == 403
    assert request(f"{fleet.url}/api/v1/hosts", headers={"Host": "localhost"}).status == 200


def test_the_snapshot_document_is_built_for_no_caller_who_cannot_see_addresses(
    fleet: Fleet,
) -> None:
    from vmatlas.server.web.app import _snapshot_document
    from vmatlas.server.web.cache import EncodedDocuments

    # It is sent as encoded, unscrubbed: the one place that builds it refuses a viewer
    # even where a handler's own role check would let one through.
    stored = fleet.server.queries.fresh_snapshot(
        HOST_ID, SnapshotRequest(fleet.pid), timeout_seconds=30.0
    )
    cache = EncodedDocuments()
    with pytest.raises(errors.AccessDenied):
        _snapshot_document(cache, stored, True, Principal("someone", Role.VIEWER))
    assert len(cache) == 0
    encoded = _snapshot_document(cache, stored, True, Principal("someone", Role.INSPECTOR))
    assert json.loads(encoded.body)["regions"]["start"][0].startswith("0x")
