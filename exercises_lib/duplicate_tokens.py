"""Duplicate-token heads and duplicate-token neurons in layer 0 of GPT-2 small.

Chapter 1 of the course, after Alex Gibson's write-up *Duplicate token neurons
in the first layer of GPT-2* (LessWrong, 2024). Every function here is the
reference solution of an exercise of ``solutions/01_duplicate_token_heads.ipynb``
or a helper that the chapter uses; none of them knows where the heads and
neurons are: they find them from the model's weights and behaviour.

Conventions
-----------
* ``ln_scale`` always means the *multiplier* a LayerNorm applies after
  centring, ``sqrt(d_model) / |x|`` (the write-up's "lnscale"). TransformerLens
  caches the divisor, ``hook_scale = |x| / sqrt(d_model)``: one is the inverse
  of the other.
* Weights are those of a model loaded by :func:`exercises_lib.models.load_model`
  (LayerNorm folded, writing weights centred), so ``W_V``/``W_O``/``W_in`` act
  directly on the centred, normalised residual stream.
* ``PVO_h[i, k] = P[i] V_h O_h W_in[:, k]`` (no LayerNorm scales) is the PVO
  contribution of head ``h`` to MLP-0 neuron ``k`` from source position ``i``;
  the scaled contribution to a destination ``n`` is
  ``ln2_scale[n] * ln1_scale[i] * PVO_h[i, k]`` times the attention on ``i``.

Taught in: chapter 1 (duplicate-token heads and duplicate-token neurons).
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "LAYER",
    "repeated_random_tokens",
    "text_tokens",
    "run_layer0",
    "earlier_copy_mask",
    "duplicate_token_score",
    "layer0_ln_scale",
    "layer0_ln_scale_approx",
    "duplicate_head_output_parts",
    "head_outputs",
    "relative_error",
    "pvo_contributions",
    "pvo_norm_grid",
    "pvo_of_neuron",
    "outlier_neurons",
    "line_fit",
    "positional_contributions_to_neuron",
    "token_contributions_to_neuron",
    "uniform_copy_weights",
    "predict_neuron_pre",
    "copy_to_self_ratio",
    "group_attention_ratio",
    "head_positional_line",
    "mean_cosine",
    "no_copy_level",
    "mean_attention_distance",
    "long_range_heads",
    "single_copy_sequences",
    "neuron_pre_vs_copy_distance",
    "duplicate_neuron_explorer",
    "weights_basis",
]

#: The layer the chapter studies.
LAYER = 0
BOS = 50256


def weights_basis(model, *parts: tuple[str, str]) -> str:
    """What a number stands on: ``parts`` are ``(label, weight key)`` pairs (keys of ``model.weight_sources``,
    e.g. ``("layer-0 attention", "blocks.0.attn.W_Q")``), grouped by where the weights come from:
    ``"real: layer-0 attention, W_pos; planted: token embeddings"``."""
    sources = getattr(model, "weight_sources", None) or {}
    default = sources.get("*", {"source": "stand-in" if getattr(model, "is_standin", True) else "real"})
    by_source: dict[str, list[str]] = {}
    for label, key in parts:
        by_source.setdefault(sources.get(key, default)["source"], []).append(label)
    return "; ".join(f"{source}: {', '.join(labels)}" for source, labels in by_source.items())


# ---------------------------------------------------------------------------
# Inputs and runs
# ---------------------------------------------------------------------------


def repeated_random_tokens(model, half_len: int = 50, batch: int = 8, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """``batch`` sequences ``[BOS, r_1..r_T, r_1..r_T]`` of random tokens (T = ``half_len``).

    Tokens are drawn without repetition inside a sequence, so the only copies
    are the planted ones: position ``n > T`` has exactly one earlier copy, at
    ``n - T``.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    halves = torch.stack([torch.randperm(vocab - 1000, generator=g)[:half_len] + 500 for _ in range(batch)])
    bos = torch.full((batch, 1), BOS, dtype=torch.long)
    return torch.cat([bos, halves, halves], dim=1).to(model.cfg.device)


