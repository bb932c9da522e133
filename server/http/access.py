"""Who may call what on the HTTP listener: the same bearer tokens and roles as gRPC,
failing closed.

Every handler says who may call it, with :func:`requires` (a minimum role) or
:func:`public` (anyone, such as a login form or a stylesheet). A handler that says
neither is refused with 403, as a gRPC method missing from the access policy is: a new
route is unreachable until someone decides who may call it.

With a token store, the caller is named by ``Authorization: Bearer <token>`` (or the web
view's login cookie, :data:`TOKEN_COOKIE`, holding the same token); none or an
unknown token is 401, a role too low is 403. Without one (loopback, or ``--insecure``)
every caller is the anonymous admin, as on gRPC. Handlers learn who is calling from
:func:`principal`. Errors from the domain (``vmatlas.errors``) become their HTTP
status with a JSON body, ``{"error": {"status": 404, "reason": "not_found",
"message": "..."}}``; nothing else escapes as a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from aiohttp import web

from vmatlas import errors
from vmatlas.security import redact
from vmatlas.security.auth import ANONYMOUS, BEARER, Principal
from vmatlas.security.tokens import Role, TokenStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])

# The attribute a handler's access rule is kept in; PUBLIC means no token needed.
_RULE_ATTRIBUTE: Final = "__vmatlas_http_role__"
PUBLIC: Final = "public"

PRINCIPAL: Final = web.RequestKey("vmatlas_principal", Principal)
# The web view's login form keeps the caller's token in this cookie (HttpOnly,
# SameSite=Strict); it names the caller as the bearer header does.
TOKEN_COOKIE: Final = "vmatlas_token"
TOKENS: Final = web.AppKey("vmatlas_tokens", object)  # TokenStore | None

# One status per error class: the HTTP mapping of the gRPC codes that
# vmatlas.grpcutil gives the same classes (as in Google's API design guide).
STATUS_OF: dict[type[errors.Error], tuple[int, str]] = {
    errors.InvalidArgument: (400, "invalid_argument"),
    errors.Unauthenticated: (401, "unauthenticated"),
    errors.AccessDenied: (403, "permission_denied"),
    errors.NoSuchProcess: (404, "not_found"),
    errors.NotFound: (404, "not_found"),
    errors.AlreadyExists: (409, "already_exists"),
    errors.FailedPrecondition: (400, "failed_precondition"),
    errors.ResourceExhausted: (429, "resource_exhausted"),
    errors.Unavailable: (503, "unavailable"),
    errors.DeadlineExceeded: (504, "deadline_exceeded"),
}


def requires(role: Role) -> Callable[[H], H]:
    """Mark a handler as open to callers whose role is at least ``role``."""

    def mark(handler: H) -> H:
        setattr(handler, _RULE_ATTRIBUTE, role)
        return handler

    return mark


def public(handler: H) -> H:
    """Mark a handler as open to anyone who can reach the listener."""
    setattr(handler, _RULE_ATTRIBUTE, PUBLIC)
    return handler


def principal(request: web.Request) -> Principal:
    """Who is calling (set by the middleware before any handler runs)."""
    return request[PRINCIPAL]


def error_response(status: int, reason: str, message: str) -> web.Response:
    body = {"error": {"status": status, "reason": reason, "message": redact.scrub_text(message)}}
    response = web.json_response(body, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="vmatlas"'
    return response


def response_for(exc: errors.Error) -> web.Response:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            status, reason = STATUS_OF[cls]
            return error_response(status, reason, str(exc))
    return error_response(500, "internal", "internal error")


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of a request, or None; a malformed header is the empty token."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    if header[: len(BEARER)].lower() != BEARER:
        return ""
    return header[len(BEARER) :].strip()


def authenticate(tokens: TokenStore | None, request: web.Request) -> Principal:
    """The caller of ``request``; Unauthenticated when a token is needed and missing
    or unknown."""
    token = bearer_token(request)
    if token is None and tokens is not None:
        token = request.cookies.get(TOKEN_COOKIE)
    if tokens is None:
        if token is not None:
            raise errors.Unauthenticated("this server accepts no tokens")
        return ANONYMOUS
    if token is None:
        raise errors.Unauthenticated("a bearer token is required")
    entry = tokens.lookup(token)
    if entry is None:
        raise errors.Unauthenticated("invalid or revoked token")
    return Principal(entry.name, entry.role)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if match.http_exception is not None:  # 404, 405: nothing to protect
        raise match.http_exception
    rule = getattr(match.handler, _RULE_ATTRIBUTE, None)
    try:
        if rule is None:
            raise errors.AccessDenied(f"{request.path} is not in the access policy")
        tokens: Any = request.app[TOKENS]
        caller = ANONYMOUS if rule == PUBLIC and tokens is None else None
        if rule != PUBLIC:
            caller = authenticate(tokens, request)
            assert caller.role is not None
            if caller.role < rule:
                raise errors.AccessDenied(f"role {caller.role} may not read {request.path}")
        elif tokens is not None:
            try:
                caller = authenticate(tokens, request)
            except errors.Unauthenticated:
                caller = Principal("anonymous", None, verified=False)
        assert caller is not None
        request[PRINCIPAL] = caller
        return await handler(request)
    except errors.Error as exc:
        if isinstance(exc, errors.Unauthenticated | errors.AccessDenied):
            log.warning(
                "refused %s %s from %s: %s", request.method, request.path, request.remote, exc
            )
        return response_for(exc)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal", "internal error")
