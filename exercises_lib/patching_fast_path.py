"""The fast path of batched patching: running a TransformerBridge block by block.

:func:`exercises_lib.patching.patch_sweep` lets each site's rows join the
batch at the block they patch, starting from the target run's cached residual
stream: the blocks before a patched layer are the unpatched run's, so they are
not computed again (:func:`forward_staggered`). This bypasses the bridge's own
``forward`` and relies on four things of TransformerLens 4's
``TransformerBridge`` (compatibility mode, GPT-2-style models):

* ``model.blocks[l](x)`` maps the residual stream entering block ``l``
  (``blocks.{l}.hook_resid_pre``, ``[batch, pos, d_model]``) to the stream
  leaving it, returned as a tensor or as a tuple whose first element it is;
  the block needs nothing else from the top-level forward pass (no position
  ids, no attention mask: the prompts are unpadded and causal masking happens
  inside the attention);
* ``model.ln_final(x)`` then ``model.unembed(x)`` turn the last block's output
  into the logits exactly as ``model(tokens)`` does;
* hooks added with ``model.hooks(fwd_hooks=...)`` fire inside blocks called
  directly, under the same hook names as in a full forward pass;
* ``blocks.{l}.hook_resid_pre`` and ``blocks.{L-1}.hook_resid_post`` of a
  cached run hold those residual streams.

:func:`fast_path_agrees` checks the whole contract on the first sweep of each
model (blocks one by one from the cache must give the model's own logits) and
``patch_sweep`` falls back to full forward passes, with a warning, if it does
not hold. ``tests/test_patching_fast_path.py`` fails when a TransformerLens
release breaks it, so the fallback is never silently taken.

The incremental path (:func:`forward_incremental`, below) goes further for
the hooks it knows on GPT-2-structured bridges: it recomputes only the
positions a patch can change, from the model's own parameters, and
:func:`incremental_agrees` checks it against the model's logits once per model.

Taught in: chapter 4 (the duality circuit), where batched patching is introduced.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["forward_staggered", "fast_path_agrees", "forward_incremental", "incremental_agrees", "Gpt2Weights",
           "IncPatch", "INCREMENTAL_HOOKS", "unembed"]


def forward_staggered(
    model,
    row_starts: list[int],
    resid: dict[int, Tensor],
    rows_prompt: Tensor,
    fwd_hooks: list,
    last_position_only: bool,
    unembed: bool = True,
) -> Tensor:
    """Logits of a pass whose rows enter the model at different blocks (``unembed=False``:
    the final LayerNorm's output, for the caller to unembed a few rows at a time).

    Row ``r`` starts at block ``row_starts[r]`` (non-decreasing in ``r``) from
    the cached residual stream ``resid[start][rows_prompt[r]]``. At block ``l``
    the batch holds the rows that started at or before ``l``; they are a prefix
    of all rows, so a hook's absolute row indices stay valid as rows join.
    ``row_starts`` may hold ``n_layers`` (rows patched after the last block).
    """
    n_layers = model.cfg.n_layers
    counts = torch.bincount(torch.as_tensor(row_starts), minlength=n_layers + 1).tolist()
    first = row_starts[0]
    with model.hooks(fwd_hooks=fwd_hooks):
        x = None
        joined = 0
        for layer in range(first, n_layers + 1):
            if counts[layer]:
                new = resid[layer][rows_prompt[joined : joined + counts[layer]]]
                x = new if x is None else torch.cat([x, new])
                joined += counts[layer]
            if layer == n_layers:
                break
            out = model.blocks[layer](x)
            x = out[0] if isinstance(out, tuple) else out
        x = model.ln_final(x)  # before slicing: hooks in ln_final see every position
        x = x[:, -1:] if last_position_only else x
        return model.unembed(x) if unembed else x


#: Per model object: whether its blocks run one by one reproduce its forward pass.
#: A property of the model's code, not of its weights or device, so it cannot go
#: stale; the entry goes with the model.
_AGREES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fast_path_agrees(model, target: Tensor, resid: dict[int, Tensor], logits: Tensor) -> bool:
    """Whether running blocks one by one from ``resid`` reproduces ``logits``, the model's
    logits on ``target``; checked once per model (on its first sweep's prompts)."""
    if model in _AGREES:
        return _AGREES[model]
    starts = [s for s in resid if s < model.cfg.n_layers]
    if not starts:
        return True
    rows = torch.arange(target.shape[0], device=target.device)
    again = forward_staggered(model, [min(starts)] * len(rows), resid, rows, [], False)
    tol = 1e-3 * max(1.0, float(logits.abs().max()))
    ok = bool((again - logits).abs().max() <= tol)
    _AGREES[model] = ok
    if not ok:
        warnings.warn("running the blocks one by one does not reproduce this model's logits: "
                      "patch_sweep falls back to full forward passes", stacklevel=3)
    return ok


# ---------------------------------------------------------------------------
# The incremental path: only the positions a patch can change
# ---------------------------------------------------------------------------
#
# A patch whose value first differs from the target run's at position p leaves
# every earlier position exactly as in the target run (attention is causal), so
# the rows of a site need only positions p.. recomputed, attending to the target
# run's cached keys and values of the earlier positions. The bridge's blocks
# cannot run on a suffix of the positions, so this path computes GPT-2's blocks
# from the model's own parameters (read at each sweep, never copied), with the
# patches applied at the activations they name. It serves the hooks in
# ``INCREMENTAL_HOOKS`` on models whose blocks have GPT-2's structure, and
# ``incremental_agrees`` checks once per model that it reproduces the model's
# logits; otherwise ``patch_sweep`` uses the block-by-block path above.

#: The hooks the incremental path can patch: ``blocks.{l}.<kind>``.
INCREMENTAL_HOOKS = re.compile(
    r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_attn_out|hook_mlp_out|hook_resid_post|attn\.hook_z)$"
)


@dataclass
class IncPatch:
    """Rows ``rows`` of activation ``kind`` at ``layer`` take ``src[prompts, pos(, head)]``
    (``pos`` absolute positions or None for every position; ``src`` canonical:
    ``[prompt, pos, ...]``)."""

    layer: int
    kind: str
    rows: Tensor
    prompts: Tensor
    pos: Tensor | None
    head: Tensor | None
    src: Tensor


class Gpt2Weights:
    """The model's own parameters (not copies), layer by layer, for a GPT-2 bridge.

    Read by name from ``model.named_parameters()``: the Hugging Face GPT-2 modules
    the bridge wraps (queries, keys and values as three ``nn.Linear``, the other
    projections as GPT-2's ``Conv1D``, i.e. ``x @ W``). :meth:`usable` says whether
    every one of them is there.
    """

    _BLOCK = {
        "ln1": ("ln_1._original_component.weight", "ln_1._original_component.bias"),
        "q": ("attn.q._original_component.weight", "attn.q._original_component.bias"),
        "k": ("attn.k._original_component.weight", "attn.k._original_component.bias"),
        "v": ("attn.v._original_component.weight", "attn.v._original_component.bias"),
        "o": ("attn.o._original_component.weight", "attn.o._original_component.bias"),
        "ln2": ("ln_2._original_component.weight", "ln_2._original_component.bias"),
        "fc": ("mlp._original_component.c_fc._original_component.weight",
               "mlp._original_component.c_fc._original_component.bias"),
        "proj": ("mlp._original_component.c_proj._original_component.weight",
                 "mlp._original_component.c_proj._original_component.bias"),
    }

    def __init__(self, model):
        params = dict(model.named_parameters())
        cfg = model.cfg
        self.n_layers, self.n_heads, self.d_head, self.eps = cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.eps
        self.blocks = []
        for layer in range(cfg.n_layers):
            prefix = f"transformer.h.{layer}._original_component."
            w = {k: tuple(params[prefix + n] for n in names) for k, names in self._BLOCK.items()}
            for k in ("q", "k", "v"):  # nn.Linear keeps [out, in]: use its transpose (a view)
                w[k] = (w[k][0].T, w[k][1])
            self.blocks.append(w)
        self.lnf = (params["transformer.ln_f._original_component.weight"],
                    params["transformer.ln_f._original_component.bias"])
        self.W_U = model.unembed.W_U  # [d_model, vocab]
        self.b_U = getattr(model.unembed, "b_U", None)

    @classmethod
    def usable(cls, model) -> bool:
        """Whether the model is a GPT-2 bridge (LayerNorm, gelu_new, MLPs) with every parameter this path reads."""
        cfg = model.cfg
        if cfg.normalization_type != "LN" or cfg.act_fn != "gelu_new" or getattr(cfg, "attn_only", False) \
                or cfg.positional_embedding_type != "standard":
            return False
        names = {n for n, _ in model.named_parameters()}
        want = [f"transformer.h.{l}._original_component.{n}" for l in range(cfg.n_layers)
                for pair in cls._BLOCK.values() for n in pair]
        want += ["transformer.ln_f._original_component.weight", "transformer.ln_f._original_component.bias"]
        return all(n in names for n in want) and hasattr(model, "unembed")


def _ln(x: Tensor, wb, eps: float) -> Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), wb[0], wb[1], eps)


