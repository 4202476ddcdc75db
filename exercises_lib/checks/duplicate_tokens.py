"""Checks of chapter 1 (duplicate-token heads and duplicate-token neurons).

Each check runs the student's function on the notebook's example and on hidden
inputs of other shapes, against the reference in :mod:`exercises_lib.duplicate_tokens`,
and names the typical mistakes below when the answer matches one.

Taught in: chapter 1.
"""

from __future__ import annotations

import math

import torch

from exercises_lib import duplicate_tokens as dt
from exercises_lib.checks import random_pattern, register_check

MODEL = "gpt2-small"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rep_tokens(batch: int, half: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    halves = torch.stack([torch.randperm(40000, generator=g)[:half] + 1000 for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), dt.BOS), halves, halves], dim=1)


def _texty_tokens(batch: int, pos: int, vocab: int, seed: int) -> torch.Tensor:
    """Random tokens from a small vocabulary: copies at every distance, as in real text."""
    return torch.randint(1000, 1000 + vocab, (batch, pos), generator=_gen(seed))


# ---------------------------------------------------------------------------
# 1.1 duplicate_token_score
# ---------------------------------------------------------------------------


def _score_cases(**_):
    return [
        {"pattern": random_pattern(2, 4, 21, seed=0, scale=2.0), "tokens": _rep_tokens(2, 10, 0)},
        {"pattern": random_pattern(3, 12, 40, seed=1, scale=2.0), "tokens": _texty_tokens(3, 40, 15, 1)},
        {"pattern": random_pattern(1, 5, 33, seed=2, scale=2.0), "tokens": _texty_tokens(1, 33, 8, 2)},
    ]


def _score_with_self(pattern, tokens):
    pos = tokens.shape[-1]
    mask = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(pos, pos, dtype=torch.bool).tril()
    has = ((tokens[:, :, None] == tokens[:, None, :]) & torch.ones(pos, pos, dtype=torch.bool).tril(-1)).any(-1)
    mass = (pattern * mask[:, None]).sum(-1)
    return mass.permute(1, 0, 2)[:, has].mean(-1)


def _score_all_destinations(pattern, tokens):
    mask = dt.earlier_copy_mask(tokens)
    return (pattern * mask[:, None]).sum(-1).mean(dim=(0, 2))


def _score_half_back(pattern, tokens):
    half = (tokens.shape[-1] - 1) // 2
    n = torch.arange(half + 1, tokens.shape[-1])
    return pattern[:, :, n, n - half].mean(dim=(0, 2))


register_check(
    "duplicate_tokens.duplicate_token_score",
    reference=dt.duplicate_token_score,
    cases=_score_cases,
    hint=(
        'For each destination n, add the attention on every source i < n holding the same token; average that '
        'over the destinations that have at least one earlier copy (and over the batch).'
    ),
    mistakes={
        "you counted the token itself as its own copy (take i < n, not i <= n)": _score_with_self,
        "you averaged over every destination, also those with no earlier copy": _score_all_destinations,
        "you only looked half a sequence back: right for repeated random tokens, not for real text": _score_half_back,
    },
)


# ---------------------------------------------------------------------------
# 1.2 and 1.3 layer0_ln_scale, layer0_ln_scale_approx
# ---------------------------------------------------------------------------


def _ln_cases(model=None, **_):
    dev = model.cfg.device
    return [
        {"model": model, "tokens": _rep_tokens(1, 10, 3).to(dev)},
        {"model": model, "tokens": _texty_tokens(2, 64, 5000, 4).to(dev)},
        {"model": model, "tokens": _texty_tokens(3, 7, 50000, 5).to(dev)},
    ]


def _ln_inverse(model, tokens):
    return 1 / dt.layer0_ln_scale(model, tokens)


def _ln_no_sqrt_d(model, tokens):
    return dt.layer0_ln_scale(model, tokens) / math.sqrt(model.cfg.d_model)


def _ln_token_only(model, tokens):
    return math.sqrt(model.cfg.d_model) / model.W_E[tokens].norm(dim=-1)


register_check(
    "duplicate_tokens.layer0_ln_scale",
    reference=dt.layer0_ln_scale,
    cases=_ln_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "The chapter's scale is the multiplier: sqrt(d_model) over the norm of the residual at each position, "
        "where that residual is the token's embedding plus the position's embedding."
    ),
    mistakes={
        "you returned |x| / sqrt(d_model), TransformerLens's hook_scale: the chapter's scale is its inverse": _ln_inverse,
        "you forgot the factor sqrt(d_model)": _ln_no_sqrt_d,
        "you used the token embedding only, without the positional embedding": _ln_token_only,
    },
)


