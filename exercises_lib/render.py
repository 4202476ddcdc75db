"""Where figures appear: Jupyter, Colab and the built book.

Taught in: chapter 0 (setup); used by every chapter through
``exercises_lib.plotting`` and ``exercises_lib.models``.

The same notebook runs in three places, and each needs its figures in a
different form:

* **Jupyter** (JupyterLab, Notebook 7, VS Code), usually offline: plotly
  figures travel as the ``application/vnd.plotly.v1+json`` mime type, which the
  plotly extension shipped inside the ``plotly`` package draws with its own
  copy of plotly.js. circuitsvis figures carry their script inline.
* **Colab**, online: each output is its own frame, so plotly uses its
  ``colab`` renderer and circuitsvis its CDN form.
* **The built book**, served offline: every page loads plotly.js, the
  circuitsvis bundle, MathJax and the widget manager once, from the site's own
  ``_static/vendor/``. Figures are small HTML snippets that call those
  scripts; ``book/_ext/coursebook.py`` rewrites the outputs that still carry a
  copy of a library. The book build sets ``MECHINTERP_BOOK_BUILD=1`` in the
  environment of the kernels it starts, which drops the JSON copy of each
  figure from the book's outputs.

``configure_renderers()`` picks the right form for where it runs;
``standin_banner()`` marks the output of an offline stand-in model.
"""

from __future__ import annotations

import html
import json
import os
import sys
import uuid
from typing import Any

#: Environment variable set by the book's Sphinx extension for the kernels it starts.
BOOK_BUILD_ENV = "MECHINTERP_BOOK_BUILD"

#: Set while solution notebooks are executed for committing
#: (``python -m exercises_lib.generate --execute``): circuitsvis figures are
#: then saved in their small CDN form, which the book rewrites to its own copy.
SMALL_OUTPUTS_ENV = "MECHINTERP_SMALL_OUTPUTS"

#: Name under which the course's plotly renderer is registered.
PLOTLY_RENDERER = "course"

#: CSS class of the stand-in banner; the book build looks for it.
STANDIN_BANNER_CLASS = "standin-banner"

#: Marker class on every plotly figure this module writes.
PLOTLY_FIGURE_CLASS = "course-plotly-figure"

_DEFAULT_HEIGHT = 525


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def in_book_build() -> bool:
    """True inside a kernel started by the book build (see ``BOOK_BUILD_ENV``)."""
    return os.environ.get(BOOK_BUILD_ENV, "") not in ("", "0")


def _script_json(obj: Any) -> str:
    """JSON that is safe to paste inside a ``<script>`` element."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def plotly_figure_html(fig_json: dict) -> str:
    """A figure as a ``<div>`` and a short script that draws it with ``window.Plotly``.

    ``fig_json`` is the JSON-ready figure dict (``data``, ``layout``, ``config``).
    The snippet carries no copy of plotly.js: the page that shows it must load
    plotly.js (the built book does so on every page with a figure). Where no
    plotly.js is loaded the snippet says so in place of the figure.
    """
    layout = fig_json.get("layout", {}) or {}
    height = layout.get("height") or _DEFAULT_HEIGHT
    width = layout.get("width")
    width_css = f"{int(width)}px" if width else "100%"
    div_id = f"plotly-{uuid.uuid4().hex[:12]}"
    spec = {
        "data": fig_json.get("data", []),
        "layout": layout,
        "config": {"responsive": True, **(fig_json.get("config") or {})},
    }
    return f"""<div id="{div_id}" class="{PLOTLY_FIGURE_CLASS}" style="width:{width_css};height:{int(height)}px;"></div>
