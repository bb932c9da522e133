"""The server's storage: the :class:`Store` protocol (:mod:`.base`), the rules every
backend shares (:mod:`.rules`), the backends (:mod:`.sqlite`, :mod:`.postgres`), and
:func:`open_store`, which picks one from a URL."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from vmatlas import errors
from vmatlas.server.store.base import (
    HostOwnership,
    JobLease,
    ProcessFilter,
    PushOrigin,
    SnapshotRecord,
    Store,
    parse_duration,
)

__all__ = [
    "HostOwnership",
    "JobLease",
    "ProcessFilter",
    "PushOrigin",
    "SnapshotRecord",
    "Store",
    "open_store",
    "parse_duration",
    "sqlite_url",
]


def sqlite_url(data_dir: str | os.PathLike[str]) -> str:
    """The URL of the embedded store in ``data_dir`` (what ``--data-dir`` means)."""
    from vmatlas.server.store.sqlite import DATABASE_NAME

    return "sqlite:///" + os.path.abspath(os.path.join(os.fspath(data_dir), DATABASE_NAME))


def open_store(url: str, *, read_only: bool = False) -> Store:
    """The store ``url`` names: ``sqlite:///PATH`` (a SQLite file, made if missing;
    ``sqlite:///`` then an absolute path, so four slashes in all) or
    ``postgresql://USER@HOST:PORT/DATABASE`` (any libpq URL; the schema is made or
    migrated on open). ``read_only`` opens an existing store for ``check`` only.
    InvalidArgument for any other scheme; NotFound for a read-only SQLite file that
    does not exist; StoreUnavailable when PostgreSQL cannot be reached."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = unquote(urlsplit(url).path)
        if not path or path == "/":
            raise errors.InvalidArgument(f"{url!r} names no file: use sqlite:///PATH")
        from vmatlas.server.store.sqlite import SQLiteStore

        return SQLiteStore.file(path, read_only=read_only)
    if scheme in ("postgresql", "postgres"):
        from vmatlas.server.store.postgres import PostgresStore

        return PostgresStore(url, read_only=read_only)
    raise errors.InvalidArgument(
        f"unknown store {redact(url)!r}: use sqlite:///PATH or postgresql://HOST/DATABASE"
    )


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
