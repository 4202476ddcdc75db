"""Figure and output helpers: one call per figure or measured line, always naming the model.

``imshow``, ``line`` and ``scatter`` draw plotly figures that render in
Jupyter, Colab and the built book (the renderer is set by
:func:`exercises_lib.setup`); ``attention_view`` shows attention patterns with
circuitsvis; ``say`` prints one measured line. Every helper takes the
``model`` whose numbers it shows (or a ``source`` string for figures that come
from no model) and puts its ``display_name`` in the title or at the start of
the line, so an output made on a stand-in always says so.

Taught in: chapter 0 (setup); used by every chapter.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch

__all__ = [
    "imshow", "line", "scatter", "bar", "attention_view", "figure_title", "say", "title_margin", "to_numpy",
    "wrap_title",
    "HOW_WE_KNOW", "summary_table",
]


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def figure_title(title: str, model=None, source: str | None = None) -> str:
    """``title`` followed by the name of the model (or source) that produced the numbers."""
    if model is None and source is None:
        raise ValueError(
            "say which model produced this figure: pass model=model (or source='...' "
            "for a figure that comes from no model)"
        )
    name = _name(model) if model is not None else source
    if not title:
        return f"[{name}]"
    lines = wrap_title(title)
    tag = f"<span style='font-size:0.8em'>[{name}]</span>"
    if len(lines[-1]) + len(name) + 3 > TITLE_LINE_CHARS:
        return "<br>".join(lines) + "<br>" + tag
    return "<br>".join(lines) + " " + tag


#: Characters per title line: a figure in the book's text column (~800 px) leaves
#: about this much room beside plotly's toolbar, at the title's font size.
TITLE_LINE_CHARS = 60


def wrap_title(title: str, width: int = TITLE_LINE_CHARS) -> list[str]:
    """A title's lines: existing ``<br>`` kept, longer lines broken between words."""
    import textwrap

    lines: list[str] = []
    for part in title.split("<br>"):
        lines += textwrap.wrap(part, width, break_long_words=False, break_on_hyphens=False) or [""]
    return lines


def _name(model) -> str:
    name = getattr(model, "display_name", None)
    if name is None:  # a model not loaded through load_model
        name = getattr(getattr(model, "cfg", None), "model_name", "unknown model")
    return name


#: Characters of a printed line that the book's output area shows without scrolling.
LINE_WIDTH = 140


def _wrap_at_gaps(text: str, width: int = LINE_WIDTH, indent: str = "    ") -> str:
    """``text`` with each line longer than ``width`` broken at its double spaces (the gaps between a
    measurement, its provenance and the write-up's value), continued on indented lines."""
    out = []
    for line in text.split("\n"):
        parts = line.split("  ")
        if len(line) <= width or len(parts) == 1:
            out.append(line)
            continue
        current = parts[0]
        for part in parts[1:]:
            if len(current) + 2 + len(part.lstrip()) <= width:
                current += "  " + part
            else:
                out.append(current)
                current = indent + part.lstrip()
        out.append(current)
    return "\n".join(out)


def say(model, *values: Any, sep: str = " ") -> None:
    """Print a measured line, prefixed with the name of the model it was measured on: ``[name] ...``.
    A line too wide for the book is continued on indented lines at its double spaces."""
    print(_wrap_at_gaps(sep.join([f"[{_name(model)}]", *map(str, values)])))


def title_margin(title: str) -> int:
    """The top margin (px) a figure needs for ``title`` (as made by :func:`figure_title`)."""
    return 60 + 22 * title.count("<br>")


def _integer_ticks(fig: go.Figure) -> None:
    """Heatmap rows and columns numbered 0..n-1 (layers, heads, positions): one tick per
    integer when there are few, never ticks between cells."""
    for trace in fig.data:
        if trace.type != "heatmap" or trace.z is None:
            continue
        z = np.asarray(trace.z)
        for letter, n in (("x", z.shape[-1]), ("y", z.shape[0])):
            coords = getattr(trace, letter)
            if coords is not None and not all(isinstance(c, (int, np.integer)) for c in coords):
                continue
            axis = getattr(trace, f"{letter}axis") or letter
            key = axis.replace("x", "xaxis").replace("y", "yaxis")
            fig.layout[key].update(dtick=1 if n <= 24 else int(np.ceil(n / 12)), tick0=0)


