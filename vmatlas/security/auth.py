"""The one authentication and authorisation interceptor, failing closed.

Every call is decided here before a servicer sees it:

1. The method must be in the policy (full name -> :class:`Rule`); anything else is
   refused with PERMISSION_DENIED, so a new method is unreachable until someone
   decides who may call it.
2. The caller is named by a bearer token (``authorization: Bearer <token>``, checked
   against the hashes in the token file) or, for agents and replicas, by a fleet
   certificate whose OU is ``agent`` or ``replica`` (mutual TLS). No or an unknown
   token is UNAUTHENTICATED.
3. The caller's role must reach the rule's minimum (viewer < inspector < admin); an
   agent certificate reaches only methods the rule opens to agents, a replica
   certificate only those it opens to replicas (the link between servers).
4. Each caller has a token bucket; an empty one is RESOURCE_EXHAUSTED.

Servicers learn who is calling from :func:`caller` (a context variable set for the
call). Responses to viewers pass through :func:`vmatlas.security.redact.strip_addresses`
and their error details through ``scrub_text``, whatever the servicer did.

Without a token store (``tokens=None``, allowed only on loopback or with
``--insecure``) every caller is the anonymous admin; the policy and rate limits still
hold, and agent certificates, when presented, still name the agent.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from vmatlas import errors
from vmatlas.grpcutil import abort_with, abort_with_async
from vmatlas.security import redact, tls
from vmatlas.security.ratelimit import RateLimiter
from vmatlas.security.tokens import Role, TokenStore

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one method: operators whose role is at least ``role`` (None: no
    operator) and, with ``agents``, agents presenting their fleet certificate; with
    ``replicas``, other servers presenting their replica certificate."""

    role: Role | None
    agents: bool = False
    replicas: bool = False


VIEWER = Rule(Role.VIEWER)
INSPECTOR = Rule(Role.INSPECTOR)
ADMIN = Rule(Role.ADMIN)
AGENTS_ONLY = Rule(None, agents=True)
REPLICAS_ONLY = Rule(None, replicas=True)

Policy = Mapping[str, Rule]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``role`` is None for an agent or a replica; ``agent_host_id`` is
    the host id an agent's certificate names, ``replica_id`` the server a replica's
    certificate names. ``verified`` is False only for the anonymous caller of a server
    run without authentication."""

    name: str
    role: Role | None
    agent_host_id: str | None = None
    verified: bool = True
    replica_id: str | None = None

    @property
    def sees_addresses(self) -> bool:
        # A replica carries snapshots for its own callers, whose role it checked and
        # for whom it strips addresses itself.
        if self.replica_id is not None:
            return True
        return self.role is not None and self.role >= Role.INSPECTOR

    def __str__(self) -> str:
        if self.replica_id is not None and self.role is None:
            return f"replica {self.replica_id}"
        if self.agent_host_id is not None and self.role is None:
            return f"agent {self.agent_host_id}"
        return f"{self.name} ({self.role})" if self.role else self.name


ANONYMOUS = Principal("anonymous", Role.ADMIN, verified=False)

_CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "vmatlas_caller", default=None
)


def caller() -> Principal | None:
    """Who is making the current call (None outside an intercepted call: treat that as
    no access at all)."""
    return _CALLER.get()


def sees_addresses() -> bool:
    """Whether the current caller may receive addresses (False when unknown)."""
    principal = caller()
    return principal is not None and principal.sees_addresses


def require_agent_host(host_id: str, principal: Principal | None = None) -> Principal:
    """Check that the caller is the agent for ``host_id``: its certificate must name
    exactly that host. Raises AccessDenied otherwise. On a server run without
    authentication an uncertified caller is let through (nothing can be verified)."""
    principal = principal if principal is not None else caller()
    if principal is None:
        raise errors.AccessDenied("no authenticated caller")
    if principal.agent_host_id is not None:
        if principal.agent_host_id != host_id:
            raise errors.AccessDenied(
                f"this agent's certificate names host {principal.agent_host_id!r}, not {host_id!r}"
            )
        return principal
    if not principal.verified:
        return principal
    raise errors.AccessDenied(
        f"{principal} is not an agent; pushing for a host needs its certificate"
    )


def bearer_token(metadata: Any) -> str | None:
    """The bearer token in call metadata, or None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip()
            return ""
    return None


