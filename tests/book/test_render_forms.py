"""exercises_lib.render: the figure forms for Jupyter, Colab and the book, and the stand-in banner."""

from __future__ import annotations

import json
import re

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from exercises_lib import render


@pytest.fixture
def restore_plotly_default():
    before = pio.renderers.default
    yield
    pio.renderers.default = before


def _bundle(monkeypatch, book: bool) -> dict:
    if book:
        monkeypatch.setenv(render.BOOK_BUILD_ENV, "1")
    else:
        monkeypatch.delenv(render.BOOK_BUILD_ENV, raising=False)
    fig = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout=dict(title="t</script>"))
    return pio.renderers[render.PLOTLY_RENDERER].to_mimebundle(fig.to_dict())


def test_configure_renderers_outside_colab(restore_plotly_default, monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert render.configure_renderers() == render.PLOTLY_RENDERER
    assert pio.renderers.default == render.PLOTLY_RENDERER
    assert render.configure_renderers() == render.PLOTLY_RENDERER  # idempotent


def test_configure_renderers_in_colab(restore_plotly_default, monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    assert render.configure_renderers() == "colab"


def test_jupyter_form_has_mime_json_and_small_html(monkeypatch):
    bundle = _bundle(monkeypatch, book=False)
    assert set(bundle) == {"application/vnd.plotly.v1+json", "text/html"}
    html = bundle["text/html"]
    assert len(html) < 100_000, "the HTML form must not carry plotly.js"
    assert "<script src" not in html and "cdn" not in html.lower()
    assert render.PLOTLY_FIGURE_CLASS in html and "window.Plotly.newPlot" in html
    # the figure's JSON cannot close the script element early
    assert "t</script>" not in html and "t<\\/script>" in html
    spec = re.search(r"var spec = (\{.*?\});\n", html, re.S).group(1)
    assert json.loads(spec)["layout"]["title"]["text"] == "t</script>"


def test_book_form_is_html_only(monkeypatch):
    assert set(_bundle(monkeypatch, book=True)) == {"text/html"}


def test_standin_banner_prints_outside_ipython(capsys):
    render.standin_banner("GPT-2 small (stand-in)")
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0
    assert "stand-in" in out and "not from the real GPT-2 small weights" in out


def test_standin_banner_displays_html_and_text_in_ipython(monkeypatch):
    shown = []
    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    render.standin_banner("attn-only-4l <x>")
    (bundle, raw), = shown
    assert raw is True
    assert f'class="{render.STANDIN_BANNER_CLASS}"' in bundle["text/html"]
    assert 'data-model="attn-only-4l &lt;x&gt;"' in bundle["text/html"]
    assert "<x>" in bundle["text/plain"] and "\n" not in bundle["text/plain"]


def test_circuitsvis_html_form(monkeypatch):
    class Vis:
        local_src = "LOCAL"
        cdn_src = "CDN"

    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "google.colab", raising=False)
    assert render.circuitsvis_html(Vis()) == "LOCAL"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    assert render.circuitsvis_html(Vis()) == "CDN"