def text_tokens(model, name: str = "bible_genesis", max_len: int = 1024) -> Int[Tensor, "1 pos"]:
    """A packaged text (``exercises_lib.texts``), BOS first, cut to ``max_len`` tokens."""
    from exercises_lib.texts import load_text

    return model.to_tokens(load_text(name))[:, :max_len]


def run_layer0(model, tokens: Int[Tensor, "batch pos"]):
    """Run only layer 0 (``stop_at_layer=1``) and cache its activations."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns about hooks it never fills
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda name: name.startswith(f"blocks.{LAYER}."), stop_at_layer=LAYER + 1
        )
    return cache


# ---------------------------------------------------------------------------
# Exercise 1.1: the duplicate-token score
# ---------------------------------------------------------------------------


def earlier_copy_mask(tokens: Int[Tensor, "batch pos"]) -> torch.Tensor:
    """``mask[b, n, i]`` is True when ``i < n`` and ``tokens[b, i] == tokens[b, n]``."""
    pos = tokens.shape[-1]
    same = tokens[:, :, None] == tokens[:, None, :]
    earlier = torch.ones(pos, pos, dtype=torch.bool, device=tokens.device).tril(-1)
    return same & earlier


def duplicate_token_score(
    pattern: Float[Tensor, "batch head dest src"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "head"]:
    """Mean attention mass on earlier copies of the destination token.

    score_h = mean over destinations (b, n) that have at least one earlier copy of
    sum_{i < n, t_i = t_n} pattern[b, h, n, i].
    """
    # SOLUTION: mask of earlier copies, attention mass on them, mean over destinations that have one
    pos = tokens.shape[-1]
    earlier = torch.ones(pos, pos, dtype=torch.bool, device=tokens.device).tril(-1)
    mask = (tokens[:, :, None] == tokens[:, None, :]) & earlier  # [batch, dest, src]
    mass = (pattern * mask[:, None]).sum(-1)  # [batch, head, dest]
    return mass.permute(1, 0, 2)[:, mask.any(-1)].mean(-1)
    # END SOLUTION


# ---------------------------------------------------------------------------
# Exercise 1.2 and 1.3: the LayerNorm scale of layer 0
# ---------------------------------------------------------------------------


def layer0_ln_scale(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
    """The LN scale of layer 0 (the multiplier): s_i = sqrt(d_model) / |E[t_i] + P[i]|."""
    # SOLUTION: sqrt(d_model) divided by the norm of the embedding plus the positional embedding
    x = model.W_E[tokens] + model.W_pos[: tokens.shape[-1]]
    return model.cfg.d_model**0.5 / x.norm(dim=-1)
    # END SOLUTION


def layer0_ln_scale_approx(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
    """The same, assuming E and P orthogonal: s_i ~ sqrt(d_model) / sqrt(|E[t_i]|^2 + |P[i]|^2)."""
    # SOLUTION: add the squared norms, then take the square root
    e2 = model.W_E[tokens].pow(2).sum(-1)
    p2 = model.W_pos[: tokens.shape[-1]].pow(2).sum(-1)
    return model.cfg.d_model**0.5 / (e2 + p2).sqrt()
    # END SOLUTION


# ---------------------------------------------------------------------------
# Exercise 1.4: a duplicate head's output = token part + positional part
# ---------------------------------------------------------------------------


def duplicate_head_output_parts(
    model,
    tokens: Int[Tensor, "pos"],
    pattern: Float[Tensor, "dest src"],
    head: int,
    ln_scale: Float[Tensor, "pos"],
) -> tuple[Float[Tensor, "pos d_model"], Float[Tensor, "pos d_model"]]:
    """A layer-0 head's output as a token part plus a positional part (s = ln_scale).

    token_part[n]      = s_n E[t_n] V_h O_h   (all attention on copies of t_n)
    positional_part[n] = sum_i pattern[n, i] s_i P[i] V_h O_h
    """
    # SOLUTION: the OV matrix, the scaled token embedding, and the attention-weighted scaled positions
    OV = model.W_V[0, head] @ model.W_O[0, head]  # [d_model, d_model]
    token_part = (ln_scale[:, None] * model.W_E[tokens]) @ OV
    positional_part = pattern @ ((ln_scale[:, None] * model.W_pos[: tokens.shape[-1]]) @ OV)
    return token_part, positional_part
    # END SOLUTION


def head_outputs(model, cache, batch_index: int = 0) -> Float[Tensor, "head pos d_model"]:
    """Each layer-0 head's output ``z_h W_O[h]`` (without the shared bias b_O), from a cache."""
    z = cache[f"blocks.{LAYER}.attn.hook_z"][batch_index]  # [pos, head, d_head]
    return torch.einsum("phd,hdm->hpm", z, model.W_O[LAYER])


