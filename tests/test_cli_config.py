"""--config: a TOML table becomes a command's defaults; flags on the command line win."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from vmatlas import errors
from vmatlas.cli import build_parser
from vmatlas.security.options import apply_config_defaults


def parse_with_config(argv: list[str], config: Path) -> argparse.Namespace:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    apply_config_defaults(commands.choices[argv[0]], str(config), argv[0])
    return parser.parse_args(argv)


def test_every_kind_of_option_is_taken_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "vmatlas.toml"
    config.write_text(
        "[server]\n"
        'retain = "12h"\nheartbeat = 2.5\ngrace = 1\nmax-agents = 7\n'
        'insecure = true\ndata_dir = "/srv/vmatlas"\n'
        "[agent]\ninterval = 5\nbuffer = 3\n"
    )
    args = parse_with_config(["server", "--grace", "3"], config)
    assert (args.retain, args.heartbeat, args.grace, args.max_agents) == ("12h", 2.5, 3.0, 7)
    assert args.insecure is True
    assert args.data_dir == "/srv/vmatlas"
    agent = parse_with_config(["agent"], config)
    assert (agent.interval, agent.buffer) == (5.0, 3)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('insecure = "false"', "insecure must be true or false"),
        ('heartbeat = "soon"', "heartbeat"),
        ("nope = 1", "unknown option 'nope'"),
        ("config = 'x'", "unknown option 'config'"),
        ("heartbeat = [1]", "must be a string or a number"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f"[server]\n{table}\n")
    with pytest.raises(errors.InvalidArgument, match=message):
        parse_with_config(["server"], config)
    result = subprocess.run(
        [sys.executable, "-m", "vmatlas", "server", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"vmatlas server: config {config}")


def test_the_agent_takes_several_servers_as_a_list_or_an_array(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nserver = ["a.example:50550", "[fd00::1]:50550"]\n')
    assert parse_with_config(["agent"], config).server == ("a.example:50550", "[fd00::1]:50550")
    flags = parse_with_config(["agent", "--server", "b:1,c:2"], config)
    assert flags.server == ("b:1", "c:2")
    for bad, message in (("server = [1]", "array of strings"), ('server = "b"', "bad server")):
        config.write_text(f"[agent]\n{bad}\n")
        with pytest.raises(errors.InvalidArgument, match=message):
            parse_with_config(["agent"], config)


def test_a_bad_server_address_on_the_command_line_is_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmatlas", "agent", "--server", "a.example:50550,b.example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "argument --server: bad server address 'b.example'" in result.stderr
