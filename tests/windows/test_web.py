"""The web view of a real Windows process: the planted program under Wine, read by an
agent on the Windows reader (the helper seam) connected to a real server, its process
page in headless Chromium. Both views of the picture show reserved against committed
memory and the slivers the 64 KiB allocation granularity leaves unusable, checked by the
colour of the very pixels where the page says each planted region is drawn."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import point_in
from tests.conftest import wait_for
from tests.web.conftest import request
from vmatlas.agents.uplink import Uplink
from vmatlas.agents.windows import WindowsReader
from vmatlas.agents.windows.wine import WineApi
from vmatlas.model import RegionState
from vmatlas.server.app import FleetServer, ServerConfig
from vmatlas.server.domain.hub import SnapshotRequest
from vmatlas.server.http.listener import HttpConfig

from .planting import Planter

HOST_ID = "wine-web"
PAGE = 0x1000
GRANULARITY = 0x10000

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    config = ServerConfig(
        listen="127.0.0.1:0",
        data_dir=str(tmp_path_factory.mktemp("server")),
        retain_seconds=0.0,
        # Reads through Wine on a loaded machine are slow: no early offline.
        heartbeat_seconds=2.0,
        offline_after_seconds=30.0,
        agent_timeout_seconds=120.0,
        http=HttpConfig(listen="127.0.0.1:0"),
    )
    server = FleetServer(config).start()
    yield server
    server.stop(1.0)


@pytest.fixture(scope="module")
def agent(server: FleetServer, wine_api: WineApi) -> Iterator[Uplink]:
    uplink = Uplink(
        WindowsReader(wine_api), server.address, host_id=HOST_ID, interval_seconds=3600.0
    ).start()
    wait_for(lambda: HOST_ID in server.hub.online(), timeout=120, what="the Windows agent")
    yield uplink
    uplink.stop()


def _pixel(browser: Any, canvas_id: str, point: list[float]) -> str:
    colour: str = browser.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(Math.floor(arguments[1]),"
        " Math.floor(arguments[2]), 1, 1).data;"
        "return '#' + [d[0], d[1], d[2]].map(v => v.toString(16).padStart(2, '0')).join('');",
        canvas_id,
        point[0],
        point[1],
    )
    return colour


def _index(regions: dict[str, Any], address: int) -> int:
    return int(regions["start"].index(hex(address)))


@pytest.mark.parametrize("include_free", [False, True], ids=["gaps", "free-rows"])
def test_the_picture_shows_reserved_committed_and_unusable_slivers(
    include_free: bool,
    server: FleetServer,
    agent: Uplink,
    planter: Planter,
    browser: Any,
    screenshot_dir: Path,
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pid = planter.windows_pid
    stored = server.queries.fresh_snapshot(
        HOST_ID, SnapshotRequest(pid, include_free=include_free), timeout_seconds=120.0
    )
    url = server.http_url
    assert url is not None
    doc = request(f"{url.rstrip('/')}/api/v1/snapshots/{stored.snapshot_id}").json()
    assert doc["host"]["os"] == "windows"
    assert doc["host"]["allocation_granularity_bytes"] == GRANULARITY
    regions = doc["regions"]
    classes = doc["classes"]
    state = regions["state"]
    assert (int(RegionState.FREE) in state) is include_free

    # The planted 16 KiB reservation: its second page committed, its last two reserved.
    reserved = planter.plants["reserved"]
    committed_page = _index(regions, reserved + PAGE)
    reserved_tail = _index(regions, reserved + 2 * PAGE)
    assert state[committed_page] == RegionState.COMMITTED
    assert state[reserved_tail] == RegionState.RESERVED
    assert classes[regions["class"][committed_page]] == "anonymous"
    assert classes[regions["class"][reserved_tail]] == "reserved"
    # A 4 KiB allocation takes a whole 64 KiB granule: the 60 KiB after its page are a
    # sliver no allocation can use, shown before the next region in use.
    small = _index(regions, planter.plants["small1"])
    after = next(i for i in range(small + 1, regions["count"]) if state[i] != RegionState.FREE)
    assert regions["unusable_before"][after] == GRANULARITY - PAGE
    assert sum(regions["unusable_before"]) <= doc["summary"]["unusable_bytes"]

    page = f"{url.rstrip('/')}/hosts/{HOST_ID}/processes/{pid}"
    browser.get(page)
    wait_for(
        lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"),
        timeout=60,
        what="the process page",
    )
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "process"
    assert browser.find_element(By.ID, "pid").text == str(pid)
    browser.set_window_size(1400, 2200)
    browser.save_screenshot(
        str(screenshot_dir / f"windows-process-{'free' if include_free else 'gaps'}.png")
    )
    browser.set_window_size(1400, 1000)

    # What each view drew, class by class, is what the columns hold: a cell for every
    # region in use and every sliver; a segment for every region and every sliver.
    in_use = Counter(
        classes[c] for c, s in zip(regions["class"], state, strict=True) if s != RegionState.FREE
    )
    slivers = sum(1 for u in regions["unusable_before"] if u > 0)
    grid = browser.find_element(By.ID, "count-grid")
    strip = browser.find_element(By.ID, "byte-strip")
    assert json.loads(grid.get_attribute("data-class-counts")) == {**in_use, "unusable": slivers}
    every = Counter(classes[c] for c in regions["class"])
    assert json.loads(strip.get_attribute("data-class-counts")) == {**every, "unusable": slivers}

    colours = browser.execute_script("return window.vmatlasPicture.colors")
    assert len({colours["reserved"], colours["anonymous"], colours["unusable"]}) == 3
    for canvas_id, region_at, sliver_at in (
        ("count-grid", "cell", "sliverCell"),
        ("byte-strip", "strip", "sliverStrip"),
    ):
        where = {
            name: browser.execute_script(f"return window.vmatlasPicture.{fn}({index})")
            for name, fn, index in (
                ("committed", region_at, committed_page),
                ("reserved", region_at, reserved_tail),
                ("sliver", sliver_at, after),
            )
        }
        assert _pixel(browser, canvas_id, where["committed"]) == colours["anonymous"], canvas_id
        assert _pixel(browser, canvas_id, where["reserved"]) == colours["reserved"], canvas_id
        assert _pixel(browser, canvas_id, where["sliver"]) == colours["unusable"], canvas_id

    # Hovering over the sliver's cell shows the row of the region after it, with the
    # unusable bytes before it.
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
    point = browser.execute_script(f"return window.vmatlasPicture.sliverCell({after})")
    x, y = point_in(browser, grid, point)
    ActionChains(browser).move_to_element_with_offset(grid, x, y).perform()
    tip = browser.find_element(By.ID, "picture-tip")
    wait_for(lambda: tip.get_attribute("data-region") == str(after), what="the sliver's tip")
    assert "(60.0 KiB unusable)" in tip.text, tip.text
