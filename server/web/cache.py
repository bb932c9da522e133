"""Snapshot documents kept encoded, so that a process page opened again (or by a
second person) costs a store read, not a decode, a build and an encode of 65,530
regions.

A stored snapshot never changes, but a store may give a pruned snapshot's id to a
later one (SQLite reuses row ids): the key is the id together with the digest the
store keeps the region table under, so a reused id never answers with the old
document. (A snapshot the store did not give has no such digest: its table is
hashed.)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from vmatlas.server.domain.fleet import HostSnapshot

# About twenty documents of 65,530 regions.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def snapshot_key(stored: HostSnapshot, with_regions: bool) -> tuple[object, ...]:
    header = stored.header()
    digest = stored.regions_sha256 or hashlib.sha256(stored.regions).digest()
    return (
        stored.snapshot_id,
        stored.host_id,
        header.process.pid,
        header.capture_time,
        digest,
        with_regions,
    )


class EncodedDocuments:
    """A byte-bounded, least-recently-used map from a key to an encoded document;
    safe to use from the threads the handlers build documents in."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: tuple[object, ...], body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = body
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)
