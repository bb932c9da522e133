"""The web view's routes on the server's HTTP listener: the pages, their static files,
the login form and the JSON API under ``/api/v1/``.

Who may do what is the gRPC services' policy: listing hosts, processes, history,
diffs and audits needs ``viewer``; a snapshot (stored or fresh), which is the layout
itself, needs ``inspector``. The caller is named by the same tokens as on gRPC: an
``Authorization: Bearer`` header, or the cookie the login form sets (``HttpOnly``,
``SameSite=Strict``, ``Secure`` on TLS). Without a token store (loopback only) every
caller is the anonymous admin, and requests must then name a loopback host (a page
elsewhere cannot reach the server by rebinding a DNS name to 127.0.0.1).

Nothing changes state on a GET. The one state-changing call, a fresh snapshot, is a
POST that must carry the ``X-Vmatlas-Request`` header, which a cross-site form cannot
send and a cross-site script cannot add without a preflight this server never
grants. Every response carries a Content-Security-Policy that allows scripts and
styles from this server only, none inline.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from aiohttp import web

from vmatlas import errors
from vmatlas.diff import DiffMode
from vmatlas.metrics import GROUP_BY
from vmatlas.model import ProcessOrder
from vmatlas.security.auth import Principal
from vmatlas.security.tokens import Role
from vmatlas.server.domain.analysis import (
    LatestSnapshot,
    SnapshotSelector,
    StoredSnapshotId,
)
from vmatlas.server.domain.fleet import Caller, HostSnapshot
from vmatlas.server.domain.hub import SnapshotRequest
from vmatlas.server.http.access import TOKEN_COOKIE, TOKENS, authenticate, public, requires
from vmatlas.server.http.listener import SERVICES
from vmatlas.server.web import documents
from vmatlas.server.web.cache import EncodedDocuments, snapshot_key
from vmatlas.server.web.openapi import openapi_document

log = logging.getLogger(__name__)

COOKIE = TOKEN_COOKIE
COOKIE_MAX_AGE_SECONDS = 8 * 3600
REQUEST_HEADER = "X-Vmatlas-Request"
MAX_LIMIT = 100_000
MAX_PID = 2**32 - 1
MAX_TEXT = 256

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_STATUS = {
    errors.InvalidArgument: 400,
    errors.Unauthenticated: 401,
    errors.AccessDenied: 403,
    errors.NotFound: 404,
    errors.NoSuchProcess: 404,
    errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409,
    errors.ResourceExhausted: 429,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Snapshot documents as sent, by snapshot (see .cache).
DOCUMENTS: Final = web.AppKey("vmatlas_snapshot_documents", EncodedDocuments)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A document a handler returns already encoded as JSON, sent as it is: only
    ``_snapshot_document`` builds one, and only for a caller who sees addresses."""

    body: bytes


def static_dir() -> Path:
    return Path(str(resources.files("vmatlas.server.web") / "static"))


def status_of(exc: errors.Error) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


def json_error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"status": status, "message": message}},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


# -- who is calling ------------------------------------------------------------------------


