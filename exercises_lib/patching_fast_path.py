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
positions a patch can change, from the model's own parameters, and runs the
unpatched reference runs the same way, both together (:func:`forward_pair`;
a block multiplies all the rows it runs by each weight in one product);
:func:`incremental_agrees` checks both against the model's logits once per
model, and neither is used while a hook is attached to the model (it would
not run).

Taught in: chapter 4 (the duality circuit), where batched patching is introduced.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["forward_staggered", "fast_path_agrees", "forward_incremental", "forward_reference", "forward_pair",
           "incremental_agrees", "hooks_attached", "mlp_pre_at", "ln_final", "Gpt2Weights", "IncPatch",
           "INCREMENTAL_HOOKS", "REFERENCE_HOOKS", "unembed"]


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
        self.W_E = params["transformer.wte._original_component.weight"]  # [vocab, d_model]
        self.W_pos = params["transformer.wpe._original_component.weight"]  # [n_ctx, d_model]
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
        want += [f"transformer.{n}._original_component.{p}" for n, p in
                 (("ln_f", "weight"), ("ln_f", "bias"), ("wte", "weight"), ("wpe", "weight"))]
        return all(n in names for n in want) and hasattr(model, "unembed")


# ---------------------------------------------------------------------------
# The products
# ---------------------------------------------------------------------------
#
# On a CPU every weight product of this path goes through oneDNN's linear kernel, the one
# PyTorch's own compiler emits for ``nn.Linear`` on CPUs (``torch.ops.mkldnn._linear_pointwise``):
# at the shapes a sweep multiplies (tens to a few hundred rows by GPT-2's weights) it runs
# 1.2-1.9x faster than ``torch.addmm`` (MKL) on the course's 2-core AMD machines, on the same
# fp32 numbers up to summation order. The kernel is private to PyTorch, so it is used only
# where it exists and gives ``addmm``'s result on a test product (checked once per process);
# everywhere else, and on GPUs, the products are ``addmm``.

_CPU_LINEAR: list = []  # [kernel or None], filled on first use


def _cpu_linear():
    """oneDNN's fp32 linear kernel, or None where this PyTorch lacks it or it disagrees with addmm
    (with and without the GELU it applies for the MLP's first product)."""
    if not _CPU_LINEAR:
        kernel = None
        try:
            op = torch.ops.mkldnn._linear_pointwise
            g = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(*shape, generator=g) for shape in ((37, 96), (96, 80), (80,)))
            with torch.no_grad():
                want = torch.addmm(b, x, w)
                plain, gelu = op(x, w.T, b, "none", [], ""), op(x, w.T, b, "gelu", [], "tanh")
            if plain.shape == gelu.shape == want.shape and torch.allclose(plain, want, rtol=1e-5, atol=1e-5) \
                    and torch.allclose(gelu, _gelu_new(want), rtol=1e-5, atol=1e-5):
                kernel = op
        except Exception:  # a private op that fails in any way: not this kernel
            pass
        _CPU_LINEAR.append(kernel)
    return _CPU_LINEAR[0]


def _linear(x: Tensor, w: Tensor, b: Tensor | None, gelu: bool = False) -> Tensor:
    """``x @ w + b`` (``x``: ``[rows, in]``; ``w``: ``[in, out]``; ``b``: ``[out]`` or None), then
    GPT-2's GELU (:func:`_gelu_new`; in oneDNN's kernel, its tanh GELU, within 3e-7) with ``gelu``.

    oneDNN takes ``w`` as it is only when it, or its transpose, is contiguous (a view into a wider
    matrix would be copied at every call, hundreds of times slower); ``addmm`` takes the rest.
    """
    if x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and not torch.is_grad_enabled() \
            and (w.is_contiguous() or w.T.is_contiguous()) and (kernel := _cpu_linear()) is not None:
        return kernel(x, w.T, b, "gelu", [], "tanh") if gelu else kernel(x, w.T, b, "none", [], "")
    y = x @ w if b is None else torch.addmm(b, x, w)
    return _gelu_new(y) if gelu else y


def _ln(x: Tensor, wb, eps: float) -> Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), wb[0], wb[1], eps)


def _gelu_new(x: Tensor) -> Tensor:
    """GPT-2's ``gelu_new``, ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``: torch's fused
    tanh approximation of the GELU is that formula in one kernel (within 3e-7 of the five-step
    version the model runs, and about 4x faster)."""
    return torch.nn.functional.gelu(x, approximate="tanh")


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