def relative_error(approx: Tensor, exact: Tensor) -> Float[Tensor, "..."]:
    """|approx - exact| / |exact| along the last dimension."""
    return (approx - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-12)


# ---------------------------------------------------------------------------
# Exercises 1.5 and 1.6: PVO contributions and their norm map
# ---------------------------------------------------------------------------


def pvo_contributions(model, head: int, layer: int = 0) -> Float[Tensor, "pos neuron"]:
    """PVO_h[i, k] = P[i] V_h O_h W_in[:, k] for every position and every MLP neuron (no LN scales)."""
    # SOLUTION: one chain of matrix products through d_head
    block = model.blocks[layer]  # one layer's weights (model.W_V[layer] would stack every layer first)
    return (model.W_pos @ block.attn.W_V[head]) @ (block.attn.W_O[head] @ block.mlp.W_in)
    # END SOLUTION


def pvo_norm_grid(pvo: Float[Tensor, "pos neuron"], shape: tuple[int, int] = (48, 64)) -> Float[Tensor, "row col"]:
    """grid[r, c] = |PVO[:, r * cols + c]| over positions: neuron k at row k // cols, column k % cols."""
    # SOLUTION: norm over positions, row-major reshape
    return pvo.norm(dim=0).reshape(shape)
    # END SOLUTION


def outlier_neurons(norms: Float[Tensor, "neuron"], factor: float = 8.0) -> list[int]:
    """Neurons whose norm exceeds ``factor`` times the median norm, largest first."""
    norms = norms.flatten()
    threshold = factor * norms.median()
    idx = torch.nonzero(norms > threshold).flatten()
    return [int(i) for i in idx[norms[idx].argsort(descending=True)]]


def line_fit(y: Float[Tensor, "pos"], x: Tensor | None = None) -> dict:
    """Least-squares line through ``y``: slope, intercept, zero crossing and R^2."""
    y = y.detach().double().cpu()
    x = torch.arange(len(y), dtype=torch.float64) if x is None else x.detach().double().cpu()
    A = torch.stack([x, torch.ones_like(x)], dim=1)
    sol = torch.linalg.lstsq(A, y[:, None]).solution[:, 0]
    slope, intercept = float(sol[0]), float(sol[1])
    resid = y - (slope * x + intercept)
    r2 = 1 - float(resid.pow(2).sum() / (y - y.mean()).pow(2).sum().clamp_min(1e-30))
    crossing = -intercept / slope if slope != 0 else float("nan")
    return {"slope": slope, "intercept": intercept, "zero_crossing": crossing, "r2": r2}


# ---------------------------------------------------------------------------
# Exercise 1.7: per-head positional contributions to one neuron along a text
# ---------------------------------------------------------------------------


def pvo_of_neuron(model, neuron: int, n_pos: int) -> Float[Tensor, "head pos"]:
    """PVO_h[i, neuron] = P[i] V_h O_h W_in[:, neuron] of every layer-0 head, positions i < n_pos."""
    block = model.blocks[LAYER]  # one layer's weights (model.W_in etc. stack all layers on every access)
    Ow = block.attn.W_O @ block.mlp.W_in[:, neuron]  # [head, d_head]
    PV = torch.einsum("pm,hmd->hpd", model.W_pos[:n_pos], block.attn.W_V)  # [head, pos, d_head]
    return torch.einsum("hpd,hd->hp", PV, Ow)


