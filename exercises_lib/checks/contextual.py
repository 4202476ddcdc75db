"""Checks of chapter 2's exercises (contextual attention heads and contextual neurons).

Each check runs the student's function on the notebook's example and on hidden
inputs (other tokens, lengths, heads, shapes), and names the typical mistakes
below when the student's output matches one.
"""

from __future__ import annotations

import math

import torch

from exercises_lib import contextual as cx
from exercises_lib.checks import random_pattern, register_check
from exercises_lib.layernorm import ln_scale
from exercises_lib.texts import load_text

MODEL = "gpt2-small"


def _tok(model, word: str) -> int:
    return model.to_single_token(word)


def _causal(n, device):
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


# ---------------------------------------------------------------------------
# 2.1 positional_pattern
# ---------------------------------------------------------------------------


def _positional_variant(model, dest_token, n_ctx, *, ln=True, bias=True, sqrt=True, content=False,
                        strict=False, axis=-1):
    w = cx.layer0_weights(model)
    E, P = model.W_E.detach()[dest_token], model.W_pos.detach()[:n_ctx]
    x = E[None] + P
    s = ln_scale(x, model.cfg.eps)[:, None] if ln else torch.ones(n_ctx, 1, device=x.device)
    q = torch.einsum("pd,hde->hpe", s * x, w["W_Q"]) + (w["b_Q"][:, None] if bias else 0)
    key_in = s * x if content else s * P
    k = torch.einsum("pd,hde->hpe", key_in, w["W_K"]) + (w["b_K"][:, None] if bias else 0)
    scores = torch.einsum("hne,hie->hni", q, k) / (math.sqrt(w["W_Q"].shape[-1]) if sqrt else 1.0)
    mask = _causal(n_ctx, x.device)
    if strict:
        mask = mask & ~torch.eye(n_ctx, dtype=torch.bool, device=x.device)
    return scores.masked_fill(~mask, float("-inf")).softmax(axis)


def _positional_cases(model):
    return [
        {"model": model, "dest_token": _tok(model, " the"), "n_ctx": 200},
        {"model": model, "dest_token": _tok(model, " and"), "n_ctx": 64},
        {"model": model, "dest_token": _tok(model, " God"), "n_ctx": 37},
    ]


register_check(
    "contextual.positional_pattern",
    reference=cx.positional_pattern,
    cases=_positional_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "The residual at position i is the token's embedding plus the positional embedding; LayerNorm scales "
        'it (it is centred already). Queries use the whole residual, keys only its positional part (with the '
        'key bias). Divide the scores by the square root of the head dimension, hide the future sources, and '
        'normalise over the sources.'
    ),
    mistakes={
        "softmax over the destination axis instead of the source axis": lambda **kw: _positional_variant(**kw, axis=-2),
        "a causal mask that hides the destination's own position (i < n instead of i <= n)": lambda **kw: _positional_variant(**kw, strict=True),
        "the LayerNorm scale left out (raw E + P in the query and P in the key)": lambda **kw: _positional_variant(**kw, ln=False),
        "no division by sqrt(d_head)": lambda **kw: _positional_variant(**kw, sqrt=False),
        "the query and key biases b_Q, b_K left out": lambda **kw: _positional_variant(**kw, bias=False),
        "the token's content kept in the key (that is the identical-token pattern, not the positional one)": lambda **kw: _positional_variant(**kw, content=True),
    },
)


# ---------------------------------------------------------------------------
# 2.2 factorise_pattern
# ---------------------------------------------------------------------------


def _factorise_variant(model, tokens, cache, *, ln=True, full_key=False, mask_c=True, sqrt=True, strict=False):
    w = cx.layer0_weights(model)
    W_K, b_K = w["W_K"], w["b_K"]
    n = tokens.shape[-1]
    s = 1.0 / cache["blocks.0.ln1.hook_scale"][0] if ln else torch.ones(n, 1, device=tokens.device)
    q = cache["blocks.0.attn.hook_q"][0].transpose(0, 1)
    E, P = model.W_E.detach()[tokens], model.W_pos.detach()[:n]
    k_pos = torch.einsum("pd,hde->hpe", s * (E + P if full_key else P), W_K) + b_K[:, None]
    k_tok = torch.einsum("pd,hde->hpe", s * E, W_K)
    d = math.sqrt(W_K.shape[-1]) if sqrt else 1.0
    mask = _causal(n, q.device)
    if strict:
        mask = mask & ~torch.eye(n, dtype=torch.bool, device=q.device)
    pi = (torch.einsum("hne,hie->hni", q, k_pos) / d).masked_fill(~mask, float("-inf")).softmax(-1)
    c = (torch.einsum("hne,hie->hni", q, k_tok) / d).exp()
    if mask_c:
        c = c * mask
    Z = (pi * c).sum(-1)
    return pi, c, Z


