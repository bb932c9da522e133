"""Headless Chromium for the browser tests (the web view's, and the Windows process
page's under Wine): starting it, and pointing at a canvas's own pixels. The
``browser`` and ``screenshot_dir`` fixtures in tests/conftest.py use these."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


def require_chromium() -> None:
    """Skip without Debian's chromium and chromium-driver, unless CI requires them."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if not missing:
        return
    message = f"missing {', '.join(missing)} (tools/system-deps installs chromium)"
    if os.environ.get("VMATLAS_REQUIRE_CHROMIUM"):
        pytest.fail(f"{message} (VMATLAS_REQUIRE_CHROMIUM is set)")
    pytest.skip(message)


def new_browser(user_data_dir: Path) -> Any:
    """Headless Debian Chromium through chromedriver, with a fresh profile and nothing
    fetched from the network (no driver or browser download either)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def chromium(tmp_path: Path) -> Iterator[Any]:
    """The body of the ``browser`` fixture: a fresh headless Chromium, quit after."""
    require_chromium()
    driver = new_browser(tmp_path / "chromium-profile")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def point_in(browser: Any, canvas: Any, point: list[float]) -> tuple[int, int]:
    """A point in a canvas's own pixels as an offset from its centre in CSS pixels (what
    ActionChains moves by)."""
    width, height, css_width, css_height = browser.execute_script(
        "const c = arguments[0], r = c.getBoundingClientRect();"
        "return [c.width, c.height, r.width, r.height];",
        canvas,
    )
    x = point[0] * css_width / width - css_width / 2
    y = point[1] * css_height / height - css_height / 2
    return round(x), round(y)
