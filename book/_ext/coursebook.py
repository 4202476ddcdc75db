"""Sphinx extension of the course book (loaded through ``_config.yml``).

What it does, in build order:

* Sets ``MECHINTERP_BOOK_BUILD=1`` for the kernels that execute the notebooks,
  so ``exercises_lib.render`` writes figures in their book form, and
  ``PLOTLY_RENDERER=notebook`` so that figures of a notebook that never calls
  ``configure_renderers()`` still reach the page as HTML.
* Solutions behind a toggle: every code cell tagged ``solution`` gets
  myst-nb's ``hide-input`` treatment with the prompt "Show solution"; its
  output stays visible.
* Offline outputs: notebook outputs (and the outputs kept in ipywidgets
  state, e.g. an ``interact`` explorer's figure) that carry a library or load
  one from a CDN are rewritten to use the copies served from ``_static/vendor/``:
  circuitsvis figures lose their inline 1.3 MB bundle (or their CDN import),
  plotly's inlined plotly.js and its MathJax 2 CDN tag are dropped, the
  Colab badge image is replaced by a local one. Any other reference to an
  outside host in an output is reported as a build warning. Each widget gets
  a one-line note that the page is static.
* Per page, only the scripts that page needs: plotly.js where it has a plotly
  figure, the circuitsvis bundle where it has a circuitsvis figure, a MathJax 3
  shim for ipywidgets where it has widgets. sphinx-thebe's scripts (always
  loaded by Jupyter Book, unused here) are dropped.
* Stand-in notice: a page whose notebook ran on an offline stand-in model
  (its outputs carry ``exercises_lib.render.standin_banner``) gets a notice
  under its title as well.
* Launch buttons: on a solution page whose exercise twin exists in
  ``chapters/``, a second Colab entry opens the exercise notebook.
* At the end, copies the vendored scripts into ``_static/vendor/``: MathJax
  and the ipywidgets manager from ``book/_static/vendor/`` (see
  ``tools/vendor_js.sh``), plotly.js and the circuitsvis bundle from the
  installed Python packages, so they match the versions that made the figures.
"""

from __future__ import annotations

import filecmp
import html as html_lib
import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

from exercises_lib.render import BOOK_BUILD_ENV, PLOTLY_FIGURE_CLASS, STANDIN_BANNER_CLASS

LOGGER = logging.getLogger(__name__)

SOLUTION_TAG = "solution"

HERE = Path(__file__).resolve().parent
BOOK_STATIC = HERE.parent / "_static"  # book/_static

PLOTLY_JS = "vendor/plotly/plotly.min.js"
CIRCUITSVIS_JS = "vendor/circuitsvis/circuitsvis.js"
COLAB_BADGE = "course/colab-badge.svg"
WIDGETS_MATHJAX_JS = "course/widgets-mathjax.js"
FIGURES_JS = "course/figures.js"  # fits figures and text tables to the page once drawn
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
WIDGET_NOTE = (
    '<p class="course-widget-note">This page has no Python behind it: the widget '
    "above shows the state the notebook was built with. Run the notebook to "
    "explore.</p>"
)
STATIC_PLACEHOLDER = "__COURSEBOOK_STATIC__"  # replaced by the page's path to _static/

# --------------------------------------------------------------------------
# Rewriting one HTML output
# --------------------------------------------------------------------------

_SCRIPT_RE = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.S | re.I)
_SRC_RE = re.compile(r"""\bsrc\s*=\s*["']([^"']+)["']""", re.I)
_CV_DIV_RE = re.compile(r"""<div id="(circuits-vis-[^"]+)"\s*(style="[^"]*")?\s*/?>""")
_CV_RENDER_RE = re.compile(
    r"""render\(\s*"(circuits-vis-[^"]+)"\s*,\s*(?:CircuitsVis\.)?(\w+)\s*,(.*)\)\s*$""", re.S
)
_CV_CDN_IMPORT = "unpkg.com/circuitsvis@"
_EXTERNAL_RE = re.compile(
    r"""<(?:script|img|iframe|source|video|audio|embed)\b[^>]*?\bsrc\s*=\s*["'](?:https?:)?//[^"']+["']"""
    r"""|<link\b[^>]*?\bhref\s*=\s*["'](?:https?:)?//[^"']+["']"""
    r"""|\bimport\s*(?:[\w{}\s,*]+from\s*)?["'](?:https?:)?//[^"']+["']""",
    re.I,
)
_COLAB_BADGE_RE = re.compile(
    r"""<img\b[^>]*\bsrc\s*=\s*["']https://colab\.research\.google\.com/assets/colab-badge\.svg["'][^>]*>""",
    re.I,
)
_BANNER_RE = re.compile(
    r"""class="[^"]*\b""" + STANDIN_BANNER_CLASS + r"""\b[^"]*"[^>]*?data-model="([^"]*)\"""")