def _text_case(model, name, start, length):
    toks = cx.tokens_of(model, load_text(name), start + length)
    toks = torch.cat([toks[:1], toks[start + 1 : start + length]])  # <|endoftext|> first
    cache = cx.layer0_cache(model, toks, names=("blocks.0.ln1.hook_scale", "blocks.0.attn.hook_q"))
    return {"model": model, "tokens": toks, "cache": cache}


def _factorise_cases(model):
    return [
        _text_case(model, "bible_genesis", 0, 60),
        _text_case(model, "python_docs", 100, 33),
        _text_case(model, "cooking", 300, 17),
    ]


register_check(
    "contextual.factorise_pattern",
    reference=cx.factorise_pattern,
    cases=_factorise_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "The cache holds what you need: layer 0's LayerNorm divisor (invert it to get the scale s) and the "
        'queries. Split each key into a positional part (from P, with the key bias) and a content part (from '
        'E): the positional scores give pi, the content scores give c (zero where a source comes after its '
        'destination), and Z sums pi times c over the sources.'
    ),
    mistakes={
        "the LayerNorm scale left out (raw E and P in the keys)": lambda **kw: _factorise_variant(**kw, ln=False),
        "pi computed from the full key s_i (E[t_i] + P[i]) W_K (that is the real pattern, not the positional one)": lambda **kw: _factorise_variant(**kw, full_key=True),
        "c not set to zero above the diagonal (sources after the destination)": lambda **kw: _factorise_variant(**kw, mask_c=False),
        "no division by sqrt(d_head)": lambda **kw: _factorise_variant(**kw, sqrt=False),
        "a causal mask that hides the destination's own position": lambda **kw: _factorise_variant(**kw, strict=True),
    },
)


# ---------------------------------------------------------------------------
# 2.3 head_features, 2.4 classify_heads
# ---------------------------------------------------------------------------


def _features_cases(model):
    the = _tok(model, " the")
    pi = cx.positional_pattern(model, the, 700)
    return [
        {"pi": pi, "n_min": 500, "window": 100},
        {"pi": random_pattern(3, 40, seed=1, scale=3.0), "n_min": 10, "window": 6},
        {"pi": random_pattern(2, 25, seed=2, scale=0.5), "n_min": 8, "window": 5},
    ]


def _features_variant(pi, n_min, window=100, *, ks=(0, 1, 2, 3), skip_current=False, whole_prefix=False, all_dests=False):
    start = window - 1 if all_dests else n_min  # every destination with a full window
    dests = torch.arange(start, pi.shape[-2], device=pi.device)
    rows = pi[:, dests]
    idx = torch.arange(len(dests), device=pi.device)
    local = sum(rows[:, idx, dests - k] for k in ks)
    cums = rows.cumsum(-1)
    recent = cums[:, idx, dests] - cums[:, idx, dests - window]
    if skip_current:
        recent = recent - rows[:, idx, dests]
    if whole_prefix:
        recent = cums[:, idx, dests]
    return torch.stack([local.mean(-1), recent.mean(-1)], dim=-1)


register_check(
    "contextual.head_features",
    reference=cx.head_features,
    cases=_features_cases,
    needs=("model",),
    model=MODEL,
    hint=(
        "Only destinations from n_min on count. The local mass adds the pattern's weight on the destination "
        "itself and the three sources before it; the recent mass adds its weight on the last `window` sources "
        "up to and including the destination (a running total along the sources avoids a loop). Average each "
        "over the destinations."
    ),
    mistakes={
        "the current token left out of local_mass (k = 1..3 instead of 0..3)": lambda pi, n_min, window=100: _features_variant(pi, n_min, window, ks=(1, 2, 3)),
        "the current token left out of recent_mass": lambda pi, n_min, window=100: _features_variant(pi, n_min, window, skip_current=True),
        "recent_mass summed over the whole prefix, not the last `window` tokens": lambda pi, n_min, window=100: _features_variant(pi, n_min, window, whole_prefix=True),
        "averaged over every destination, ignoring n_min": lambda pi, n_min, window=100: _features_variant(pi, n_min, window, all_dests=True),
    },
)


