"""Open the built book in headless Chromium and check what a reader would see.

For the intro page and every chapter page: plotly figures have drawn their SVG,
circuitsvis figures have rendered, MathJax has typeset the math, widgets have
rendered, no script failed, and no request left 127.0.0.1. A screenshot of
each page is saved to ``_build/screenshots/``.

On every chapter page, ``figure_checks.js`` then measures what a reader would
see wrong in the figures and outputs, one test per page and kind of defect
(``FIGURE_DEFECTS``): titles wider than their figure, labels drawn over each
other, the plotly toolbar over a title, half-integer ticks on an integer axis,
empty output areas, tables cut mid-column, circuitsvis tiles that overflow.
A screenshot of each defect (outlined in red) goes to the test's temporary
folder and its path into the failure message. Defects the book has today are
listed in ``KNOWN_DEFECTS`` as strict expected failures. The checks themselves
are tested on a page with a good and a bad example of each kind.

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
  plotlyFitted: plotly.filter(d => (d.querySelector('.js-plotly-plot') || d).getAttribute('data-course-fitted') === '1').length,
  fitter: Array.from(document.scripts).some(s => (s.src || '').includes('course/figures.js')),
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
        # the book's figures.js has fitted every figure to the page
        and (not state["fitter"] or state["plotlyFitted"] == state["plotly"])
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


def _load(driver, url: str) -> dict:
    """Open ``url`` and wait until its figures, math and widgets have rendered; the page's state."""
    driver.get(url)
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    state = driver.execute_script(PAGE_STATE_JS)
    while not _done(state) and time.monotonic() < deadline:
        time.sleep(0.5)
        state = driver.execute_script(PAGE_STATE_JS)
    time.sleep(0.5)  # let the last layout settle
    return driver.execute_script(PAGE_STATE_JS)


@pytest.mark.parametrize("docname", _pages())
def test_page_renders_offline(docname, browser, book_server, book_pages, screenshot_dir):
    assert docname in book_pages
    browser.get_log("performance")  # drop what earlier pages left
    browser.get_log("browser")
    state = _load(browser, f"{book_server}/{docname}.html")
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


# --------------------------------------------------------------------------
# Figures and outputs as a reader sees them: one check per kind of defect
# --------------------------------------------------------------------------

#: What tests/book/figure_checks.js looks for, measured from the DOM and its geometry.
FIGURE_DEFECTS = {
    "clipped-title": "a figure's title (or another label) wider than the figure, so its edge cuts it off",
    "overlapping-labels": "labels of a figure drawn over each other: tick labels run together, axis or subplot titles collide",
    "toolbar-over-title": "plotly's mode bar (the toolbar shown on hover) over the title",
    "half-integer-ticks": "ticks at 0.5, 1.5, ... on an axis whose data are integers (layers, heads)",
    "empty-output": "an output area that shows nothing (e.g. an invisible progress widget above 'the widget above shows...')",
    "cut-table": "a table (HTML, or text in columns) cut at the right edge, mid-column",
    "circuitsvis-overflow": "circuitsvis tiles whose labels spill out of the tile or the figure",
}

#: Defects present in the built book today, (page, kind) -> what they are. Each
#: is an expected failure that must stay one (strict): fixing the figure makes
#: the test pass, and then its line here goes.
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}

FIGURE_CHECKS_JS = (Path(__file__).with_name("figure_checks.js")).read_text(encoding="utf-8")
SCREENSHOTS_PER_KIND = 3
HEADER_PX = 70  # the book's sticky header covers the top of the window

_MARK_JS = r"""
const [marks] = arguments;
document.querySelectorAll('.course-test-mark').forEach(e => e.remove());
for (const m of marks) {
  const d = document.createElement('div');
  d.className = 'course-test-mark';
  Object.assign(d.style, {position: 'absolute', left: (m.x - 2) + 'px', top: (m.y - 2) + 'px',
    width: (m.width + 4) + 'px', height: (m.height + 4) + 'px', outline: '2px solid red',
    zIndex: 100000, pointerEvents: 'none'});
  document.body.appendChild(d);
}
"""


