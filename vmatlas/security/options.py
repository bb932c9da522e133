"""What every vmatlas server (``vmatlas agent``, ``vmatlas server``) shares about
security: its command-line flags, an optional TOML config file, and the rule that
nothing serves address layouts beyond loopback without TLS and authentication unless
the operator says ``--insecure`` (and is told loudly what that means).

Registering the flags and reading ``--config`` import nothing heavy: grpc and the
interceptors load when a server is built, cryptography only where a certificate is read.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmatlas import defaults, errors

if TYPE_CHECKING:
    import grpc

    from vmatlas.security.auth import Policy
    from vmatlas.security.tokens import TokenStore

log = logging.getLogger(__name__)


def add_server_security_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    group.add_argument(
        "--tokens",
        metavar="FILE",
        help="accept the bearer tokens in FILE (from `vmatlas certs token`); "
        "without it every caller is an anonymous admin",
    )
    group.add_argument(
        "--rate-limit",
        type=float,
        metavar="CALLS_PER_SECOND",
        help=f"per-client call rate (default {defaults.RATE_PER_SECOND:g})",
    )
    group.add_argument(
        "--rate-burst",
        type=int,
        metavar="CALLS",
        help=f"per-client burst (default {defaults.RATE_BURST})",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow listening beyond loopback without TLS and authentication",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="read options from this TOML file (its [agent] or [server] table; "
        "flags given on the command line win)",
    )


def apply_config_defaults(parser: argparse.ArgumentParser, path: str, section: str) -> None:
    """Make ``path``'s ``[section]`` table the defaults of ``parser``'s options, so that
    flags given on the command line still win. Keys are option names (``tls-cert`` or
    ``tls_cert``); values are converted as the flag's own would be. An unknown key or a
    value of the wrong kind is refused, naming the file, the table and the key."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise errors.InvalidArgument(f"config {path}: {exc}") from None
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise errors.InvalidArgument(f"config {path}: [{section}] must be a table")
    actions = {action.dest: action for action in parser._actions}
    defaults = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        action = actions.get(name)
        if name in ("config", "help") or action is None or not action.option_strings:
            raise errors.InvalidArgument(f"config {path}: unknown option {key!r} in [{section}]")
        defaults[name] = _config_value(action, value, f"config {path}: [{section}] {key}")
    parser.set_defaults(**defaults)


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    if action.nargs == 0:  # a switch such as --insecure
        if not isinstance(value, bool):
            raise errors.InvalidArgument(f"{where} must be true or false")
        return value
    if getattr(action.type, "config_list", False) and isinstance(value, list):
        # An option that takes a comma-separated list (--server) takes an array too.
        if not value or not all(isinstance(item, str) for item in value):
            raise errors.InvalidArgument(f"{where} must be a string or an array of strings")
        value = ",".join(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise errors.InvalidArgument(f"{where} must be a string or a number")
    convert = action.type if callable(action.type) else str
    try:
        converted = convert(value if isinstance(value, str) else str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError, errors.Error) as exc:
        raise errors.InvalidArgument(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise errors.InvalidArgument(
            f"{where} must be one of {', '.join(map(str, action.choices))}"
        )
    return converted


@dataclass(slots=True)
class ServerSecurity:
    """What :func:`vmatlas.grpcutil.build_server` needs: credentials and interceptors."""

    credentials: grpc.ServerCredentials | None
    interceptors: list[grpc.ServerInterceptor] = field(default_factory=list)
    tls: bool = False
    mutual_tls: bool = False
    authenticated: bool = False
    # The same tokens serve the HTTP listener.
    tokens: TokenStore | None = None

    def describe(self) -> str:
        parts = ["mutual TLS" if self.mutual_tls else "TLS" if self.tls else "no TLS"]
        parts.append("tokens" if self.authenticated else "no authentication")
        return ", ".join(parts)


def check_exposure(listen: str, security: ServerSecurity, insecure: bool) -> None:
    """Refuse to serve beyond loopback without TLS and tokens, unless ``insecure``."""
    from vmatlas.grpcutil import is_loopback

    if is_loopback(listen):
        return
    missing = [
        what
        for what, present in (("TLS", security.tls), ("authentication", security.authenticated))
        if not present
    ]
    if not missing:
        return
    if not insecure:
        raise errors.FailedPrecondition(
            f"refusing to serve address layouts on {listen} without {' and '.join(missing)}; "
            "give --tls-cert/--tls-key and --tokens (see `vmatlas certs`), listen on "
            "127.0.0.1, or pass --insecure to accept the risk"
        )
    log.warning(
        "INSECURE: serving address layouts on %s without %s; anyone who can reach this "
        "port can %s and defeat ASLR on this host",
        listen,
        " and ".join(missing),
        "read them" if not security.authenticated else "read tokens and layouts in transit",
    )


def server_security(args: argparse.Namespace, policy: Policy, *, listen: str) -> ServerSecurity:
    """Credentials and the auth interceptor from the security flags, after checking
    that they make sense and that ``listen`` is allowed with them."""
    from vmatlas.security import tls
    from vmatlas.security.auth import AuthInterceptor
    from vmatlas.security.ratelimit import DEFAULT_RATE_LIMIT, RateLimit, RateLimiter
    from vmatlas.security.tokens import TokenStore

    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if bool(cert) != bool(key):
        raise errors.InvalidArgument("--tls-cert and --tls-key go together")
    if client_ca and not cert:
        raise errors.InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
    credentials = tls.server_credentials(cert, key, client_ca) if cert else None
    tokens = TokenStore(Path(args.tokens)) if args.tokens else None
    rate = args.rate_limit if args.rate_limit is not None else DEFAULT_RATE_LIMIT.rate_per_second
    burst = args.rate_burst if args.rate_burst is not None else DEFAULT_RATE_LIMIT.burst
    try:
        limit = RateLimit(float(rate), int(burst))
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None
    security = ServerSecurity(
        credentials=credentials,
        interceptors=[AuthInterceptor(policy, tokens=tokens, rate_limiter=RateLimiter(limit))],
        tls=credentials is not None,
        mutual_tls=bool(client_ca),
        authenticated=tokens is not None,
        tokens=tokens,
    )
    check_exposure(listen, security, bool(args.insecure))
    return security


def security_namespace(**values: Any) -> argparse.Namespace:
    """A namespace with every security option unset, then ``values`` (for tests and for
    code that builds servers without a command line)."""
    names = (
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "tokens",
        "rate_limit",
        "rate_burst",
        "insecure",
        "config",
    )
    return argparse.Namespace(**{**dict.fromkeys(names), **values})


def add_uplink_security_args(parser: argparse.ArgumentParser) -> None:
    """Flags for an agent's stream to the fleet server."""
    group = parser.add_argument_group("uplink security")
    group.add_argument(
        "--server-ca", metavar="PEM", help="connect to --server with TLS, trusting this CA"
    )
    group.add_argument(
        "--agent-cert",
        metavar="PEM",
        help="this agent's certificate (`vmatlas certs agent`), naming its host id",
    )
    group.add_argument("--agent-key", metavar="PEM", help="the private key of --agent-cert")


def uplink_credentials(
    args: argparse.Namespace, target: str, *, fallback_ca: str | None = None
) -> grpc.ChannelCredentials | None:
    """Channel credentials for the stream to ``target``, or None for plain text, which
    is refused beyond loopback unless ``--insecure``."""
    from vmatlas.grpcutil import is_loopback
    from vmatlas.security import tls

    ca = getattr(args, "server_ca", None) or fallback_ca
    cert, key = getattr(args, "agent_cert", None), getattr(args, "agent_key", None)
    if bool(cert) != bool(key):
        raise errors.InvalidArgument("--agent-cert and --agent-key go together")
    if ca or cert:
        return tls.channel_credentials(ca, cert, key)
    if not is_loopback(target):
        if not getattr(args, "insecure", False):
            raise errors.FailedPrecondition(
                f"refusing to send address layouts to {target} without TLS; give "
                "--server-ca and --agent-cert/--agent-key, or pass --insecure to accept the risk"
            )
        log.warning("INSECURE: sending address layouts to %s without TLS", target)
    return None