def _peer_host(context: Any) -> str:
    """The peer's address without its port (``ipv4:10.0.0.1:5555`` -> ``ipv4:10.0.0.1``)."""
    peer = str(context.peer() or "unknown")
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class _ScrubbingContext:
    """A servicer context whose error details never carry an address."""

    def __init__(self, context: grpc.ServicerContext):
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._context.abort(code, redact.scrub_text(details or ""))

    def set_details(self, details: str) -> None:
        self._context.set_details(redact.scrub_text(details or ""))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


@dataclass(frozen=True, slots=True)
class _Decision:
    principal: Principal | None  # None: decide from the peer certificate at call time
    denial: errors.Error | None = None


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """See the module docstring. ``tokens=None`` runs without authentication."""

    def __init__(
        self,
        policy: Policy,
        *,
        tokens: TokenStore | None,
        rate_limiter: RateLimiter | None = None,
    ):
        self.policy = dict(policy)
        self.tokens = tokens
        self.rate_limiter = rate_limiter

    # -- deciding -------------------------------------------------------------------------

    def _decide_early(self, method: str, metadata: Any) -> _Decision:
        """What the method name and metadata alone decide (before any request is read)."""
        rule = self.policy.get(method)
        if rule is None:
            return _Decision(None, errors.AccessDenied(f"{method} is not in the access policy"))
        token = bearer_token(metadata)
        if token is None:
            if self.tokens is None:
                return _Decision(ANONYMOUS)
            if rule.agents or rule.replicas:
                return _Decision(None)  # an agent or replica certificate may carry the call
            return _Decision(None, errors.Unauthenticated("a bearer token is required"))
        if self.tokens is None:
            return _Decision(None, errors.Unauthenticated("this server accepts no tokens"))
        entry = self.tokens.lookup(token)
        if entry is None:
            return _Decision(None, errors.Unauthenticated("invalid or revoked token"))
        principal = Principal(entry.name, entry.role)
        return _Decision(principal, self._authorise(method, rule, principal))

    @staticmethod
    def _authorise(method: str, rule: Rule, principal: Principal) -> errors.Error | None:
        if principal.role is None:
            if rule.replicas if principal.replica_id is not None else rule.agents:
                return None
            return errors.AccessDenied(f"{principal} may not call {method}")
        if rule.role is None and not ((rule.agents or rule.replicas) and not principal.verified):
            return errors.AccessDenied(
                f"{method} is for {'replicas' if rule.replicas else 'agents'} only"
            )
        if rule.role is not None and principal.role < rule.role:
            return errors.AccessDenied(
                f"role {principal.role} may not call {method} (needs {rule.role})"
            )
        return None

    def _check_at_call(
        self, method: str, decision: _Decision, context: Any
    ) -> tuple[Principal | None, errors.Error | None]:
        """The caller, or why it is refused, once the peer's certificate is known."""
        principal = decision.principal
        identity = tls.peer_identity(context)
        if principal is None or (principal is ANONYMOUS and identity is not None):
            host_id = identity.agent_host_id if identity else None
            replica_id = identity.replica_id if identity else None
            certified = (
                Principal(f"replica:{replica_id}", None, replica_id=replica_id)
                if replica_id is not None
                else Principal(f"agent:{host_id}", None, agent_host_id=host_id)
                if host_id is not None
                else None
            )
            if certified is not None:
                principal = certified
                denial = self._authorise(method, self.policy[method], principal)
                if denial is not None:
                    return principal, denial
            elif principal is None:
                return None, errors.Unauthenticated("a bearer token is required")
        assert principal is not None
        if self.rate_limiter is not None:
            key = principal.name if principal.verified else _peer_host(context)
            if not self.rate_limiter.allow(key):
                return principal, errors.ResourceExhausted(
                    f"rate limit for {principal.name}: {self.rate_limiter.limit}"
                )
        return principal, None

    def _decide_at_call(
        self, method: str, decision: _Decision, context: grpc.ServicerContext
    ) -> Principal:
        """The caller, or abort. Runs in the worker thread, with the peer's certificate."""
        principal, denial = self._check_at_call(method, decision, context)
        if denial is not None:
            self._deny(context, method, denial, str(principal) if principal else "")
        assert principal is not None
        return principal

    async def _decide_at_call_async(
        self, method: str, decision: _Decision, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal:
        """:meth:`_decide_at_call` in a ``grpc.aio`` handler."""
        principal, denial = self._check_at_call(method, decision, context)
        if denial is not None:
            await self._deny_async(context, method, denial, str(principal) if principal else "")
        assert principal is not None
        return principal

    @staticmethod
    def _log_denial(context: Any, method: str, error: errors.Error, who: str) -> None:
        log.warning(
            "refused %s from %s%s: %s", method, context.peer(), f" ({who})" if who else "", error
        )

    @classmethod
    def _deny(
        cls, context: grpc.ServicerContext, method: str, error: errors.Error, who: str = ""
    ) -> None:
        cls._log_denial(context, method, error, who)
        abort_with(context, error)

    @classmethod
    async def _deny_async(
        cls,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        error: errors.Error,
        who: str = "",
    ) -> None:
        cls._log_denial(context, method, error, who)
        await abort_with_async(context, error)

    # -- the interceptor ----------------------------------------------------------------

    def intercept_service(
        self,
        continuation: Callable[[Any], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        decision = self._decide_early(method, handler_call_details.invocation_metadata)
        if decision.denial is not None:
            return _denial_handler(handler, method, decision.denial, self._deny)
        if handler is None:
            return None
        return _wrap(handler, lambda context: self._decide_at_call(method, decision, context))


class AsyncAuthInterceptor(AuthInterceptor, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """:class:`AuthInterceptor` for a ``grpc.aio`` server: the same decisions, redaction
    and rate limits, for coroutine handlers and for the plain ones such a server runs
    on its thread pool."""

    @classmethod
    def of(cls, interceptor: AuthInterceptor) -> AsyncAuthInterceptor:
        """The same policy, tokens and rate limiter (their buckets shared)."""
        if isinstance(interceptor, AsyncAuthInterceptor):
            return interceptor
        return cls(
            interceptor.policy, tokens=interceptor.tokens, rate_limiter=interceptor.rate_limiter
        )

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        decision = self._decide_early(method, handler_call_details.invocation_metadata)
        if decision.denial is not None:
            if handler is not None and not _is_async(handler):
                return _denial_handler(handler, method, decision.denial, self._deny)
            return _async_denial_handler(handler, method, decision.denial, self._deny_async)
        if handler is None:
            return None
        if not _is_async(handler):
            return _wrap(handler, lambda context: self._decide_at_call(method, decision, context))
        return _wrap_async(
            handler, lambda context: self._decide_at_call_async(method, decision, context)
        )


def _denial_handler(
    handler: grpc.RpcMethodHandler | None,
    method: str,
    error: errors.Error,
    deny: Callable[[grpc.ServicerContext, str, errors.Error], None],
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that refuses without reading the
    request (requests stay raw bytes: nothing is parsed for an unauthorised caller)."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        deny(context, method, error)

    def refuse_stream(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        deny(context, method, error)
        yield from ()

    client_streams = handler is not None and handler.request_streaming
    server_streams = handler is not None and handler.response_streaming
    if client_streams and server_streams:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if client_streams:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if server_streams:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _wrap(
    handler: grpc.RpcMethodHandler, decide: Callable[[grpc.ServicerContext], Principal]
) -> grpc.RpcMethodHandler:
    """``handler`` with the call-time decision, the caller context variable set for the
    behaviour, and viewers' responses and errors stripped of addresses."""

    def enter(context: grpc.ServicerContext) -> tuple[Principal, Any]:
        principal = decide(context)
        _CALLER.set(principal)
        return principal, (context if principal.sees_addresses else _ScrubbingContext(context))

    def clean(principal: Principal, response: Any) -> Any:
        return response if principal.sees_addresses else redact.strip_addresses(response)

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            principal, ctx = enter(context)
            try:
                return clean(principal, behavior(request, ctx))
            finally:
                _CALLER.set(None)

        return call

    def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            principal, ctx = enter(context)
            try:
                for response in behavior(request, ctx):
                    yield clean(principal, response)
            finally:
                _CALLER.set(None)

        return call

    if handler.request_streaming and handler.response_streaming:
        make, behavior, wrap = (
            grpc.stream_stream_rpc_method_handler,
            handler.stream_stream,
            streaming,
        )
    elif handler.request_streaming:
        make, behavior, wrap = grpc.stream_unary_rpc_method_handler, handler.stream_unary, unary
    elif handler.response_streaming:
        make, behavior, wrap = grpc.unary_stream_rpc_method_handler, handler.unary_stream, streaming
    else:
        make, behavior, wrap = grpc.unary_unary_rpc_method_handler, handler.unary_unary, unary
    return make(
        wrap(behavior),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# -- grpc.aio -------------------------------------------------------------------------


def _behavior(handler: grpc.RpcMethodHandler) -> Any:
    return (
        handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
    )


def _is_async(handler: grpc.RpcMethodHandler) -> bool:
    behavior = _behavior(handler)
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _make_handler(
    handler: grpc.RpcMethodHandler | None, unary: Any, streaming: Any
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape with ``unary`` or ``streaming`` as behaviour."""
    client_streams = handler is not None and handler.request_streaming
    server_streams = handler is not None and handler.response_streaming
    serializers = (
        {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler is not None
        else {}
    )
    if client_streams and server_streams:
        return grpc.stream_stream_rpc_method_handler(streaming, **serializers)
    if client_streams:
        return grpc.stream_unary_rpc_method_handler(unary, **serializers)
    if server_streams:
        return grpc.unary_stream_rpc_method_handler(streaming, **serializers)
    return grpc.unary_unary_rpc_method_handler(unary, **serializers)


def _async_denial_handler(
    handler: grpc.RpcMethodHandler | None,
    method: str,
    error: errors.Error,
    deny: Callable[[Any, str, errors.Error], Awaitable[None]],
) -> grpc.RpcMethodHandler:
    """:func:`_denial_handler` with coroutine behaviours."""

    async def refuse(_request: Any, context: Any) -> Any:
        await deny(context, method, error)

    async def refuse_stream(_request: Any, context: Any) -> AsyncIterator[Any]:
        await deny(context, method, error)
        return
        yield  # an async generator that yields nothing

    # Without a handler the request stays undecoded bytes: no deserializer is set.
    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    return _make_handler(handler, refuse, refuse_stream)


class _AsyncScrubbingContext(_ScrubbingContext):
    """:class:`_ScrubbingContext` for ``grpc.aio``, whose abort is a coroutine."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:  # type: ignore[override]
        await self._context.abort(code, redact.scrub_text(details or ""))


def _wrap_async(
    handler: grpc.RpcMethodHandler,
    decide: Callable[[Any], Awaitable[Principal]],
) -> grpc.RpcMethodHandler:
    """:func:`_wrap` for coroutine behaviours (the call's task carries the caller)."""

    async def enter(context: Any) -> tuple[Principal, Any]:
        principal = await decide(context)
        _CALLER.set(principal)
        return principal, (context if principal.sees_addresses else _AsyncScrubbingContext(context))

    def clean(principal: Principal, response: Any) -> Any:
        return response if principal.sees_addresses else redact.strip_addresses(response)

    behavior = _behavior(handler)

    async def unary(request: Any, context: Any) -> Any:
        principal, ctx = await enter(context)
        try:
            return clean(principal, await behavior(request, ctx))
        finally:
            _CALLER.set(None)

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        principal, ctx = await enter(context)
        try:
            async for response in behavior(request, ctx):
                yield clean(principal, response)
        finally:
            _CALLER.set(None)

    return _make_handler(handler, unary, streaming)