def _is_loopback_host(host_header: str) -> bool:
    host = urlsplit(f"//{host_header}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def principal_of(request: web.Request) -> Principal:
    """The caller, named by the bearer header or the login cookie (the listener's own
    rule). Unauthenticated when the server takes tokens and none (or an unknown or
    revoked one) is given; without tokens, AccessDenied for a request that does not
    name a loopback host."""
    tokens: Any = request.app[TOKENS]
    if tokens is None and not _is_loopback_host(request.host):
        raise errors.AccessDenied("requests to this server must name a loopback host")
    return authenticate(tokens, request)


def _check_post(request: web.Request) -> None:
    """A state-changing request must come from this server's own pages or a script."""
    if request.headers.get(REQUEST_HEADER) != "1":
        raise errors.AccessDenied(f"a POST needs the {REQUEST_HEADER}: 1 header")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise errors.AccessDenied("cross-origin request refused")


def api(role: Role) -> Callable[[Callable[..., Awaitable[Any]]], Handler]:
    """An API handler for callers of at least ``role``: errors become JSON with
    their status, viewers' documents are scrubbed of address-like text."""

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Handler:
        async def call(request: web.Request) -> web.StreamResponse:
            try:
                principal = principal_of(request)
                if principal.role is None or principal.role < role:
                    raise errors.AccessDenied(f"needs the {role} role")
                if request.method == "POST":
                    _check_post(request)
                document = await handler(request, principal)
            except errors.Error as exc:
                status = status_of(exc)
                if status >= 500 and status not in (503, 504):
                    log.error("web API %s failed: %s", request.path, exc)
                return json_error(status, str(exc))
            if isinstance(document, Encoded):
                return web.Response(
                    body=document.body,
                    content_type="application/json",
                    headers={"Cache-Control": "no-store"},
                )
            if not principal.sees_addresses:
                document = documents.strip_for_viewer(document)
            return web.json_response(
                document,
                dumps=_dumps,
                headers={"Cache-Control": "no-store"},
            )

        # The listener checks the role too (it fails closed on unmarked handlers).
        return requires(role)(call)

    return wrap


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# -- query parameters ------------------------------------------------------------------------


def _text(request: web.Request, name: str, default: str = "") -> str:
    value = request.query.get(name, default)
    if len(value) > MAX_TEXT:
        raise errors.InvalidArgument(f"{name}: at most {MAX_TEXT} characters")
    if "\x00" in value:
        raise errors.InvalidArgument(f"{name}: NUL is not allowed")
    return value


def _int(text: str, name: str, lo: int, hi: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise errors.InvalidArgument(f"{name}: {text[:40]!r} is not a whole number")
    value = int(text)
    if not lo <= value <= hi:
        raise errors.InvalidArgument(f"{name}: must be from {lo} to {hi}")
    return value


def _query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    return default if text is None else _int(text, name, lo, hi)


def _query_time(request: web.Request, name: str, default: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise errors.InvalidArgument(f"{name}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= 1e11:
        raise errors.InvalidArgument(f"{name}: seconds since the epoch, from 0 to 1e11")
    return value


def _host(request: web.Request) -> str:
    host_id = request.match_info["host"]
    if not host_id or len(host_id) > MAX_TEXT or "\x00" in host_id:
        raise errors.InvalidArgument("host: 1 to 256 characters, no NUL")
    return host_id


def _pid(request: web.Request) -> int:
    return _int(request.match_info["pid"], "pid", 1, MAX_PID)


def _bool(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise errors.InvalidArgument(f"{name}: true or false")


def parse_selector(text: str, side: str) -> SnapshotSelector:
    """``ID`` (a stored snapshot) or ``HOST:PID`` (that process's latest stored one)."""
    text = text.strip()
    if not text:
        raise errors.InvalidArgument(f"{side}: a snapshot id or HOST:PID is required")
    host_id, sep, pid_text = text.rpartition(":")
    if not sep:
        return StoredSnapshotId(text)
    if not host_id or not pid_text.isascii() or not pid_text.isdigit():
        raise errors.InvalidArgument(f"{side}: {text[:60]!r} is neither an id nor HOST:PID")
    pid = int(pid_text)
    if not 0 < pid <= MAX_PID:
        raise errors.InvalidArgument(f"{side}: pid must be from 1 to {MAX_PID}")
    return LatestSnapshot(host_id, pid)


async def _run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking domain call, off the event loop."""
    return await asyncio.to_thread(function, *args, **kwargs)


# -- the API -------------------------------------------------------------------------------


@api(Role.VIEWER)
async def get_fleet(request: web.Request, principal: Principal) -> Any:
    closest = _query_int(request, "closest", 20, 0, 1000)
    queries = request.app[SERVICES].queries

    def build() -> dict[str, Any]:
        hosts = queries.hosts()
        # Each host's worst process in one read, not the thousands of others.
        worst = {
            p.host_id: p for p in queries.processes(order=ProcessOrder.HEADROOM, per_host_limit=1)
        }
        top = queries.processes(order=ProcessOrder.HEADROOM, limit=closest) if closest else []
        return documents.fleet_document(hosts, worst, top)

    return await _run(build)


@api(Role.VIEWER)
async def get_hosts(request: web.Request, principal: Principal) -> Any:
    hosts = await _run(request.app[SERVICES].queries.hosts)
    return {"hosts": [documents.host_status_document(h) for h in hosts]}


@api(Role.VIEWER)
async def get_host(request: web.Request, principal: Principal) -> Any:
    status = await _run(request.app[SERVICES].queries.host, _host(request))
    return documents.host_status_document(status)


@api(Role.VIEWER)
async def get_processes(request: web.Request, principal: Principal) -> Any:
    order = ProcessOrder.parse(_text(request, "order", "regions"))
    host_id = _text(request, "host")
    items = await _run(
        request.app[SERVICES].queries.processes,  # NotFound for a host never seen
        host_id=host_id,
        name_contains=_text(request, "name"),
        order=order,
        limit=_query_int(request, "limit", 0, 0, MAX_LIMIT),
    )
    return {"processes": [documents.fleet_process_document(item) for item in items]}


@api(Role.VIEWER)
async def get_groups(request: web.Request, principal: Principal) -> Any:
    host_id = _host(request)
    by = _text(request, "by", "name")
    if by not in GROUP_BY:
        raise errors.InvalidArgument(f"by: one of {', '.join(GROUP_BY)}")
    queries = request.app[SERVICES].queries

    def build() -> dict[str, Any]:
        # NotFound for a host never seen
        return documents.groups_document(queries.processes(host_id=host_id), by)

    return await _run(build)


@api(Role.VIEWER)
async def get_history(request: web.Request, principal: Principal) -> Any:
    host_id, pid = _host(request), _pid(request)
    since = _query_time(request, "since", 0.0)
    until = _query_time(request, "until", time.time() + 86400)
    queries = request.app[SERVICES].queries

    def build() -> dict[str, Any]:
        status = queries.host(host_id)
        history = queries.history(host_id, pid, since, until)
        return documents.history_document(history, status.host.max_map_count)

    return await _run(build)


@api(Role.INSPECTOR)
async def get_latest_snapshot(request: web.Request, principal: Principal) -> Any:
    host_id, pid = _host(request), _pid(request)
    with_regions = _bool(request, "regions", True)
    stored = await _run(request.app[SERVICES].queries.latest_snapshot, host_id, pid)
    return await _run(_snapshot_document, request.app[DOCUMENTS], stored, with_regions, principal)


@api(Role.INSPECTOR)
async def post_fresh_snapshot(request: web.Request, principal: Principal) -> Any:
    host_id, pid = _host(request), _pid(request)
    queries = request.app[SERVICES].queries

    def taken() -> dict[str, Any]:
        stored = queries.fresh_snapshot(
            host_id, SnapshotRequest(pid), caller=Caller(principal.name, principal.role)
        )
        header = stored.header()  # decoded here when the snapshot was forwarded
        return {
            "snapshot_id": stored.snapshot_id,
            "host_id": stored.host_id,
            "capture_time": header.capture_time,
            "summary": documents.summary_document(header.summary),
        }

    return await _run(taken)


@api(Role.INSPECTOR)
async def get_stored_snapshot(request: web.Request, principal: Principal) -> Any:
    snapshot_id = request.match_info["snapshot_id"]
    if len(snapshot_id) > MAX_TEXT or "\x00" in snapshot_id:
        raise errors.InvalidArgument("snapshot_id: at most 256 characters, no NUL")
    with_regions = _bool(request, "regions", True)
    stored = await _run(request.app[SERVICES].queries.stored_snapshot, snapshot_id)
    return await _run(_snapshot_document, request.app[DOCUMENTS], stored, with_regions, principal)


def _snapshot_document(
    cache: EncodedDocuments, stored: HostSnapshot, with_regions: bool, principal: Principal
) -> Encoded:
    """The snapshot's document, encoded once for every later request of it. It is sent
    unscrubbed, so a caller who may not see addresses is refused."""
    if not principal.sees_addresses:
        raise errors.AccessDenied(f"a snapshot's document needs the {Role.INSPECTOR} role")
    key = snapshot_key(stored, with_regions)
    body = cache.get(key)
    if body is None:
        document = documents.snapshot_document(
            stored.snapshot_id, stored.host_id, stored.snapshot(), with_regions=with_regions
        )
        body = _dumps(document).encode()
        cache.put(key, body)
    return Encoded(body)


_MODES = {"auto": DiffMode.UNSPECIFIED, "address": DiffMode.ADDRESS, "identity": DiffMode.IDENTITY}


@api(Role.VIEWER)
async def get_diff(request: web.Request, principal: Principal) -> Any:
    before = parse_selector(_text(request, "a"), "a")
    after = parse_selector(_text(request, "b"), "b")
    mode_text = _text(request, "mode", "auto")
    if mode_text not in _MODES:
        raise errors.InvalidArgument(f"mode: one of {', '.join(_MODES)}")
    result = await _run(request.app[SERVICES].analysis.diff, before, after, _MODES[mode_text])
    return documents.diff_document(result.diff, sees_addresses=principal.sees_addresses)


@api(Role.VIEWER)
async def get_audit(request: web.Request, principal: Principal) -> Any:
    report = await _run(request.app[SERVICES].analysis.audit)
    return documents.audit_document(report)


@public
async def get_openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document(), dumps=_dumps)


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's own refusals (no such path, wrong method) as JSON under the API."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_error(exc.status, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


# -- pages ---------------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only a path on this server: never another origin, never a scheme."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _login_page(next_path: str, message: str = "", status: int = 200) -> web.Response:
    text = (static_dir() / "login.html").read_text(encoding="utf-8")
    text = text.replace("{{next}}", html.escape(next_path, quote=True)).replace(
        "{{message}}", html.escape(message)
    )
    return web.Response(
        text=text, content_type="text/html", status=status, headers={"Cache-Control": "no-store"}
    )


def page(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Handler:
    """A page for any caller the server knows; others go to the login form."""

    async def call(request: web.Request) -> web.StreamResponse:
        try:
            principal_of(request)
        except errors.Unauthenticated:
            target = quote(request.path_qs, safe="/?=&:")
            raise web.HTTPSeeOther(f"/login?next={target}") from None
        except errors.Error as exc:
            return web.Response(text=str(exc), status=status_of(exc))
        return await handler(request)

    return public(call)


@page
async def page_shell(request: web.Request) -> web.StreamResponse:
    if "pid" in request.match_info and not request.match_info["pid"].isdigit():
        raise web.HTTPNotFound()
    return web.FileResponse(static_dir() / "page.html", headers={"Cache-Control": "no-cache"})


_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


@public
async def static_file(request: web.Request) -> web.StreamResponse:
    """One of the package's own files, by exact name (no directory is browsable)."""
    name = request.match_info["name"]
    path = static_dir() / name
    suffix = Path(name).suffix
    if "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(
        path,
        headers={"Cache-Control": "no-cache", "Content-Type": _STATIC_TYPES[suffix]},
    )


@public
async def login_form(request: web.Request) -> web.StreamResponse:
    return _login_page(_safe_next(request.query.get("next", "/")))


@public
async def login(request: web.Request) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and urlsplit(origin).netloc != request.host:
        return _login_page("/", "cross-origin login refused", 403)
    form = await request.post()
    token = str(form.get("token", "")).strip()
    next_path = _safe_next(str(form.get("next", "/")))
    tokens: Any = request.app[TOKENS]
    if tokens is None:
        raise web.HTTPSeeOther(next_path)
    if tokens.lookup(token) is None:
        return _login_page(next_path, "That token is unknown, expired or revoked.", 401)
    response = web.HTTPSeeOther(next_path)
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


@public
async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def add_routes(app: web.Application) -> None:
    """The listener's route hook: the pages, their files, the login form and the API,
    over ``app[SERVICES]``'s queries and analysis."""
    app[DOCUMENTS] = EncodedDocuments()
    app.on_response_prepare.append(_security_headers)
    # Outermost, so that the router's own 404 and 405 under /api/ are JSON too.
    app.middlewares.insert(0, _api_errors)
    r = app.router
    r.add_get("/", page_shell)
    r.add_get("/hosts/{host}", page_shell)
    r.add_get("/hosts/{host}/processes/{pid}", page_shell)
    r.add_get("/diff", page_shell)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/static/{name}", static_file)
    v1 = "/api/v1"
    r.add_get(f"{v1}/openapi.json", get_openapi)
    r.add_get(f"{v1}/fleet", get_fleet)
    r.add_get(f"{v1}/hosts", get_hosts)
    r.add_get(f"{v1}/hosts/{{host}}", get_host)
    r.add_get(f"{v1}/processes", get_processes)
    r.add_get(f"{v1}/hosts/{{host}}/groups", get_groups)
    r.add_get(f"{v1}/hosts/{{host}}/processes/{{pid}}/history", get_history)
    r.add_get(f"{v1}/hosts/{{host}}/processes/{{pid}}/snapshot", get_latest_snapshot)
    r.add_post(f"{v1}/hosts/{{host}}/processes/{{pid}}/snapshot", post_fresh_snapshot)
    r.add_get(f"{v1}/snapshots/{{snapshot_id}}", get_stored_snapshot)
    r.add_get(f"{v1}/diff", get_diff)
    r.add_get(f"{v1}/audit", get_audit)
