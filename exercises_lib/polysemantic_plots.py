"""Figures and the explorer of chapter 3 (a polysemantic attention head).

:func:`plot_behaviour_distribution` (the share of each behaviour, overall and
per destination token), :func:`plot_head_profile` (every head),
:func:`plot_sweep` (the ablation sweep of a template), and
:func:`head_explorer`: type code, pick a position, see where a head attends and
what the rules of :func:`exercises_lib.polysemantic.classify_behaviour` call it.
Every figure's title names the model.

Taught in: chapter 3 (a polysemantic attention head).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from exercises_lib.polysemantic import (
    BEHAVIOURS,
    behaviour_masses,
    classify_behaviour,
    head_patterns,
    indentation_depths,
)

__all__ = [
    "show_token",
    "plot_behaviour_distribution",
    "plot_head_profile",
    "plot_sweep",
    "DEFAULT_CODE",
    "explain_position",
    "position_figure",
    "head_explorer",
]

_COLOURS = {
    "previous": "#1f77b4",
    "induction": "#d62728",
    "bigger-indentation": "#2ca02c",
    "inactive": "#7f7f7f",
    "unknown": "#ff7f0e",
}


def show_token(tok: str) -> str:
    """A readable name for a token: newlines as ⏎, spaces as ·."""
    return "'" + tok.replace("\n", "⏎").replace(" ", "·").replace("\t", "⇥") + "'"


def plot_behaviour_distribution(table: Tensor, groups: Sequence[str | None], model, counts: Sequence[int] | None = None, title: str = "", show: bool = True):
    """Stacked bars: the share of each behaviour, overall and per destination token."""
    import plotly.graph_objects as go

    from exercises_lib.plotting import figure_title, title_margin, to_numpy

    names = ["all" if g is None else show_token(g) for g in groups]
    if counts is not None:
        names = [f"{n} ({c})" for n, c in zip(names, counts)]
    arr = to_numpy(table)
    fig = go.Figure()
    for k, b in enumerate(BEHAVIOURS):
        fig.add_trace(go.Bar(name=b, x=names, y=arr[:, k], marker_color=_COLOURS[b]))
    fig.update_layout(
        barmode="stack", yaxis_title="share of destination positions", xaxis_title="destination token (count)",
    )
    text = figure_title(title or "Behaviour of the head, overall and per destination token", model)
    fig.update_layout(title=text, margin=dict(t=title_margin(text)))
    if show:
        fig.show()
        return None
    return fig


def plot_head_profile(profile: Tensor, model, title: str = "", show: bool = True):
    """Heatmaps (one per behaviour) of the share of positions each head spends in it."""
    from exercises_lib.plotting import imshow

    return imshow(
        profile.permute(2, 0, 1), model=model, facet_col=0, facet_labels=list(BEHAVIOURS), centred=False,
        color_continuous_scale="Blues", zmin=0, zmax=1, labels={"x": "head", "y": "layer", "color": "share"},
        title=title or "Share of positions with each behaviour, per head", show=show,
    )


def plot_sweep(drops: Tensor, str_tokens: Sequence[str], model, template: str, show: bool = True):
    """The per-position ablation sweep of one template, over the tokens of its first prompt."""
    from exercises_lib.plotting import line

    xs = [f"{i}: {show_token(t)}" for i, t in enumerate(str_tokens)]
    return line(
        drops, x=xs, model=model, labels={"x": "position BOS-ablated (tokens of the first prompt)", "y": "drop of p(correct)"},
        title=f"{template}: drop of the correct token's probability, ablating one position at a time", show=show,
    )


DEFAULT_CODE = '''class DataLoader:
    def __init__(self, path, size):
        self.path = path
        self.size = size

    def read(self):
        with open(self.path) as f:
            return f.read(self.size)

loader = DataLoader'''


def explain_position(model, code: str, position: int, layer: int, head: int, **rules) -> dict:
    """Attention of ``layer.head`` from one position of ``code``, with its masses and label."""
    tokens = model.to_tokens(code)[0]
    position = max(1, min(position, tokens.shape[0] - 1))
    pattern = head_patterns(model, tokens[None], [layer])[layer][0, head]
    str_toks = model.to_str_tokens(tokens)
    depths = torch.tensor(indentation_depths(str_toks))
    masses = behaviour_masses(pattern, tokens, depths)[position]
    return {
        "str_tokens": str_toks, "position": position, "row": pattern[position, : position + 1],
        "masses": masses, "label": classify_behaviour(masses, **rules),
    }


def position_figure(model, code: str, position: int, layer: int, head: int):
    """Bar chart of ``layer.head``'s attention from one position of ``code``, titled with its label."""
    import plotly.graph_objects as go

    from exercises_lib.plotting import figure_title, title_margin

    info = explain_position(model, code, position, layer, head)
    p, toks = info["position"], info["str_tokens"]
    m = info["masses"].tolist()
    fig = go.Figure(go.Bar(x=[f"{i}: {show_token(t)}" for i, t in enumerate(toks[: p + 1])], y=info["row"].tolist()))
    text = figure_title(
        f"{layer}.{head} from position {p} {show_token(toks[p])}: <b>{info['label']}</b><br>"
        f"(BOS {m[0]:.2f}, previous {m[1]:.2f}, induction {m[2]:.2f}, deeper indent {m[3]:.2f})", model,
    )
    fig.update_layout(
        title=text, yaxis_title="attention", yaxis_range=[0, 1], xaxis_title="source token",
        height=400 + title_margin(text), margin=dict(t=title_margin(text)),
    )
    return fig


def head_explorer(model, layer: int, head: int, code: str = DEFAULT_CODE, position: int | None = None):
    """Widget: type code, pick a destination position, see the head's attention and its label.

    Returns the ipywidgets box; its figure is drawn once before it is
    returned, so it renders statically too (``box.figure(code, position)``
    gives the figure without widgets; ``box.update(code, position)`` is what a
    change of either control runs).
    """
    import ipywidgets as widgets
    from IPython.display import display

    n0 = model.to_tokens(code).shape[1]
    text = widgets.Textarea(value=code, layout=widgets.Layout(width="95%", height="170px"), description="code")
    pos = widgets.IntSlider(value=n0 - 1 if position is None else position, min=1, max=max(1, n0 - 1), description="position")
    out = widgets.Output()

    def figure(code: str, position: int):
        return position_figure(model, code, position, layer, head)

    def update(code: str, position: int) -> None:
        pos.max = max(1, model.to_tokens(code).shape[1] - 1)
        out.clear_output(wait=True)
        with out:
            display(figure(code, min(position, pos.max)))

    box = widgets.VBox([text, pos, out])
    box.figure = figure
    box.update = update
    widgets.interactive_output(update, {"code": text, "position": pos})
    update(text.value, pos.value)
    return box