<script type="text/javascript">
(function () {{
  var spec = {_script_json(spec)};
  function draw() {{
    var gd = document.getElementById("{div_id}");
    if (!gd || gd.getAttribute("data-drawn")) {{ return true; }}
    if (!window.Plotly) {{ return false; }}
    gd.setAttribute("data-drawn", "1");
    window.Plotly.newPlot(gd, spec.data, spec.layout, spec.config);
    return true;
  }}
  if (!draw()) {{
    window.addEventListener("load", function () {{
      if (!draw()) {{
        var gd = document.getElementById("{div_id}");
        if (gd) {{
          gd.style.height = "auto";
          gd.textContent = "(plotly figure: this page has not loaded plotly.js. Open the notebook in JupyterLab, Notebook 7, VS Code or Colab, or read it in the course book.)";
        }}
      }}
    }});
  }}
}})();
</script>"""


def _course_renderer_class():
    from plotly.io.base_renderers import MimetypeRenderer, PlotlyRenderer

    class CourseRenderer(MimetypeRenderer):
        """Plotly renderer: the plotly mime type plus a small HTML fallback.

        JupyterLab, Notebook 7 and VS Code draw the mime type with the plotly.js
        that ships with the ``plotly`` package, offline. The ``text/html`` part is
        what the book shows: a ``<div>`` drawn by the page's own plotly.js.
        Inside a book build (``BOOK_BUILD_ENV`` set) only the HTML part is kept.
        """

        def __init__(self, config: dict | None = None):
            self.config = dict(config) if config else {}

        def to_mimebundle(self, fig_dict):
            fig_json = PlotlyRenderer(config=self.config).to_mimebundle(fig_dict)[
                "application/vnd.plotly.v1+json"
            ]
            bundle = {"text/html": plotly_figure_html(fig_json)}
            if not in_book_build():
                bundle["application/vnd.plotly.v1+json"] = fig_json
            return bundle

    return CourseRenderer


def configure_renderers() -> str:
    """Choose how plotly figures (and widgets) are shown where this kernel runs.

    * Colab: plotly's ``colab`` renderer (plotly.js from its CDN, one copy per
      output frame) and Colab's custom widget manager, which ipywidgets 8 needs.
    * Anywhere else (Jupyter, VS Code, the book build): the ``course``
      renderer (see ``plotly_figure_html``), which works offline.

    Safe to call more than once. Returns the name of the default renderer.
    """
    import plotly.io as pio

    if PLOTLY_RENDERER not in pio.renderers:
        pio.renderers[PLOTLY_RENDERER] = _course_renderer_class()()
    if in_colab():
        name = "colab"
        try:  # ipywidgets 8 needs Colab's custom widget manager
            from google.colab import output  # type: ignore[import-not-found]

            output.enable_custom_widget_manager()
        except Exception:  # noqa: BLE001 - not fatal: figures still show
            pass
    else:
        name = PLOTLY_RENDERER
    pio.renderers.default = name
    return name


def circuitsvis_html(vis: Any) -> str:
    """The HTML of a circuitsvis figure in the form that works where this runs.

    ``vis`` is what a circuitsvis function returns (``RenderedHTML``). circuitsvis
    itself probes the internet on every display and picks its CDN form when
    online, which then fails offline. Here: the CDN form in Colab, and the
    self-contained form (the ~1.3 MB bundle inline) everywhere else, except
    when outputs are saved for committing (``SMALL_OUTPUTS_ENV``): the CDN form,
    so committed notebooks stay small. The book build replaces either form with
    one shared copy per site.
    """
    if in_colab() or os.environ.get(SMALL_OUTPUTS_ENV, "") not in ("", "0"):
        return vis.cdn_src
    return vis.local_src


def standin_banner(model_name: str, provenance: str | None = None, reason: str | None = None) -> None:
    """Say, visibly, that the outputs below come from an offline stand-in model.

    In a notebook this displays one output with two forms: an HTML banner
    (what Jupyter, Colab and the book show) and a one-line text form (what
    text-only front ends, logs and ``nbconvert --to script`` readers see).
    Outside IPython it prints the text line.

    ``model_name`` is the real model's name (``"GPT-2 small"``); a trailing
    parenthesis starting with ``"(stand-in"``, as in ``model.display_name``, is
    dropped. ``provenance`` (``model.provenance``) says which weights are real
    and which are built or planted; without it the banner says none is real.
    ``reason`` (why the real weights were not used) is shown below when given.
    """
    if " (stand-in" in model_name:
        model_name = model_name[: model_name.index(" (stand-in")]
    name = html.escape(model_name)
    if provenance:
        text = (
            f"[stand-in model] The figures and numbers below come from an offline stand-in for "
            f"{model_name}. {provenance}"
        )
        body = (
            f"an offline stand-in for <code>{name}</code>. Only the weights named real below are the real "
            f"model's; every number that depends on the others is the stand-in's. {html.escape(provenance)}"
        )
    else:
        text = (
            f"[stand-in model] The figures and numbers below come from an offline "
            f"stand-in for {model_name}, not from the real {model_name} weights."
        )
        body = (
            f"an offline stand-in for <code>{name}</code>, not from the real "
            f"<code>{name}</code> weights. They show how each method works; the "
            "values will differ from the real model's."
        )
    banner = (
        f'<div class="{STANDIN_BANNER_CLASS}" data-model="{name}" role="note" '
        'style="border:1px solid #d97706;border-left:6px solid #d97706;'
        "background:#fff7e6;color:#4a2f00;padding:0.6em 1em;margin:0.6em 0;"
        'border-radius:4px;font-family:system-ui,sans-serif;font-size:0.95em;">'
        "<strong>Stand-in model.</strong> The figures and numbers below come from "
        + body
        + (f'<br><small>Why: {html.escape(reason)}</small>' if reason else "")
        + "</div>"
    )
    if reason:
        text += f" Why: {reason}"
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    display({"text/html": banner, "text/plain": text}, raw=True)


__all__ = [
    "BOOK_BUILD_ENV",
    "PLOTLY_RENDERER",
    "STANDIN_BANNER_CLASS",
    "circuitsvis_html",
    "configure_renderers",
    "in_book_build",
    "in_colab",
    "plotly_figure_html",
    "standin_banner",
]
