"""The server's cache of encoded snapshot documents: bounded by bytes, least recently
used out first, and never answering a reused snapshot id with another snapshot's."""

from __future__ import annotations

from vmatlas.model import Host, OperatingSystem, Process, RegionTable, Snapshot, Summary
from vmatlas.server.domain.fleet import HostSnapshot
from vmatlas.server.store.base import SnapshotRecord
from vmatlas.server.web.cache import EncodedDocuments, snapshot_key


def _stored(snapshot_id: str, regions: bytes, capture_time: float = 1.0) -> HostSnapshot:
    header = Snapshot(
        host=Host("h", "h", OperatingSystem.LINUX),
        process=Process(42),
        capture_time=capture_time,
        summary=Summary(),
        regions=RegionTable(),
    )
    return HostSnapshot.from_record(snapshot_id, "h", SnapshotRecord(header, regions))


def test_a_reused_id_is_another_key() -> None:
    first, reused = _stored("7", b"\x0a\x01\x01"), _stored("7", b"\x0a\x01\x02")
    assert snapshot_key(first, True) != snapshot_key(reused, True)
    assert snapshot_key(first, True) == snapshot_key(_stored("7", b"\x0a\x01\x01"), True)
    assert snapshot_key(first, True) != snapshot_key(first, False)


def test_bounded_by_bytes_least_recently_used_first() -> None:
    cache = EncodedDocuments(max_bytes=10)
    cache.put(("a",), b"aaaa")
    cache.put(("b",), b"bbbb")
    assert cache.get(("a",)) == b"aaaa"  # now the most recently used
    cache.put(("c",), b"cccc")  # 12 bytes: the least recently used goes
    assert cache.get(("b",)) is None
    assert (cache.get(("a",)), cache.get(("c",))) == (b"aaaa", b"cccc")
    cache.put(("a",), b"a")  # replaced, counted once
    cache.put(("d",), b"dddd")
    assert len(cache) == 3
    cache.put(("huge",), b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get(("huge",)) is None and len(cache) == 3
