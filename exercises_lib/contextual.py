"""Contextual attention heads and contextual neurons in GPT-2 small's layer 0.

Following Gibson, "Contextual attention heads in the first layer of GPT-2"
(2025). In layer 0 a key is ``k_i = s_i (E[t_i] + P[i]) W_K + b_K`` (``s_i`` the
LayerNorm scale, LN folded), so the exponentiated score of destination ``n``
to source ``i`` factorises::

    exp(q_n . k_i / sqrt(d_head)) = pos_n(i) * c_n(i)
    pos_n(i) = exp(q_n . (s_i P[i] W_K + b_K) / sqrt(d_head))   # position only
    c_n(i)   = exp(q_n . s_i E[t_i] W_K / sqrt(d_head))         # content only

and the pattern is ``a_{n,i} = pi_n(i) c_n(i) / Z_n`` with the *positional
pattern* ``pi_n = softmax_{i<=n}(log pos_n)`` and the normaliser
``Z_n = sum_j pi_n(j) c_n(j)``.

Conventions: the LN scale ``s`` is the LayerNorm *multiplier*
(:func:`exercises_lib.layernorm.ln_scale`, ``1 / sqrt(mean((x - mean x)^2) + eps)``,
about ``sqrt(d_model) / |x|``), not TransformerLens's ``hook_scale`` (the
divisor ``1 / s``). Chapter 1's :func:`exercises_lib.duplicate_tokens.layer0_ln_scale`
is the same quantity without ``eps``; here the exact LayerNorm (with ``eps``) is
used so that patterns computed from the weights match the forward pass to
float precision.
Every function works on layer 0 of a GPT-2-small-shaped model (real or
stand-in) and never reads where a stand-in's mechanisms were planted.

Taught in: chapter 2 (contextual attention heads and contextual neurons).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from exercises_lib.layernorm import ln_scale
from exercises_lib.vocab import STOPWORDS, single_token_ids

__all__ = [
    "token_ln_scale",
    "positional_pattern",
    "identical_token_pattern",
    "factorise_pattern",
    "head_features",
    "CLASSIFY_THRESHOLDS",
    "PARTIAL_DUPLICATE",
    "classify_heads",
    "classification_margins",
    "copy_attention_score",
    "dest_queries",
    "normalisation_factors",
    "stopword_ids",
    "stopword_fraction",
    "content_weights",
    "independent_model_variance",
    "extended_embeddings",
    "contribution_summary",
    "token_contributions",
    "per_head_token_contributions",
    "mean_contribution_per_text",
    "tail_scores",
    "text_selectivity",
    "variation_across_texts",
    "bag_of_tokens_prediction",
    "Layer0Approximation",
    "fit_layer0_approximation",
    "predict_preactivation",
    "actual_preactivation",
    "prediction_errors",
    "contextual_output",
    "bag_of_tokens_output",
    "cosine_per_position",
    "contribution_components",
    "layer0_cache",
    "layer_patterns",
    "layer0_weights",
    "tokens_of",
    "plot_positional_grid",
    "plot_normalisers",
    "plot_token_contributions",
]

LAYER = 0


# ---------------------------------------------------------------------------
# Layer 0's weights and LN scales
# ---------------------------------------------------------------------------


def token_ln_scale(model, token_ids: Tensor | None = None) -> Float[Tensor, "tokens"]:
    """Linearised LN-1 scale (the multiplier) of each token at a typical position past 100.

    ``s(t) = 1 / sqrt((|E[t]|^2 + mean_{i>=100} |P[i]|^2) / d_model)``: since
    ``E`` and ``P`` are nearly orthogonal (chapter 1), ``|E[t] + P[i]|^2`` is
    about ``|E[t]|^2 + |P[i]|^2``, and ``|P[i]|`` is about flat past 100.
    """
    E = _E(model) if token_ids is None else _E(model)[token_ids]
    P = _P(model)[100:]
    d = E.shape[-1]
    mean_p2 = P.pow(2).sum(-1).mean()
    return ((E.pow(2).sum(-1) + mean_p2) / d + model.cfg.eps).rsqrt()


def _E(model) -> Tensor:
    return model.W_E.detach()


def _P(model) -> Tensor:
    return model.W_pos.detach()


def layer0_weights(model) -> dict[str, Tensor]:
    """Layer 0's weights, detached: ``W_Q, b_Q, W_K, b_K, W_V, W_O`` [head, ...], ``b_O``, ``W_in``, ``b_in``.

    Read from ``model.blocks[0]`` at each call (``model.W_Q[0]`` would stack
    every layer's weights first), so they follow the model's device and edits.
    """
    attn, mlp = model.blocks[LAYER].attn, model.blocks[LAYER].mlp
    weights = {name: getattr(attn, name) for name in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "W_O", "b_O")}
    weights.update({name: getattr(mlp, name) for name in ("W_in", "b_in")})
    return {name: w.detach() for name, w in weights.items()}


# ---------------------------------------------------------------------------
# 1. Positional patterns from the weights
# ---------------------------------------------------------------------------


def positional_pattern(model, dest_token: int, n_ctx: int) -> Float[Tensor, "head dest src"]:
    """Layer-0 positional pattern of every head for every destination ``n < n_ctx``.

    The pattern each head would have if every token were ``dest_token``, with
    the content term dropped (Gibson's ``pi``), from the weights alone::

        x_i     = E[t] + P[i],   s_i = ln_scale(x_i)
        q_n     = s_n x_n W_Q + b_Q
        k^P_i   = s_i P[i] W_K + b_K
        pi_n(i) = softmax_{i <= n}(q_n . k^P_i / sqrt(d_head))
    """
    # SOLUTION: queries from E[t] + P, positional keys from P (both LayerNorm-scaled), causal softmax over sources
    w = layer0_weights(model)
    P = model.W_pos[:n_ctx]
    x = model.W_E[dest_token][None] + P  # [pos, d_model]
    s = ln_scale(x, model.cfg.eps)[:, None]
    q = torch.einsum("pd,hde->hpe", s * x, w["W_Q"]) + w["b_Q"][:, None]
    k = torch.einsum("pd,hde->hpe", s * P, w["W_K"]) + w["b_K"][:, None]
    scores = torch.einsum("hne,hie->hni", q, k) / math.sqrt(w["W_Q"].shape[-1])
    allowed = torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=scores.device).tril()
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    # END SOLUTION


def identical_token_pattern(model, dest_token: int, n_ctx: int) -> Float[Tensor, "head dest src"]:
    """Layer-0 pattern measured by running the model on ``n_ctx`` copies of one token (no BOS)."""
    tokens = torch.full((1, n_ctx), dest_token, device=model.cfg.device)
    cache = layer0_cache(model, tokens, names=("blocks.0.attn.hook_pattern",))
    return cache["blocks.0.attn.hook_pattern"][0]


def layer0_cache(model, tokens: Tensor, names: Sequence[str] | None = None):
    """Run only layer 0 (``stop_at_layer=1``) and cache its hooks (all of ``blocks.0`` by default)."""
    if tokens.ndim == 1:
        tokens = tokens[None]
    tokens = tokens.to(model.cfg.device)
    if names is None:
        names_filter = lambda name: name.startswith("blocks.0.")  # noqa: E731
    else:
        wanted = set(names)
        names_filter = lambda name: name in wanted  # noqa: E731
    with torch.no_grad(), warnings.catch_warnings():
        # The bridge warns about hooks that a "blocks.0." prefix matches but never fire.
        warnings.filterwarnings("ignore", message="run_with_cache: skipped")
        _, cache = model.run_with_cache(tokens, names_filter=names_filter, stop_at_layer=LAYER + 1)
    return cache


def layer_patterns(model, tokens: Int[Tensor, "pos"], layer: int) -> Float[Tensor, "head dest src"]:
    """Attention patterns of every head of ``layer`` on one sequence (the model run up to that layer only)."""
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None].to(model.cfg.device), names_filter=lambda n: n == name,
                                        stop_at_layer=layer + 1)
    return cache[name][0]


def tokens_of(model, text: str, max_len: int = 1024) -> Int[Tensor, "pos"]:
    """``text`` as GPT-2 tokens with ``<|endoftext|>`` first, cut to ``max_len`` tokens."""
    return model.to_tokens(text, prepend_bos=True)[0, :max_len]


# ---------------------------------------------------------------------------
# 2. The factorisation a = pi c / Z on real text
# ---------------------------------------------------------------------------


def factorise_pattern(
    model, tokens: Int[Tensor, "pos"], cache
) -> tuple[Float[Tensor, "head dest src"], Float[Tensor, "head dest src"], Float[Tensor, "head dest"]]:
    """Split layer 0's attention on ``tokens`` into ``(pi, c, Z)`` with ``a = pi * c / Z[..., None]``.

    With ``s_i = 1 / hook_scale_i`` (the cached LN-1 divisor, inverted) and ``q_n`` the cached query::

        pi_n(i) = softmax_{i<=n}(q_n . (s_i P[i] W_K + b_K) / sqrt(d_head))
        c_n(i)  = exp(q_n . s_i E[t_i] W_K / sqrt(d_head))      (0 where i > n)
        Z_n     = sum_{i<=n} pi_n(i) c_n(i)
    """
    # SOLUTION: split the keys into positional and content parts with the cached scale and queries
    w = layer0_weights(model)
    n = tokens.shape[-1]
    s = 1.0 / cache["blocks.0.ln1.hook_scale"][0]  # [pos, 1]
    q = cache["blocks.0.attn.hook_q"][0].transpose(0, 1)  # [head, pos, d_head]
    k_pos = torch.einsum("pd,hde->hpe", s * model.W_pos[:n], w["W_K"]) + w["b_K"][:, None]
    k_tok = torch.einsum("pd,hde->hpe", s * model.W_E[tokens], w["W_K"])
    d = math.sqrt(w["W_K"].shape[-1])
    allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    pi = (torch.einsum("hne,hie->hni", q, k_pos) / d).masked_fill(~allowed, float("-inf")).softmax(-1)
    c = (torch.einsum("hne,hie->hni", q, k_tok) / d).exp() * allowed
    return pi, c, (pi * c).sum(-1)
    # END SOLUTION


# ---------------------------------------------------------------------------
# 3. Classifying heads from their positional patterns
# ---------------------------------------------------------------------------


def head_features(pi: Float[Tensor, "head dest src"], n_min: int = 500, window: int = 100) -> Float[Tensor, "head 2"]:
    """Two numbers per head, averaged over destinations ``n >= n_min``.

    * ``local_mass``: attention on the current and the three previous tokens,
      ``sum_{k=0..3} pi_n(n - k)``;
    * ``recent_mass``: attention on the last ``window`` tokens (the current one
      included), ``sum_{k=0..window-1} pi_n(n - k)``.

    A previous-token head has most of its pattern in the first; a head whose
    pattern decays over some tens of tokens has most of it in the second but
    little in the first; a head spread over the whole prefix has little in
    either once ``n`` is several times ``window`` (hence ``n_min = 500``:
    compute ``pi`` for the whole context).
    """
    n_dest = pi.shape[-2]
    if n_min >= n_dest:
        raise ValueError(
            f"pi has {n_dest} destinations, none at or past n_min={n_min}: compute it for more positions "
            "(e.g. positional_pattern(model, token, model.cfg.n_ctx)) or lower n_min"
        )
    if n_min < window - 1:
        raise ValueError(f"n_min ({n_min}) must be at least window - 1 ({window - 1})")
    # SOLUTION: gather pi_n(n - k) for k = 0..3; the mass on the last `window` tokens from a cumulative sum
    dests = torch.arange(n_min, n_dest, device=pi.device)
    rows = pi[:, dests]  # [head, dest, src]
    idx = torch.arange(len(dests), device=pi.device)
    local = sum(rows[:, idx, dests - k] for k in (0, 1, 2, 3))
    cums = rows.cumsum(-1)  # cums[..., j] = sum_{i <= j} pi_n(i)
    recent = cums[:, idx, dests] - cums[:, idx, dests - window]
    return torch.stack([local.mean(-1), recent.mean(-1)], dim=-1)
    # END SOLUTION


#: Thresholds of :func:`classify_heads` (shown to the reader).
CLASSIFY_THRESHOLDS = {
    "duplicate": 0.15,  # copy_attention_score above this: a duplicate-token head
    "local": 0.3,  # local_mass above this: a detokenisation head
    "recent": 0.4,  # recent_mass above this (and not local): a contextual head
}

#: A contextual head whose copy_attention_score exceeds this also has duplicate-token
#: behaviour (the write-up says so of head 10): with a fixed destination token its
#: normaliser counts the earlier copies of that token, so it is left out when
#: comparing how much the contextual heads' normalisers vary across texts.
PARTIAL_DUPLICATE = 0.1


def classify_heads(
    features: Float[Tensor, "head 2"],
    copy_score: Float[Tensor, "head"],
    thresholds: dict | None = None,
) -> dict[str, list[int]]:
    """Groups of heads (thresholds: :data:`CLASSIFY_THRESHOLDS`, updated by ``thresholds``), in this order:

    1. ``duplicate``: ``copy_score > thresholds["duplicate"]``;
    2. ``detokenisation``: ``local_mass > thresholds["local"]``;
    3. ``contextual``: ``recent_mass > thresholds["recent"]``;
    4. ``unclear``: everything else.
    """
    # SOLUTION: merge the thresholds, then test the rules in order for each head
    th = dict(CLASSIFY_THRESHOLDS, **(thresholds or {}))
    groups = {"duplicate": [], "detokenisation": [], "contextual": [], "unclear": []}
    for head in range(features.shape[0]):
        local, recent = float(features[head, 0]), float(features[head, 1])
        if float(copy_score[head]) > th["duplicate"]:
            groups["duplicate"].append(head)
        elif local > th["local"]:
            groups["detokenisation"].append(head)
        elif recent > th["recent"]:
            groups["contextual"].append(head)
        else:
            groups["unclear"].append(head)
    return groups
    # END SOLUTION


def classification_margins(
    features: Float[Tensor, "head 2"], copy_score: Float[Tensor, "head"], thresholds: dict | None = None
) -> Float[Tensor, "head 3"]:
    """Each head's distance to the three thresholds of :func:`classify_heads`:
    ``[copy_score - duplicate, local_mass - local, recent_mass - recent]`` (positive: above it)."""
    th = dict(CLASSIFY_THRESHOLDS, **(thresholds or {}))
    return torch.stack([
        copy_score.to(features.device, features.dtype) - th["duplicate"],
        features[:, 0] - th["local"],
        features[:, 1] - th["recent"],
    ], dim=-1)


def copy_attention_score(
    model, period: int = 25, n_repeats: int = 4, n_sequences: int = 4, seed: int = 0
) -> Float[Tensor, "head"]:
    """Attention on *earlier* copies of the current token beyond what position alone gives them, per layer-0 head.

    Sequences ``<|endoftext|>`` + ``period`` random tokens repeated
    ``n_repeats`` times. At each destination ``n`` of the repeats (earlier
    copies at ``n - period``, ``n - 2 period``, ...)::

        copy_n = sum_{i < n, t_i = t_n} a_{n,i}      (the real attention on earlier copies)
        pos_n  = sum_{i < n, t_i = t_n} pi_n(i)      (what the positional pattern alone puts there)

    and the score is the mean over destinations of ``copy_n - pos_n``. The token
    itself does not count as a copy: a head that looks at the current position
    (a previous-token head does, positionally) scores about 0, as does a head
    that ignores content; a head that attends to nothing but earlier copies
    scores nearly 1. ``pi`` uses the real queries and LayerNorm scales
    (as :func:`factorise_pattern`). (Chapter 1 studies these heads in depth.)
    """
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(1000, 20000, (n_sequences, period), generator=g)
    bos = torch.full((n_sequences, 1), 50256)
    tokens = torch.cat([bos, block.repeat(1, n_repeats)], dim=1)
    n = tokens.shape[1]
    cache = layer0_cache(
        model, tokens, names=("blocks.0.attn.hook_pattern", "blocks.0.attn.hook_q", "blocks.0.ln1.hook_scale")
    )
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, dest, src]
    W_K, b_K = layer0_weights(model)["W_K"], layer0_weights(model)["b_K"]
    s = 1.0 / cache["blocks.0.ln1.hook_scale"]  # the LN scale (the multiplier), [batch, pos, 1]
    q = cache["blocks.0.attn.hook_q"].transpose(1, 2)  # [batch, head, pos, d_head]
    k_pos = torch.einsum("bpd,hde->bhpe", s * _P(model)[:n], W_K) + b_K[None, :, None]
    mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    pi = (torch.einsum("bhne,bhie->bhni", q, k_pos) / math.sqrt(W_K.shape[-1])).masked_fill(~mask, float("-inf")).softmax(-1)
    tokens = tokens.to(pattern.device)
    earlier = (tokens[:, :, None] == tokens[:, None, :]) & mask.tril(-1).to(pattern.device)
    excess = ((pattern - pi) * earlier[:, None]).sum(-1)  # [batch, head, dest]
    return excess[:, :, 1 + period :].mean((0, 2))


def stopword_ids(model) -> Tensor:
    """Token ids of :data:`exercises_lib.vocab.STOPWORDS` (lower case and capitalised, with
    and without a leading space, where that is one token), punctuation and newlines."""
    words = [p + w for w in STOPWORDS for p in ("", " ")]
    words += [p + w.capitalize() for w in STOPWORDS for p in ("", " ")]
    words += list(",.;:!?") + ["\n", "\n\n"]
    return torch.tensor(single_token_ids(model.tokenizer, words))


def stopword_fraction(model, tokens: Tensor, skip: int = 1) -> float:
    """Fraction of ``tokens[skip:]`` that are stopwords (:func:`stopword_ids`)."""
    ids = stopword_ids(model).to(tokens.device)
    return float(torch.isin(tokens[skip:], ids).float().mean())


# ---------------------------------------------------------------------------
# 4. Normalisation factors with a fixed destination token
# ---------------------------------------------------------------------------


def dest_queries(model, dest_token: int, n_pos: int) -> Float[Tensor, "head pos d_head"]:
    """Layer-0 queries ``s_n (E[t] + P[n]) W_Q + b_Q`` of ``dest_token`` at positions ``n < n_pos``, from the weights."""
    w = layer0_weights(model)
    x = _E(model)[dest_token][None] + _P(model)[:n_pos]
    s = ln_scale(x, model.cfg.eps)[:, None]
    return torch.einsum("pd,hde->hpe", s * x, w["W_Q"]) + w["b_Q"][:, None]


def normalisation_factors(
    model, tokens: Int[Tensor, "pos"], dest_token: int, neutral: Sequence[int] = ()
) -> Float[Tensor, "head pos"]:
    """``Z_n = sum_{i<=n} pi_n(i) c_n(i)`` of every layer-0 head, with the query of ``dest_token``.

    The sources are the real tokens (with their LN scales); only the
    destination's token is replaced by ``dest_token`` (Gibson fixes ``' the'``).
    From the weights alone, with ``pos`` and ``tok`` the positional and content
    parts of the scores: ``Z_n = sum_{i<=n} exp(pos_ni + tok_ni) / sum_{i<=n} exp(pos_ni)``.
    ``neutral``: source positions whose content weight is set to 1 (their
    content score to 0), e.g. ``(0,)`` to see ``Z_n`` without the first token's
    content.
    """
    # SOLUTION: queries of the fixed token, keys of the real tokens split in two, ratio of logsumexps
    w = layer0_weights(model)
    n = tokens.shape[-1]
    q = dest_queries(model, dest_token, n)  # [head, pos, d_head]: the queries of positional_pattern
    E, P = model.W_E[tokens], model.W_pos[:n]
    s = ln_scale(E + P, model.cfg.eps)[:, None]
    k_pos = torch.einsum("pd,hde->hpe", s * P, w["W_K"]) + w["b_K"][:, None]
    k_tok = torch.einsum("pd,hde->hpe", s * E, w["W_K"])
    d = math.sqrt(q.shape[-1])
    allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    pos = (torch.einsum("hne,hie->hni", q, k_pos) / d).masked_fill(~allowed, float("-inf"))
    tok = torch.einsum("hne,hie->hni", q, k_tok) / d
    tok[:, :, list(neutral)] = 0.0
    return (torch.logsumexp(pos + tok, -1) - torch.logsumexp(pos, -1)).exp()
    # END SOLUTION


def content_weights(
    model, token_ids: Tensor | None = None, dest_token: int = 262, dest_pos: int = 500,
    scales: Tensor | None = None,
) -> Float[Tensor, "head tokens"]:
    """``c_h(t) = exp(q_h . s(t) E[t] W_K^h / sqrt(d_head))`` for each token (all by default).

    ``q_h`` is head ``h``'s query of ``dest_token`` (``' the'`` = 262) at
    position ``dest_pos``; ``s(t)`` the linearised LN scale
    (:func:`token_ln_scale`) unless ``scales`` gives one per token.
    """
    W_K = layer0_weights(model)["W_K"]
    q = dest_queries(model, dest_token, dest_pos + 1)[:, dest_pos]  # [head, d_head]
    qk = torch.einsum("hde,he->hd", W_K, q) / math.sqrt(W_K.shape[-1])  # [head, d_model]
    E = _E(model) if token_ids is None else _E(model)[token_ids]
    s = token_ln_scale(model, token_ids) if scales is None else scales
    return ((E @ qk.T) * s[:, None]).T.exp()


def independent_model_variance(
    pi: Float[Tensor, "head dest src"], c_values: Float[Tensor, "head samples"]
) -> Float[Tensor, "head dest"]:
    """Variance of ``Z_n`` if the ``c(t_j)`` were independent draws: ``sigma_h^2 * sum_j pi_n(j)^2``.

    ``sigma_h^2`` is the (unbiased) variance of head ``h``'s ``c_values``.
    """
    # SOLUTION: variance per head times the sum of squared weights per destination
    return c_values.var(-1)[:, None] * pi.pow(2).sum(-1)
    # END SOLUTION


# ---------------------------------------------------------------------------
# 5. Extended embeddings and token contributions
# ---------------------------------------------------------------------------


def extended_embeddings(
    model,
    heads: Sequence[int],
    Z: Float[Tensor, "head"],
    token_ids: Tensor | None = None,
    dest_token: int = 262,
    dest_pos: int = 500,
) -> Float[Tensor, "tokens d_model"]:
    """``e~(t) = sum_{h in heads} c_h(t) / Z_h * s(t) E[t] W_V^h W_O^h`` for each token.

    ``Z[j]`` is the typical normaliser of ``heads[j]``; ``c_h`` from
    :func:`content_weights`, ``s(t)`` from :func:`token_ln_scale`. All tokens by
    default; a loop over heads only, never over tokens.
    """
    # SOLUTION: per-token weight of each head, then the thin product E W_V, then W_O
    w = layer0_weights(model)
    c = content_weights(model, token_ids, dest_token, dest_pos)  # [head, tokens]
    s = token_ln_scale(model, token_ids)  # [tokens]
    E = model.W_E if token_ids is None else model.W_E[token_ids]
    out = torch.zeros_like(E)
    for j, h in enumerate(heads):
        weight = c[h] / Z[j] * s
        out += ((weight[:, None] * E) @ w["W_V"][h]) @ w["W_O"][h]
    return out
    # END SOLUTION


def token_contributions(
    ext: Float[Tensor, "tokens d_model"], w_in: Float[Tensor, "d_model"], ln2_scale: float
) -> Float[Tensor, "tokens"]:
    """One neuron's token-contribution vector ``ln2_scale * e~(t) . W_in[:, k]``."""
    return ln2_scale * (ext @ w_in)


def contribution_summary(
    ext: Float[Tensor, "tokens d_model"],
    W_in: Float[Tensor, "d_model d_mlp"],
    ln2_scale: float,
    k: int = 20,
    chunk_size: int = 8192,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Top and bottom ``k`` tokens of every neuron's contribution vector, in chunks of tokens.

    The contribution matrix ``C = ln2_scale * ext @ W_in`` [tokens, d_mlp] is
    never held whole: each chunk of ``chunk_size`` tokens is computed (as
    ``[d_mlp, chunk]``), merged into the running top/bottom ``k`` and the
    running sums, and dropped.

    Returns ``(top_values, top_tokens, bottom_values, bottom_tokens, mean, std)``:
    ``[d_mlp, k]`` (top in decreasing, bottom in increasing order; token ids
    index ``ext``'s rows) and ``[d_mlp]`` (mean and population std over tokens).
    """
    # SOLUTION: one chunk of C at a time, merged into running top/bottom k and running sums
    n_tokens, d_mlp = ext.shape[0], W_in.shape[1]
    dev, dt = ext.device, ext.dtype
    W_T = W_in.T.contiguous()
    top_v = torch.full((d_mlp, k), -float("inf"), device=dev, dtype=dt)
    bot_v = torch.full((d_mlp, k), float("inf"), device=dev, dtype=dt)
    top_i = torch.zeros((d_mlp, k), dtype=torch.long, device=dev)
    bot_i = torch.zeros((d_mlp, k), dtype=torch.long, device=dev)
    total = torch.zeros(d_mlp, dtype=torch.float64, device=dev)
    total_sq = torch.zeros(d_mlp, dtype=torch.float64, device=dev)
    for start in range(0, n_tokens, chunk_size):
        C = ln2_scale * (W_T @ ext[start : start + chunk_size].T)  # [d_mlp, chunk]
        ids = torch.arange(start, start + C.shape[1], device=dev).expand_as(C)
        total += C.sum(1).double()
        total_sq += C.square().sum(1).double()
        top_v, pos = torch.cat([top_v, C], 1).topk(k, dim=1)
        top_i = torch.cat([top_i, ids], 1).gather(1, pos)
        bot_v, pos = torch.cat([bot_v, C], 1).topk(k, dim=1, largest=False)
        bot_i = torch.cat([bot_i, ids], 1).gather(1, pos)
    mean = total / n_tokens
    std = (total_sq / n_tokens - mean.square()).clamp_min(0).sqrt()
    return top_v, top_i, bot_v, bot_i, mean.to(dt), std.to(dt)
    # END SOLUTION


def mean_contribution_per_text(
    ext: Float[Tensor, "tokens d_model"],
    W_in: Float[Tensor, "d_model d_mlp"],
    ln2_scale: float,
    texts_tokens: Sequence[Tensor],
    skip: int = 1,
) -> Float[Tensor, "texts d_mlp"]:
    """Average contribution of each text's tokens to every neuron (weights + token counts only).

    ``M[x] = ln2_scale * mean_{i >= skip} e~(t_i) @ W_in``: the bag of tokens of
    a whole text, without running the model. Only the tokens that occur are used.
    """
    rows = []
    for toks in texts_tokens:
        toks = toks[skip:].to(ext.device)
        uniq, counts = toks.unique(return_counts=True)
        weights = counts.to(ext.dtype) / counts.sum()
        rows.append(ln2_scale * ((weights @ ext[uniq]) @ W_in))
    return torch.stack(rows)


def tail_scores(summary: tuple, k: int = 20) -> tuple[Float[Tensor, "d_mlp"], Float[Tensor, "d_mlp"]]:
    """How far each neuron's top and bottom ``k`` token contributions stand out, in standard deviations.

    ``top = (mean of the top k - mean) / std``, ``bottom = (mean - mean of the bottom k) / std``
    from :func:`contribution_summary`'s output. For Gaussian contributions
    over 50,257 tokens both are about 4; a neuron that reads a few dozen tokens
    far more than the rest scores much higher.
    """
    top_v, _, bot_v, _, mean, std = summary
    return (top_v[:, :k].mean(1) - mean) / std, (mean - bot_v[:, :k].mean(1)) / std


def text_selectivity(M: Float[Tensor, "texts d_mlp"], std: Float[Tensor, "d_mlp"]) -> Float[Tensor, "texts d_mlp"]:
    """Mean contribution of each text minus the median over texts, in units of each neuron's
    per-token standard deviation (:func:`mean_contribution_per_text`, :func:`contribution_summary`)."""
    return (M - M.median(0).values) / std


def variation_across_texts(Z_by_text: dict, n_min: int = 300) -> Float[Tensor, "head"]:
    """Coefficient of variation across texts of each head's mean ``Z_n`` over ``n >= n_min``."""
    means = torch.stack([Z[:, n_min:].mean(-1) for Z in Z_by_text.values()])  # [text, head]
    return means.std(0) / means.mean(0)


# ---------------------------------------------------------------------------
# 6. Predicting a neuron's activation along a text
# ---------------------------------------------------------------------------


def per_head_token_contributions(
    model, heads: Sequence[int], neuron: int, ln2_scale: float,
    token_ids: Tensor | None = None, dest_token: int = 262, dest_pos: int = 500,
    scales: Tensor | None = None,
) -> Float[Tensor, "head tokens"]:
    """``T_h(t) = ln2_scale * c_h(t) s(t) E[t] W_V^h W_O^h W_in[:, neuron]`` (no ``1/Z_h`` yet).

    ``s(t)``: :func:`token_ln_scale` unless ``scales`` gives one per token.
    """
    heads = list(heads)
    lw = layer0_weights(model)
    w = lw["W_in"][:, neuron]
    ov_w = torch.einsum("hde,hef,f->hd", lw["W_V"][heads], lw["W_O"][heads], w)
    E = _E(model) if token_ids is None else _E(model)[token_ids]
    s = token_ln_scale(model, token_ids) if scales is None else scales
    c = content_weights(model, token_ids, dest_token, dest_pos, scales=s)[heads]
    return ln2_scale * c * s[None] * (E @ ov_w.T).T


def bag_of_tokens_prediction(
    T: Float[Tensor, "head vocab"], tokens: Int[Tensor, "pos"], pi: Float[Tensor, "head dest src"], Z: Float[Tensor, "head dest"]
) -> Float[Tensor, "dest"]:
    """The contextual heads' contribution to a neuron along a text::

        sum_h (1 / Z_h(n)) sum_{i <= n} pi_h,n(i) T_h(t_i)

    ``T`` holds each head's token contributions (:func:`per_head_token_contributions`),
    ``pi`` the heads' positional patterns (causal: zero above the diagonal) and
    ``Z`` their normalisers at each destination (both may be longer than the text).
    """
    # SOLUTION: gather the sequence's contributions, weight them with pi, divide by Z, sum the heads
    n = tokens.shape[-1]
    per_head = torch.einsum("hni,hi->hn", pi[:, :n, :n], T[:, tokens])
    return (per_head / Z[:, :n]).sum(0)
    # END SOLUTION


@dataclass
class Layer0Approximation:
    """The constants of the weights-only prediction (fitted on one control text)."""

    contextual_heads: list[int]
    dest_token: int
    pi: Tensor  # [head, n_ctx, n_ctx] positional patterns of all heads, destination dest_token
    Z_curve: Tensor  # [head, n_ctx] normalisers along the control text
    Z_median: Tensor  # [head] median over positions >= 100
    ln2_scale: float  # median LN-2 multiplier on the control text


def fit_layer0_approximation(
    model, control_tokens: Tensor, contextual_heads: Sequence[int], dest_token: int = 262, n_ctx: int | None = None
) -> Layer0Approximation:
    """Positional patterns (for ``n_ctx`` positions, default the model's context), the
    normalisers along the control text (past its end: their median over positions
    ``>= 100``) and the median LN-2 scale on the control text."""
    n_ctx = n_ctx or model.cfg.n_ctx
    pi = positional_pattern(model, dest_token, n_ctx)
    ctrl = control_tokens[:n_ctx]
    Z = normalisation_factors(model, ctrl, dest_token)
    median = Z[:, 100:].median(-1).values
    if Z.shape[-1] < n_ctx:
        Z = torch.cat([Z, median[:, None].expand(-1, n_ctx - Z.shape[-1])], dim=-1)
    cache = layer0_cache(model, ctrl, names=("blocks.0.ln2.hook_scale",))
    ln2 = float((1.0 / cache["blocks.0.ln2.hook_scale"][0, 100:, 0]).median())
    return Layer0Approximation(list(contextual_heads), dest_token, pi, Z, median, ln2)


def predict_preactivation(
    model, tokens: Int[Tensor, "pos"], neuron: int, approx: Layer0Approximation, bag_fn=None
) -> Float[Tensor, "pos"]:
    """Weights-only prediction of MLP-0 neuron ``neuron``'s pre-activation along ``tokens``.

    As in the write-up: contextual heads by the bag of tokens
    (:func:`bag_of_tokens_prediction`, normalisers from the control text); the
    other heads' token part as if they attended to the current token only;
    every head's positional part through its positional pattern; the direct
    ``E`` and ``P`` paths; LN-1 linearised per token, LN-2 by one constant.
    ``bag_fn`` replaces :func:`bag_of_tokens_prediction` (e.g. by a reader's own).
    """
    n = tokens.shape[-1]
    ctx = approx.contextual_heads
    others = [h for h in range(model.cfg.n_heads) if h not in ctx]
    lw = layer0_weights(model)
    w = lw["W_in"][:, neuron]
    W_V, W_O = lw["W_V"], lw["W_O"]
    ov_w = torch.einsum("hde,hef,f->hd", W_V, W_O, w)  # [head, d_model]
    E, P = _E(model)[tokens], _P(model)[:n]
    s_pos = ln_scale(E + P, model.cfg.eps)  # LN-1 scale of each position (from weights and tokens)
    direct = (E + P + lw["b_O"]) @ w
    pos_values = ((s_pos[:, None] * P) @ ov_w.T).T  # [head, src]
    positional = torch.einsum("hni,hi->n", approx.pi[:, :n, :n], pos_values)
    other_tok = (s_pos[:, None] * E) @ ov_w[others].sum(0)
    # Token contributions of the sequence's tokens at their own LN scales: [head, pos].
    T = per_head_token_contributions(model, ctx, neuron, 1.0, tokens, approx.dest_token, scales=s_pos)
    pi_ctx = approx.pi[ctx][:, :n, :n]
    Z_ctx = approx.Z_curve[ctx][:, :n]
    bag = (bag_fn or bag_of_tokens_prediction)(T, torch.arange(n, device=T.device), pi_ctx, Z_ctx)
    b_in = lw["b_in"][neuron]
    return approx.ln2_scale * (direct + positional + other_tok + bag) + b_in


def prediction_errors(pred: Tensor, actual: Tensor, n_min: int = 100) -> dict[str, float]:
    """RMSE, correlation and sign agreement (the decision boundary ``pre > 0``) over positions ``>= n_min``."""
    p, a = pred[n_min:].double(), actual[n_min:].double()
    return {
        "rmse": float((p - a).pow(2).mean().sqrt()),
        "corr": float(torch.corrcoef(torch.stack([p, a]))[0, 1]),
        "sign_agreement": float(((p > 0) == (a > 0)).double().mean()),
        "actual_std": float(a.std()),
    }


def contextual_output(model, tokens: Int[Tensor, "pos"], heads: Sequence[int]) -> Float[Tensor, "pos d_model"]:
    """The summed layer-0 output ``sum_h z_h W_O^h`` of ``heads``, from a forward pass."""
    heads = list(heads)
    cache = layer0_cache(model, tokens, names=("blocks.0.attn.hook_z",))
    z = cache["blocks.0.attn.hook_z"][0][:, heads]  # [pos, head, d_head]
    return torch.einsum("phe,hed->pd", z, layer0_weights(model)["W_O"][heads])


def bag_of_tokens_output(
    model, tokens: Int[Tensor, "pos"], heads: Sequence[int], approx: Layer0Approximation, ext: Tensor
) -> Float[Tensor, "pos d_model"]:
    """The write-up's approximation of the contextual heads' summed output along ``tokens``::

        sum_h sum_i pi_h,n(i) s_i P[i] W_V^h W_O^h  +  sum_i pi_n(i) e~(t_i)

    with ``pi`` one positional pattern shared by the heads (their mean) and
    ``e~`` the extended embeddings (median normalisers).
    """
    heads = list(heads)
    n = tokens.shape[-1]
    w = layer0_weights(model)
    P = _P(model)[:n]
    s = ln_scale(_E(model)[tokens] + P, model.cfg.eps)[:, None]
    pi = approx.pi[heads][:, :n, :n]
    pvo = torch.einsum("hni,hid->nd", pi, torch.einsum("pd,hde,hef->hpf", s * P, w["W_V"][heads], w["W_O"][heads]))
    return pvo + pi.mean(0) @ ext[tokens]


def cosine_per_position(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of the rows of two [pos, d] tensors."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def actual_preactivation(model, tokens: Int[Tensor, "pos"], neurons: Sequence[int] | int) -> Tensor:
    """Pre-activations (``blocks.0.mlp.hook_pre``) of MLP-0 neurons along ``tokens``: [pos] or [pos, k]."""
    cache = layer0_cache(model, tokens, names=("blocks.0.mlp.hook_pre",))
    return cache["blocks.0.mlp.hook_pre"][0][:, neurons]


# ---------------------------------------------------------------------------
# 7. Appendix: splitting a contribution vector with an SVD
# ---------------------------------------------------------------------------


def contribution_components(
    rows: Float[Tensor, "tokens d_model"], w: Float[Tensor, "d_model"], k: int
) -> Float[Tensor, "tokens k"]:
    """Split ``rows @ w`` into the parts carried by the top ``k`` singular directions of ``rows``.

    With ``rows = U S V^T``: ``part_j(t) = U[t, j] S[j] (V[:, j] . w)``, so
    ``sum_j part_j = rows @ w`` when ``k`` is the rank. Independent of SVD signs.
    """
    # SOLUTION: thin SVD, then scale U's columns by S and by each direction's projection on w
    U, S, Vh = torch.linalg.svd(rows, full_matrices=False)
    return U[:, :k] * S[:k] * (Vh[:k] @ w)
    # END SOLUTION


# ---------------------------------------------------------------------------
# Figures (chapter-specific)
# ---------------------------------------------------------------------------


def plot_positional_grid(pi_row: Tensor, real_row: Tensor, *, model, side: int = 20, title: str = "",
                         kinds: tuple[str, str] = ("pos.", "real"), show: bool = True):
    """Each head's positional pattern (``[head, side*side]``) as a ``side x side`` tile, next to a second
    pattern (``real_row``); ``kinds`` name the two in the tile titles. Source position ``side * row + column``."""
    from exercises_lib.plotting import imshow, title_margin

    n_heads = pi_row.shape[0]
    imgs = torch.stack([torch.stack([pi_row[h], real_row[h]]) for h in range(n_heads)])  # [head, 2, L]
    imgs = imgs.reshape(n_heads * 2, side, side)
    labels = [f"{h} {kind}" for h in range(n_heads) for kind in kinds]
    fig = imshow(
        imgs, model=model, facet_col=0, facet_col_wrap=8, facet_labels=labels, centred=False,
        color_continuous_scale="Blues", zmax=float(imgs.quantile(0.995)), title=title, height=520, width=1000,
        labels={"color": "attention"}, show=False, facet_row_spacing=0.05, facet_col_spacing=0.01,
    )
    # Rows and columns of a tile are not positions by themselves: no tick labels; the caption says how to read it.
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.add_annotation(text=f"each tile: attention to source position {side} x row + column (0 top left, "
                            f"{side * side - 1} bottom right)", xref="paper", yref="paper", x=0.5, y=0, yshift=-10,
                       showarrow=False, xanchor="center", yanchor="top", font=dict(size=12))
    fig.update_layout(margin=dict(t=title_margin(fig.layout.title.text) + 24, b=40))
    if show:
        fig.show()
        return None
    return fig


def plot_normalisers(
    Z_by_text: dict, *, model, heads: Sequence[int] | None = None, step: int = 1, title: str = "", show: bool = True
):
    """``Z_n`` against ``n``: one panel per head, one line per text (``Z[h, j]`` at ``n = j * step``)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from exercises_lib.plotting import figure_title, title_margin

    heads = list(heads) if heads is not None else list(range(next(iter(Z_by_text.values())).shape[0]))
    cols = 4
    rows = math.ceil(len(heads) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"head {h}" for h in heads],
                        horizontal_spacing=0.08, vertical_spacing=0.12)
    for j, (name, Z) in enumerate(Z_by_text.items()):
        colour = qualitative.Plotly[j % len(qualitative.Plotly)]
        for k, h in enumerate(heads):
            fig.add_trace(
                go.Scatter(x=list(range(0, step * Z.shape[-1], step)), y=Z[h].detach().cpu().float().numpy().round(4),
                           mode="lines", name=name, legendgroup=name,
                           showlegend=k == 0, line=dict(color=colour, width=1)),
                row=k // cols + 1, col=k % cols + 1,
            )
    text = figure_title(title, model)
    fig.update_layout(title=text, height=230 * rows + 80 + title_margin(text), margin=dict(t=title_margin(text), b=70))
    # one tick per power of ten (small panels have no room for 2 and 5 between them)
    fig.update_yaxes(type="log", dtick=1, tickfont=dict(size=10))
    fig.update_xaxes(tickfont=dict(size=10))
    # one x-axis title under the whole grid: one per panel would run together
    fig.add_annotation(text="destination position n", xref="paper", yref="paper", x=0.5, y=0, yshift=-45,
                       showarrow=False, xanchor="center", yanchor="top")
    if show:
        fig.show()
        return None
    return fig


def plot_token_contributions(values: Tensor, labels: Sequence[str], *, model, title: str = "", show: bool = True):
    """Bars of a neuron's largest and smallest token contributions."""
    from exercises_lib.plotting import bar

    vals = values.detach().cpu()
    shown = [repr(s)[1:-1] for s in labels]
    colours = ["positive" if v > 0 else "negative" for v in vals.tolist()]
    return bar(
        vals, x=shown, model=model, title=title, color=colours, show=show,
        labels={"x": "token", "y": "contribution", "color": ""},
        color_discrete_map={"positive": "#2166ac", "negative": "#b2182b"},
    )