def _is_plotly_bundle(attrs: str, body: str) -> bool:
    """The inline copy of plotly.js that plotly's ``notebook`` renderer publishes once."""
    return "src=" not in attrs and len(body) > 500_000 and "plotly.js" in body[:2000]


def _circuitsvis_call(body: str) -> str | None:
    """``CircuitsVis.render(...)`` for a circuitsvis script (inline or CDN form), else None."""
    if "CircuitsVis.render(" in body:  # inline form: bundle, then the call
        call = body[body.rfind("CircuitsVis.render(") + len("CircuitsVis.") :]
    elif _CV_CDN_IMPORT in body:  # CDN form: import { render, X } from unpkg; render(...)
        call = body[body.rfind("render(") :]
    else:
        return None
    match = _CV_RENDER_RE.match(call.strip())
    if not match:
        return None
    div_id, element, props = match.groups()
    return f'CircuitsVis.render("{div_id}", CircuitsVis.{element},{props.rstrip()})'


def rewrite_output_html(text: str) -> tuple[str, set[str]]:
    """Rewrite one HTML output so that it loads nothing from outside the site.

    Returns the new HTML and the set of page needs it revealed, among
    ``"plotly"``, ``"circuitsvis"`` and ``"standin:<model name>"``.
    """
    needs: set[str] = set()

    def script(match: re.Match) -> str:
        attrs, body = match.group(1), match.group(2)
        src = _SRC_RE.search(attrs)
        if src:
            url = src.group(1)
            # plotly's HTML renderers add MathJax 2 and plotly.js from CDNs
            if re.search(r"mathjax|cdn\.plot\.ly|plotly-\d|plotly\.min\.js", url, re.I):
                if "plotly" in url.lower():
                    needs.add("plotly")
                return ""
            return match.group(0)
        if _is_plotly_bundle(attrs, body):
            needs.add("plotly")
            return ""
        if re.search(r"""import\s*["'](?:https?:)?//cdn\.plot\.ly/""", body):
            needs.add("plotly")
            return ""
        call = _circuitsvis_call(body)
        if call is not None:
            needs.add("circuitsvis")
            return f'<script type="module">{call}</script>'
        if "Plotly.newPlot" in body or "Plotly.react" in body:
            needs.add("plotly")
        return match.group(0)

    new = _SCRIPT_RE.sub(script, text)
    if "circuitsvis" in needs:
        new = _CV_DIV_RE.sub(
            lambda m: f'<div id="{m.group(1)}" class="course-circuitsvis" {m.group(2) or ""}></div>', new
        )
    if "plotly-graph-div" in new or PLOTLY_FIGURE_CLASS in new:
        needs.add("plotly")
    if WIDGET_VIEW_MIME in new:
        needs.add("widgets")
        new += WIDGET_NOTE
    new = _COLAB_BADGE_RE.sub(
        f'<img src="{STATIC_PLACEHOLDER}/{COLAB_BADGE}" alt="Open In Colab" class="course-colab-badge"/>', new
    )
    for model in _BANNER_RE.findall(new):
        needs.add(f"standin:{html_lib.unescape(model)}")
    return new, needs


def external_references(text: str) -> list[str]:
    """The loads from outside the site that remain in an HTML snippet."""
    return [m.group(0)[:160] for m in _EXTERNAL_RE.finditer(text)]


# --------------------------------------------------------------------------
# Post-transforms
# --------------------------------------------------------------------------


class SolutionToggle(SphinxPostTransform):
    """Collapse the source of code cells tagged ``solution`` behind "Show solution".

    Runs just before myst-nb's ``HideInputCells`` (priority 199), which turns
    ``hide_mode`` into the ``<details>`` toggle.
    """

    default_priority = 198
    formats = ("html",)

    def run(self, **kwargs: Any) -> None:
        for node in self.document.findall(nodes.container):
            if node.get("nb_element") != "cell_code":
                continue
            if f"tag_{SOLUTION_TAG}" not in node.get("classes", []):
                continue
            node["classes"].append("course-solution")
            if node.get("hide_mode") in (None, "input"):
                node["hide_mode"] = "input"
                node["prompt_show"] = "Show solution"
                node["prompt_hide"] = "Hide solution"