def _finish(fig: go.Figure, title: str, model, source, show: bool, height: int | None):
    text = figure_title(title, model, source)
    fig.update_layout(title=text, margin=dict(t=title_margin(text)))
    _integer_ticks(fig)
    if height:
        fig.update_layout(height=height)
    if show:
        fig.show()
        return None
    return fig


def imshow(
    tensor,
    *,
    model=None,
    source: str | None = None,
    title: str = "",
    labels: dict | None = None,
    x: Sequence | None = None,
    y: Sequence | None = None,
    facet_col: int | None = None,
    facet_labels: Sequence[str] | None = None,
    centred: bool = True,
    show: bool = True,
    height: int | None = None,
    **kwargs,
):
    """Heatmap; a diverging RdBu scale centred on 0 unless ``centred=False``."""
    arr = to_numpy(tensor)
    if centred:
        kwargs.setdefault("color_continuous_scale", "RdBu")
        kwargs.setdefault("color_continuous_midpoint", 0.0)
    fig = px.imshow(arr, labels=labels or {}, x=x, y=y, facet_col=facet_col, aspect="auto", **kwargs)
    if facet_labels is not None:
        # Annotations are listed by subplot (bottom row first when facet_col_wrap is
        # used), not by facet: match each to its facet through its "facet_col=<i>" text.
        for ann in fig.layout.annotations:
            ann["text"] = facet_labels[int(ann["text"].rsplit("=", 1)[-1])]
    return _finish(fig, title, model, source, show, height)


def line(
    y,
    *,
    model=None,
    source: str | None = None,
    x: Sequence | None = None,
    names: Sequence[str] | None = None,
    title: str = "",
    labels: dict | None = None,
    show: bool = True,
    height: int | None = None,
    **kwargs,
):
    """One line per row of ``y`` (a 1-D or 2-D array); ``names`` label the rows."""
    arr = to_numpy(y)
    arr = arr[None] if arr.ndim == 1 else arr
    xs = to_numpy(x) if x is not None else np.arange(arr.shape[-1])
    fig = go.Figure()
    for i, row in enumerate(arr):
        name = names[i] if names is not None else None
        fig.add_trace(go.Scatter(x=xs, y=row, mode="lines", name=name, showlegend=name is not None, **kwargs))
    labels = labels or {}
    fig.update_layout(xaxis_title=labels.get("x"), yaxis_title=labels.get("y"))
    if len(xs) > 12 and all(isinstance(v, str) for v in xs.tolist()):
        # many named points: vertical labels, each under its own point (slanted ones reach under the y-axis),
        # and half a step of room on each side, so the first label clears the y-axis' lowest tick label
        fig.update_xaxes(tickangle=-90, range=[-0.5, len(xs) - 0.5])
    return _finish(fig, title, model, source, show, height)


def scatter(
    x,
    y,
    *,
    model=None,
    source: str | None = None,
    title: str = "",
    labels: dict | None = None,
    color=None,
    hover: Sequence[str] | None = None,
    diagonal: bool = False,
    show: bool = True,
    height: int | None = None,
    **kwargs,
):
    """Scatter plot; ``diagonal=True`` adds the line y = x (for predicted vs actual)."""
    xs, ys = to_numpy(x).ravel(), to_numpy(y).ravel()
    fig = px.scatter(
        x=xs, y=ys, color=None if color is None else to_numpy(color).ravel(),
        hover_name=hover, labels=labels or {}, **kwargs,
    )
    if diagonal:
        lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(dash="dash", color="grey")))
    return _finish(fig, title, model, source, show, height)