def _approx_sum_of_norms(model, tokens):
    e = model.W_E[tokens].norm(dim=-1)
    p = model.W_pos[: tokens.shape[-1]].norm(dim=-1)
    return math.sqrt(model.cfg.d_model) / (e + p)


def _approx_inverse(model, tokens):
    return 1 / dt.layer0_ln_scale_approx(model, tokens)


def _approx_no_sqrt_d(model, tokens):
    return dt.layer0_ln_scale_approx(model, tokens) / math.sqrt(model.cfg.d_model)


register_check(
    "duplicate_tokens.layer0_ln_scale_approx",
    reference=dt.layer0_ln_scale_approx,
    cases=_ln_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        'If the token and position embeddings are orthogonal, the squared norm of their sum is the sum of '
        'their squared norms (Pythagoras).'
    ),
    mistakes={
        "you added the norms |E| + |P|: orthogonal vectors add their squared norms": _approx_sum_of_norms,
        "you returned the inverse, |x| / sqrt(d_model)": _approx_inverse,
        "you forgot the factor sqrt(d_model)": _approx_no_sqrt_d,
    },
)


# ---------------------------------------------------------------------------
# 1.4 duplicate_head_output_parts
# ---------------------------------------------------------------------------


def _parts_cases(model=None, **_):
    dev = model.cfg.device
    out = []
    for k, (pos, head) in enumerate([(30, 5), (45, 1), (12, 7)]):
        tokens = _texty_tokens(1, pos, 30, 10 + k)[0].to(dev)
        pattern = random_pattern(pos, seed=20 + k, scale=2.0).to(dev)
        ln_scale = (4 + 3 * torch.rand(pos, generator=_gen(30 + k))).to(dev)
        out.append({"model": model, "tokens": tokens, "pattern": pattern, "head": head, "ln_scale": ln_scale})
    return out


def _parts_no_scale(model, tokens, pattern, head, ln_scale):
    return dt.duplicate_head_output_parts(model, tokens, pattern, head, torch.ones_like(ln_scale))


def _parts_transposed(model, tokens, pattern, head, ln_scale):
    return dt.duplicate_head_output_parts(model, tokens, pattern.T, head, ln_scale)


def _parts_current_position(model, tokens, pattern, head, ln_scale):
    eye = torch.eye(pattern.shape[-1], device=pattern.device)
    return dt.duplicate_head_output_parts(model, tokens, eye, head, ln_scale)


register_check(
    "duplicate_tokens.duplicate_head_output_parts",
    reference=dt.duplicate_head_output_parts,
    cases=_parts_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "The head's output is its value-weighted sum through the OV circuit. Split each source's residual "
        'into its token embedding and its positional embedding, both times their LayerNorm scale: the token '
        "part uses the destination's own token (a duplicate head copies it), the positional part averages the "
        'scaled positions with the attention pattern.'
    ),
    mistakes={
        "you left out the LayerNorm scale": _parts_no_scale,
        "you used the pattern transposed: its rows are destinations, its columns sources": _parts_transposed,
        "your positional part only uses the current position: weight every source by the attention on it": _parts_current_position,
    },
)


# ---------------------------------------------------------------------------
# 1.5 pvo_contributions and 1.6 pvo_norm_grid
# ---------------------------------------------------------------------------


def _pvo_cases(model=None, **_):
    return [{"model": model, "head": 5}, {"model": model, "head": 1}, {"model": model, "head": 3, "layer": 1}]


def _pvo_with_key(model, head, layer=0):
    return model.W_pos @ model.W_K[layer, head] @ model.W_O[layer, head] @ model.W_in[layer]


def _pvo_with_w_out(model, head, layer=0):
    return model.W_pos @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_out[layer].T


def _pvo_with_bias(model, head, layer=0):
    return dt.pvo_contributions(model, head, layer) + model.b_in[layer]


def _pvo_layer0(model, head, layer=0):
    return dt.pvo_contributions(model, head, 0)


