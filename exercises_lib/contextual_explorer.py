"""Chapter 2's neuron explorer: pick an MLP-0 neuron and a text, see what it reads and how well the
weights predict it.

For the chosen neuron ``k`` the figure shows

* its top and bottom token contributions ``ln2_scale * e~(t) . W_in[:, k]`` over the whole vocabulary
  (:func:`exercises_lib.contextual.token_contributions`), and
* its actual pre-activation along a two-part text (a forward pass of layer 0) next to the prediction from
  the weights (:func:`exercises_lib.contextual.predict_preactivation`).

Everything that does not depend on the neuron is computed once per text, when the explorer is built, and
kept: the tokens, layer 0's pre-activations of *all* neurons (one forward pass), and the prediction's
residual-stream vectors :func:`prediction_vectors`, which make the prediction of any neuron one
matrix-vector product. A change of neuron or text then costs two matrix-vector products and a figure.

Taught in: chapter 2 (contextual attention heads and contextual neurons).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from exercises_lib import contextual as cx
from exercises_lib.layernorm import ln_scale

__all__ = ["prediction_vectors", "TextCache", "NeuronExplorer", "neuron_explorer", "two_part_tokens", "DEFAULT_PAIRS"]

#: Two-part texts of the explorer: (first text, second text), names of :func:`exercises_lib.texts.load_text`.
DEFAULT_PAIRS = {
    "cooking | Genesis": ("cooking", "bible_genesis"),
    "American | British": ("american_prose", "british_prose"),
    "fiction | war history": ("fiction", "war_history"),
    "Python docs | Psalms": ("python_docs", "bible_psalms"),
}


def two_part_tokens(model, first: str, second: str, n: int = 500) -> Int[Tensor, "pos"]:
    """``n`` tokens of the text ``first`` (``<|endoftext|>`` first) followed by ``n`` tokens of ``second``."""
    from exercises_lib.texts import load_text

    return torch.cat([cx.tokens_of(model, load_text(first), n), cx.tokens_of(model, load_text(second), n + 1)[1:]])


def prediction_vectors(model, tokens: Int[Tensor, "pos"], approx: cx.Layer0Approximation) -> Float[Tensor, "pos d_model"]:
    """Residual-stream vectors ``r_n`` with ``predict_preactivation(model, tokens, k, approx) = ln2 * r_n . W_in[:, k] + b_in[k]``.

    :func:`exercises_lib.contextual.predict_preactivation` is linear in the neuron's input weights: each of
    its terms is a vector of the residual stream read by ``W_in[:, k]``::

        r_n = E[t_n] + P[n] + b_O                                            (direct paths)
            + sum_{h} sum_{i<=n} pi_h,n(i) s_i P[i] W_V^h W_O^h              (every head's positional part)
            + s_n E[t_n] sum_{h not contextual} W_V^h W_O^h                  (other heads: the current token)
            + sum_{h contextual} (1 / Z_h(n)) sum_{i<=n} pi_h,n(i) c_h(t_i) s_i E[t_i] W_V^h W_O^h   (the bag)

    so it is computed once per text and every neuron's prediction is one matrix-vector product.
    """
    n = tokens.shape[-1]
    ctx = list(approx.contextual_heads)
    others = [h for h in range(model.cfg.n_heads) if h not in ctx]
    lw = cx.layer0_weights(model)
    W_V, W_O = lw["W_V"], lw["W_O"]
    E, P = model.W_E.detach()[tokens], model.W_pos.detach()[:n]
    s = ln_scale(E + P, model.cfg.eps)[:, None]  # [pos, 1]
    pi = approx.pi[:, :n, :n]
    # Positional part of every head: pi_h @ (s P W_V^h), then W_O^h (thin: d_head wide).
    pos_v = torch.einsum("pd,hde->hpe", s * P, W_V)
    r = (E + P + lw["b_O"]) + torch.einsum("hnp,hpe,hed->nd", pi, pos_v, W_O)
    if others:
        r = r + (s * E) @ torch.einsum("hde,hef->df", W_V[others], W_O[others])
    if ctx:
        c = cx.content_weights(model, tokens, approx.dest_token, scales=s[:, 0])[ctx]  # [ctx head, pos]
        tok_v = torch.einsum("hp,pd,hde->hpe", c, s * E, W_V[ctx])
        per_head = torch.einsum("hnp,hpe->hne", pi[ctx], tok_v) / approx.Z_curve[ctx][:, :n, None]
        r = r + torch.einsum("hne,hed->nd", per_head, W_O[ctx])
    return r


@dataclass
class TextCache:
    """What the explorer keeps of one text: its tokens, all neurons' actual pre-activations, the prediction's vectors."""

    tokens: Tensor  # [pos]
    actual: Tensor  # [pos, d_mlp]
    vectors: Tensor  # [pos, d_model], prediction_vectors


@dataclass
class NeuronExplorer:
    """The explorer's state and its update function (the widget is :func:`neuron_explorer`'s)."""

    model: object
    ext: Tensor  # [vocab, d_model] extended embeddings
    approx: cx.Layer0Approximation
    pairs: dict = field(default_factory=lambda: dict(DEFAULT_PAIRS))
    k: int = 10  # top and bottom tokens shown
    texts: dict = field(default_factory=dict)  # pair name -> TextCache
    last_figure: object = None

    def text(self, pair: str) -> TextCache:
        """The cached text ``pair`` (computed on first use: one layer-0 forward pass and the prediction's vectors)."""
        if pair not in self.texts:
            if pair not in self.pairs:
                raise ValueError(f"unknown text {pair!r}: choose one of {list(self.pairs)}")
            tokens = two_part_tokens(self.model, *self.pairs[pair]).to(self.model.cfg.device)
            with torch.no_grad():
                actual = cx.layer0_cache(self.model, tokens, names=("blocks.0.mlp.hook_pre",))["blocks.0.mlp.hook_pre"][0]
                vectors = prediction_vectors(self.model, tokens, self.approx)
            self.texts[pair] = TextCache(tokens, actual, vectors)
        return self.texts[pair]

    def series(self, neuron: int, pair: str) -> tuple[Tensor, Tensor]:
        """``(actual, predicted)`` pre-activations of ``neuron`` along the text ``pair``, [pos] each."""
        t = self.text(pair)
        lw = cx.layer0_weights(self.model)
        predicted = self.approx.ln2_scale * (t.vectors @ lw["W_in"][:, neuron]) + lw["b_in"][neuron]
        return t.actual[:, neuron], predicted

    def figure(self, neuron: int, pair: str):
        """The explorer's figure for ``neuron`` on the text ``pair`` (a plotly figure)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from exercises_lib.plotting import figure_title

        d_mlp = self.model.cfg.d_mlp
        if not 0 <= int(neuron) < d_mlp:
            raise ValueError(f"neuron must be an integer from 0 to {d_mlp - 1}, not {neuron!r}")
        neuron = int(neuron)
        with torch.no_grad():
            W_in = cx.layer0_weights(self.model)["W_in"]
            contrib = cx.token_contributions(self.ext, W_in[:, neuron], self.approx.ln2_scale)
            top, bottom = contrib.topk(self.k), contrib.topk(self.k, largest=False)
            actual, predicted = self.series(neuron, pair)
            err = cx.prediction_errors(predicted, actual)
        ids = torch.cat([top.indices, bottom.indices.flip(0)]).tolist()
        vals = torch.cat([top.values, bottom.values.flip(0)]).tolist()
        labels = [repr(self.model.tokenizer.decode([i]))[1:-1] for i in ids]
        first, second = self.pairs[pair]
        half = (len(actual) - 1) // 2 + 1
        fig = make_subplots(rows=1, cols=2, column_widths=[0.35, 0.65], subplot_titles=(
            f"top and bottom {self.k} token contributions",
            f"pre-activation along {first} | {second} (correlation {err['corr']:.2f}, sign agreement {err['sign_agreement']:.0%})",
        ))
        # A bar per token, named by position so that repeated labels stay apart.
        fig.add_trace(go.Bar(x=vals, y=[f"{j + 1}. {s}" for j, s in enumerate(labels)], orientation="h",
                             showlegend=False, marker_color=["#2166ac" if v > 0 else "#b2182b" for v in vals]),
                      row=1, col=1)
        # From position 1: at position 0 every head attends to that token alone, outside the approximation's
        # domain, and its value would set the scale. The scores above count positions >= 100 (shaded before).
        x = list(range(1, len(actual)))
        fig.add_trace(go.Scatter(x=x, y=actual[1:].cpu().float().numpy().round(3), name="actual (layer-0 forward pass)",
                                 mode="lines"), row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=predicted[1:].cpu().float().numpy().round(3), name="predicted from the weights",
                                 mode="lines"), row=1, col=2)
        fig.add_vrect(x0=1, x1=100, fillcolor="grey", opacity=0.12, line_width=0, row=1, col=2)
        fig.add_vline(x=half, line_dash="dot", line_color="grey", row=1, col=2)
        fig.update_yaxes(autorange="reversed", tickfont=dict(size=10), row=1, col=1)
        fig.update_xaxes(title_text="contribution", row=1, col=1)
        fig.update_xaxes(title_text="position", row=1, col=2)
        fig.update_layout(height=480, legend=dict(orientation="h", y=-0.15),
                          title=figure_title(f"MLP-0 neuron {neuron}", self.model))
        self.last_figure = fig
        return fig


def neuron_explorer(
    model, ext: Tensor, approx: cx.Layer0Approximation, neurons: Sequence[int], pairs: dict | None = None, k: int = 10
):
    """Widget: choose an MLP-0 neuron (any index; ``neurons`` are offered first) and a two-part text; see the
    neuron's top and bottom token contributions and its predicted vs actual pre-activation along the text.

    Every text is run through layer 0 once, here (a few seconds each, with a progress bar). Returns the
    ipywidgets box, drawn once before it is returned (so it renders statically too). The box
    has ``box.update(neuron, pair)`` (what a change of either control runs; ``neuron`` may be a string) and
    ``box.explorer`` (the :class:`NeuronExplorer`, whose ``last_figure`` is the figure shown).
    """
    import ipywidgets as widgets
    from IPython.display import display

    from tqdm.auto import tqdm

    explorer = NeuronExplorer(model, ext, approx, dict(pairs or DEFAULT_PAIRS), k)
    for pair in tqdm(list(explorer.pairs), desc="layer 0 on the explorer's texts", leave=False):
        explorer.text(pair)  # every text computed now, so that no change waits for a forward pass
    d_mlp = model.cfg.d_mlp
    neuron_box = widgets.Combobox(options=[str(int(n)) for n in neurons], value=str(int(neurons[0])),
                                  description="neuron", ensure_option=False)
    text_box = widgets.Dropdown(options=list(explorer.pairs), description="text")
    out = widgets.Output()

    def update(neuron, pair: str) -> None:
        text = str(neuron).strip()
        out.clear_output(wait=True)
        with out:
            if not text.isdigit() or not 0 <= int(text) < d_mlp:
                print(f"Type a neuron index from 0 to {d_mlp - 1} (got {text!r}).")
                return
            display(explorer.figure(int(text), pair))

    box = widgets.VBox([widgets.HBox([neuron_box, text_box]), out])
    box.update = update
    box.explorer = explorer
    widgets.interactive_output(update, {"neuron": neuron_box, "pair": text_box})
    update(neuron_box.value, text_box.value)
    return box
