"""The store contract suite runs every test once per backend: ``sqlite`` (a file in the
test's temp dir) and ``postgresql`` (a database of the test's own on the real server)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from vmatlas.agents.linux import LinuxReader
from vmatlas.model import Host, OperatingSystem, Process, ProcessSummary, Summary
from vmatlas.server.store import Store, open_store

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/vmatlas.sqlite3"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def open_url(store_url: str) -> Iterator[Callable[..., Store]]:
    """Opens the test's store (again, for a restart or a second server); every store
    opened is closed at the end."""
    stores: list[Store] = []

    def open_(**kwargs: object) -> Store:
        store = open_store(store_url, **kwargs)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


@pytest.fixture
def store(open_url: Callable[..., Store]) -> Store:
    return open_url()


def make_host(host_id: str = "host-a", **changes: object) -> Host:
    host = Host(
        host_id=host_id,
        hostname=f"{host_id}.example",
        os=OperatingSystem.LINUX,
        os_version="Debian 12",
        kernel_version="6.1.0",
        user_address_min=0x10000,
        user_address_max=0x7FFF_FFFF_F000,
        max_map_count=65530,
        cpu_count=8,
        memory_total_bytes=16 << 30,
    )
    return replace(host, **changes)  # type: ignore[arg-type]


def make_process(pid: int, name: str = "", start_time: float = 100.0, **changes: object) -> Process:
    process = Process(
        pid=pid,
        parent_pid=1,
        name=name or f"proc{pid}",
        executable=f"/usr/bin/{name or f'proc{pid}'}",
        command_line=(name or f"proc{pid}", "--flag", "ü"),
        user="root",
        start_time=start_time,
        user_address_min=0x10000,
        user_address_max=0x7FFF_FFFF_F000,
    )
    return replace(process, **changes)  # type: ignore[arg-type]


def make_item(
    process: Process, capture_time: float, map_count: int = 100, headroom: float = 0.5
) -> ProcessSummary:
    summary = Summary(
        region_count=map_count + 3,
        map_count=map_count,
        max_map_count=65530,
        headroom_fraction=headroom,
        committed_bytes=map_count * 4096,
        reserved_bytes=1 << 40,  # beyond 32 bits: the columns are 64-bit
        free_bytes=(1 << 47) - 12345,
        largest_free_bytes=1 << 46,
        single_page_region_count=2,
        guard_region_count=1,
        allocation_count=map_count - 1,
        unusable_bytes=4096,
    )
    return ProcessSummary(process, summary, capture_time)


def own_pid_item(reader: LinuxReader) -> ProcessSummary:
    return reader.process_summary(os.getpid())