def _screenshot_finding(driver, finding: dict, path: Path) -> None:
    """A PNG of the finding's figure or output, its offending boxes outlined in red."""
    area, pad = finding["area"], 10
    driver.execute_script(_MARK_JS, finding["marks"])
    try:
        driver.execute_script("window.scrollTo(0, arguments[0])", max(0, area["y"] - pad - HEADER_PX))
        time.sleep(0.2)
        scroll_y, view_h = driver.execute_script("return [window.scrollY, window.innerHeight]")
        top = max(area["y"] - pad, scroll_y + HEADER_PX)
        bottom = min(area["y"] + area["height"] + pad, scroll_y + view_h)
        clip = {"x": max(0, area["x"] - pad), "y": top, "width": min(area["width"] + 2 * pad, 1280),
                "height": max(10, bottom - top), "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "clip": clip})
        path.write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.execute_script("document.querySelectorAll('.course-test-mark').forEach(e => e.remove())")


def _find_defects(driver, url: str, shots: Path, prefix: str) -> list[dict]:
    """Load ``url``, run the figure checks; screenshots of the first few findings of each kind."""
    _load(driver, url)
    findings = driver.execute_script(FIGURE_CHECKS_JS)
    taken: dict[str, int] = {}
    for finding in findings:
        kind = finding["kind"]
        taken[kind] = taken.get(kind, 0) + 1
        if taken[kind] <= SCREENSHOTS_PER_KIND:
            name = f"{prefix}-{finding['case'] or kind}-{taken[kind]}.png".replace("/", "__")
            _screenshot_finding(driver, finding, shots / name)
            finding["screenshot"] = str(shots / name)
    return findings


@pytest.fixture(scope="module")
def page_defects(browser, book_server, book_pages, tmp_path_factory):
    """docname -> the page's figure defects (each page loaded and measured once)."""
    shots = tmp_path_factory.mktemp("figure-defects")
    cache: dict[str, list[dict]] = {}

    def get(docname: str) -> list[dict]:
        if docname not in cache:
            assert docname in book_pages
            cache[docname] = _find_defects(browser, f"{book_server}/{docname}.html", shots, docname)
        return cache[docname]

    return get


def _defect_params():
    for docname in chapter_docnames():
        for kind in FIGURE_DEFECTS:
            reason = KNOWN_DEFECTS.get((docname, kind))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(docname, kind, marks=marks, id=f"{docname.split('/')[-1]}-{kind}")


@pytest.mark.parametrize(("docname", "kind"), list(_defect_params()))
def test_figures_have_no_defect(docname, kind, page_defects):
    found = [f for f in page_defects(docname) if f["kind"] == kind]
    lines = [f"  {f['where']}: {f['detail']}" + (f" (screenshot: {f['screenshot']})" if "screenshot" in f else "") for f in found]
    assert not found, f"{docname}: {len(found)} x {FIGURE_DEFECTS[kind]}:\n" + "\n".join(lines)


def test_known_defects_name_real_pages_and_kinds():
    pages = set(chapter_docnames())
    for docname, kind in KNOWN_DEFECTS:
        assert docname in pages and kind in FIGURE_DEFECTS, (docname, kind)


def _checks_test_page(folder: Path) -> Path:
    """A page with one good and one bad example of each defect kind (data-case="<kind>-good|bad")."""
    from importlib import resources

    import numpy as np
    import plotly.graph_objects as go
    import plotly.io as pio
    from circuitsvis.attention import attention_heads
    from plotly.subplots import make_subplots

    with resources.as_file(resources.files("plotly") / "package_data" / "plotly.min.js") as js:
        shutil.copyfile(js, folder / "plotly.min.js")

    def plot(fig) -> str:
        return pio.to_html(fig, full_html=False, include_plotlyjs=False, config={"responsive": True})

    line = go.Scatter(y=[1, 3, 2, 4])
    long_title = "A title much too long for a figure this narrow, so its end [stand-in] is cut off"
    multiples = make_subplots(rows=1, cols=4)
    for col in range(1, 5):
        multiples.add_trace(go.Scatter(y=[1, 2, 3]), row=1, col=col)
        multiples.update_xaxes(title_text="destination position n", row=1, col=col)
    pair = make_subplots(rows=1, cols=2, subplot_titles=["head 0.1", "head 0.5"])
    for col in (1, 2):
        pair.add_trace(go.Scatter(y=[1, 2, 3]), row=1, col=col)
        pair.update_xaxes(title_text="n", row=1, col=col)
    z = np.random.default_rng(0).random((4, 8))
    wide_rows = ["quantity                          write-up (GPT-2)        ours (stand-in)        note"] + [
        f"measurement number {i:<12d}       about {i / 10:.2f}              {i / 9:.3f}                  "
        "reproduced, within the tolerance the write-up gives" for i in range(5)
    ]
    narrow_rows = ["head  score  group"] + [f"0.{i}   0.{i}{i}   duplicate" for i in range(5)]
    tokens = ["<|endoftext|>", "The", " red", " hat"]
    pattern = np.tril(np.ones((2, 4, 4))) / np.arange(1, 5)[None, :, None]

    cases = {
        "clipped-title-bad": plot(go.Figure(line, layout=dict(width=420, height=300, title=long_title))),
        "clipped-title-good": plot(go.Figure(line, layout=dict(width=420, height=300, title="Short title [stand-in]"))),
        "overlapping-labels-bad": plot(multiples.update_layout(width=520, height=300, showlegend=False)),
        "overlapping-labels-good": plot(pair.update_layout(width=700, height=300, showlegend=False)),
        "toolbar-over-title-bad": plot(go.Figure(line, layout=dict(
            width=650, height=300, margin=dict(t=30), title=dict(text="Behaviour of head 1.4, overall and per destination token", x=0.05, y=0.97)))),
        "toolbar-over-title-good": plot(go.Figure(line, layout=dict(width=650, height=300, title=dict(text="Behaviour of head 1.4", x=0.05)))),
        "half-integer-ticks-bad": plot(go.Figure(go.Heatmap(z=z), layout=dict(width=500, height=600, yaxis_title="layer"))),
        "half-integer-ticks-good": plot(go.Figure(go.Heatmap(z=z), layout=dict(width=500, height=600, yaxis=dict(title="layer", dtick=1)))),
        "empty-output-bad": '<div class="cell_output"><div class="widget-subarea" style="height:32px">'
        '<div style="visibility:hidden">patching: 100% 4/4</div></div>'
        '<p class="course-widget-note">This page has no Python behind it: the widget above shows the state the notebook was built with.</p></div>',
        "empty-output-good": '<div class="cell_output"><div class="widget-subarea" style="height:32px">'
        '<div>patching: 100% 4/4</div></div>'
        '<p class="course-widget-note">This page has no Python behind it: the widget above shows the state the notebook was built with.</p></div>',
        "cut-table-bad": '<div class="cell_output"><div class="highlight" style="overflow-x:auto"><pre>'
        + "\n".join(wide_rows) + "</pre></div></div>",
        "cut-table-good": '<div class="cell_output"><div class="highlight" style="overflow-x:auto"><pre>'
        + "\n".join(narrow_rows) + "</pre></div></div>",
        "circuitsvis-overflow-bad": attention_heads(pattern, tokens, attention_head_names=["10.1 with ' red'", "10.1 with ' big'"]).local_src,
        "circuitsvis-overflow-good": attention_heads(pattern, tokens, attention_head_names=["0.1", "0.5"]).local_src,
    }
    body = "\n".join(f'<section data-case="{name}" style="margin: 40px 0">{html}</section>' for name, html in cases.items())
    page = folder / "figure-checks.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><script src="plotly.min.js"></script>'
        # the book theme's heading size, with which circuitsvis's tile labels outgrow their tiles
        "<style>h4 { font-size: 1.5rem; }</style></head>"
        '<body style="margin:0; font-family: sans-serif">'
        f'<article class="bd-article" style="width: 700px; margin-left: 280px; padding-top: {HEADER_PX}px">{body}</article>'
        "</body></html>",
        encoding="utf-8",
    )
    return page


def test_figure_checks_catch_each_defect_kind(browser, tmp_path):
    """Each check finds its defect in a bad example and nothing in a good one (screenshots in tmp_path)."""
    page = _checks_test_page(tmp_path)
    findings = _find_defects(browser, page.as_uri(), tmp_path, "checks")
    by_case: dict[str, list[str]] = {}
    for f in findings:
        by_case.setdefault(f["case"], []).append(f"{f['kind']}: {f['detail']}")
    missed = [kind for kind in FIGURE_DEFECTS if not any(k.startswith(kind + ":") for k in by_case.get(f"{kind}-bad", []))]
    false_alarms = {case: found for case, found in by_case.items() if not case or case.endswith("-good")}
    assert not missed, f"checks that missed their bad example: {missed}; found: {by_case}"
    assert not false_alarms, f"defects reported in good examples: {false_alarms}"