def _from(patches: list[IncPatch], first: int) -> list[IncPatch]:
    """The patches' entries at positions ``first..`` (those of every position kept whole)."""
    kept = []
    for pt in patches:
        if pt.pos is None:
            kept.append(pt)
            continue
        m = pt.pos >= first
        if bool(m.all()):
            kept.append(pt)
        elif bool(m.any()):
            kept.append(IncPatch(pt.layer, pt.kind, pt.rows[m], pt.prompts[m], pt.pos[m],
                                 None if pt.head is None else pt.head[m], pt.src))
    return kept


@dataclass
class _Rows:
    """Rows one block runs together with others: positions ``p0..`` of ``x`` (``[rows, n, d_model]``).

    ``past``: the keys and values of positions ``0..p0-1`` (``[rows, p0, head, d_head]``), or
    None: none (``p0`` 0), or, with ``past_from`` set, those of earlier groups of the same block,
    taken once their keys are computed: ``(group index, rows)`` pairs in order of position, each
    group giving its positions up to ``p0``, ``rows`` saying which of its rows give each of these
    rows' (None: the same rows). ``sites``: the patches, by ``(layer, kind)``; ``capture``: where
    to record the block's activations under their hook names (``kinds``: only those whose hook
    name ends so, None: all of them). ``keep_from``: the block's output
    is wanted at local positions ``keep_from..`` only; keys and values are still computed at
    every position.
    """

    x: Tensor
    p0: int = 0
    past: tuple[Tensor, Tensor] | None = None
    sites: dict = field(default_factory=dict)
    capture: dict | None = None
    keep_from: int = 0
    past_from: list[tuple[int, Tensor | None]] | None = None
    kinds: frozenset[str] | None = None

    def wants(self, kind: str) -> bool:
        """Whether the block's activation ``kind`` (``attn.hook_z``...) is to be recorded."""
        return self.capture is not None and (self.kinds is None or kind in self.kinds)


