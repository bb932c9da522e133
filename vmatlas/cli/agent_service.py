"""``vmatlas agent service install|remove|start|stop|status|run``: the agent as a
Windows service (see :mod:`vmatlas.agents.windows.service`). Its options are defined
in :mod:`vmatlas.cli.agent`, so that ``--help`` loads nothing more."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmatlas import errors

INSTALL_ONLY = ("--start",)


def _service_arguments(argv: list[str]) -> list[str]:
    """The tokens after ``service install``, less the install-only options: the
    service's own command line."""
    at = next(i for i in range(len(argv) - 1) if argv[i : i + 2] == ["service", "install"])
    rest = argv[at + 2 :]
    out: list[str] = []
    skip = False
    for token in rest:
        if skip:
            skip = False
            continue
        if token in INSTALL_ONLY:
            skip = True
            continue
        if token.startswith(tuple(f"{o}=" for o in INSTALL_ONLY)):
            continue
        out.append(token)
    return out


def run(args: argparse.Namespace) -> int:
    from vmatlas.agents.windows import service

    name = args.name
    command = args.service_command
    if command == "install":
        arguments = _service_arguments(sys.argv)
        if not args.log_file:
            arguments += ["--log-file", str(service.default_log_file(name))]
        binary = service.install(name, arguments, start=args.start)
        print(f"service {name} installed: {binary}")
    elif command == "remove":
        service.remove(name)
        print(f"service {name} removed")
    elif command == "start":
        service.start(name)
        print(f"service {name} starting")
    elif command == "stop":
        service.stop(name)
        print(f"service {name} stopping")
    elif command == "status":
        print(service.state(name))
    elif command == "run":
        from vmatlas.cli import agent

        if not args.log_file:
            raise errors.InvalidArgument("--log-file is required")
        service.log_to(Path(args.log_file))
        return service.run(name, lambda: agent.run(args))
    return 0