def positional_contributions_to_neuron(
    model,
    pattern: Float[Tensor, "head dest src"],
    ln1_scale: Float[Tensor, "pos"],
    ln2_scale: Float[Tensor, "pos"],
    neuron: int,
) -> Float[Tensor, "component pos"]:
    """Positional part of each head's contribution to a neuron's pre-activation, plus the direct path.

    row h < n_heads: s2[n] sum_i pattern[h, n, i] s1[i] PVO_h[i, neuron]   (s1 = ln1_scale, s2 = ln2_scale)
    last row:        s2[n] P[n] . W_in[:, neuron]                          (the direct path)
    """
    # SOLUTION: PVO of every head for one neuron, weighted by attention and LN scales, plus the direct path
    n_pos = pattern.shape[-1]
    block = model.blocks[0]  # layer 0's weights
    w = block.mlp.W_in[:, neuron]  # [d_model]
    PV = torch.einsum("pm,hmd->hpd", model.W_pos[:n_pos], block.attn.W_V)  # [head, pos, d_head]
    pvo = torch.einsum("hpd,hd->hp", PV, block.attn.W_O @ w)  # [head, src]
    heads = torch.einsum("hns,hs->hn", pattern, pvo * ln1_scale[None])
    direct = model.W_pos[:n_pos] @ w
    return torch.cat([heads, direct[None]]) * ln2_scale[None]
    # END SOLUTION


def token_contributions_to_neuron(
    model,
    tokens: Int[Tensor, "pos"],
    pattern: Float[Tensor, "head dest src"],
    ln1_scale: Float[Tensor, "pos"],
    ln2_scale: Float[Tensor, "pos"],
    neuron: int,
) -> Float[Tensor, "component pos"]:
    """The token counterpart of :func:`positional_contributions_to_neuron` (E[t_i] instead of P[i]),
    with one more row: the constant terms (b_O through W_in, times ln2_scale, plus b_in).

    Positional rows + token rows + constants add up to the neuron's pre-activation exactly.
    """
    w = model.W_in[LAYER][:, neuron]
    Ow = model.W_O[LAYER] @ w  # [head, d_head]
    EV = torch.einsum("pm,hmd->hpd", model.W_E[tokens], model.W_V[LAYER])
    evo = torch.einsum("hpd,hd->hp", EV, Ow)  # [head, src]
    heads = torch.einsum("hns,hs->hn", pattern, evo * ln1_scale[None, :])
    direct = model.W_E[tokens] @ w
    rows = torch.cat([heads, direct[None]], dim=0) * ln2_scale[None, :]
    const = ln2_scale * (model.b_O[LAYER] @ w) + model.b_in[LAYER, neuron]
    return torch.cat([rows, const[None]], dim=0)


# ---------------------------------------------------------------------------
# Exercises 1.8 and 1.9: a weights-only prediction of the neuron
# ---------------------------------------------------------------------------


def uniform_copy_weights(tokens: Int[Tensor, "pos"]) -> Float[Tensor, "dest src"]:
    """Uniform attention over the copies of each token, itself included.

    w[n, i] = 1 / m_n if i <= n and t_i = t_n (m_n = number of such i), else 0.
    """
    # SOLUTION: causal equality mask, normalised per row
    pos = tokens.shape[-1]
    w = (tokens[:, None] == tokens[None, :]).float() * torch.ones(pos, pos, device=tokens.device).tril()
    return w / w.sum(-1, keepdim=True)
    # END SOLUTION


