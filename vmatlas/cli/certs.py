"""``vmatlas certs``: a private CA for the fleet, certificates and bearer tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vmatlas import defaults
from vmatlas.cli import COMMANDS
from vmatlas.security.tokens import Role

if TYPE_CHECKING:
    from vmatlas.security.certs import Issued


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "certs",
        help=COMMANDS["certs"],
        description="Keys are written mode 0600 and never overwritten.",
    )
    actions = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="make a CA and the server's certificate in DIR")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address the server is reached by (repeatable; default "
        + ", ".join(defaults.SERVER_NAMES)
        + ")",
    )
    init.set_defaults(func=run_init)

    server = actions.add_parser("server", help="another serving certificate, DIR/STEM.pem")
    server.add_argument("dir", type=Path, metavar="DIR")
    server.add_argument("stem", metavar="STEM", help="file name without .pem/.key")
    server.add_argument("--name", dest="names", action="append", metavar="NAME")
    server.set_defaults(func=run_server)

    agent = actions.add_parser(
        "agent", help="an agent's certificate naming HOST_ID, DIR/agents/HOST_ID.pem"
    )
    agent.add_argument("dir", type=Path, metavar="DIR")
    agent.add_argument("host_id", metavar="HOST_ID")
    agent.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="another DNS name or IP the agent serves on (repeatable)",
    )
    agent.set_defaults(func=run_agent)

    replica = actions.add_parser(
        "replica",
        help="a server's certificate for running several servers on one store, "
        "DIR/replicas/NAME.pem: it serves (--tls-cert) and identifies the server to "
        "the others (mutual TLS)",
    )
    replica.add_argument("dir", type=Path, metavar="DIR")
    replica.add_argument("name", metavar="NAME", help="the server's name, its first DNS name")
    replica.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="another DNS name or IP address the server is reached by (repeatable); "
        "include the host of its --advertise address",
    )
    replica.set_defaults(func=run_replica)

    client = actions.add_parser(
        "client", help="an operator's certificate for mutual TLS, DIR/clients/NAME.pem"
    )
    client.add_argument("dir", type=Path, metavar="DIR")
    client.add_argument("name", metavar="NAME")
    client.set_defaults(func=run_client)

    token = actions.add_parser(
        "token", help="make a bearer token, store its hash in DIR/tokens.json, print it once"
    )
    token.add_argument("dir", type=Path, metavar="DIR")
    token.add_argument("name", metavar="NAME")
    token.add_argument(
        "--role",
        required=True,
        choices=[str(r) for r in Role],
        help="scrape: Prometheus metrics on the HTTP listener and nothing else; "
        "viewer: summaries, no addresses; inspector: full snapshots; admin: all",
    )
    token.set_defaults(func=run_token)

    revoke = actions.add_parser("revoke-token", help="remove NAME's token from DIR/tokens.json")
    revoke.add_argument("dir", type=Path, metavar="DIR")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(func=run_revoke)


def _report(issued: Issued) -> None:
    print(f"certificate {issued.cert_path}\nkey         {issued.key_path}")


def run_init(args: argparse.Namespace) -> int:
    from vmatlas.security import certs

    ca = certs.init_ca(args.dir)
    print(f"CA          {ca.cert_path}\nCA key      {ca.key_path} (keep it offline)")
    _report(certs.issue_server(args.dir, args.names))
    return 0


def run_server(args: argparse.Namespace) -> int:
    from vmatlas.security import certs

    _report(certs.issue_server(args.dir, args.names, stem=args.stem))
    return 0


def run_agent(args: argparse.Namespace) -> int:
    from vmatlas.security import certs

    _report(certs.issue_agent(args.dir, args.host_id, args.names))
    return 0


def run_replica(args: argparse.Namespace) -> int:
    from vmatlas.security import certs

    _report(certs.issue_replica(args.dir, args.name, args.names))
    return 0


def run_client(args: argparse.Namespace) -> int:
    from vmatlas.security import certs

    _report(certs.issue_client(args.dir, certs.check_name(args.name)))
    return 0


def run_token(args: argparse.Namespace) -> int:
    from vmatlas.security.certs import TOKENS_FILE
    from vmatlas.security.tokens import add_token

    path = args.dir / TOKENS_FILE
    token = add_token(path, args.name, Role.parse(args.role))
    print(f"token for {args.name} ({args.role}), stored hashed in {path}:", file=sys.stderr)
    print(token, flush=True)
    print("it is shown only this once", file=sys.stderr)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from vmatlas.security.certs import TOKENS_FILE
    from vmatlas.security.tokens import revoke_token

    revoke_token(args.dir / TOKENS_FILE, args.name)
    print(f"revoked {args.name}'s token", file=sys.stderr)
    return 0