def _gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _apply(act: Tensor, patches: list[IncPatch], p0: int) -> Tensor:
    """Write each patch's source values into ``act`` ([row, pos - p0, ...]), in place.

    Kinds (``IncPatch.kind``): the hook's last part (``hook_resid_pre``, ``attn.hook_z``...)
    replaces the activation; ``ln1_in``, ``ln2_in`` and ``lnf_in`` (layer ``n_layers``)
    add ``src`` to that LayerNorm's input only (:func:`_added`).
    """
    for pt in patches:
        src = pt.src
        if pt.pos is None and pt.head is None:
            act[pt.rows] = src[pt.prompts, p0:].to(act.dtype)
        elif pt.pos is None:
            act[pt.rows, :, pt.head] = src[pt.prompts, p0:, pt.head].to(act.dtype)
        elif pt.head is None:
            act[pt.rows, pt.pos - p0] = src[pt.prompts, pt.pos].to(act.dtype)
        else:
            act[pt.rows, pt.pos - p0, pt.head] = src[pt.prompts, pt.pos, pt.head].to(act.dtype)
    return act


def _added(x: Tensor, adds: list[IncPatch], p0: int) -> Tensor:
    """``x`` plus each patch's ``src[prompts, p0:]`` on its rows (a component's input only:
    path patching's receivers), as a new tensor; ``x`` itself when there is nothing to add."""
    if not adds:
        return x
    x = x.clone()
    for pt in adds:
        x[pt.rows] += pt.src[pt.prompts, p0:].to(x.dtype)
    return x