register_check(
    "duplicate_tokens.pvo_contributions",
    reference=dt.pvo_contributions,
    cases=_pvo_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "Follow the positional embeddings through the head's value and output weights, then into every "
        "neuron's input weights: a chain of matrix products (multiply the small matrices first: it is much "
        'faster).'
    ),
    mistakes={
        "you used W_K instead of W_V: the positional information travels through the OV circuit": _pvo_with_key,
        "you used W_out (the MLP's output weights): the neuron reads the residual stream through W_in": _pvo_with_w_out,
        "you added the bias b_in: the PVO contribution is the product of weights only": _pvo_with_bias,
        "you always used layer 0's weights: use the `layer` argument": _pvo_layer0,
    },
)


def _grid_cases(**_):
    return [
        {"pvo": torch.randn(1024, 3072, generator=_gen(40))},
        {"pvo": torch.randn(100, 3072, generator=_gen(41)) * torch.rand(3072, generator=_gen(42))},
        {"pvo": torch.randn(50, 24, generator=_gen(43)), "shape": (4, 6)},
    ]


def _grid_column_major(pvo, shape=(48, 64)):
    return pvo.norm(dim=0).reshape(shape[1], shape[0]).T


def _grid_mean_abs(pvo, shape=(48, 64)):
    return pvo.abs().mean(dim=0).reshape(shape)


def _grid_squared(pvo, shape=(48, 64)):
    return pvo.pow(2).sum(dim=0).reshape(shape)


register_check(
    "duplicate_tokens.pvo_norm_grid",
    reference=dt.pvo_norm_grid,
    cases=_grid_cases,
    hint=(
        'One number per neuron: the norm of its column over positions. Lay the neurons out row by row '
        '(row-major), so that neuron k lands in row k // cols.'
    ),
    mistakes={
        "your grid is laid out column-major: neuron k must sit at row k // cols, column k % cols": _grid_column_major,
        "you took the mean |PVO|, not the norm over positions": _grid_mean_abs,
        "you returned the squared norm": _grid_squared,
    },
)


# ---------------------------------------------------------------------------
# 1.7 positional_contributions_to_neuron
# ---------------------------------------------------------------------------


def _contrib_cases(model=None, **_):
    dev = model.cfg.device
    H = model.cfg.n_heads
    out = []
    for k, (pos, neuron) in enumerate([(40, 1168), (25, 7), (60, 3000)]):
        out.append(
            {
                "model": model,
                "pattern": random_pattern(H, pos, seed=50 + k, scale=2.0).to(dev),
                "ln1_scale": (4 + 3 * torch.rand(pos, generator=_gen(60 + k))).to(dev),
                "ln2_scale": (3 + 2 * torch.rand(pos, generator=_gen(70 + k))).to(dev),
                "neuron": neuron,
            }
        )
    return out


def _contrib_no_ln2(model, pattern, ln1_scale, ln2_scale, neuron):
    return dt.positional_contributions_to_neuron(model, pattern, ln1_scale, torch.ones_like(ln2_scale), neuron)


def _contrib_no_ln1(model, pattern, ln1_scale, ln2_scale, neuron):
    return dt.positional_contributions_to_neuron(model, pattern, torch.ones_like(ln1_scale), ln2_scale, neuron)


def _contrib_transposed(model, pattern, ln1_scale, ln2_scale, neuron):
    return dt.positional_contributions_to_neuron(model, pattern.transpose(-1, -2), ln1_scale, ln2_scale, neuron)


def _contrib_no_direct(model, pattern, ln1_scale, ln2_scale, neuron):
    out = dt.positional_contributions_to_neuron(model, pattern, ln1_scale, ln2_scale, neuron).clone()
    out[-1] = 0
    return out


register_check(
    "duplicate_tokens.positional_contributions_to_neuron",
    reference=dt.positional_contributions_to_neuron,
    cases=_contrib_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "For this one neuron, follow each position's embedding through every head's OV circuit into the "
        "neuron's input weights. Weight each source by its first LayerNorm scale and the head's attention, "
        'add up the sources, and scale by the second LayerNorm at the destination; the last row is the path '
        'that skips the heads.'
    ),
    mistakes={
        "you left out the MLP's LayerNorm scale (ln2_scale, at the destination)": _contrib_no_ln2,
        "you left out layer 0's LayerNorm scale (ln1_scale, at the source)": _contrib_no_ln1,
        "you used the pattern transposed: pattern[h, n, i] is the attention from destination n to source i": _contrib_transposed,
        "your last row (the direct path, W_pos[n] read by W_in) is missing": _contrib_no_direct,
    },
)


# ---------------------------------------------------------------------------
# 1.8 uniform_copy_weights and 1.9 predict_neuron_pre
# ---------------------------------------------------------------------------