def _block(w: dict, groups: list[_Rows], layer: int, n_heads: int, eps: float) -> list[Tensor]:
    """One GPT-2 block on several groups of rows (each patched in place); returns each group's output.

    Every weight multiplies all groups' tokens in one product (a taller matrix runs nearer the
    machine's matmul rate than several short ones); LayerNorms, attention and patches are the
    groups' own.
    """
    d = groups[0].x.shape[-1]
    dh = d // n_heads

    def product(name: str, parts: list[Tensor], gelu: bool = False) -> Tensor:  # [tokens of every part, out]
        flat = torch.cat([p.reshape(-1, p.shape[-1]) for p in parts]) if len(parts) > 1 else \
            parts[0].reshape(-1, parts[0].shape[-1])
        return _linear(flat, w[name][0], w[name][1], gelu)

    def split(flat: Tensor, like: list[Tensor], *tail: int) -> list[Tensor]:
        sizes = [t.shape[0] * t.shape[1] for t in like]
        return [p.view(t.shape[0], t.shape[1], *tail) for p, t in zip(flat.split(sizes), like)]

    def keep(g: _Rows, kind: str, value: Tensor) -> None:
        if g.wants(kind):
            g.capture[f"blocks.{layer}.{kind}"] = value

    def here(g: _Rows, kind: str) -> list[IncPatch]:
        found = g.sites.get((layer, kind), [])
        return _from(found, g.p0 + g.keep_from) if g.keep_from and found else found

    hs = []
    for g in groups:
        _apply(g.x, g.sites.get((layer, "hook_resid_pre"), []), g.p0)
        keep(g, "hook_resid_pre", g.x)
        hs.append(_ln(_added(g.x, g.sites.get((layer, "ln1_in"), []), g.p0), w["ln1"], eps))
    ks, vs = (split(product(c, hs), hs, n_heads, dh) for c in ("k", "v"))
    xs = [g.x[:, g.keep_from:] for g in groups]
    p0s = [g.p0 + g.keep_from for g in groups]
    qs = split(product("q", [h[:, g.keep_from:] for g, h in zip(groups, hs)]), xs, n_heads, dh)
    zs = []
    for i, g in enumerate(groups):
        k, v = ks[i], vs[i]
        keep(g, "attn.hook_k", k)
        keep(g, "attn.hook_v", v)
        past = g.past
        if g.past_from is not None:
            parts = [(slice(None) if rows is None else rows, slice(None, g.p0 - groups[j].p0))
                     for j, rows in g.past_from]
            kv = [[t[j][rows, upto] for (j, _), (rows, upto) in zip(g.past_from, parts)] for t in (ks, vs)]
            past = tuple(p[0] if len(p) == 1 else torch.cat(p, 1) for p in kv)
        if past is not None:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)  # [R, S, H, dh]
        S, n = k.shape[1], qs[i].shape[1]
        allowed = torch.arange(S, device=k.device)[None, :] <= torch.arange(S - n, S, device=k.device)[:, None]
        z = torch.nn.functional.scaled_dot_product_attention(
            qs[i].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
            scale=1.0 / math.sqrt(dh)).transpose(1, 2)  # [R, n, H, dh]
        zp = here(g, "attn.hook_z")
        if zp or g.wants("attn.hook_z"):
            z = _apply(z.contiguous(), zp, p0s[i])
        keep(g, "attn.hook_z", z)
        zs.append(z.reshape(z.shape[0], n, d))
    outs = split(product("o", zs), xs, d)
    hs = []
    for i, g in enumerate(groups):
        x, attn_out, p0 = xs[i], outs[i], p0s[i]
        _apply(attn_out, here(g, "hook_attn_out"), p0)
        for pt in here(g, "hook_resid_mid"):  # the residual stream itself: attn_out = mid - pre
            if pt.pos is None:
                attn_out[pt.rows] = pt.src[pt.prompts, p0:].to(x.dtype) - x[pt.rows]
            else:
                attn_out[pt.rows, pt.pos - p0] = pt.src[pt.prompts, pt.pos].to(x.dtype) - x[pt.rows, pt.pos - p0]
        keep(g, "hook_attn_out", attn_out)
        xs[i] = x = x + attn_out
        keep(g, "hook_resid_mid", x)
        hs.append(_ln(_added(x, here(g, "ln2_in"), p0), w["ln2"], eps))
    if any(g.wants("mlp.hook_pre") for g in groups):
        pre = product("fc", hs)
        for g, p in zip(groups, split(pre, xs, pre.shape[-1])):
            keep(g, "mlp.hook_pre", p)
        post = _gelu_new(pre)
    else:  # the GELU inside the product's kernel where it has one
        post = product("fc", hs, gelu=True)
    mlp_outs = split(_linear(post, w["proj"][0], w["proj"][1]), xs, d)
    for i, g in enumerate(groups):
        mlp_out, p0 = mlp_outs[i], p0s[i]
        _apply(mlp_out, here(g, "hook_mlp_out"), p0)
        keep(g, "hook_mlp_out", mlp_out)
        xs[i] = x = xs[i] + mlp_out
        _apply(x, here(g, "hook_resid_post"), p0)
        keep(g, "hook_resid_post", x)
    return xs


