"""Figures that fit: titles wrapped beside plotly's toolbar with the model's name kept,
heatmaps of layers and heads ticked on integers, and progress bars only where someone
watches (not in notebooks executed for committing or for the book)."""

import torch

from exercises_lib import plotting, progress
from exercises_lib.render import BOOK_BUILD_ENV, SMALL_OUTPUTS_ENV


class _Model:
    display_name = "GPT-2 small (stand-in, real layer 0)"


def _visible(line: str) -> str:
    import re

    return re.sub(r"<[^>]*>", "", line)


def test_long_titles_are_wrapped_and_keep_the_model_name():
    title = plotting.figure_title("Norm |P[i]| of every positional embedding, by position and dimension group", _Model())
    lines = title.split("<br>")
    assert len(lines) >= 2 and all(len(_visible(line)) <= plotting.TITLE_LINE_CHARS for line in lines), lines
    assert "[GPT-2 small (stand-in, real layer 0)]" in _visible(title)
    assert plotting.figure_title("Short", _Model()).count("<br>") == 0


def test_figure_margin_grows_with_the_title():
    fig = plotting.line(torch.arange(5.0), model=_Model(), title="x " * 70, show=False)
    assert fig.layout.margin.t == plotting.title_margin(fig.layout.title.text) > 60


def test_heatmaps_of_layers_and_heads_have_integer_ticks():
    fig = plotting.imshow(torch.randn(4, 12), model=_Model(), title="per head", show=False)
    assert fig.layout.xaxis.dtick == 1 and fig.layout.yaxis.dtick == 1 and fig.layout.yaxis.tick0 == 0
    wide = plotting.imshow(torch.randn(3, 100), model=_Model(), title="positions", show=False)
    assert float(wide.layout.xaxis.dtick).is_integer() and wide.layout.xaxis.dtick > 1
    labelled = plotting.imshow(torch.randn(2, 3), model=_Model(), x=["a", "b", "c"], show=False)
    assert labelled.layout.xaxis.dtick is None  # categories named by strings: plotly's own ticks


def test_progress_bar_only_where_someone_watches(monkeypatch):
    for var in (BOOK_BUILD_ENV, SMALL_OUTPUTS_ENV, "MECHINTERP_NO_PROGRESS"):
        monkeypatch.delenv(var, raising=False)
    items = [1, 2, 3]
    bar = progress.progress(items, "work")
    assert bar is not items and list(bar) == items  # a tqdm bar
    assert progress.progress(items, "work", show=False) is items
    for var in (BOOK_BUILD_ENV, SMALL_OUTPUTS_ENV):
        monkeypatch.setenv(var, "1")
        assert progress.progress(items, "work") is items
        monkeypatch.delenv(var)