def _classify_cases(model):
    the = _tok(model, " the")
    features = cx.head_features(cx.positional_pattern(model, the, 700))
    copy = cx.copy_attention_score(model, n_sequences=2)
    g = torch.Generator().manual_seed(3)
    synthetic = torch.rand(10, 2, generator=g)
    synthetic[:, 1] *= 0.8
    copy_syn = torch.rand(10, generator=g)
    # A head on every boundary's right side: strictness matters only there.
    edge = torch.tensor([[0.9, 0.5], [0.2, 0.3], [0.2, 0.3], [0.2, 0.9]])
    edge_copy = torch.tensor([0.95, 0.1, 0.85, 0.1])
    synthetic[:, 0] *= 0.6
    return [
        {"features": features, "copy_score": copy, "thresholds": None},
        {"features": synthetic, "copy_score": copy_syn, "thresholds": None},
        {"features": edge, "copy_score": edge_copy, "thresholds": {"duplicate": 0.9, "recent": 0.25}},
    ]


def _classify_compare(actual, expected, kwargs):
    if not isinstance(actual, dict):
        return f"expected a dict of group name -> list of heads, got {type(actual).__name__}"
    missing = set(expected) - set(actual)
    if missing:
        return f"the groups {sorted(missing)} are missing (expected keys {sorted(expected)})"
    for group, heads in expected.items():
        got = sorted(int(h) for h in actual[group])
        if got != sorted(heads):
            return f"group {group!r}: you have {got}, expected {sorted(heads)}"
    return None


def _classify_variant(features, copy_score, thresholds=None, *, order="dup-local-spread", ignore_thresholds=False):
    th = dict(cx.CLASSIFY_THRESHOLDS)
    if thresholds and not ignore_thresholds:
        th.update(thresholds)
    groups = {"duplicate": [], "detokenisation": [], "contextual": [], "unclear": []}
    for head in range(features.shape[0]):
        local, frac, dup = float(features[head, 0]), float(features[head, 1]), float(copy_score[head])
        tests = {
            "duplicate": dup > th["duplicate"],
            "detokenisation": local > th["local"],
            "contextual": frac > th["recent"],
        }
        sequence = ["detokenisation", "duplicate", "contextual"] if order == "local-dup-spread" else ["duplicate", "detokenisation", "contextual"]
        for group in sequence:
            if tests[group]:
                groups[group].append(head)
                break
        else:
            groups["unclear"].append(head)
    return groups


register_check(
    "contextual.classify_heads",
    reference=cx.classify_heads,
    cases=_classify_cases,
    compare_fn=_classify_compare,
    needs=("model",),
    model=MODEL,
    hint=(
        'Start from the default thresholds and let the given ones override them. The rules are tried in a '
        'fixed order and the first that applies wins: duplicate, then detokenisation, then contextual (its '
        'recent mass above its threshold); a head that matches none is unclear.'
    ),
    mistakes={
        "the rules tested in another order (detokenisation before duplicate)": lambda **kw: _classify_variant(**kw, order="local-dup-spread"),
        "the thresholds argument ignored (always the defaults)": lambda **kw: _classify_variant(**kw, ignore_thresholds=True),
    },
)


# ---------------------------------------------------------------------------
# 2.5 normalisation_factors, 2.6 independent_model_variance
# ---------------------------------------------------------------------------


def _Z_cases(model):
    def toks(name, n):
        return cx.tokens_of(model, load_text(name), n)

    return [
        {"model": model, "tokens": toks("bible_genesis", 120), "dest_token": _tok(model, " the")},
        {"model": model, "tokens": toks("legal_gpl3", 45), "dest_token": _tok(model, " of")},
        {"model": model, "tokens": toks("fiction", 30), "dest_token": _tok(model, " the"), "neutral": (0,)},
    ]