#: What :func:`forward_incremental` records of the unpatched run it carries along.
_COMPANION_KINDS = frozenset({"attn.hook_k", "attn.hook_v", "hook_resid_pre", "hook_resid_post"})


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
    companion: tuple[int, Tensor, dict, bool] | None = None,
) -> Tensor:
    """The final LayerNorm's output of rows that enter at different blocks, positions ``p0..`` only.

    Row ``r`` starts at block ``row_starts[r]`` (non-decreasing) from
    ``resid[start][rows_prompt[r], p0:]``; every block attends to the target
    run's cached ``keys[l]``/``values[l]`` (``[prompt, pos, head, d_head]``)
    at positions before ``p0``. Returns ``[rows, seq - p0, d_model]`` (the
    last position only: ``[rows, 1, d_model]``), ready for the unembedding.

    ``companion = (layer, x, capture, trim)``: the unpatched target run goes on alongside the
    rows from block ``layer`` (``x``: the residual stream entering it, ``[prompt, seq, d_model]``),
    each block multiplying its tokens and the rows' by each weight in one product. From that
    block on the rows attend to its keys and values and join from its residual stream, so
    ``keys``, ``values`` and ``resid`` are needed only before ``layer``; its keys, values and
    residual stream (:data:`_COMPANION_KINDS`) are recorded in ``capture`` (with ``trim`` and
    ``last_position_only``, the last block's past its keys and values at the last position only).
    """
    n_layers = weights.n_layers
    counts = torch.bincount(torch.as_tensor(row_starts), minlength=n_layers + 1).tolist()
    by_site: dict[tuple[int, str], list[IncPatch]] = {}
    for pt in patches:
        by_site.setdefault((pt.layer, pt.kind), []).append(pt)
    c_layer, c_x, c_capture, c_trim = companion if companion is not None else (n_layers + 1, None, None, False)
    comp, c_first = None, 0  # the companion's rows, and the first position they hold
    x, joined, first = None, 0, p0  # x holds positions first..
    for layer in range(min(row_starts[0], c_layer), n_layers + 1):
        if layer == c_layer:
            comp = _Rows(c_x, capture=c_capture, kinds=_COMPANION_KINDS)
        if counts[layer]:
            stream = comp.x[:, first - c_first:] if comp is not None else resid[layer][:, first:]
            new = stream[rows_prompt[joined : joined + counts[layer]]]
            x = new if x is None else torch.cat([x, new])
            joined += counts[layer]
        if layer == n_layers:
            break
        last = last_position_only and layer == n_layers - 1
        groups = []
        if comp is not None:
            comp.keep_from = comp.x.shape[1] - 1 if last and c_trim else 0
            groups.append(comp)
        if x is not None:
            prompts = rows_prompt[: x.shape[0]]
            rows = _Rows(x, p0, sites=by_site, keep_from=x.shape[1] - 1 if last else 0)
            if p0 and comp is not None:
                rows.past_from = [(0, prompts)]
            elif p0:
                rows.past = (keys[layer][prompts, :p0], values[layer][prompts, :p0])
            groups.append(rows)
        outs = _block(weights.blocks[layer], groups, layer, weights.n_heads, weights.eps)
        if comp is not None:
            comp.x, c_first = outs[0], c_first + comp.keep_from
        if x is not None:
            x, first = outs[-1], first + rows.keep_from
        elif last:  # rows joining after the last block need its last position only
            first = c_first + comp.x.shape[1] - 1 if comp is not None else first
    _apply(x, _from(by_site.get((n_layers, "hook_resid_pre"), []), first), first)  # the last block's output
    x = _added(x, by_site.get((n_layers, "lnf_in"), []), first)
    return _ln(x[:, -1:] if last_position_only else x, weights.lnf, weights.eps)


