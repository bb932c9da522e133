"""The pages in a real browser (Debian's headless Chromium through chromedriver)
against a real server, a real agent and a planted child."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser import point_in
from tests.conftest import wait_for
from tests.web.conftest import HOST_ID, PLANTED_REGIONS, Fleet, Response, request
from vmatlas.security.redact import _ADDRESS_TEXT
from vmatlas.security.tokens import revoke_token

# RegionState's numbers as the pages print them.
STATES = {1: "free", 2: "reserved", 3: "committed"}


def _load(browser: Any, url: str, page: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait_for(
        lambda: (
            browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded")
            in (page, "error")
        ),
        what=f"the {page} page to load",
    )
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == page, (
        browser.find_element(By.ID, "main").text
    )


def _text(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.TAG_NAME, "body").text)


def _settled_text(browser: Any) -> str:
    """The page's text, or "" while a navigation replaces the page under the read. One
    script reads the current document: a form's post commits the new document before
    its body is parsed (a body looked up then is not there yet, and one looked up
    before goes stale), and a script run as the old document goes finds no context."""
    from selenium.common.exceptions import JavascriptException

    try:
        return str(browser.execute_script("return document.body ? document.body.innerText : ''"))
    except JavascriptException:
        return ""


def _fresh(fleet: Fleet, token: str | None = None) -> dict[str, Any]:
    def take() -> Response:
        return request(
            f"{fleet.url}/api/v1/hosts/{HOST_ID}/processes/{fleet.pid}/snapshot",
            method="POST",
            token=token,
            headers={"X-Vmatlas-Request": "1"},
        )

    # A browser starting beside the agent can delay it into a reconnect: 503 meanwhile.
    r = wait_for(lambda: (resp := take()).status != 503 and resp, what="a fresh snapshot")
    assert r.status == 200, r.body
    doc: dict[str, Any] = r.json()
    return doc


def test_each_page_shows_the_planted_process(
    fleet: Fleet, browser: Any, screenshot_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    fleet.planter.grow(200)
    first = _fresh(fleet)
    fleet.planter.grow(100)
    second = _fresh(fleet)
    regions = second["summary"]["region_count"]
    maps = second["summary"]["map_count"]
    assert regions >= PLANTED_REGIONS + 300
    pid = str(fleet.pid)

    _load(browser, f"{fleet.url}/", "fleet")
    closest = browser.find_element(By.ID, "closest").text
    assert pid in closest
    browser.save_screenshot(str(screenshot_dir / "fleet.png"))

    def pushed() -> bool:
        # The agent pushes summaries every second; wait for the one after the growth.
        listed = request(f"{fleet.url}/api/v1/processes?host={HOST_ID}&name=planter").json()
        return any(
            p["process"]["pid"] == fleet.pid and p["summary"]["map_count"] == maps
            for p in listed["processes"]
        )

    wait_for(pushed, what="the agent's push after the growth")
    _load(browser, f"{fleet.url}/hosts/{HOST_ID}", "host")
    table = browser.find_element(By.ID, "processes").text
    assert re.search(rf"^{pid} planter \S+ - {maps:,} ", table, re.M), table
    browser.save_screenshot(str(screenshot_dir / "host.png"))

    _load(browser, f"{fleet.url}/hosts/{HOST_ID}/processes/{pid}", "process")
    assert browser.find_element(By.ID, "pid").text == pid
    assert f"{regions:,}" in browser.find_element(By.ID, "region-count").text
    grid = browser.find_element(By.ID, "count-grid")
    # One cell per mapping (this process lists no free regions), in a grid sized to
    # the host's limit.
    assert int(grid.get_attribute("data-cells")) == regions
    limit = int(grid.get_attribute("data-limit"))
    assert int(grid.get_attribute("data-side")) == math.ceil(math.sqrt(limit))
    assert int(browser.find_element(By.ID, "regions").get_attribute("data-rows")) == regions
    browser.set_window_size(1400, 2600)
    browser.save_screenshot(str(screenshot_dir / "process.png"))
    browser.set_window_size(1400, 1000)

    # Clicking a cell selects that region's row in the table.
    from selenium.webdriver.common.action_chains import ActionChains

    browser.execute_script("arguments[0].scrollIntoView()", grid)
    ActionChains(browser).move_to_element_with_offset(
        grid, -grid.size["width"] // 2 + 1, -grid.size["height"] // 2 + 1
    ).click().perform()
    selected = browser.find_element(By.ID, "regions").get_attribute("data-selected")
    assert selected == "0"

    link = browser.find_element(By.ID, "diff-link")
    assert first["snapshot_id"] in link.get_attribute("href")
    link.click()
    wait_for(
        lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "diff"
    )
    text = _text(browser)
    assert pid in browser.find_element(By.ID, "diff-sides").text
    assert "+100" in browser.find_element(By.ID, "diff-summary").text
    assert f"{regions:,}" in text
    browser.save_screenshot(str(screenshot_dir / "diff.png"))


def test_clicking_a_host_then_a_process_navigates(fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _fresh(fleet)
    _load(browser, f"{fleet.url}/", "fleet")
    # Each host's worst process arrives after the page is drawn, and redraws the table.
    wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-worst"))
    browser.find_element(By.CSS_SELECTOR, "#hosts a[href='/hosts/" + HOST_ID + "']").click()
    wait_for(lambda: browser.current_url.endswith(f"/hosts/{HOST_ID}"))
    wait_for(
        lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "host"
    )
    browser.find_element(
        By.CSS_SELECTOR, f"#processes a[href='/hosts/{HOST_ID}/processes/{fleet.pid}']"
    ).click()
    wait_for(lambda: browser.current_url.endswith(f"/hosts/{HOST_ID}/processes/{fleet.pid}"))
    wait_for(
        lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "process"
    )
    assert browser.find_element(By.ID, "pid").text == str(fleet.pid)


def _login(browser: Any, url: str, token: str, then: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/login?next={then}")
    browser.find_element(By.NAME, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form#login button").click()
    wait_for(lambda: "/login" not in browser.current_url, what="the login to go through")


def test_a_viewer_sees_no_address(secured_fleet: Fleet, browser: Any, screenshot_dir: Path) -> None:
    fleet = secured_fleet
    first = _fresh(fleet, fleet.tokens["inspector"])
    fleet.planter.grow(50)
    second = _fresh(fleet, fleet.tokens["inspector"])
    pages = {
        "fleet": "/",
        "host": f"/hosts/{HOST_ID}",
        "process": f"/hosts/{HOST_ID}/processes/{fleet.pid}",
        "diff": f"/diff?a={first['snapshot_id']}&b={second['snapshot_id']}&mode=address",
    }
    _login(browser, fleet.url, fleet.tokens["viewer"], "/")
    for name, path in pages.items():
        _load(browser, f"{fleet.url}{path}", name)
        assert str(fleet.pid) in _text(browser)
        for where in (browser.page_source, _text(browser)):
            found = _ADDRESS_TEXT.findall(where)
            assert not found, (name, found[:5])
        browser.save_screenshot(str(screenshot_dir / f"viewer-{name}.png"))
    # The inspector sees the same diff with its addresses.
    _login(browser, fleet.url, fleet.tokens["inspector"], "/")
    _load(browser, f"{fleet.url}{pages['diff']}", "diff")
    assert _ADDRESS_TEXT.search(_text(browser))


def test_a_revoked_token_leads_to_the_login_form(secured_fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    fleet = secured_fleet
    # A page without a login leads to the form, and back to the page after it.
    browser.get(f"{fleet.url}/hosts/{HOST_ID}")
    wait_for(lambda: "/login" in browser.current_url, what="the login form")
    _login(browser, fleet.url, fleet.tokens["inspector"], f"/hosts/{HOST_ID}")
    _load(browser, f"{fleet.url}/hosts/{HOST_ID}", "host")
    cookie = browser.get_cookie("vmatlas_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert fleet.token_file is not None
    revoke_token(fleet.token_file, "inspector")

    def at_login() -> bool:
        browser.get(f"{fleet.url}/hosts/{HOST_ID}")
        return "/login" in browser.current_url

    wait_for(at_login, what="the login form after revocation")
    assert browser.find_elements(By.NAME, "token")
    # A wrong token is refused there, with the form shown again.
    browser.find_element(By.NAME, "token").send_keys("vmat_not-a-token")
    browser.find_element(By.CSS_SELECTOR, "form#login button").click()
    # The form posts and the page is replaced: wait for the new one.
    wait_for(
        lambda: "unknown, expired or revoked" in _settled_text(browser), what="the refusal shown"
    )


@pytest.mark.parametrize("path", ["/", f"/hosts/{HOST_ID}"])
def test_pages_run_no_inline_script(fleet: Fleet, path: str) -> None:
    r = request(f"{fleet.url}{path}")
    assert r.status == 200
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert not re.search(rb"<script(?![^>]*\bsrc=)", r.body)


def test_hovering_shows_a_regions_row_and_clicking_selects_it(fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _fresh(fleet)
    doc = request(f"{fleet.url}/api/v1/hosts/{HOST_ID}/processes/{fleet.pid}/snapshot").json()
    regions = doc["regions"]
    _load(browser, f"{fleet.url}/hosts/{HOST_ID}/processes/{fleet.pid}", "process")
    tip = browser.find_element(By.ID, "picture-tip")
    table = browser.find_element(By.ID, "regions")
    # A region in the middle, and the last one, in each view.
    for index in (regions["count"] // 2, regions["count"] - 1):
        start = regions["start"][index]
        for canvas_id, where in (("count-grid", "cell"), ("byte-strip", "strip")):
            canvas = browser.find_element(By.ID, canvas_id)
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
            point = browser.execute_script(f"return window.vmatlasPicture.{where}({index})")
            x, y = point_in(browser, canvas, point)
            ActionChains(browser).move_to_element_with_offset(canvas, x, y).perform()
            wait_for(
                lambda i=str(index): tip.is_displayed() and tip.get_attribute("data-region") == i,
                what=f"the tip of region {index} over the {canvas_id}",
            )
            # The tip is that region's row: its number, address range, permissions, state.
            perms = regions["perms_values"][regions["perms"][index]]
            state = STATES[regions["state"][index]]
            assert tip.text.startswith(f"#{index + 1}  {start}-0x"), tip.text
            assert f"  {perms}  {state}  " in tip.text, tip.text

            ActionChains(browser).click().perform()
            wait_for(
                lambda i=str(index): table.get_attribute("data-selected") == i,
                what=f"region {index} selected from the {canvas_id}",
            )
            row = browser.find_element(By.CSS_SELECTOR, f"#regions tr[data-index='{index}']")
            assert "selected" in row.get_attribute("class").split()
            assert row.find_elements(By.TAG_NAME, "td")[1].text == start
            # Moving off the picture hides the tip.
            ActionChains(browser).move_to_element(browser.find_element(By.ID, "summary")).perform()
            wait_for(lambda: not tip.is_displayed(), what="the tip to hide")


def _group_by(browser: Any, by: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    Select(browser.find_element(By.ID, "group-by")).select_by_value(by)
    # Read in one script: the table is replaced when the groups arrive, so an element
    # found first could be stale by the time its attribute is read.
    wait_for(
        lambda: (
            browser.execute_script(
                "const g = document.getElementById('groups'); return g && g.dataset.by"
            )
            == by
        ),
        what=f"the groups by {by}",
    )


def test_the_host_page_groups_processes_by_container(
    fleet: Fleet, browser: Any, cgroups: Callable[[str, int], None], screenshot_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    # The planted child alone in a cgroup named as Docker names a container's.
    container = secrets.token_hex(32)
    cgroups(f"system.slice/docker-{container}.scope", fleet.pid)

    def listed() -> dict[str, Any] | None:
        found = request(f"{fleet.url}/api/v1/processes?host={HOST_ID}").json()["processes"]
        return next((p for p in found if p["process"]["container_id"] == container), None)

    planted = wait_for(listed, what="the agent's push naming the container")
    assert planted["process"]["pid"] == fleet.pid
    _load(browser, f"{fleet.url}/hosts/{HOST_ID}", "host")
    # By container (or pod) since the agent reports one. The agent reads every process
    # on the machine, other people's planted in containers or pods too: choose
    # containers, and look at this one's group and the host's.
    assert browser.find_element(By.ID, "groups").get_attribute("data-by") in ("container", "pod")
    _group_by(browser, "container")
    groups = browser.find_element(By.ID, "groups")
    rows = {
        tr.find_elements(By.TAG_NAME, "td")[0].text: tr
        for tr in groups.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    assert {container[:12], "host"} <= set(rows), set(rows)
    cells = [td.text for td in rows[container[:12]].find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "1"
    processes = browser.find_element(By.ID, "processes")
    assert re.search(rf"^{fleet.pid} planter \S+ {container[:12]} ", processes.text, re.M)
    # Clicking the group shows its processes alone.
    rows[container[:12]].find_element(By.TAG_NAME, "a").click()
    wait_for(lambda: len(processes.find_elements(By.CSS_SELECTOR, "tbody tr")) == 1)
    browser.save_screenshot(str(screenshot_dir / "host-container.png"))
    assert processes.text.splitlines()[1].startswith(f"{fleet.pid} planter ")
    browser.find_element(By.ID, "show-all").click()
    wait_for(lambda: len(processes.find_elements(By.CSS_SELECTOR, "tbody tr")) > 1)
    # By name instead: the planter's own group.
    _group_by(browser, "name")
    names = [
        tr.find_elements(By.TAG_NAME, "td")[0].text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#groups tbody tr")
    ]
    assert "planter" in names and "host" not in names