def _Z_variant(model, tokens, dest_token, neutral=(), *, real_dest=False, ln=True, plain_mean=False, use_neutral=True):
    n = tokens.shape[-1]
    w = cx.layer0_weights(model)
    E, P = model.W_E.detach()[tokens], model.W_pos.detach()[:n]
    ones = torch.ones(n, 1, device=E.device)
    s = ln_scale(E + P, model.cfg.eps)[:, None] if ln else ones
    x_dest = (E if real_dest else model.W_E.detach()[dest_token][None]) + P
    s_dest = ln_scale(x_dest, model.cfg.eps)[:, None] if ln else ones
    q = torch.einsum("pd,hde->hpe", s_dest * x_dest, w["W_Q"]) + w["b_Q"][:, None]
    k_tok = torch.einsum("pd,hde->hpe", s * E, w["W_K"])
    k_pos = torch.einsum("pd,hde->hpe", s * P, w["W_K"]) + w["b_K"][:, None]
    d = math.sqrt(q.shape[-1])
    mask = _causal(n, q.device)
    pos = (torch.einsum("hne,hie->hni", q, k_pos) / d).masked_fill(~mask, float("-inf"))
    tok = torch.einsum("hne,hie->hni", q, k_tok) / d
    if use_neutral:
        tok[:, :, list(neutral)] = 0.0
    if plain_mean:
        return (tok.exp() * mask).sum(-1) / mask.sum(-1)
    return (torch.logsumexp(pos + tok, -1) - torch.logsumexp(pos, -1)).exp()


register_check(
    "contextual.normalisation_factors",
    reference=cx.normalisation_factors,
    cases=_Z_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "Queries come from the fixed destination token at each position; keys from the sequence's real "
        'tokens, split into a content part and a positional part. Z_n compares the full scores with the '
        'positional scores alone over the sources up to n: a ratio of sums of exponentials, best computed '
        'with log-sum-exp. The `neutral` positions have no content score.'
    ),
    mistakes={
        "the query of the real destination token, not of dest_token": lambda **kw: _Z_variant(**kw, real_dest=True),
        "the `neutral` positions ignored (their content score must be 0)": lambda **kw: _Z_variant(**kw, use_neutral=False),
        "the LayerNorm scale left out": lambda **kw: _Z_variant(**kw, ln=False),
        "a plain mean of c over the sources, without the positional pattern": lambda **kw: _Z_variant(**kw, plain_mean=True),
    },
)


def _variance_cases():
    g = torch.Generator().manual_seed(4)
    return [
        {"pi": random_pattern(12, 50, seed=5, scale=1.0), "c_values": torch.rand(12, 300, generator=g) * 3},
        {"pi": random_pattern(3, 17, seed=6, scale=2.0), "c_values": torch.randn(3, 40, generator=g).exp()},
    ]


register_check(
    "contextual.independent_model_variance",
    reference=cx.independent_model_variance,
    cases=_variance_cases,
    hint=(
        'If the content factors were independent draws, the variance of a weighted sum is their variance '
        "times the sum of the squared weights. Use the unbiased variance of each head's values, and the "
        "pattern's squared weights summed over the sources of each destination."
    ),
    mistakes={
        "sum_j pi_n(j) (which is 1) instead of sum_j pi_n(j)^2": lambda pi, c_values: c_values.var(-1)[:, None] * pi.sum(-1),
        "the standard deviation instead of the variance": lambda pi, c_values: c_values.std(-1)[:, None] * pi.pow(2).sum(-1),
        "the biased variance (divided by N instead of N - 1)": lambda pi, c_values: c_values.var(-1, unbiased=False)[:, None] * pi.pow(2).sum(-1),
    },
)


# ---------------------------------------------------------------------------
# 2.7 extended_embeddings
# ---------------------------------------------------------------------------


def _ext_cases(model):
    g = torch.Generator().manual_seed(7)
    ids = lambda n: torch.randint(0, model.cfg.d_vocab, (n,), generator=g)  # noqa: E731
    return [
        {"model": model, "heads": [0, 2, 6, 8, 9, 10], "Z": torch.tensor([1.1, 1.0, 0.6, 3.5, 1.1, 1.1]), "token_ids": ids(300)},
        {"model": model, "heads": [4, 1], "Z": torch.tensor([2.0, 0.5]), "token_ids": ids(50)},
        {"model": model, "heads": [11], "Z": torch.tensor([1.3]), "token_ids": ids(7), "dest_token": _tok(model, " and"), "dest_pos": 100},
    ]