@torch.no_grad()
def forward_block_outputs(weights: Gpt2Weights, target: Tensor, source: Tensor, outputs: list[tuple[int, str]],
                          last_position_only: bool, skip_identical: bool = False
                          ) -> tuple[Tensor, Tensor | None, int, list[bool]]:
    """Patches of whole block outputs, the two reference runs alongside, all in one pass.

    ``outputs``: ``(layer, kind)`` pairs, ``kind`` ``"hook_mlp_out"`` or ``"hook_resid_post"``; each
    is the source run's (``source``, same shape as ``target``, differing somewhere) put into the
    target run at every position. The target run, the source run (from ``p0``, the first position
    where the prompts differ, attending to the target's keys and values before it) and, from the
    block after each output's, that output's rows (the residual stream entering it: the target's
    ``hook_resid_mid`` plus the source's MLP output, or the source's ``hook_resid_post``, at
    positions ``p0..``) go through each block together, one product per weight, so every weight
    is read once for the whole sweep. Positions every target prompt shares (a template's opening,
    before ``p0``) are computed once: causal attention makes them the same in every prompt.

    Returns the target's final LayerNorm output (``[batch, seq, d_model]``; the last position
    only with ``last_position_only``), that of each output's rows (``[n * batch, seq - p0 or 1,
    d_model]``, in the order of ``outputs``; None when there are none), ``p0``, and whether each
    output is the same in both runs (a patch of it changes nothing; with ``skip_identical`` such
    an output gets no rows).
    """
    n_layers, (batch, seq) = weights.n_layers, target.shape
    p0 = int((source != target).any(0).nonzero()[0])
    shared = min(_shared_prefix(target), p0) if batch > 1 else 0
    t_acts: dict[str, Tensor] = {}
    s_acts: dict[str, Tensor] = {}
    prompts = torch.arange(batch, device=target.device)
    first = torch.zeros_like(prompts)
    groups = [_Rows(weights.W_E[target[:1, :shared]] + weights.W_pos[:shared])] if shared else []
    t_past = [(0, first)] if shared else []  # where the target's own rows find the shared positions
    kinds = frozenset(kind for _, kind in outputs)  # what the source run gives, and the target run to compare
    groups.append(_Rows(weights.W_E[target[:, shared:]] + weights.W_pos[shared:seq], shared, capture=t_acts,
                        past_from=t_past or None, kinds=kinds | {"hook_resid_mid"}))
    ti = len(groups) - 1
    groups.append(_Rows(weights.W_E[source[:, p0:]] + weights.W_pos[p0:seq], p0, capture=s_acts,
                        past_from=t_past + [(ti, None)], kinds=kinds))
    t, s = groups[ti], groups[ti + 1]
    s_stop = max(layer for layer, _ in outputs) + 1
    joined: list[tuple[int, str]] = []  # the outputs whose rows are in ``rows``, in row order
    rows, same = None, {}
    for layer in range(n_layers):
        trim = last_position_only and layer == n_layers - 1
        if layer == s_stop:  # no output from here on: the source run stops
            groups = [g for g in groups if g is not s]
        if rows is not None:
            n = len(joined)
            groups.append(_Rows(rows, p0, past_from=[(0, first.repeat(n))] * bool(shared) + [(ti, prompts.repeat(n))]))
        for g in groups:
            g.keep_from = g.x.shape[1] - 1 if trim else 0
        for g, x in zip(groups, _block(weights.blocks[layer], groups, layer, weights.n_heads, weights.eps)):
            g.x = x
        if rows is not None:
            rows = groups.pop().x
        for out in [o for o in outputs if o[0] == layer and o not in joined]:
            name = f"blocks.{layer}.{out[1]}"
            n = s_acts[name].shape[1]  # the source's positions (p0.., or the last when trimmed)
            same[out] = bool(torch.equal(s_acts[name], t_acts[name][:, -n:]))
            if skip_identical and same[out]:
                continue
            stream = s.x if out[1] == "hook_resid_post" else \
                t_acts[f"blocks.{layer}.hook_resid_mid"][:, -n:] + s_acts[name]
            rows = stream if rows is None else torch.cat([rows, stream])
            joined.append(out)
        t_acts.clear()  # one block's activations at a time
        s_acts.clear()
    if last_position_only:
        final = t.x[:, -1:]
    else:
        final = torch.cat([groups[0].x.expand(batch, -1, -1), t.x], 1) if shared else t.x
    final = _ln(final, weights.lnf, weights.eps)
    if rows is None:
        return final, None, p0, [same[out] for out in outputs]
    at = {out: k for k, out in enumerate(joined)}
    x = rows[torch.cat([at[out] * batch + prompts for out in outputs if out in at])]
    return final, _ln(x[:, -1:] if last_position_only else x, weights.lnf, weights.eps), p0, \
        [same[out] for out in outputs]


def _shared_prefix(tokens: Tensor) -> int:
    """How many opening positions every row of ``tokens`` (``[batch, seq]``) shares."""
    differ = (tokens != tokens[:1]).any(0).nonzero()
    return int(differ[0]) if len(differ) else tokens.shape[1]


def ln_final(weights: Gpt2Weights, x: Tensor) -> Tensor:
    """The final LayerNorm of the residual stream ``x`` (``[..., d_model]``)."""
    return _ln(x, weights.lnf, weights.eps)


#: The hook names :func:`forward_reference` records: ``blocks.{l}.<kind>``.
REFERENCE_HOOKS = re.compile(
    r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_attn_out|hook_mlp_out|hook_resid_post|"
    r"attn\.hook_z|attn\.hook_k|attn\.hook_v|mlp\.hook_pre)$"
)


def forward_reference(weights: Gpt2Weights, tokens: Tensor, names, logits: str | None, last_position: bool = False
                      ) -> tuple[Tensor | None, dict[str, Tensor]]:
    """An unpatched run of ``tokens`` (``[batch, seq]``) from the model's own parameters.

    Returns the logits (``logits``: ``"all"`` positions, ``"last"`` position only, or None:
    the run then stops after the last block a name needs) and the activations of ``names``
    (each matching :data:`REFERENCE_HOOKS`), as the bridge's ``run_with_cache`` records them.

    The last block computed runs its queries, attention output and MLP at the last position
    only (its keys and values at every position) where nothing else is read: with
    ``logits="last"`` unless a name needs that block's other activations, and with
    ``last_position=True``, where the caller promises to read that block's activations past
    its keys and values at the last position only (they then hold that position alone).
    """
    out, acts, _ = _reference(weights, tokens, names, logits, last_position, None, ())
    return out, acts


