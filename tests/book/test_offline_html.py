"""The built book needs nothing from outside the site, and its pages stay small.

The first tests check the configuration and the output rewriting without a
build; the others read the built HTML (one build per session, see conftest).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
import yaml

from book_helpers import ROOT, chapter_docnames, load_coursebook, toc_docnames

MAX_PAGE_BYTES = 2_000_000  # a page with its figures' data; libraries are never inline
LOADING_RELS = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "prefetch", "manifest"}
_IMPORT_RE = re.compile(r"""\bimport\s*(?:[\w{}\s,*$]+from\s*)?["']((?:https?:)?//[^"']+)["']""")
_CSS_URL_RE = re.compile(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"')\s]+)""")


def _is_external(url: str) -> bool:
    url = url.strip()
    return url.startswith("//") or urlparse(url).scheme in ("http", "https")


class _Loads(HTMLParser):
    """Every URL a page loads: script/img/iframe src, stylesheet-like link href, ES imports."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str]] = []  # (what, url)
        self._in_script = False
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed") and a.get("src"):
            self.loads.append((f"<{tag} src>", a["src"]))
        if tag == "link" and a.get("href"):
            rels = set((a.get("rel") or "").lower().split())
            if rels & LOADING_RELS:
                self.loads.append((f"<link rel={a.get('rel')}>", a["href"]))
        self._in_script = tag == "script"
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_script = self._in_style = False

    def handle_data(self, data):
        if self._in_script:
            self.loads += [("<script> import", u) for u in _IMPORT_RE.findall(data)]
        if self._in_style:
            self.loads += [("<style> @import", u) for u in _CSS_URL_RE.findall(data)]


def page_loads(path: Path) -> list[tuple[str, str]]:
    parser = _Loads()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.loads


# --------------------------------------------------------------------------
# Without a build
# --------------------------------------------------------------------------


def test_repository_url_is_the_package_constant():
    import exercises_lib

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == exercises_lib.REPO_URL


def test_every_solution_notebook_is_in_the_toc():
    in_toc = set(chapter_docnames())
    on_disk = {f"solutions/{p.stem}" for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")}
    assert on_disk - in_toc == set(), "solution notebooks missing from _toc.yml"
    root, pages = toc_docnames()
    for docname in [root, *pages]:
        assert any((ROOT / f"{docname}{s}").is_file() for s in (".md", ".ipynb")), f"{docname} in _toc.yml does not exist"


def test_rewrite_circuitsvis_inline_and_cdn_forms():
    cb = load_coursebook()
    call = 'CircuitsVis.render(\n  "circuits-vis-1234abcd-ef01",\n  CircuitsVis.AttentionPatterns,\n  {"tokens": ["a"]}\n)'
    inline = (
        '<div id="circuits-vis-1234abcd-ef01" style="margin: 15px 0;"/>\n'
        '<script crossorigin type="module">\nvar CircuitsVis=(function(){ /* 1.3 MB */ })();\n'
        f"{call}\n</script>"
    )
    cdn = (
        '<div id="circuits-vis-1234abcd-ef01" style="margin: 15px 0;"/>\n<script crossorigin type="module">\n'
        'import { render, AttentionPatterns } from "https://unpkg.com/circuitsvis@1.43.3/dist/cdn/esm.js";\n'
        'render(\n  "circuits-vis-1234abcd-ef01",\n  AttentionPatterns,\n  {"tokens": ["a"]}\n)\n</script>'
    )
    for source in (inline, cdn):
        new, needs = cb.rewrite_output_html(source)
        assert needs == {"circuitsvis"}
        assert "1.3 MB" not in new and "unpkg" not in new
        assert 'CircuitsVis.render("circuits-vis-1234abcd-ef01", CircuitsVis.AttentionPatterns,' in new
        assert '<div id="circuits-vis-1234abcd-ef01" class="course-circuitsvis"' in new and "</div>" in new
        assert cb.external_references(new) == []


def test_rewrite_plotly_notebook_renderer_output():
    cb = load_coursebook()
    bundle = "<script type=\"text/javascript\">/**\n* plotly.js v3.3.0\n*/" + "x" * 600_000 + "</script>"
    figure = (
        '<div><script charset="utf-8" src="https://cdn.jsdelivr.net/npm/mathjax@3.2.2/es5/tex-svg.js"></script>'
        '<div id="f1" class="plotly-graph-div"></div><script type="text/javascript">'
        'if (document.getElementById("f1")) { Plotly.newPlot("f1", [], {}) }</script></div>'
    )
    new, needs = cb.rewrite_output_html(bundle + figure)
    assert needs == {"plotly"}
    assert "x" * 1000 not in new and "mathjax" not in new
    assert "Plotly.newPlot" in new
    assert cb.external_references(new) == []


def test_rewrite_marks_standin_and_replaces_colab_badge():
    from exercises_lib.render import STANDIN_BANNER_CLASS

    cb = load_coursebook()
    banner = f'<div class="{STANDIN_BANNER_CLASS}" data-model="GPT-2 small (stand-in)" role="note">...</div>'
    _, needs = cb.rewrite_output_html(banner)
    assert needs == {"standin:GPT-2 small (stand-in)"}
    badge = '<img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/>'
    new, _ = cb.rewrite_output_html(badge)
    assert "colab.research.google.com" not in new and f"{cb.STATIC_PLACEHOLDER}/course/colab-badge.svg" in new


def test_rewrite_widget_state_outputs():
    import json

    cb = load_coursebook()
    inline_cv = (
        '<div id="circuits-vis-1234abcd-ef01" style="margin: 15px 0;"/><script crossorigin type="module">'
        'var CircuitsVis=(function(){ /* bundle */ })();CircuitsVis.render("circuits-vis-1234abcd-ef01", '
        'CircuitsVis.AttentionPatterns, {"tokens": ["a"]})</script>'
    )
    state = {
        "version_major": 2,
        "version_minor": 0,
        "state": {
            "m1": {"model_name": "OutputModel", "state": {"outputs": [
                {"output_type": "display_data", "data": {"text/html": inline_cv, "text/plain": "x"}},
            ]}},
            "m2": {"model_name": "IntSliderModel", "state": {"value": 3}},
        },
    }
    body, needs = cb.rewrite_widget_state(json.dumps(state))
    assert needs == {"circuitsvis"}
    assert "</" not in body and "bundle" not in body
    html = json.loads(body)["state"]["m1"]["state"]["outputs"][0]["data"]["text/html"]
    assert html.startswith('<div id="circuits-vis-1234abcd-ef01" class="course-circuitsvis"')


def test_external_references_are_reported():
    cb = load_coursebook()
    text = '<script src="https://cdn.example.org/lib.js"></script><img src="//example.org/a.png">'
    assert len(cb.external_references(text)) == 2
    assert cb.external_references('<script src="../_static/x.js"></script><a href="https://x.org">x</a>') == []


# --------------------------------------------------------------------------
# On the built site
# --------------------------------------------------------------------------


def test_no_page_loads_anything_from_outside_the_site(book_html: Path):
    offending = []
    for page in sorted(book_html.rglob("*.html")):
        for what, url in page_loads(page):
            if _is_external(url):
                offending.append(f"{page.relative_to(book_html)}: {what} {url}")
    assert not offending, "the built book loads from outside the site:\n" + "\n".join(offending)


def test_every_local_script_and_stylesheet_exists(book_html: Path, book_pages):
    missing = []
    for docname, page in book_pages.items():
        for what, url in page_loads(page):
            if _is_external(url) or url.startswith(("data:", "#")):
                continue
            target = urlparse(urljoin(page.as_uri(), url)).path
            if not Path(target).is_file():
                missing.append(f"{docname}: {what} {url}")
    assert not missing, "pages load files that the build did not write:\n" + "\n".join(missing)


def test_pages_are_small_and_carry_no_library(book_html: Path, book_pages):
    from importlib import resources

    cv_bundle = (resources.files("circuitsvis") / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
    cv_marker = cv_bundle[200:400]
    problems = []
    for docname, page in book_pages.items():
        text = page.read_text(encoding="utf-8", errors="replace")
        if len(text.encode()) > MAX_PAGE_BYTES:
            problems.append(f"{docname}: {len(text.encode()):,} bytes")
        if cv_marker in text:
            problems.append(f"{docname}: carries the circuitsvis bundle inline")
        if re.search(r"\*\s*plotly\.js v\d", text):
            problems.append(f"{docname}: carries plotly.js inline")
    assert not problems, "\n".join(problems)


def test_vendored_libraries_are_served(book_html: Path):
    for rel in (
        "_static/vendor/plotly/plotly.min.js",
        "_static/vendor/circuitsvis/circuitsvis.js",
        "_static/vendor/mathjax/tex-chtml-full.js",
        "_static/vendor/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff",
        "_static/vendor/html-manager/embed.js",
    ):
        assert (book_html / rel).is_file(), rel


def test_solution_cells_are_collapsed(book_pages):
    for docname in chapter_docnames():
        text = book_pages[docname].read_text(encoding="utf-8")
        for cell in re.finditer(r'<div class="cell tag_solution[^"]*"[^>]*>(.*?)<div class="cell_input', text, re.S):
            head = cell.group(1)
            assert "<details" in head and "Show solution" in head, f"{docname}: a solution cell is not collapsed"


def test_standin_notice_iff_standin_banner(book_pages):
    for docname, page in book_pages.items():
        text = page.read_text(encoding="utf-8")
        has_banner = 'class="standin-banner"' in text
        has_notice = "standin-page-notice" in text
        assert has_banner == has_notice, f"{docname}: banner {has_banner}, page notice {has_notice}"


def test_chapter_pages_launch_in_colab(book_pages):
    import exercises_lib

    repo = exercises_lib.REPO_URL.removeprefix("https://github.com/")
    for docname in chapter_docnames():
        text = book_pages[docname].read_text(encoding="utf-8")
        base = f"https://colab.research.google.com/github/{repo}/blob/{exercises_lib.RELEASE_TAG}/"
        assert f'href="{base}{docname}.ipynb"' in text, f"{docname}: no Colab button"
        twin = "chapters/" + docname.split("/", 1)[1]
        if (ROOT / f"{twin}.ipynb").is_file():
            assert f'href="{base}{twin}.ipynb"' in text, f"{docname}: no Colab button for {twin}"
