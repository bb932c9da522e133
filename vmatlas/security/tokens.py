"""Bearer tokens: roles, and the token file that holds only their SHA-256 hashes.

The file is JSON, written mode 0600::

    {"version": 1, "tokens": [
        {"name": "alice", "role": "inspector", "sha256": "<hex>", "created": "<iso>"}]}

A token is shown once, when it is made; losing it means making another. A running
server notices when the file changes (a new token, a revoked one) within a second; a
file it cannot read or parse refuses every token until it is fixed (fail closed).
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmatlas import errors

log = logging.getLogger(__name__)

TOKEN_PREFIX = "vmat_"
FILE_VERSION = 1
RELOAD_CHECK_SECONDS = 1.0
MAX_TOKEN_CHARS = 256


class Role(enum.IntEnum):
    """Operator roles, each allowed everything the ones below it are."""

    # Prometheus metrics on the HTTP listener and nothing else: no gRPC method allows it.
    SCRAPE = 1
    VIEWER = 2  # summaries, audits, diffs by identity: never an address
    INSPECTOR = 3  # full snapshots, with addresses
    ADMIN = 4  # everything, including fleet administration

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise errors.InvalidArgument(f"unknown role {text!r} (one of {names})") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    role: Role
    sha256: str


# hashlib and secrets are imported where used: they load OpenSSL's libcrypto (about
# 3.5 MiB resident), which an agent that checks no tokens never needs.


def hash_token(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    import secrets

    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_token_file(text: str, source: str = "tokens file") -> dict[str, TokenEntry]:
    """sha256 hex -> entry. Raises InvalidArgument on anything malformed."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InvalidArgument(f"{source}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
        raise errors.InvalidArgument(f"{source}: expected a version {FILE_VERSION} object")
    items = data.get("tokens")
    if not isinstance(items, list):
        raise errors.InvalidArgument(f"{source}: 'tokens' must be a list")
    out: dict[str, TokenEntry] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise errors.InvalidArgument(f"{source}: token {i} is not an object")
        name, role, digest = item.get("name"), item.get("role"), item.get("sha256")
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument(f"{source}: token {i} has no name")
        if not isinstance(role, str):
            raise errors.InvalidArgument(f"{source}: token {name!r} has no role")
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise errors.InvalidArgument(f"{source}: token {name!r} needs a sha256 hex digest")
        out[digest] = TokenEntry(name=name, role=Role.parse(role), sha256=digest)
    return out


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"version": FILE_VERSION, "tokens": []}
    parse_token_file(path.read_text(encoding="utf-8"), str(path))  # refuse to extend junk
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _write_raw(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def add_token(path: Path, name: str, role: Role) -> str:
    """Make a token for ``name`` with ``role``, store its hash in ``path`` and return the
    token (the only time it exists in clear)."""
    data = _read_raw(path)
    if any(item.get("name") == name for item in data["tokens"]):
        raise errors.AlreadyExists(f"a token named {name!r} exists in {path}; revoke it first")
    token = new_token()
    data["tokens"].append(
        {
            "name": name,
            "role": str(role),
            "sha256": hash_token(token),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    _write_raw(path, data)
    return token


def revoke_token(path: Path, name: str) -> None:
    """Remove the token named ``name``. Raises NotFound when there is none."""
    data = _read_raw(path)
    kept = [item for item in data["tokens"] if item.get("name") != name]
    if len(kept) == len(data["tokens"]):
        raise errors.NotFound(f"no token named {name!r} in {path}")
    data["tokens"] = kept
    _write_raw(path, data)


class TokenStore:
    """The tokens a server accepts, re-read when the file changes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, TokenEntry] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._load(strict=True)  # a bad file at start-up is an error, not a silent lock-out

    def _load(self, *, strict: bool = False) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            entries = parse_token_file(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, errors.Error) as exc:
            if strict:
                raise errors.InvalidArgument(f"cannot use tokens file {self.path}: {exc}") from None
            log.error("tokens file unusable, refusing every token until fixed: %s", exc)
            self._entries, self._stamp = {}, None
            return
        self._entries, self._stamp = entries, stamp
        log.info("loaded %d tokens from %s", len(entries), self.path)

    def lookup(self, token: str) -> TokenEntry | None:
        """The entry for ``token``, or None when it is unknown or revoked."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= RELOAD_CHECK_SECONDS:
                self._checked = now
                self._load()
            return self._entries.get(hash_token(token))
