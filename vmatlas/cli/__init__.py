"""The ``vmatlas`` command. Each command lives in its own module here, with a
``register(sub)`` that adds its parser; :func:`main` turns every vmatlas error into a
one-line message on stderr and a non-zero exit status.

Only the chosen command's module is imported, and each command imports what it runs
when it runs: ``vmatlas --help`` loads no command, ``vmatlas snapshot`` never loads
the server, and nothing loads grpc or cryptography before it needs them.
"""

from __future__ import annotations

import os

# gRPC's core writes its own error lines to stderr (a failed bind, say) before the
# command reports the same failure as its one line; GRPC_VERBOSITY=ERROR brings them
# back. Set before anything imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import importlib
import sys
from collections.abc import Sequence

from vmatlas import __version__, errors

# Each command (its module under vmatlas.cli) and its line in --help, in the order
# --help lists them.
COMMANDS = {
    "agent": "serve this host's address spaces over gRPC",
    "certs": "make the fleet's CA, certificates and tokens",
    "ps": "processes by region count, with headroom to the map limit",
    "snapshot": "one process's address space, region by region",
    "diff": "what changed between two snapshots, grouped by class",
    "audit": "findings, per-application figures and recommended limits across the fleet",
    "server": "the fleet server: agents connect to it, clients ask it",
    "up": "a server and this host's agent in one process, with a live fleet view",
    "hosts": "hosts a server knows: online, last seen, limits, the server holding each",
}

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Version(argparse.Action):
    """--version, naming the capture path (the C extension or pure Python); what it
    takes to tell is imported only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str = "") -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from vmatlas import native

        print(f"vmatlas {__version__}, {native.describe()}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given ``command``, only that command's module is
    imported to register its options, and the others are listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="vmatlas",
        description="See and audit process address spaces across Linux and Windows hosts.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"vmatlas.cli.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def chosen_command(argv: Sequence[str]) -> str:
    """The command ``argv`` names: its first argument that is not an option (the
    top-level options take no values), or "" when there is none."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(chosen_command(argv))
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from vmatlas.security.options import apply_config_defaults

        # The file's [command] table becomes the command's defaults; parsing again
        # lets the flags given on the command line win over it.
        try:
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            apply_config_defaults(commands.choices[args.command], args.config, args.command)
        except errors.Error as exc:
            print(f"vmatlas {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        args = parser.parse_args(argv)
    import logging

    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except errors.Error as exc:
        print(f"vmatlas {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"vmatlas {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
