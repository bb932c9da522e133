"""Headless Chromium for the browser tests (the web view's, and the Windows process
page's under Wine): starting it (as bench/chromium.py starts it for the web bench too),
and pointing at a canvas's own pixels. The ``browser`` and ``screenshot_dir`` fixtures
in tests/conftest.py use these."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.chromium import missing, new_browser


def require_chromium() -> None:
    """Skip without Debian's chromium and chromium-driver, unless CI requires them."""
    absent = missing()
    if not absent:
        return
    message = f"missing {', '.join(absent)}"
    if os.environ.get("VMATLAS_REQUIRE_CHROMIUM"):
        pytest.fail(f"{message} (VMATLAS_REQUIRE_CHROMIUM is set)")
    pytest.skip(message)


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
