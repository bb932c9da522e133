"""The web view in headless Chromium: how soon the pages are drawn.

Both rows time a page from the start of its navigation to the moment its script marks
it drawn (``performance.mark("vmatlas-loaded")``), read from the browser's own clock:

* the process page of a 65,500-region process, picture and region table included,
  against the browser fetching and parsing that page's snapshot document alone (the
  same bytes over the same connection, nothing drawn): first as the page's first view
  of a snapshot (a fresh one is taken before each round, so the server decodes, builds
  and encodes its document), then again (the server answers from its cache of encoded
  documents);
* the fleet page of 1,000 hosts (50 processes each, stored directly), drawn (figures,
  hosts, the processes closest to their limit), against the browser fetching and
  parsing the two documents it is drawn from; and complete, with every host's worst
  process filled in (the audit's findings come after, as the audit's own row times).

The browser is Debian's ``chromium`` through ``chromedriver`` with a fresh profile and
no network; without them the rows say so.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import chromium
from bench.fleet import summary_item
from bench.run import Row, Workload, interleaved

FLEET_HOSTS = 1000
PROCESSES_PER_HOST = 50
HOST_ID = "bench-web"


@contextmanager
def _browser(profile: Path) -> Iterator[Any]:
    driver = chromium.new_browser(profile)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _page_seconds(driver: Any, url: str, mark: str = "vmatlas-loaded") -> float:
    """From navigation start to the page's own ``mark`` (drawn, or complete)."""
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ms = driver.execute_script(
            "const m = performance.getEntriesByName(arguments[0]);"
            "return m.length ? m[0].startTime : null;",
            mark,
        )
        if ms is not None:
            if driver.execute_script("return document.body.dataset.loaded") == "error":
                raise RuntimeError(driver.find_element("id", "main").text)
            return float(ms) / 1000
        time.sleep(0.01)
    raise RuntimeError(f"{url} was not drawn within 60 s")


def _fetch_seconds(driver: Any, url: str, api_path: str) -> float:
    """The browser fetching and parsing ``api_path`` alone, from the same origin."""
    driver.get(url + "/static/style.css")
    seconds: float = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const t = performance.now();"
        "fetch(arguments[0]).then(r => r.json()).then(() => done((performance.now() - t) / 1000));",
        api_path,
    )
    return seconds


@contextmanager
def _server(data_dir: Path) -> Iterator[Any]:
    from vmatlas.server.app import FleetServer, ServerConfig
    from vmatlas.server.http.listener import HttpConfig

    server = FleetServer(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=str(data_dir),
            retain_seconds=0.0,
            http=HttpConfig(listen="127.0.0.1:0"),
        )
    ).start()
    try:
        yield server
    finally:
        server.stop(1.0)


def _url(server: Any) -> str:
    url: str = server.http_url
    return url.rstrip("/")


def rows(rounds: int, workload: Workload | None = None) -> list[Row]:
    """The web view's rows; ``workload`` is a running 65,500-region process to reuse."""
    process_row = Row(
        f"web: process page drawn, {workload.regions if workload else 65_500:,} regions",
        "<= 1.5 s",
        "fetch+parse its document",
        ratio=False,
        goal=lambda v: v <= 1.5,
    )
    fleet_row = Row(
        f"web: fleet page drawn, {FLEET_HOSTS:,} hosts x {PROCESSES_PER_HOST} processes",
        "<= 1 s",
        "fetch+parse its document",
        ratio=False,
        goal=lambda v: v <= 1.0,
    )
    complete_row = Row(
        "  same, complete with every host's worst process",
        "",
        "fetch+parse its document",
        ratio=False,
    )
    again_row = Row(
        "  same, opened again (document cached)", "", "fetch+parse its document", ratio=False
    )
    out = [process_row, again_row, fleet_row, complete_row]
    missing = chromium.missing()
    if missing:
        for row in out:
            row.note = f"n/a (missing {', '.join(missing)})"
        return out
    with tempfile.TemporaryDirectory(prefix="vmatlas-bench-web-") as tmp:
        root = Path(tmp)
        with _browser(root / "profile") as driver:
            _process_page(driver, root / "one", rounds, process_row, again_row, workload)
            _fleet_page(driver, root / "fleet", rounds, fleet_row, complete_row)
    return out


