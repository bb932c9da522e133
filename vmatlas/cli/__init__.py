"""The ``vmatlas`` command. Each command lives in its own module here and registers
itself in :data:`COMMANDS`; :func:`main` turns every vmatlas error into a one-line
message on stderr and a non-zero exit status."""

from __future__ import annotations

import os

# gRPC's core writes its own error lines to stderr (a failed bind, say) before the
# command reports the same failure as its one line; GRPC_VERBOSITY=ERROR brings them
# back. Set before anything imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from vmatlas import __version__, errors
from vmatlas.security.options import apply_config_defaults

# Module names under vmatlas.cli, in the order --help lists them.
COMMANDS = ("agent", "certs", "ps", "snapshot", "diff", "audit", "server", "up", "hosts")

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmatlas",
        description="See and audit process address spaces across Linux and Windows hosts.",
    )
    parser.add_argument("--version", action="version", version=f"vmatlas {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vmatlas.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        # The file's [command] table becomes the command's defaults; parsing again
        # lets the flags given on the command line win over it.
        try:
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            apply_config_defaults(commands.choices[args.command], args.config, args.command)
        except errors.Error as exc:
            print(f"vmatlas {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        args = parser.parse_args(argv)
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