def predict_neuron_pre(
    model,
    tokens: Int[Tensor, "pos"],
    neuron: int,
    duplicate_head: int,
    uniform_heads: Sequence[int],
    ln1_scale: Float[Tensor, "pos"],
    ln2_scale: float,
) -> Float[Tensor, "pos"]:
    """Weights-only prediction of a neuron's pre-activation from positions (plus its bias).

    With s1 = ln1_scale, s2 = ln2_scale and PVO_h[i] = P[i] V_h O_h W_in[:, neuron]:
      * the duplicate head attends uniformly to the copies of t_n (itself included):
        sum_i w[n, i] s1[i] PVO_dup[i], w = uniform_copy_weights(tokens);
      * each uniform head attends uniformly to positions 0..n: mean_{i<=n} s1[i] PVO_h[i];
      * every other head attends to the current position: s1[n] PVO_h[n];
      * the direct path reads P[n] . W_in[:, neuron];
      * the attention's output bias b_O (value biases folded in), the same at every
        position, reads b_O . W_in[:, neuron];
    prediction[n] = s2 * (sum of the above) + b_in[neuron].
    """
    # SOLUTION: scaled PVO per head; copies for the duplicate head, running mean for uniform heads, current position otherwise
    n_pos = tokens.shape[-1]
    pvo = pvo_of_neuron(model, neuron, n_pos) * ln1_scale[None]  # [head, pos]
    counts = torch.arange(1, n_pos + 1, device=pvo.device, dtype=pvo.dtype)
    w_in = model.blocks[0].mlp.W_in[:, neuron]
    total = (model.W_pos[:n_pos] + model.b_O[0]) @ w_in  # the direct path and the attention's output bias
    for h in range(model.cfg.n_heads):
        if h == duplicate_head:
            total = total + uniform_copy_weights(tokens) @ pvo[h]
        elif h in uniform_heads:
            total = total + pvo[h].cumsum(0) / counts
        else:
            total = total + pvo[h]
    return ln2_scale * total + model.b_in[0, neuron]
    # END SOLUTION


# ---------------------------------------------------------------------------
# Finding heads from behaviour
# ---------------------------------------------------------------------------


def copy_to_self_ratio(
    pattern: Float[Tensor, "batch head dest src"],
    tokens: Int[Tensor, "batch pos"],
    bins: Sequence[int] = (1, 25, 50, 100, 200, 400, 1024),
    min_dest: int = 100,
) -> Float[Tensor, "head bin"]:
    """Attention on an earlier copy divided by attention on the token itself, by distance bin.

    A head that treats all copies alike gives ratios near 1 at every distance; a
    head whose attention on copies decays gives falling ratios. Only destinations
    at position >= ``min_dest`` count (early positions have larger positional
    embeddings). NaN where a bin has no copies.
    """
    mask = earlier_copy_mask(tokens)
    pos = tokens.shape[-1]
    n_idx = torch.arange(pos, device=tokens.device)
    dist = n_idx[:, None] - n_idx[None, :]
    self_att = pattern.diagonal(dim1=-2, dim2=-1)  # [batch, head, dest]
    ratio = pattern / self_att[..., None].clamp_min(1e-9)
    out = torch.full((pattern.shape[1], len(bins) - 1), float("nan"))
    for k in range(len(bins) - 1):
        sel = mask & (dist >= bins[k]) & (dist < bins[k + 1]) & (n_idx[:, None] >= min_dest)
        if sel.any():
            out[:, k] = ratio.permute(1, 0, 2, 3)[:, sel].mean(-1).cpu()
    return out


def group_attention_ratio(
    pattern: Float[Tensor, "dest src"], tokens: Int[Tensor, "pos"], group: Sequence[int], min_dest: int = 100
) -> dict:
    """Does one head treat the tokens of ``group`` as one token? Attention per source token, from
    destinations n >= ``min_dest`` whose token is in the group, on:

    * ``copy``: earlier copies of the destination's own token;
    * ``group``: earlier tokens of the group that are *other* members than the destination's token;
    * ``rest``: every other earlier token.

    ``ratio = group / copy``: near 1 when the head cannot tell the members apart, near ``rest / copy``
    when it treats them as different tokens. NaN entries where a kind of source never occurs.
    """
    pos = tokens.shape[-1]
    earlier = torch.ones(pos, pos, dtype=torch.bool, device=tokens.device).tril(-1)
    same = (tokens[:, None] == tokens[None, :]) & earlier
    member = torch.isin(tokens, torch.as_tensor(list(group), device=tokens.device))
    other = member[:, None] & member[None, :] & earlier & ~same
    rest = earlier & ~same & ~other
    dest = member & (torch.arange(pos, device=tokens.device) >= min_dest)

    def per_source(mask):
        m = mask & dest[:, None]
        return float((pattern * m).sum() / m.sum()) if m.any() else float("nan")

    out = {"copy": per_source(same), "group": per_source(other), "rest": per_source(rest),
           "destinations": int(dest.sum())}
    out["ratio"] = out["group"] / out["copy"] if out["copy"] > 0 else float("nan")
    return out