def bar(
    values,
    *,
    model=None,
    source: str | None = None,
    x: Sequence | None = None,
    title: str = "",
    labels: dict | None = None,
    show: bool = True,
    height: int | None = None,
    **kwargs,
):
    """Bar chart of a 1-D array, labelled by ``x``."""
    vals = to_numpy(values).ravel()
    xs = list(x) if x is not None else list(range(len(vals)))
    fig = px.bar(x=xs, y=vals, labels=labels or {}, **kwargs)
    return _finish(fig, title, model, source, show, height)


def attention_view(
    str_tokens: Sequence[str],
    pattern,
    *,
    model=None,
    source: str | None = None,
    head_names: Sequence[str] | None = None,
    title: str = "",
    show: bool = True,
):
    """circuitsvis view of attention patterns ``[head, dest, src]`` over ``str_tokens``.

    Shown under a heading that names the model (stand-in or real).
    """
    import circuitsvis as cv
    from IPython.display import HTML, display

    arr = to_numpy(pattern)
    if arr.ndim == 2:
        arr = arr[None]
    n = len(str_tokens)
    if arr.shape[-1] != n or arr.shape[-2] != n:
        raise ValueError(f"pattern has shape {arr.shape}, expected [head, {n}, {n}] for {n} tokens")
    heading = figure_title(title or "Attention patterns", model, source)
    html = cv.attention.attention_heads(
        attention=torch.tensor(arr), tokens=list(str_tokens),
        attention_head_names=list(head_names) if head_names else None,
    )
    if not show:
        return heading, html
    from exercises_lib.render import circuitsvis_html

    display(HTML(f"<h4>{heading}</h4>"))
    display(HTML(circuitsvis_html(html)))
    return None


#: How a number in a chapter is known: the values of the "how we know" column.
HOW_WE_KNOW: dict[str, str] = {
    "real": "real weights",
    "real layer 0": "real layer 0 (GPT-2 weights), stand-in elsewhere",
    "stand-in": "measured on the stand-in",
    "planted": "planted (agrees with the write-up by construction)",
    "write-up": "write-up only (needs weights we do not have here)",
}


class _Table:
    """A table shown as HTML in notebooks and the book, as aligned text elsewhere."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[str]], caption: str):
        self.header, self.rows, self.caption = list(header), [list(r) for r in rows], caption

    def __repr__(self) -> str:
        cols = [self.header, *self.rows]
        widths = [max(len(str(r[i])) for r in cols) for i in range(len(self.header))]
        lines = [self.caption, "  ".join(h.ljust(w) for h, w in zip(self.header, widths))]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return (
            '<table class="course-summary"><caption>' + html.escape(self.caption) + "</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


def summary_table(model, rows: Sequence[Sequence[str]], *, title: str = "Summary", show: bool = True,
                  writeup_model: str = "GPT-2 small"):
    """A chapter's summary: one row per claim, with how each number is known.

    Each row is ``(what, the write-up's value on its real model, our value, how)`` where
    ``how`` is a key of :data:`HOW_WE_KNOW` (``"real"``, ``"real layer 0"``,
    ``"stand-in"``, ``"planted"``, ``"write-up"``). Shown as an HTML table in
    Jupyter and the book (never cut mid-column), as aligned text elsewhere.
    ``writeup_model`` names the real model the write-up measured.
    """
    table_rows = []
    for row in rows:
        if len(row) != 4:
            raise ValueError(f"a summary row has 4 fields (what, write-up, ours, how), got {len(row)}: {row!r}")
        what, theirs, ours, how = row
        if how not in HOW_WE_KNOW:
            raise ValueError(f"how we know {what!r} must be one of {sorted(HOW_WE_KNOW)}, not {how!r}")
        table_rows.append((what, theirs, ours, HOW_WE_KNOW[how]))
    header = ("what", f"write-up ({writeup_model})", f"here ({_name(model)})", "how we know")
    table = _Table(header, table_rows, f"{title} [{_name(model)}]")
    if not show:
        return table
    from IPython.display import display

    display(table)
    return None
