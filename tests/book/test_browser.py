"""Open the built book in headless Chromium and check what a reader would see.

For the intro page and every chapter page: plotly figures have drawn their SVG,
circuitsvis figures have rendered, MathJax has typeset the math, widgets have
rendered, no script failed, and no request left 127.0.0.1. A screenshot of
each page is saved to ``_build/screenshots/``.

Needs Debian's ``chromium`` and ``chromium-driver`` and PyPI's ``selenium``;
skipped, saying which is missing, without them.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from book_helpers import chapter_docnames, toc_docnames

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
RENDER_TIMEOUT_S = 60
SCREENSHOT_MAX_HEIGHT = 12000

try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="headless Chromium not installed: apt-get install -y chromium chromium-driver",
    ),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium not installed: pip install -r requirements.txt"),
]

# What each page shows, measured in the page once it has loaded.
PAGE_STATE_JS = r"""
const q = (s) => Array.from(document.querySelectorAll(s));
const plotly = q('.course-plotly-figure, .plotly-graph-div');
const cv = q('[id^="circuits-vis-"]');
const math = q('.math, .amsmath');
const widgetViews = q('script[type="application/vnd.jupyter.widget-view+json"]');
return {
  ready: document.readyState,
  plotly: plotly.length,
  plotlyDrawn: plotly.filter(d => d.querySelector('svg.main-svg')).length,
  circuitsvis: cv.length,
  circuitsvisDrawn: cv.filter(d => d.children.length > 0 && d.getBoundingClientRect().height > 20).length,
  math: math.length,
  mathTypeset: math.filter(m => m.querySelector('mjx-container') || m.tagName.toLowerCase() === 'mjx-container').length,
  mjx: q('mjx-container').length,
  widgetViews: widgetViews.length,
  widgetsDrawn: q('.jupyter-widgets.widget-inline-hbox, .jupyter-widgets.widget-container, .jupyter-widgets.widget-box, .widget-slider, .jupyter-widgets-view').length,
  standinBanner: q('.standin-banner').length,
  standinNotice: q('.standin-page-notice').length,
  solutionToggles: q('.course-solution details').length,
  height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight),
};
"""


def _done(state: dict) -> bool:
    return (
        state["ready"] == "complete"
        and state["plotlyDrawn"] == state["plotly"]
        and state["circuitsvisDrawn"] == state["circuitsvis"]
        and state["mathTypeset"] == state["math"]
        and (state["widgetViews"] == 0 or state["widgetsDrawn"] >= 1)
    )


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="book-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        # Belt and braces: any host but the local server fails to resolve, so
        # a stray external request cannot leave the machine; the test below
        # still sees it in the network log and fails on it.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(RENDER_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _requests(driver) -> list[str]:
    """URLs the browser requested since the last call (DevTools network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _screenshot(driver, path: Path, height: int) -> None:
    """A PNG of the whole page (capped at SCREENSHOT_MAX_HEIGHT pixels), 1280 px wide."""
    height = min(height, SCREENSHOT_MAX_HEIGHT)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        time.sleep(0.3)  # relayout at the new height
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _pages() -> list[str]:
    root, _ = toc_docnames()
    return [root, *chapter_docnames()]


@pytest.mark.parametrize("docname", _pages())
def test_page_renders_offline(docname, browser, book_server, book_pages, screenshot_dir):
    assert docname in book_pages
    browser.get_log("performance")  # drop what earlier pages left
    browser.get_log("browser")
    browser.get(f"{book_server}/{docname}.html")
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    state = browser.execute_script(PAGE_STATE_JS)
    while not _done(state) and time.monotonic() < deadline:
        time.sleep(0.5)
        state = browser.execute_script(PAGE_STATE_JS)
    time.sleep(0.5)  # let the last layout settle before the screenshot
    state = browser.execute_script(PAGE_STATE_JS)
    shot = screenshot_dir / (docname.replace("/", "__") + ".png")
    _screenshot(browser, shot, state["height"])

    outside = sorted(
        {
            u
            for u in _requests(browser)
            if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).hostname != "127.0.0.1"
        }
    )
    # Uncaught exceptions and failed loads; not libraries' own console.error
    # chatter (the theme logs "invalid theme mode" on a fresh profile).
    errors = [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE"
        and ("Uncaught" in e["message"] or "Failed to load resource" in e["message"])
        and "favicon.ico" not in e["message"]
    ]
    summary = f"{docname}: {state} (screenshot: {shot})"
    assert not outside, f"{docname} requested outside hosts: {outside}"
    assert state["plotlyDrawn"] == state["plotly"], f"plotly figures not drawn. {summary}"
    assert state["circuitsvisDrawn"] == state["circuitsvis"], f"circuitsvis figures not drawn. {summary}"
    assert state["mathTypeset"] == state["math"], f"math not typeset by MathJax. {summary}"
    if state["math"]:
        assert state["mjx"] > 0, summary
    if state["widgetViews"]:
        assert state["widgetsDrawn"] >= 1, f"widgets not rendered. {summary}"
    assert state["standinBanner"] == 0 or state["standinNotice"] == 1, f"stand-in notice missing. {summary}"
    assert not errors, f"{docname}: script errors in the browser console: {errors}"


def test_show_solution_opens(browser, book_server, book_pages):
    """Clicking "Show solution" reveals the solution's code."""
    pages = [d for d in chapter_docnames() if 'course-solution' in book_pages[d].read_text(encoding="utf-8")]
    if not pages:
        pytest.skip("no chapter page has a cell tagged 'solution' yet")
    browser.get(f"{book_server}/{pages[0]}.html")
    details = browser.find_element("css selector", ".course-solution details")
    code = details.find_element("css selector", ".cell_input")
    assert not code.is_displayed(), "the solution is visible before the toggle is opened"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", details)
    details.find_element("css selector", "summary").click()
    deadline = time.monotonic() + 5
    while not code.is_displayed() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert code.is_displayed(), "the solution stays hidden after clicking Show solution"