class OfflineOutputs(SphinxPostTransform):
    """Point every HTML output at the site's own copies of its libraries.

    Runs after myst-nb's ``SelectMimeType`` (priority 4), so only the output
    form the page shows is left. Records what the page needs on the document
    (``coursebook_needs``), read back in ``html-page-context``.
    """

    default_priority = 50
    formats = ("html",)

    def run(self, **kwargs: Any) -> None:
        needs: set[str] = set(self.document.get("coursebook_needs", ()))
        docname = self.env.docname
        static = _relative_static(docname)
        for node in list(self.document.findall(nodes.raw)):
            if "html" not in node.get("format", "").split():
                continue
            text = node.astext()
            new, found = rewrite_output_html(text)
            new = new.replace(STATIC_PLACEHOLDER, static)
            needs |= found
            for ref in external_references(new):
                LOGGER.warning(
                    f"an output loads from outside the site, which the offline book "
                    f"cannot serve: {ref}",
                    location=node,
                    type="coursebook",
                    subtype="external",
                )
            if new != text:
                replacement = node.copy()  # keeps format and classes
                replacement += nodes.Text(new)
                node.replace_self(replacement)
        for node in self.document.findall(nodes.image):
            uri = node.get("uri", "")
            if uri.startswith(("http://", "https://", "//")):
                LOGGER.warning(
                    f"an image loads from outside the site: {uri}",
                    location=node,
                    type="coursebook",
                    subtype="external",
                )
        models = sorted(n.split(":", 1)[1] for n in needs if n.startswith("standin:"))
        if models:
            _insert_standin_notice(self.document, models)
        self.document["coursebook_needs"] = needs


def _relative_static(docname: str) -> str:
    """The path from page ``docname`` to the site's ``_static`` folder."""
    depth = docname.count("/")
    return "../" * depth + "_static" if depth else "_static"


def _insert_standin_notice(document: nodes.document, models: list[str]) -> None:
    """Put a notice under the page title: its figures come from a stand-in."""
    real = sorted({m.removesuffix(" (stand-in)") for m in models})
    names = " and ".join(f"<code>{html_lib.escape(m)}</code>" for m in real)
    if len(real) == 1:
        what = f"an offline stand-in for {names}, a model with the real one's shapes and the chapter's mechanisms planted in it"
    else:
        what = f"offline stand-ins for {names}, models with the real ones' shapes and the chapter's mechanisms planted in them"
    notice = nodes.raw(
        "",
        f'<div class="admonition warning standin-page-notice" role="note">'
        f'<p class="admonition-title">Built with an offline stand-in model</p>'
        f"<p>This page was executed without the real weights: its figures and "
        f"numbers come from {what}. They show how each method works; run the "
        f"notebook where the weights can be downloaded to see the real "
        f"{'model' if len(real) == 1 else 'models'}.</p></div>",
        format="html",
    )
    section = next(iter(document.findall(nodes.section)), None)
    if section is not None and section.children and isinstance(section[0], nodes.title):
        section.insert(1, notice)
    else:
        document.insert(0, notice)


# --------------------------------------------------------------------------
# Per-page scripts, launch buttons, vendored files
# --------------------------------------------------------------------------


def rewrite_widget_state(state_json: str) -> tuple[str, set[str]]:
    """Apply ``rewrite_output_html`` to the HTML outputs held in ipywidgets state.

    An explorer built with ``interact`` keeps its last outputs (figures too)
    in the state of an Output widget, which the page embeds as JSON in a
    ``<script type="application/vnd.jupyter.widget-state+json">``.
    """
    state = json.loads(state_json)
    needs: set[str] = set()
    for model in (state.get("state") or {}).values():
        for output in (model.get("state") or {}).get("outputs") or []:
            data = output.get("data") or {}
            html = data.get("text/html")
            if isinstance(html, list):
                html = "".join(html)
            if isinstance(html, str):
                data["text/html"], found = rewrite_output_html(html)
                needs |= found
    # the JSON sits inside a <script> element: no "</" may appear in it
    return json.dumps(state).replace("</", "<\\/"), needs


def _rewrite_page_widget_state(context: dict, static: str) -> set[str]:
    needs: set[str] = set()
    for js in context.get("script_files") or []:
        attributes = getattr(js, "attributes", None)
        if not attributes or attributes.get("type") != WIDGET_STATE_MIME or not attributes.get("body"):
            continue
        body, found = rewrite_widget_state(attributes["body"])
        attributes["body"] = body.replace(STATIC_PLACEHOLDER, static)
        needs |= found
    return needs


