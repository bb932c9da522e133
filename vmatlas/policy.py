"""Audit policy: thresholds with built-in defaults, overridden by a JSON or TOML file.

A policy file holds only what it changes, in sections named after the fields below::

    [map_count]
    warn_fraction = 0.6

    [groups]
    search = ["es-*", "os-*"]

Parsing rejects malformed files, unknown sections and keys, and values of the wrong
type or range, with a message that says where: file, key path and (when the key can be
found in the text) line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vmatlas import errors

DAY = 86400.0
MIB = 1024 * 1024


class PolicyError(errors.InvalidArgument):
    """A policy file or document that cannot be used; the message says where."""


@dataclass(frozen=True, slots=True)
class MapCountRule:
    # A process's map count as a fraction of its host's vm.max_map_count.
    warn_fraction: float = 0.5
    critical_fraction: float = 0.8


@dataclass(frozen=True, slots=True)
class TrendRule:
    # Samples older than this (or than the process) are not fitted.
    window_seconds: float = DAY
    min_points: int = 3
    # The fitted line must rise at least this many maps across the samples.
    min_increase: float = 16.0
    # Forecast time to the limit at or below which the finding has that severity.
    critical_seconds: float = DAY
    warn_seconds: float = 7 * DAY
    info_seconds: float = 30 * DAY


@dataclass(frozen=True, slots=True)
class HostRule:
    # The kernel default; hosts set lower are flagged.
    min_max_map_count: int = 65530


@dataclass(frozen=True, slots=True)
class WindowsRule:
    largest_free_warn_bytes: int = 256 * MIB
    largest_free_critical_bytes: int = 64 * MIB
    unusable_warn_bytes: int = 64 * MIB
    # Reserved address space more than this many times the committed bytes ...
    reserved_ratio: float = 10.0
    # ... and at least this much.
    reserved_min_bytes: int = 1024 * MIB


@dataclass(frozen=True, slots=True)
class SinglePageRule:
    min_count: int = 1000
    min_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class RecommendRule:
    headroom_factor: float = 2.0
    round_to: int = 65536
    # Never recommend less than this (the kernel default).
    minimum: int = 65530


@dataclass(frozen=True, slots=True)
class Policy:
    map_count: MapCountRule = MapCountRule()
    trend: TrendRule = TrendRule()
    hosts: HostRule = HostRule()
    windows: WindowsRule = WindowsRule()
    single_page: SinglePageRule = SinglePageRule()
    recommend: RecommendRule = RecommendRule()
    # Group name -> host-id glob patterns; a host joins the first group that matches,
    # else the group of all hosts of its OS ("linux", "windows").
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


DEFAULT_POLICY = Policy()

_SECTIONS: dict[str, type] = {
    "map_count": MapCountRule,
    "trend": TrendRule,
    "hosts": HostRule,
    "windows": WindowsRule,
    "single_page": SinglePageRule,
    "recommend": RecommendRule,
}
_FRACTIONS = {"warn_fraction", "critical_fraction", "min_fraction"}


def policy_to_document(policy: Policy) -> dict[str, Any]:
    doc: dict[str, Any] = {name: dataclasses.asdict(getattr(policy, name)) for name in _SECTIONS}
    doc["groups"] = {name: list(patterns) for name, patterns in policy.groups.items()}
    return doc


def load_policy(path: str | Path) -> Policy:
    """The policy in a ``.toml`` or ``.json`` file, over the defaults."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc}") from None
    if path.suffix.lower() == ".toml":
        return parse_policy(text, source=str(path), syntax="toml")
    if path.suffix.lower() == ".json":
        return parse_policy(text, source=str(path), syntax="json")
    raise PolicyError(f"{path}: a policy file must end in .toml or .json")


def parse_policy(text: str, *, source: str = "<policy>", syntax: str = "json") -> Policy:
    """The policy in ``text`` (TOML or JSON), over the defaults."""
    try:
        doc = tomllib.loads(text) if syntax == "toml" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    return policy_from_document(doc, source=source, text=text)


def policy_from_document(doc: Any, *, source: str = "<policy>", text: str = "") -> Policy:
    def fail(path: tuple[str, ...], problem: str) -> PolicyError:
        where = ".".join(path) or "(top level)"
        line = _line_of(text, path) if text and path else None
        return PolicyError(
            f"{source}: {where}" + (f" (line {line})" if line else "") + f": {problem}"
        )

    if not isinstance(doc, dict):
        raise fail((), "a policy is a table of sections")
    sections: dict[str, Any] = {}
    groups: dict[str, tuple[str, ...]] = {}
    for name, value in doc.items():
        if name == "groups":
            groups = _parse_groups(value, fail)
            continue
        rule_type = _SECTIONS.get(name)
        if rule_type is None:
            known = ", ".join([*_SECTIONS, "groups"])
            raise fail((name,), f"unknown section (known: {known})")
        if not isinstance(value, dict):
            raise fail((name,), "must be a table of settings")
        sections[name] = _parse_rule(rule_type, name, value, fail)
    policy = Policy(**sections, groups=MappingProxyType(groups))
    if policy.map_count.warn_fraction > policy.map_count.critical_fraction:
        raise fail(("map_count", "warn_fraction"), "must not exceed critical_fraction")
    windows = policy.windows
    if windows.largest_free_critical_bytes > windows.largest_free_warn_bytes:
        raise fail(
            ("windows", "largest_free_critical_bytes"), "must not exceed largest_free_warn_bytes"
        )
    trend = policy.trend
    if not trend.critical_seconds <= trend.warn_seconds <= trend.info_seconds:
        raise fail(
            ("trend", "warn_seconds"), "need critical_seconds <= warn_seconds <= info_seconds"
        )
    return policy


def _parse_rule(rule_type: type, section: str, values: dict[str, Any], fail: Any) -> Any:
    fields = {f.name: f for f in dataclasses.fields(rule_type)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = (section, key)
        f = fields.get(key)
        if f is None:
            raise fail(path, f"unknown setting (known: {', '.join(fields)})")
        wanted: type[int] | type[float] = int if isinstance(f.default, int) else float
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(path, f"must be a number, not {json.dumps(value)}")
        if wanted is int and not (isinstance(value, int) or float(value).is_integer()):
            raise fail(path, f"must be a whole number, not {value}")
        value = wanted(value)
        if value < 0 or (key in _FRACTIONS and value > 1):
            raise fail(path, "must be between 0 and 1" if key in _FRACTIONS else "must be >= 0")
        if key in ("round_to", "min_points", "headroom_factor") and value <= 0:
            raise fail(path, "must be > 0")
        kwargs[key] = value
    return rule_type(**kwargs)


def _parse_groups(value: Any, fail: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise fail(("groups",), "must be a table of group name = [host-id patterns]")
    groups = {}
    for name, patterns in value.items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise fail(("groups", name), "must be a list of host-id patterns (strings)")
        groups[name] = tuple(patterns)
    return groups


def _line_of(text: str, path: tuple[str, ...]) -> int | None:
    """The line where the last key of ``path`` appears, each key searched after the one
    before it: ``[section]``, ``key =`` (TOML) or ``"key":`` (JSON)."""
    position = 0
    for key in path:
        pattern = re.compile(
            r'(?:^|[\s{,\[.])"?' + re.escape(key) + r'"?\s*(?:=|:|\]|\.)', re.MULTILINE
        )
        found = pattern.search(text, position)
        if found is None:
            return None
        position = found.start() + (1 if text[found.start()] in " \t\n{,[." else 0)
    return text.count("\n", 0, position) + 1