def _ext_variant(model, heads, Z, token_ids=None, dest_token=262, dest_pos=500, *, use_c=True, use_Z=True, use_s=True, all_heads=False):
    heads = list(range(model.cfg.n_heads)) if all_heads else list(heads)
    w = cx.layer0_weights(model)
    c = cx.content_weights(model, token_ids, dest_token, dest_pos)[heads]
    s = cx.token_ln_scale(model, token_ids)
    E = model.W_E.detach()[token_ids]
    out = 0
    Z = Z.to(E.device)
    for j, h in enumerate(heads):
        weight = torch.ones(E.shape[0], device=E.device)
        if use_c:
            weight = weight * c[j]
        if use_s:
            weight = weight * s
        if use_Z and not all_heads:
            weight = weight / Z[j]
        out = out + (weight[:, None] * E) @ w["W_V"][h] @ w["W_O"][h]
    return out


register_check(
    "contextual.extended_embeddings",
    reference=cx.extended_embeddings,
    cases=_ext_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-4,
    rtol=1e-3,
    hint=(
        "For each given head, a token's weight is its content weight divided by the head's normalisation "
        "factor and times its LayerNorm scale; that weights the token's embedding, carried through the head's "
        'OV circuit. Add the heads.'
    ),
    mistakes={
        "the content weights c_h(t) left out": lambda **kw: _ext_variant(**kw, use_c=False),
        "not divided by the normalisers Z_h": lambda **kw: _ext_variant(**kw, use_Z=False),
        "the LayerNorm scale s(t) left out": lambda **kw: _ext_variant(**kw, use_s=False),
        "every head summed instead of the given heads": lambda **kw: _ext_variant(**kw, all_heads=True),
    },
)


# ---------------------------------------------------------------------------
# 2.8 contribution_summary
# ---------------------------------------------------------------------------


def _summary_cases(model):
    g = torch.Generator().manual_seed(8)
    W_in = cx.layer0_weights(model)["W_in"]
    dev = W_in.device
    return [
        {"ext": torch.randn(1000, 768, generator=g).to(dev), "W_in": W_in, "ln2_scale": 5.5, "k": 5, "chunk_size": 256},
        {"ext": torch.randn(300, 768, generator=g).to(dev), "W_in": W_in[:, :50], "ln2_scale": 2.0, "k": 3, "chunk_size": 7},
        {"ext": torch.randn(40, 16, generator=g), "W_in": torch.randn(16, 9, generator=g), "ln2_scale": 1.0, "k": 4, "chunk_size": 100},
    ]