def forward_pair(weights: Gpt2Weights, target: Tensor, names, logits: str | None, source: Tensor, source_names
                 ) -> tuple[Tensor | None, dict[str, Tensor], dict[str, Tensor]]:
    """Two unpatched runs together: :func:`forward_reference` of ``target`` (its logits and
    ``names``), and the activations of ``source_names`` in a run of ``source`` (same shape).
    ``logits="final"``: instead of the logits, the final LayerNorm's output at the last position
    (``[batch, 1, d_model]``), for the caller to unembed with other rows (:func:`unembed`).

    Positions before the first where the prompts differ are the same in both runs (causal
    attention), so the source run computes only the later ones, attending to the target run's
    keys and values of the earlier ones; each block multiplies both runs' tokens by its
    weights in one product.
    """
    return _reference(weights, target, names, logits, False, source, source_names)


@torch.no_grad()
def _reference(weights: Gpt2Weights, tokens: Tensor, names, logits: str | None, last_position: bool,
               source: Tensor | None, source_names) -> tuple[Tensor | None, dict[str, Tensor], dict[str, Tensor]]:
    wanted, from_source = set(names), set(source_names)

    def stop_of(found) -> int:
        layers = [int(REFERENCE_HOOKS.match(n).group(1)) for n in found]
        return max(layers) + 1 if layers else 0

    seq = tokens.shape[1]
    differ = (source != tokens).any(0).nonzero() if source is not None else []
    p0 = int(differ[0]) if len(differ) else seq  # the source run's first position of its own
    s_stop = stop_of(from_source) if p0 < seq else 0
    stop = max(weights.n_layers if logits is not None else stop_of(wanted), s_stop)
    record: dict[str, Tensor] = {}
    kinds = frozenset(REFERENCE_HOOKS.match(n).group(2) for n in wanted | from_source)
    groups = [_Rows(weights.W_E[tokens] + weights.W_pos[:seq], capture=record, kinds=kinds)]
    if s_stop:
        s_record: dict[str, Tensor] = {}
        groups.append(_Rows(weights.W_E[source[:, p0:]] + weights.W_pos[p0:seq], p0, capture=s_record,
                            past_from=[(0, None)], kinds=kinds))
    last = stop - 1
    trim = last_position or logits in ("last", "final") and all(
        not n.startswith(f"blocks.{last}.") or n.endswith(("hook_resid_pre", "attn.hook_k", "attn.hook_v"))
        for n in wanted)
    for layer in range(stop):
        groups = groups[:1] if layer == s_stop else groups
        groups[0].keep_from = groups[0].x.shape[1] - 1 if trim and layer == last else 0
        for g, x in zip(groups, _block(weights.blocks[layer], groups, layer, weights.n_heads, weights.eps)):
            g.x = x
    acts = {n: record[n] for n in wanted}
    if not s_stop:  # the same prompts: the same run
        src = {n: record[n] for n in from_source}
    else:
        src = {n: torch.cat([record[n][:, :p0], s_record[n]], 1) for n in from_source}
    if logits is None:
        return None, acts, src
    x = groups[0].x
    x = _ln(x if logits == "all" else x[:, -1:], weights.lnf, weights.eps)
    return (x if logits == "final" else unembed(weights, x)), acts, src


#: Columns of the unembedding computed at a time on the CPU: a block of logits small enough to
#: stay in the cache while it is written makes the product about 1.5x faster than whole rows,
#: and bounds the temporary a kernel without ``out=`` needs.
UNEMBED_COLUMNS = 2048