def add_page_assets(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    needs = set(doctree.get("coursebook_needs", set())) if doctree is not None else set()
    # runs after myst-nb (priority 500) has put the page's widget state in script_files
    needs |= _rewrite_page_widget_state(context, _relative_static(pagename))
    # plotly.js before the page's other scripts: figures are drawn by inline
    # scripts in the body, which find window.Plotly defined.
    if "plotly" in needs:
        app.add_js_file(PLOTLY_JS, priority=100)
    if "circuitsvis" in needs:
        app.add_js_file(CIRCUITSVIS_JS, priority=100)
    if "widgets" in needs or any(
        (getattr(js, "attributes", None) or {}).get("type") == WIDGET_STATE_MIME
        for js in context.get("script_files") or []
    ):  # before myst-nb's widget manager (priority 500)
        app.add_js_file(WIDGETS_MATHJAX_JS, priority=400)
    _drop_thebe(context)
    _add_exercise_launch_button(app, pagename, context)


_THEBE_BODY_RE = re.compile(
    r"""<script type="text/x-thebe-config">.*?</script>\s*<script>kernelName = '[^']*'</script>""", re.S
)


def _drop_thebe(context: dict) -> None:
    """Remove sphinx-thebe's scripts: the book has no live-code button.

    Jupyter Book always loads sphinx-thebe, which declares ``THEBE_JS_URL``
    (an unpkg address) twice on every page, a SyntaxError in the console.
    """
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        scripts[:] = [
            js
            for js in scripts
            if "sphinx-thebe" not in (getattr(js, "filename", None) or "")
            and "THEBE_JS_URL" not in (getattr(js, "attributes", {}) or {}).get("body", "")
        ]
    if isinstance(context.get("body"), str):
        context["body"] = _THEBE_BODY_RE.sub("", context["body"])


def _add_exercise_launch_button(app: Sphinx, pagename: str, context: dict) -> None:
    """On ``solutions/NN_x``, add "Colab (exercises)" opening ``chapters/NN_x.ipynb``."""
    if not pagename.startswith("solutions/"):
        return
    twin = "chapters/" + pagename.split("/", 1)[1] + ".ipynb"
    if not (Path(app.srcdir) / twin).is_file():
        return
    theme = app.config.html_theme_options or {}
    colab = (theme.get("launch_buttons") or {}).get("colab_url", "").rstrip("/")
    repo = (theme.get("repository_url") or "").rstrip("/")
    branch = theme.get("repository_branch") or "main"
    if not colab or not repo.startswith("https://github.com/"):
        return
    org_repo = repo.removeprefix("https://github.com/")
    url = f"{colab}/github/{org_repo}/blob/{branch}/{twin}"
    for group in context.get("header_buttons", []):
        if group.get("label") == "launch-buttons":
            group["buttons"].append(
                {
                    "type": "link",
                    "text": "Colab (exercises)",
                    "tooltip": "Open the exercise version of this notebook in Colab",
                    "icon": "_static/images/logo_colab.png",
                    "url": url,
                }
            )


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and filecmp.cmp(src, dest, shallow=True):
        return
    shutil.copyfile(src, dest)


def vendored_files() -> dict[str, Path]:
    """Site path under ``_static/`` -> source file, for every vendored file."""
    files: dict[str, Path] = {}
    for src in sorted(BOOK_STATIC.rglob("*")):
        if src.is_file():
            files[src.relative_to(BOOK_STATIC).as_posix()] = src
    with resources.as_file(resources.files("plotly") / "package_data" / "plotly.min.js") as p:
        files[PLOTLY_JS] = Path(p)
    with resources.as_file(resources.files("circuitsvis") / "dist" / "cdn" / "iife.js") as p:
        files[CIRCUITSVIS_JS] = Path(p)
    return files


def copy_vendored(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder is None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    for rel, src in vendored_files().items():
        _copy(src, static / rel)


def setup(app: Sphinx) -> dict[str, Any]:
    # Inherited by the kernels myst-nb starts. The first switches
    # exercises_lib.render to the book form of figures. The second makes plotly
    # emit HTML (not only its JSON mime type, which the book cannot show) in
    # notebooks that never call exercises_lib.render.configure_renderers();
    # the copy of plotly.js that this puts in the first figure's output is
    # dropped by OfflineOutputs.
    os.environ[BOOK_BUILD_ENV] = "1"
    os.environ["PLOTLY_RENDERER"] = "notebook"
    # myst-nb executes the notebooks with nbclient in this process: guard its
    # waits against a lost ZeroMQ wake-up (see exercises_lib/kernel_wait.py).
    from exercises_lib import kernel_wait

    kernel_wait.install()
    app.add_post_transform(SolutionToggle)
    app.add_post_transform(OfflineOutputs)
    app.add_css_file("course/course.css")
    app.add_js_file(FIGURES_JS, priority=900)
    app.connect("html-page-context", add_page_assets, priority=502)
    app.connect("build-finished", copy_vendored)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