def _measure(
    rounds: int, reference: Callable[[], float], candidate: Callable[[], float], row: Row
) -> None:
    reference()
    candidate()  # warm: the browser's cache of the static files, the server's code paths
    interleaved(rounds, reference, candidate, row)


def _process_page(
    driver: Any,
    data_dir: Path,
    rounds: int,
    row: Row,
    again: Row,
    workload: Workload | None,
) -> None:
    from vmatlas.agents.linux import LinuxReader
    from vmatlas.agents.uplink import Uplink
    from vmatlas.server.domain.hub import SnapshotRequest

    own = workload is None
    load = workload if workload is not None else Workload(65_500)
    try:
        with _server(data_dir) as server:
            uplink = Uplink(
                LinuxReader(), server.address, host_id=HOST_ID, interval_seconds=3600.0
            ).start()
            url = _url(server)
            try:
                deadline = time.monotonic() + 30
                while HOST_ID not in server.hub.online() and time.monotonic() < deadline:
                    time.sleep(0.05)
                page = f"{url}/hosts/{HOST_ID}/processes/{load.pid}"
                api = f"/api/v1/hosts/{HOST_ID}/processes/{load.pid}/snapshot"

                def fresh() -> None:
                    server.queries.fresh_snapshot(HOST_ID, SnapshotRequest(load.pid))

                def first_view() -> float:
                    fresh()  # not timed: a new snapshot, whose document is not built yet
                    return _page_seconds(driver, page)

                def first_fetch() -> float:
                    fresh()
                    return _fetch_seconds(driver, url, api)

                fresh()
                _measure(rounds, first_fetch, first_view, row)
                _measure(
                    rounds,
                    lambda: _fetch_seconds(driver, url, api),
                    lambda: _page_seconds(driver, page),
                    again,
                )
                cells = driver.execute_script(
                    "return document.getElementById('count-grid').dataset.cells"
                )
                row.note = f"{int(cells):,} cells drawn"
            finally:
                uplink.stop()
    finally:
        if own:
            load.close()


def _fetch_both(driver: Any, url: str) -> float:
    driver.get(url + "/static/style.css")
    seconds: float = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const t = performance.now();"
        "Promise.all(['/api/v1/hosts', '/api/v1/processes?order=headroom&limit=20']"
        ".map(u => fetch(u).then(r => r.json()))).then(() => done((performance.now() - t) / 1000));"
    )
    return seconds


def _fleet_page(driver: Any, data_dir: Path, rounds: int, row: Row, complete: Row) -> None:
    from dataclasses import replace

    from bench.fleet import _host

    with _server(data_dir) as server:
        now = time.time()
        for i in range(FLEET_HOSTS):
            host_id = f"web-{i:04d}"
            server.store.put_host(_host(host_id), now)
            items = [summary_item(1000 + i + p * 7, now) for p in range(PROCESSES_PER_HOST)]
            items = [
                replace(item, process=replace(item.process, pid=1000 + p))
                for p, item in enumerate(items)
            ]
            server.store.put_summaries(host_id, items)
        url = _url(server)
        _measure(
            rounds,
            lambda: _fetch_both(driver, url),
            lambda: _page_seconds(driver, f"{url}/"),
            row,
        )
        shown = driver.execute_script("return document.querySelectorAll('#hosts tbody tr').length")
        row.note = f"{int(shown):,} host rows"
        _measure(
            rounds,
            lambda: _fetch_seconds(driver, url, "/api/v1/fleet?closest=0"),
            lambda: _page_seconds(driver, f"{url}/", "vmatlas-worst"),
            complete,
        )


def main() -> None:
    import sys

    from bench.run import render

    rounds = 3 if "--quick" in sys.argv else 7
    print(render(rows(rounds)))


if __name__ == "__main__":
    main()