def unembed(weights: Gpt2Weights, x: Tensor, out: Tensor | None = None) -> Tensor:
    """Logits of the final LayerNorm's output ``x`` (``[..., d_model]``), written into ``out``
    (``[..., vocab]``, any strides) when given."""
    W_U, b_U = weights.W_U, weights.b_U
    if x.device.type != "cpu":
        logits = x @ W_U
        logits = logits if b_U is None else logits + b_U
        return logits if out is None else out.copy_(logits)
    flat = x.reshape(-1, x.shape[-1])
    if out is None:
        out = torch.empty(*x.shape[:-1], W_U.shape[1], dtype=torch.result_type(flat, W_U), device=x.device)
    # oneDNN's kernel (:func:`_linear`) returns each block, copied into ``out``; without it
    # ``torch.mm`` writes a block of a contiguous ``out`` in place, and any other ``out`` gets
    # it through one cache-sized block.
    by_mm = torch.is_grad_enabled() or flat.dtype != W_U.dtype or flat.dtype != torch.float32 \
        or not W_U.T.is_contiguous() or _cpu_linear() is None  # :func:`_linear` would not use oneDNN
    direct = by_mm and out.is_contiguous()
    into = out.view(-1, W_U.shape[1]) if direct else \
        torch.empty(flat.shape[0], UNEMBED_COLUMNS, dtype=out.dtype, device=x.device) if by_mm else None
    for a in range(0, W_U.shape[1], UNEMBED_COLUMNS):
        b = min(a + UNEMBED_COLUMNS, W_U.shape[1])
        bias = None if b_U is None else b_U[a:b]
        if not by_mm:
            block = _linear(flat, W_U[:, a:b], bias)
        else:
            block = into[:, a:b] if direct else into[:, : b - a]
            if bias is None:
                torch.mm(flat, W_U[:, a:b], out=block)
            else:
                torch.addmm(bias, flat, W_U[:, a:b], out=block)
        if not direct:
            out[..., a:b].copy_(block.view(*x.shape[:-1], b - a))
    return out


@torch.no_grad()
def mlp_pre_at(model, tokens: Tensor, layer: int, position: int) -> Tensor | None:
    """``blocks.{layer}.mlp.hook_pre`` at one position (``[batch, d_mlp]``) from the model's own
    parameters: the blocks before ``layer`` at positions ``0..position``, then block ``layer``'s keys
    and values there and the rest of it at ``position`` only (the later positions cannot reach it).
    None where this path does not serve the model (not a GPT-2 bridge, a hook attached, or its logits
    not reproduced: :func:`incremental_agrees`); the caller then runs the model itself."""
    if not Gpt2Weights.usable(model) or hooks_attached(model):
        return None
    weights = Gpt2Weights(model)
    if not incremental_agrees(model, weights, tokens[:1, : min(tokens.shape[1], 64)]):
        return None
    name = f"blocks.{layer}.mlp.hook_pre"
    _, acts = forward_reference(weights, tokens[:, : position + 1], [name], None, last_position=True)
    return acts[name][:, -1]


def hooks_attached(model) -> bool:
    """Whether any hook is attached to the model (the direct path would not run it)."""
    return any(getattr(hp, "fwd_hooks", None) for hp in getattr(model, "hook_dict", {}).values())


#: Per model object: whether the direct path reproduces its forward pass.
_INC_AGREES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def incremental_agrees(model, weights: Gpt2Weights, tokens: Tensor) -> bool:
    """Whether the direct path reproduces the model: a reference run of ``tokens`` from the
    model's own parameters (:func:`forward_reference`) gives the model's logits, and resuming
    it at the middle block and position from its keys and values (:func:`forward_incremental`)
    gives them again; checked once per model, on its first sweep's first prompt (the check is of
    the model's structure; the sweeps' own tests compare whole batches with the model)."""
    if model in _INC_AGREES:
        return _INC_AGREES[model]
    tokens = tokens[:1]
    n, seq = tokens.shape
    start, p0 = weights.n_layers // 2, seq // 2
    names = [f"blocks.{start}.hook_resid_pre"]
    names += [f"blocks.{l}.attn.hook_{kv}" for l in range(start, weights.n_layers) for kv in "kv"]
    rows = torch.arange(n, device=tokens.device)
    try:
        logits = model(tokens)
        tol = 1e-3 * max(1.0, float(logits.abs().max()))
        direct, acts = forward_reference(weights, tokens, names, "all")
        keys = {l: acts[f"blocks.{l}.attn.hook_k"] for l in range(start, weights.n_layers)}
        values = {l: acts[f"blocks.{l}.attn.hook_v"] for l in range(start, weights.n_layers)}
        x = forward_incremental(weights, [start] * n, p0, {start: acts[names[0]]}, keys, values, rows, [], False)
        resumed = unembed(weights, x)
        ok = bool((direct - logits).abs().max() <= tol) and bool((resumed - logits[:, p0:]).abs().max() <= tol)
    except Exception:  # any mismatch of structure: not this path
        ok = False
    _INC_AGREES[model] = ok
    return ok