def mean_cosine(a: Float[Tensor, "m d"], b: Float[Tensor, "n d"]) -> float:
    """Mean of the cosine similarity cos(a_j, b_k) over all pairs (signed: the write-up's "cosine similarity
    of ~0.05 on average")."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return float((a.mean(0) @ b.mean(0)))


def head_positional_line(model, head: int, n_pos: int = 1000, start: int = 20) -> dict:
    """The main direction of a layer-0 head's positional output P[i] V_h O_h (positions < ``n_pos``, centred
    over positions): its share of the variance, and a line fitted to the output's size along that direction
    for ``start <= i < n_pos`` (slope, zero crossing, R^2). Weights only: W_pos and the head's OV circuit."""
    block = model.blocks[LAYER]
    out = model.W_pos[:n_pos] @ block.attn.W_V[head] @ block.attn.W_O[head]  # [pos, d_model]
    _, S, Vh = torch.linalg.svd(out - out.mean(0), full_matrices=False)
    share = float(S[0] ** 2 / (S**2).sum())
    fit = line_fit(out[start:] @ Vh[0], torch.arange(start, n_pos))
    return dict(share=share, **fit)


def mean_attention_distance(pattern: Float[Tensor, "batch head dest src"], min_dest: int = 200) -> Float[Tensor, "head"]:
    """Mean over destinations n >= min_dest of sum_i pattern[n, i] * (n - i): how far back each head looks."""
    pos = pattern.shape[-1]
    n_idx = torch.arange(pos, device=pattern.device)
    dist = (n_idx[:, None] - n_idx[None, :]).clamp_min(0).to(pattern.dtype)
    per_dest = (pattern * dist).sum(-1)  # [batch, head, dest]
    return per_dest[..., min_dest:].mean(dim=(0, 2))


def long_range_heads(distance: Float[Tensor, "head"], factor: float = 2.0) -> list[int]:
    """Heads whose mean attention distance exceeds ``factor`` times the median head's."""
    med = distance.median()
    return [int(h) for h in torch.nonzero(distance > factor * med).flatten()]


# ---------------------------------------------------------------------------
# The neuron's behaviour: activation against the distance to a single copy
# ---------------------------------------------------------------------------


def single_copy_sequences(
    model, position: int, distance: int | None, n_samples: int = 16, seed: int = 0
) -> Int[Tensor, "batch pos"]:
    """Random-token sequences of length ``position + 1`` whose last token has one earlier copy
    ``distance`` tokens back (none when ``distance`` is None). BOS first; no other repeats."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    seqs = torch.stack([torch.randperm(vocab - 1000, generator=g)[: position + 1] + 500 for _ in range(n_samples)])
    seqs[:, 0] = BOS
    if distance is not None:
        if not 1 <= distance < position:
            raise ValueError(f"distance must be in [1, {position - 1}], got {distance}")
        seqs[:, position - distance] = seqs[:, position]
    return seqs.to(model.cfg.device)


def neuron_pre_vs_copy_distance(
    model, neuron: int, distances: Sequence[int | None], position: int = 500, n_samples: int = 16, seed: int = 0
) -> Float[Tensor, "distance"]:
    """Mean pre-activation of ``neuron`` at the last position, for each distance to its single copy
    (None: no copy). Runs the model (layer 0 only; on a GPT-2 bridge from its own parameters, the
    MLP at the last position only): a progress bar shows the distances done."""
    from exercises_lib.patching_fast_path import mlp_pre_at
    from exercises_lib.progress import progress

    out = []
    for k, d in progress(list(enumerate(distances)), "distances", unit="distance"):
        seqs = single_copy_sequences(model, position, d, n_samples, seed + k)
        pre = mlp_pre_at(model, seqs, LAYER, position)
        if pre is None:
            pre = run_layer0(model, seqs)[f"blocks.{LAYER}.mlp.hook_pre"][:, position]
        out.append(pre[:, neuron].mean())
    return torch.stack(out).cpu()


def no_copy_level(
    model, neuron: int, start: int = 200, length: int = 1000, n_samples: int = 4, seed: int = 1, hook: str = "pre"
) -> float:
    """Mean pre-activation of ``neuron`` at positions >= ``start`` of random-token sequences without repeats
    (BOS first, ``length`` tokens): the level of a token seen once, its token terms averaged out. This is the
    write-up's "combined positional term" (positional contributions of all components, for non-duplicate
    tokens) plus the neuron's constant terms. Runs the model (layer 0 only)."""
    seqs = single_copy_sequences(model, length - 1, None, n_samples=n_samples, seed=seed)
    cache = run_layer0(model, seqs)
    return float(cache[f"blocks.{LAYER}.mlp.hook_{hook}"][:, start:, neuron].mean())


