"""Layer 0 of a stand-in run in plain torch, on the unprocessed weights of a build.

Plants that read GPT-2's real layer 0 to decide what to write (the duplicate-token
neuron, the contextual neurons, the late plants' LayerNorm-scale estimates) need
layer 0's behaviour before the model exists. :func:`layer0_forward` computes it
from ``build.weights`` exactly as GPT-2 does (LayerNorm with its weight and bias,
causal attention, GELU MLP), for a batch of token ids. A test checks it against
the TransformerBridge.

Taught in: chapter 0 (setup: how the stand-in is built).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

__all__ = ["layer_norm", "layer0_forward", "ln_scale"]


def ln_scale(x: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm's multiplier ``1 / sqrt(var(x) + eps)`` of each vector (about ``sqrt(d)/|x - mean|``)."""
    return (x.var(-1, unbiased=False) + eps).rsqrt()


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float = 1e-5) -> Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x * ln_scale(x, eps)[..., None] * w + b


def layer0_forward(weights: Mapping[str, Tensor], tokens: Tensor, n_heads: int, mlp: bool = True) -> dict[str, Tensor]:
    """Run layer 0 on ``tokens`` [batch, pos] from unprocessed weights (no TransformerLens).

    Returns ``x`` (embeddings, [batch, pos, d]), ``s1`` (LN-1 multiplier [batch, pos]),
    ``q``, ``k``, ``v`` ([batch, head, pos, d_head]), ``pattern`` [batch, head, dest, src],
    ``head_out`` [batch, head, pos, d] (``z_h W_O^h``, no bias), ``attn_out``,
    ``resid_mid``, ``s2`` (LN-2 multiplier), ``ln2`` (LN-2 output) and, with ``mlp``,
    ``pre`` [batch, pos, d_mlp].
    """
    get = dict.__getitem__ if isinstance(weights, dict) else type(weights).__getitem__  # reading records nothing
    w = {k: get(weights, k) for k in list(weights.keys()) if k.startswith(("embed.", "pos_embed.", "blocks.0."))}
    n = tokens.shape[-1]
    x = w["embed.W_E"][tokens] + w["pos_embed.W_pos"][:n]
    xc = x - x.mean(-1, keepdim=True)
    s1 = ln_scale(xc)
    h = xc * s1[..., None] * w["blocks.0.ln1.w"] + w["blocks.0.ln1.b"]
    q = torch.einsum("bpd,hde->bhpe", h, w["blocks.0.attn.W_Q"]) + w["blocks.0.attn.b_Q"][None, :, None]
    k = torch.einsum("bpd,hde->bhpe", h, w["blocks.0.attn.W_K"]) + w["blocks.0.attn.b_K"][None, :, None]
    v = torch.einsum("bpd,hde->bhpe", h, w["blocks.0.attn.W_V"]) + w["blocks.0.attn.b_V"][None, :, None]
    scores = torch.einsum("bhne,bhie->bhni", q, k) / math.sqrt(q.shape[-1])
    causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    z = torch.einsum("bhni,bhie->bhne", pattern, v)
    head_out = torch.einsum("bhne,hed->bhnd", z, w["blocks.0.attn.W_O"])
    attn_out = head_out.sum(1) + w["blocks.0.attn.b_O"]
    mid = x + attn_out
    midc = mid - mid.mean(-1, keepdim=True)
    s2 = ln_scale(midc)
    ln2 = midc * s2[..., None] * w["blocks.0.ln2.w"] + w["blocks.0.ln2.b"]
    out = dict(x=x, s1=s1, q=q, k=k, v=v, pattern=pattern, head_out=head_out, attn_out=attn_out,
               resid_mid=mid, s2=s2, ln2=ln2)
    if mlp and "blocks.0.mlp.W_in" in w:
        out["pre"] = ln2 @ w["blocks.0.mlp.W_in"] + w["blocks.0.mlp.b_in"]
    return out


def _get(weights: Mapping[str, Tensor], key: str) -> Tensor:
    return dict.__getitem__(weights, key) if isinstance(weights, dict) else weights[key]


def layer0_queries(weights: Mapping[str, Tensor], token: int, positions: Tensor) -> Tensor:
    """Layer-0 queries [head, pos, d_head] of ``token`` placed at each of ``positions``."""
    x = _get(weights, "embed.W_E")[token][None] + _get(weights, "pos_embed.W_pos")[positions]
    xc = x - x.mean(-1, keepdim=True)
    h = xc * ln_scale(xc)[:, None] * _get(weights, "blocks.0.ln1.w") + _get(weights, "blocks.0.ln1.b")
    return torch.einsum("pd,hde->hpe", h, _get(weights, "blocks.0.attn.W_Q")) + _get(weights, "blocks.0.attn.b_Q")[:, None]


def content_vectors(weights: Mapping[str, Tensor], dest_token: int, dest_pos: int) -> Tensor:
    """Per head, the vector ``u_h`` [head, d_model] with ``log c_h(t) = s * E[t] . u_h``.

    ``c_h(t)`` is head ``h``'s content weight of a source token ``t`` seen from
    ``dest_token`` at ``dest_pos`` (chapter 2's ``c``), ``s`` the source's LN-1
    multiplier. ``u_h`` is centred (LayerNorm removes the mean of ``E[t]``).
    """
    q = layer0_queries(weights, dest_token, torch.tensor([dest_pos]))[:, 0]  # [head, d_head]
    W_K = _get(weights, "blocks.0.attn.W_K")
    u = torch.einsum("hde,he->hd", W_K, q) * _get(weights, "blocks.0.ln1.w") / math.sqrt(q.shape[-1])
    return u - u.mean(-1, keepdim=True)


def value_output(weights: Mapping[str, Tensor], vectors: Tensor) -> Tensor:
    """What each head writes for a unit of each residual vector [k, d] in its LayerNormed input:
    ``(v - mean v) * ln1.w @ W_V^h @ W_O^h`` -> [head, k, d] (the value bias left out)."""
    vc = vectors - vectors.mean(-1, keepdim=True)
    h = vc * _get(weights, "blocks.0.ln1.w")
    return torch.einsum("kd,hde,hef->hkf", h, _get(weights, "blocks.0.attn.W_V"), _get(weights, "blocks.0.attn.W_O"))


def text_like_tokens(common: Tensor, n_seq: int, length: int, generator: torch.Generator,
                     common_share: float = 0.45) -> Tensor:
    """Random token sequences with text's mix: each position a common token (from ``common``:
    stopwords and punctuation) with probability ``common_share``, else a random token.
    ``<|endoftext|>`` first. Plants use them to see what ordinary text does to a reader."""
    tokens = torch.randint(1000, 40000, (n_seq, length), generator=generator)
    pick = torch.rand(n_seq, length, generator=generator) < common_share
    tokens[pick] = common[torch.randint(0, len(common), (int(pick.sum()),), generator=generator)]
    tokens[:, 0] = 50256
    return tokens