def _weights_cases(**_):
    return [
        {"tokens": torch.tensor([dt.BOS, 7, 8, 7, 9, 7, 8])},
        {"tokens": _texty_tokens(1, 50, 6, 80)[0]},
        {"tokens": _texty_tokens(1, 13, 40, 81)[0]},
    ]


def _weights_no_self(tokens):
    pos = tokens.shape[-1]
    w = (tokens[:, None] == tokens[None, :]).float() * torch.ones(pos, pos).tril(-1)
    return w / w.sum(-1, keepdim=True)


def _weights_not_causal(tokens):
    w = (tokens[:, None] == tokens[None, :]).float()
    return w / w.sum(-1, keepdim=True)


def _weights_unnormalised(tokens):
    pos = tokens.shape[-1]
    return (tokens[:, None] == tokens[None, :]).float() * torch.ones(pos, pos).tril()


register_check(
    "duplicate_tokens.uniform_copy_weights",
    reference=dt.uniform_copy_weights,
    cases=_weights_cases,
    hint=(
        'Mark (n, i) with i <= n and t_i == t_n (the diagonal included), then divide each row by its count.'
    ),
    mistakes={
        "you left out the token itself: a duplicate head also attends to the current position": _weights_no_self,
        "you also counted later copies: attention is causal (i <= n)": _weights_not_causal,
        "your rows do not sum to 1: divide by the number of copies": _weights_unnormalised,
    },
)


def _predict_cases(model=None, **_):
    dev = model.cfg.device
    text = dt.text_tokens(model)[0, :120]
    out = []
    for tokens, dup, uni, s2 in [
        (text, 5, [11], 4.6),
        (_texty_tokens(1, 80, 20, 90)[0].to(dev), 1, [0, 11], 1.2),
        (_texty_tokens(1, 30, 5, 91)[0].to(dev), 5, [], 2.0),
    ]:
        s1 = dt.layer0_ln_scale_approx(model, tokens[None])[0]
        out.append(
            {"model": model, "tokens": tokens, "neuron": 1168, "duplicate_head": dup, "uniform_heads": uni,
             "ln1_scale": s1, "ln2_scale": s2}
        )
    return out


def _predict_no_direct(model, tokens, neuron, duplicate_head, uniform_heads, ln1_scale, ln2_scale):
    full = dt.predict_neuron_pre(model, tokens, neuron, duplicate_head, uniform_heads, ln1_scale, ln2_scale)
    direct = model.W_pos[: tokens.shape[-1]] @ model.W_in[0][:, neuron]
    return full - ln2_scale * direct


def _predict_dup_as_current(model, tokens, neuron, duplicate_head, uniform_heads, ln1_scale, ln2_scale):
    return dt.predict_neuron_pre(model, tokens, neuron, -1, uniform_heads, ln1_scale, ln2_scale)


def _predict_no_attention_bias(model, tokens, neuron, duplicate_head, uniform_heads, ln1_scale, ln2_scale):
    full = dt.predict_neuron_pre(model, tokens, neuron, duplicate_head, uniform_heads, ln1_scale, ln2_scale)
    return full - ln2_scale * (model.b_O[dt.LAYER] @ model.W_in[dt.LAYER][:, neuron])


def _predict_no_bias(model, tokens, neuron, duplicate_head, uniform_heads, ln1_scale, ln2_scale):
    full = dt.predict_neuron_pre(model, tokens, neuron, duplicate_head, uniform_heads, ln1_scale, ln2_scale)
    return full - model.b_in[0, neuron]


register_check(
    "duplicate_tokens.predict_neuron_pre",
    reference=dt.predict_neuron_pre,
    cases=_predict_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "Start from the positional contributions of each head (with the first LayerNorm's scale at the "
        'source). How does each kind of head mix its sources: the duplicate head over the copies of the '
        'current token, uniform heads over everything so far, the others only the current position? Add the '
        "direct path and what the attention's output bias sends to the neuron, then the second LayerNorm's "
        "scale and the neuron's bias."
    ),
    mistakes={
        "you left out the direct path (W_pos[n] read by W_in without any head)": _predict_no_direct,
        "you treated the duplicate head like the others (attending to the current position only)": _predict_dup_as_current,
        "you forgot the neuron's bias b_in": _predict_no_bias,
        "you left out the attention's output bias b_O (the same at every position, but read by W_in)": _predict_no_attention_bias,
    },
)