# ---------------------------------------------------------------------------
# The chapter's explorer
# ---------------------------------------------------------------------------


def duplicate_neuron_explorer(
    model,
    neurons: Sequence[int],
    duplicate_head: int,
    uniform_heads: Sequence[int],
    ln2_scale: float,
    ln1_scale: float,
):
    """Pick a neuron and the destination position: see the neuron's scaled PVO curve for the
    duplicate head and its predicted pre-activation against the distance to a single earlier copy.

    Weights only (instant). Returns the ipywidgets box; its figure is drawn once
    before it is returned, so it renders statically too. The box has
    ``box.update(neuron, position)`` (what a change of either control runs) and
    ``box.figure(neuron, position)`` (the figure without widgets).
    """
    import ipywidgets as widgets
    import plotly.graph_objects as go
    from IPython.display import display
    from plotly.subplots import make_subplots

    from exercises_lib.plotting import figure_title, title_margin

    n_ctx = model.cfg.n_ctx
    neuron_w = widgets.Dropdown(options=[int(k) for k in neurons], description="neuron")
    pos_w = widgets.IntSlider(value=600, min=50, max=n_ctx - 1, step=10, description="position n")
    out = widgets.Output()

    def figure(neuron: int, position: int) -> go.Figure:
        pvo = pvo_of_neuron(model, neuron, n_ctx)[duplicate_head] * ln1_scale * ln2_scale
        # One earlier copy at distance d: the duplicate head splits its attention 1/2, 1/2.
        d = torch.arange(1, position)
        extra = 0.5 * (pvo[position - d] - pvo[position])
        base = _baseline(model, neuron, position, duplicate_head, uniform_heads, ln1_scale, ln2_scale)
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
            "scaled PVO of the duplicate head,<br>by source position",
            "predicted pre-activation<br>vs distance to one earlier copy",
        ))
        fig.add_trace(go.Scatter(x=list(range(n_ctx)), y=pvo.detach().cpu().tolist(), mode="lines"), row=1, col=1)
        fig.add_trace(go.Scatter(x=d.tolist(), y=(base + extra).detach().cpu().tolist(), mode="lines"), row=1, col=2)
        fig.update_xaxes(title_text="source position i", row=1, col=1)
        fig.update_xaxes(title_text="distance n - i of the copy", row=1, col=2)
        text = figure_title(f"Neuron {neuron}: duplicate head {LAYER}.{duplicate_head}, destination {position}", model)
        fig.update_layout(height=400 + title_margin(text), showlegend=False, title=text,
                          margin=dict(t=title_margin(text) + 40))
        return fig

    def update(neuron: int, position: int) -> None:
        out.clear_output(wait=True)
        with out:
            display(figure(neuron, position))

    box = widgets.VBox([widgets.HBox([neuron_w, pos_w]), out])
    box.figure = figure  # for tests and static use
    box.update = update
    widgets.interactive_output(update, {"neuron": neuron_w, "position": pos_w})
    update(neuron_w.value, pos_w.value)
    return box


def _baseline(model, neuron, position, duplicate_head, uniform_heads, ln1_scale, ln2_scale) -> Tensor:
    """Predicted pre-activation of a token with no earlier copy at ``position`` (constant LN scales)."""
    n = position + 1
    pvo = pvo_of_neuron(model, neuron, n) * ln1_scale
    w = model.W_in[LAYER][:, neuron]
    total = model.W_pos[position] @ w + model.b_O[LAYER] @ w
    for head in range(model.cfg.n_heads):
        total = total + (pvo[head].mean() if head in uniform_heads else pvo[head, position])
    return ln2_scale * total + model.b_in[LAYER, neuron]