def _summary_last_chunk(ext, W_in, ln2_scale, k=20, chunk_size=8192):
    start = ((ext.shape[0] - 1) // chunk_size) * chunk_size
    full = cx.contribution_summary(ext, W_in, ln2_scale, k, chunk_size)
    C = ln2_scale * (ext[start:] @ W_in)
    kk = min(k, C.shape[0])
    tv, ti = C.topk(kk, dim=0)
    bv, bi = C.topk(kk, dim=0, largest=False)
    return tv.T, (ti + start).T, bv.T, (bi + start).T, full[4], full[5]


def _summary_variant(ext, W_in, ln2_scale, k=20, chunk_size=8192, *, scale=True, unbiased=False, chunk_ids=False):
    C = (ln2_scale if scale else 1.0) * (ext @ W_in)
    tv, ti = C.topk(k, dim=0)
    bv, bi = C.topk(k, dim=0, largest=False)
    if chunk_ids:
        ti, bi = ti % chunk_size, bi % chunk_size
    std = C.std(0, unbiased=unbiased)
    return tv.T, ti.T, bv.T, bi.T, C.mean(0), std


register_check(
    "contextual.contribution_summary",
    reference=cx.contribution_summary,
    cases=_summary_cases,
    needs=("model",),
    model=MODEL,
    atol=1e-3,
    rtol=1e-4,
    hint=(
        "Never build the whole [d_mlp, vocab] matrix: take the vocabulary in chunks, compute each chunk's "
        "contributions (with the second LayerNorm's scale), and keep only running results: the k largest and "
        "k smallest so far with their token ids (mind each chunk's offset), a running sum and a running sum "
        'of squares for the mean and the population standard deviation.'
    ),
    mistakes={
        "only the last chunk kept (the running top/bottom k are not merged across chunks)": _summary_last_chunk,
        "the LN-2 scale left out": lambda **kw: _summary_variant(**kw, scale=False),
        "the sample (N-1) standard deviation instead of the population one": lambda **kw: _summary_variant(**kw, unbiased=True),
        "token ids counted inside the chunk, not from the start of ext": lambda **kw: _summary_variant(**kw, chunk_ids=True),
    },
)


# ---------------------------------------------------------------------------
# 2.9 bag_of_tokens_prediction
# ---------------------------------------------------------------------------


def _bag_cases():
    g = torch.Generator().manual_seed(9)

    def case(heads, vocab, n, n_ctx):
        return {
            "T": torch.randn(heads, vocab, generator=g),
            "tokens": torch.randint(0, vocab, (n,), generator=g),
            "pi": random_pattern(heads, n_ctx, seed=int(torch.randint(0, 99, (1,), generator=g))),
            "Z": torch.rand(heads, n_ctx, generator=g) + 0.5,
        }

    return [case(6, 500, 40, 40), case(2, 30, 12, 20), case(1, 9, 5, 5)]


register_check(
    "contextual.bag_of_tokens_prediction",
    reference=cx.bag_of_tokens_prediction,
    cases=_bag_cases,
    hint=(
        "Each source contributes its token's value for each head; weight those by the head's positional "
        "pattern row of the destination, correct by that row's normalisation factor Z, and add up the heads. "
        'Look at the shapes: which axis of pi is the source?'
    ),
    mistakes={
        "not divided by Z": lambda T, tokens, pi, Z: torch.einsum("hni,hi->n", pi[:, : len(tokens), : len(tokens)], T[:, tokens]),
        "the pattern transposed (summed over destinations instead of sources)": lambda T, tokens, pi, Z: (
            torch.einsum("hin,hi->hn", pi[:, : len(tokens), : len(tokens)], T[:, tokens]) / Z[:, : len(tokens)]
        ).sum(0),
        "multiplied by Z instead of divided": lambda T, tokens, pi, Z: (
            torch.einsum("hni,hi->hn", pi[:, : len(tokens), : len(tokens)], T[:, tokens]) * Z[:, : len(tokens)]
        ).sum(0),
    },
)


# ---------------------------------------------------------------------------
# 2.10 contribution_components
# ---------------------------------------------------------------------------


def _svd_cases():
    g = torch.Generator().manual_seed(10)
    return [
        {"rows": torch.randn(150, 768, generator=g), "w": torch.randn(768, generator=g), "k": 4},
        {"rows": torch.randn(20, 6, generator=g), "w": torch.randn(6, generator=g), "k": 6},
        {"rows": torch.randn(9, 30, generator=g), "w": torch.randn(30, generator=g), "k": 2},
    ]


def _svd_variant(rows, w, k, *, kind):
    U, S, Vh = torch.linalg.svd(rows, full_matrices=False)
    if kind == "no_w":
        return U[:, :k] * S[:k]
    if kind == "no_S":
        return U[:, :k] * (Vh[:k] @ w)
    return (U[:, :k] * S[:k] * (Vh[:k] @ w)).sum(-1)  # the parts added up


register_check(
    "contextual.contribution_components",
    reference=cx.contribution_components,
    cases=_svd_cases,
    atol=1e-3,
    rtol=1e-3,
    hint=(
        "A thin singular value decomposition of the rows gives k directions; each part is the rows' component "
        'along one direction (its left singular vector times its singular value) times how much that '
        "direction points along w. The parts must add up (over all directions) to the rows' projection on w."
    ),
    mistakes={
        "the parts not projected on w (U S alone, whose signs are arbitrary)": lambda rows, w, k: _svd_variant(rows, w, k, kind="no_w"),
        "the singular values S left out": lambda rows, w, k: _svd_variant(rows, w, k, kind="no_S"),
        "the parts added up into one number per token (keep one column per component)": lambda rows, w, k: _svd_variant(rows, w, k, kind="sum"),
    },
)