def forward_incremental(
    weights: Gpt2Weights,
    row_starts: list[int],
    p0: int,
    resid: dict[int, Tensor],
    keys: dict[int, Tensor],
    values: dict[int, Tensor],
    rows_prompt: Tensor,
    patches: list[IncPatch],
    last_position_only: bool,
) -> Tensor:
    """The final LayerNorm's output of rows that enter at different blocks, positions ``p0..`` only.

    Row ``r`` starts at block ``row_starts[r]`` (non-decreasing) from
    ``resid[start][rows_prompt[r], p0:]``; every block attends to the target
    run's cached ``keys[l]``/``values[l]`` (``[prompt, pos, head, d_head]``)
    at positions before ``p0``. Returns ``[rows, seq - p0, d_model]`` (the
    last position only: ``[rows, 1, d_model]``), ready for the unembedding.
    """
    n_layers, H, dh, eps = weights.n_layers, weights.n_heads, weights.d_head, weights.eps
    counts = torch.bincount(torch.as_tensor(row_starts), minlength=n_layers + 1).tolist()
    by_site: dict[tuple[int, str], list[IncPatch]] = {}
    for pt in patches:
        by_site.setdefault((pt.layer, pt.kind), []).append(pt)
    x, joined = None, 0
    for layer in range(row_starts[0], n_layers + 1):
        if counts[layer]:
            new = resid[layer][rows_prompt[joined : joined + counts[layer]], p0:]
            x = new if x is None else torch.cat([x, new])
            joined += counts[layer]
        if layer == n_layers:
            break
        w = weights.blocks[layer]
        R, n, d = x.shape
        _apply(x, by_site.get((layer, "hook_resid_pre"), []), p0)
        h = _ln(_added(x, by_site.get((layer, "ln1_in"), []), p0), w["ln1"], eps).reshape(R * n, d)
        q, k, v = (torch.addmm(w[c][1], h, w[c][0]).reshape(R, n, H, dh) for c in ("q", "k", "v"))
        prompts = rows_prompt[:R]
        k = torch.cat([keys[layer][prompts, :p0], k], 1)  # [R, S, H, dh]
        v = torch.cat([values[layer][prompts, :p0], v], 1)
        S = k.shape[1]
        allowed = torch.arange(S, device=x.device)[None, :] <= torch.arange(p0, S, device=x.device)[:, None]
        z = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
            scale=1.0 / math.sqrt(dh)).transpose(1, 2)  # [R, n, H, dh]
        zp = by_site.get((layer, "attn.hook_z"), [])
        if zp:
            z = _apply(z.contiguous(), zp, p0)
        attn_out = torch.addmm(w["o"][1], z.reshape(R * n, d), w["o"][0]).reshape(R, n, d)
        _apply(attn_out, by_site.get((layer, "hook_attn_out"), []), p0)
        for pt in by_site.get((layer, "hook_resid_mid"), []):  # the residual stream itself: attn_out = mid - pre
            if pt.pos is None:
                attn_out[pt.rows] = pt.src[pt.prompts, p0:].to(x.dtype) - x[pt.rows]
            else:
                attn_out[pt.rows, pt.pos - p0] = pt.src[pt.prompts, pt.pos].to(x.dtype) - x[pt.rows, pt.pos - p0]
        x = x + attn_out
        h = _ln(_added(x, by_site.get((layer, "ln2_in"), []), p0), w["ln2"], eps)
        pre = torch.addmm(w["fc"][1], h.reshape(R * n, d), w["fc"][0])
        mlp_out = torch.addmm(w["proj"][1], _gelu_new(pre), w["proj"][0]).reshape(R, n, d)
        _apply(mlp_out, by_site.get((layer, "hook_mlp_out"), []), p0)
        x = x + mlp_out
        _apply(x, by_site.get((layer, "hook_resid_post"), []), p0)
    x = _added(x, by_site.get((n_layers, "lnf_in"), []), p0)
    return _ln(x[:, -1:] if last_position_only else x, weights.lnf, eps)


def unembed(weights: Gpt2Weights, x: Tensor) -> Tensor:
    """Logits of the final LayerNorm's output ``x``."""
    logits = x @ weights.W_U
    return logits if weights.b_U is None else logits + weights.b_U


#: Per model object: whether the incremental path reproduces its forward pass.
_INC_AGREES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def incremental_agrees(model, weights: Gpt2Weights, target: Tensor, start: int, resid_start: Tensor,
                       keys: dict[int, Tensor], values: dict[int, Tensor], logits: Tensor) -> bool:
    """Whether the incremental path, started at block ``start`` (from ``resid_start``, the
    target run's stream there) at the middle position, reproduces ``logits`` (the model's own
    logits on ``target``) at the positions it recomputes; checked once per model."""
    if model in _INC_AGREES:
        return _INC_AGREES[model]
    seq = target.shape[1]
    p0 = seq // 2
    rows = torch.arange(target.shape[0], device=target.device)
    try:
        x = forward_incremental(weights, [start] * len(rows), p0, {start: resid_start}, keys, values, rows, [], False)
        again = unembed(weights, x)
        tol = 1e-3 * max(1.0, float(logits.abs().max()))
        ok = bool((again - logits[:, p0:]).abs().max() <= tol)
    except Exception:  # any mismatch of structure: not this path
        ok = False
    _INC_AGREES[model] = ok
    return ok
