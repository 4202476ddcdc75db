"""Activation patching and path patching, batched.

Activation patching runs the model on one input (the *target* run) while
replacing one activation (a *site*: a hook, a position, maybe a head) with its
value from another input (the *source* run), and measures a metric of the
output. Two directions (Heimersheim's answer in write-up 002 explains why both
matter):

``direction="denoise"`` (clean -> corrupt)
    Target: the corrupted input; source: the clean input. A site scores high
    when restoring it alone brings back the clean behaviour: it is
    *sufficient* (finds "OR"-like parts, misses "AND"-like ones).
``direction="noise"`` (corrupt -> clean)
    Target: the clean input; source: the corrupted input. A site scores low
    when corrupting it alone breaks the behaviour: it is *necessary* (finds
    "AND"-like parts, misses "OR"-like ones).

Both return raw metric values; :func:`normalise` maps them to
``0 = corrupted run, 1 = clean run`` for either direction. If one site carries
all the difference, ``denoise + noise = 1``; where a site's ``denoise + noise``
is below 1 it only works together with others (AND), above 1 it is redundant
with others (OR).

Batched sweeps
--------------
:func:`patch_sweep` runs every site of a sweep as one (or a few) batched
forward passes: the target input is repeated once per site, and each batch row
is patched at its own site. On top of that it

* starts each site's rows at the layer it patches (the earlier layers are the
  target run's, taken from its cache; a pass's batch grows as rows join),
* skips sites where the source and target activations are identical (e.g.
  positions before the first token that differs), whose value is the
  unpatched target metric,
* recomputes only the positions a patch can change: a patch whose value
  first differs from the target run's at position ``p`` leaves every earlier
  position as it was (attention is causal), so those rows run positions
  ``p..`` only, attending to the target run's cached keys and values (the
  hooks of ``patching_fast_path.INCREMENTAL_HOOKS`` on GPT-2-structured
  models); there the two reference runs are computed from the model's
  parameters too, together (one product per weight for both runs' tokens),
  the source run only from the first token where the prompts differ; a
  patched block output (``hook_mlp_out``, ``hook_resid_post``) becomes the
  residual stream entering the next block, so its rows skip the patched
  block, and a sweep of whole block outputs runs in one pass with both
  reference runs (each weight read once; positions every target prompt
  shares computed once); with ``last_position_only`` the last block runs
  its queries, output and MLP at the last position only, and the target's
  logits are unembedded with the first pass's sites, and
* unembeds several sites' rows at once, up to ``LOGITS_BUDGET`` bytes of
  logits, so a pass never holds every row's full-vocabulary logits.

:func:`path_patch_sweep` does the same for path patching over many receiver
sets; its reference runs stop at the sender's block, and the target run goes
on from there alongside the first pass's rows.

:func:`patch_loop` is the reference: one ordinary forward pass per site, with
the same signature and the same numbers (tested), and far slower. The fast
path (running the bridge block by block) lives in
:mod:`exercises_lib.patching_fast_path`, which says what it relies on.

Hook names and the bridge
-------------------------
Any hook name of the model can be patched (``blocks.{l}.hook_resid_pre``,
``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_mlp_out``,
``blocks.{l}.attn.hook_pattern``...). One of them needs care: in the
TransformerLens 4 bridge, ``blocks.{l}.hook_resid_mid`` is an alias of
``blocks.{l}.ln2.hook_in``, the input of the MLP's LayerNorm, so writing to it
changes what the MLP reads but *not* the residual stream that flows on. Here,
patching ``hook_resid_mid`` patches the residual stream itself, as it did in
``HookedTransformer``: the value ``x`` is written by setting the layer's
``hook_attn_out`` to ``x - resid_pre`` (the residual stream after the
attention layer is ``resid_pre + attn_out``).

The metric
----------
``metric(logits)`` takes the logits of the prompts, ``[n_prompts, seq, vocab]``
(``[n_prompts, 1, vocab]`` with ``last_position_only=True``), in the order of
``clean_tokens``, and returns a tensor: a scalar (e.g. the mean logit
difference) or one value per prompt. The sweep's result has the shape of the
sites followed by the metric's shape.

Taught in: chapter 4 (the duality circuit); used again in chapter 5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from exercises_lib.patching_fast_path import (
    INCREMENTAL_HOOKS,
    Gpt2Weights,
    IncPatch,
    REFERENCE_HOOKS,
    fast_path_agrees,
    forward_block_outputs,
    forward_incremental,
    forward_pair,
    forward_reference,
    forward_staggered,
    hooks_attached,
    incremental_agrees,
    ln_final,
    unembed,
)

__all__ = [
    "normalise",
    "patch_sweep",
    "patch_loop",
    "patch_together",
    "patch_hooks",
    "path_patch",
    "path_patch_sweep",
    "resid_hook_names",
    "head_output",
    "hook_layer",
]

Direction = Literal["denoise", "noise"]
Positions = Sequence[int] | Literal["all"] | None
Metric = Callable[[Tensor], Tensor]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_RESID_MID = re.compile(r"^blocks\.(\d+)\.hook_resid_mid$")


# ---------------------------------------------------------------------------
# Small public helpers
# ---------------------------------------------------------------------------


def normalise(
    metric_values: Tensor, clean_value: Tensor | float, corrupt_value: Tensor | float
) -> Tensor:
    """``(metric - corrupt) / (clean - corrupt)``: 0 = corrupted run, 1 = clean run.

    The same formula serves both directions: denoising starts from the
    corrupted run (unimportant sites stay near 0), noising from the clean run
    (unimportant sites stay near 1).
    """
    # SOLUTION: subtract the corrupted value, divide by the gap
    clean = torch.as_tensor(clean_value, dtype=metric_values.dtype, device=metric_values.device)
    corrupt = torch.as_tensor(corrupt_value, dtype=metric_values.dtype, device=metric_values.device)
    return (metric_values - corrupt) / (clean - corrupt)
    # END SOLUTION


def resid_hook_names(model, kind: str = "resid_pre") -> list[str]:
    """``[f"blocks.{l}.hook_{kind}" for every layer]``; ``kind`` is ``resid_pre``,
    ``resid_mid``, ``resid_post``, ``attn_out`` or ``mlp_out``."""
    return [f"blocks.{layer}.hook_{kind}" for layer in range(model.cfg.n_layers)]


def hook_layer(model, hook_name: str) -> int:
    """The block a hook belongs to: ``l`` for ``blocks.{l}.*``, ``-1`` for the
    embeddings (and anything unknown), ``n_layers`` for ``ln_final``/``unembed``."""
    m = _BLOCK.match(hook_name)
    if m:
        return int(m.group(1))
    if hook_name.startswith(("ln_final", "unembed")):
        return model.cfg.n_layers
    return -1


def head_output(model, cache, layer: int, head: int) -> Float[Tensor, "batch pos d_model"]:
    """What head ``layer.head`` adds to the residual stream: ``z[:, :, head] @ W_O[layer, head]``."""
    z = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
    return z @ model.W_O[layer, head]


# ---------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Site:
    hook: str  # the hook name asked for
    head: int | None  # None: every head (or a hook without heads)
    pos: int | None  # None: every position


def _axes(hook_name: str) -> tuple[int, int | None]:
    """(position axis, head axis) of a hook's activation."""
    if hook_name.endswith(("hook_pattern", "hook_attn_scores")):
        return 2, 1  # [batch, head, dest, src]: the position is the destination
    if hook_name.endswith(("hook_z", "hook_q", "hook_k", "hook_v", "hook_result")):
        return 1, 2  # [batch, pos, head, d_head]
    return 1, None  # [batch, pos, d_model] and the like


def _canonical(act: Tensor, hook_name: str) -> Tensor:
    """A view of ``act`` with the batch first, position second, head third."""
    pos_axis, head_axis = _axes(hook_name)
    if head_axis is None:
        return act.movedim(pos_axis, 1)
    return act.movedim((pos_axis, head_axis), (1, 2))


def _as_batch(tokens: Tensor) -> Tensor:
    return tokens[None] if tokens.ndim == 1 else tokens


def _sites(
    hook_names: Sequence[str], positions: Positions, heads: bool, seq_len: int, n_heads_of: Callable[[str], int]
) -> tuple[list[_Site], tuple[int, ...]]:
    """All sites of a sweep, in result order, and the shape of the result's site axes."""
    if isinstance(positions, str):
        if positions != "all":
            raise ValueError(f"positions must be a list of ints, None or 'all', not {positions!r}")
        pos_list: list[int | None] = [None]
        pos_dim = False
    elif positions is None:
        pos_list = [None] if heads else list(range(seq_len))
        pos_dim = not heads
    else:
        pos_list = [int(p) % seq_len for p in positions]
        pos_dim = True
    sites, shape = [], [len(hook_names)]
    if heads:
        counts = {n_heads_of(h) for h in hook_names}
        if len(counts) != 1:
            raise ValueError(f"the hooks have different numbers of heads: {counts}")
        n_heads = counts.pop()
        shape.append(n_heads)
        for h in hook_names:
            for head in range(n_heads):
                for pos in pos_list:
                    sites.append(_Site(h, head, pos))
    else:
        for h in hook_names:
            for pos in pos_list:
                sites.append(_Site(h, None, pos))
    if pos_dim:
        shape.append(len(pos_list))
    return sites, tuple(shape)


def _n_heads_of(acts: dict[str, Tensor]) -> Callable[[str], int]:
    """``hook name -> number of heads`` of the cached activations ``acts``."""

    def n_heads(hook_name: str) -> int:
        _, head_axis = _axes(hook_name)
        if head_axis is None:
            raise ValueError(f"heads=True needs hooks with a head axis; {hook_name!r} has none")
        return acts[hook_name].shape[head_axis]

    return n_heads


def _select(view: Tensor, rows: Tensor, pos: Tensor | None, head: Tensor | None) -> tuple:
    """Index tuple picking, for each row, its position and head (None = all)."""
    if pos is not None and head is not None:
        return (rows, pos, head)
    if pos is not None:
        return (rows, pos)
    if head is not None:
        return (rows, slice(None), head)
    return (rows,)


# ---------------------------------------------------------------------------
# Running a forward pass with per-row patches
# ---------------------------------------------------------------------------


@dataclass
class _Op:
    """Patch rows ``rows`` of hook ``hook`` with the source values of prompts ``prompts``."""

    hook: str
    rows: Tensor
    prompts: Tensor
    pos: Tensor | None
    head: Tensor | None


def _group_ops(entries: list[tuple[_Site, Tensor, Tensor]], device) -> list[_Op]:
    """Merge (site, rows, prompts) entries that share a hook and an index kind."""
    groups: dict[tuple, list] = {}
    for site, rows, prompts in entries:
        key = (site.hook, site.pos is None, site.head is None)
        groups.setdefault(key, []).append((site, rows, prompts))
    ops = []
    for (hook, all_pos, all_heads), items in groups.items():
        rows = torch.cat([r for _, r, _ in items])
        prompts = torch.cat([p for _, _, p in items])
        pos = None if all_pos else torch.cat([torch.full_like(r, s.pos) for s, r, _ in items])
        head = None if all_heads else torch.cat([torch.full_like(r, s.head) for s, r, _ in items])
        ops.append(_Op(hook, rows.to(device), prompts.to(device), None if pos is None else pos.to(device),
                       None if head is None else head.to(device)))
    return ops


def _fwd_hooks(ops: list[_Op], source: dict[str, Tensor]) -> list[tuple[str, Callable]]:
    """Hook functions applying ``ops``; ``hook_resid_mid`` is written through ``hook_attn_out``."""
    patch_hooks, capture_hooks = [], []
    for op in ops:
        src = _canonical(source[op.hook], op.hook)
        m = _RESID_MID.match(op.hook)
        if m is None:

            def patch(act, hook, op=op, src=src):
                act = act.clone()
                view = _canonical(act, op.hook)
                view[_select(view, op.rows, op.pos, op.head)] = src[_select(src, op.prompts, op.pos, op.head)].to(act.dtype)
                return act

            patch_hooks.append((op.hook, patch))
        else:
            layer = int(m.group(1))
            store: dict[str, Tensor] = {}

            def capture(act, hook, store=store):
                store["resid_pre"] = act
                return act

            def write(act, hook, op=op, src=src, store=store):
                act = act.clone()
                pre = store["resid_pre"]
                idx_rows = _select(act, op.rows, op.pos, None)
                want = src[_select(src, op.prompts, op.pos, None)]
                act[idx_rows] = (want - pre[idx_rows]).to(act.dtype)
                return act

            capture_hooks.append((f"blocks.{layer}.hook_resid_pre", capture))
            patch_hooks.append((f"blocks.{layer}.hook_attn_out", write))
    # Captures run after any patch of the same hook, so they see the patched value.
    return patch_hooks + capture_hooks


def _forward_full(model, tokens: Tensor, fwd_hooks: list, last_position_only: bool) -> Tensor:
    """Logits of an ordinary forward pass of ``tokens`` with ``fwd_hooks``."""
    with model.hooks(fwd_hooks=fwd_hooks):
        logits = model(tokens)
    return logits[:, -1:] if last_position_only else logits


def _metric_tensor(value) -> Tensor:
    value = torch.as_tensor(value)
    return value.detach().float()


# ---------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------


def _prepare(model, clean_tokens, corrupt_tokens, direction):
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' (clean -> corrupt) or 'noise' (corrupt -> clean), not {direction!r}")
    clean, corrupt = _as_batch(clean_tokens), _as_batch(corrupt_tokens)
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean and corrupted tokens must have the same shape: {tuple(clean.shape)} vs {tuple(corrupt.shape)}")
    device = model.cfg.device
    clean, corrupt = clean.to(device), corrupt.to(device)
    target, source = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    return target, source


def _needed_names(hook_names: Sequence[str]) -> list[str]:
    names = set(hook_names)
    for h in hook_names:
        m = _RESID_MID.match(h)
        if m:
            names.add(f"blocks.{m.group(1)}.hook_resid_pre")
    return sorted(names)


def _cache(
    model, tokens: Tensor, names: Sequence[str], *, logits_needed: bool = True
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Activations of ``names`` on ``tokens`` (and the logits, unless not needed:
    then the pass stops after the last block it needs)."""
    wanted = set(names)
    kwargs = {}
    if not logits_needed:
        layers = [hook_layer(model, n) for n in names]
        if all(0 <= l < model.cfg.n_layers for l in layers) and max(layers) + 1 < model.cfg.n_layers:
            kwargs["stop_at_layer"] = max(layers) + 1
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted, **kwargs)
    if kwargs:
        logits = None
    out = {}
    for n in names:  # aliases (hook_resid_pre -> hook_in) are looked up by the cache
        out[n] = cache[n]
    return logits, out


def _reference_runs(weights: Gpt2Weights, target: Tensor, source: Tensor, source_names, target_names,
                    last_position_only: bool
                    ) -> tuple[Tensor | None, Tensor | None, dict[str, Tensor], dict[str, Tensor]]:
    """The target run's logits, the source run's activations of ``source_names`` and the target
    run's of ``target_names``, from the model's parameters, both runs together
    (:func:`~exercises_lib.patching_fast_path.forward_pair`). With ``last_position_only`` the
    logits are None and the target's final LayerNorm output is returned instead (second value),
    for the caller to unembed with its first sites' rows (one read of the unembedding matrix)
    or not at all."""
    out, target_acts, source_acts = forward_pair(weights, target, target_names,
                                                 "final" if last_position_only else "all", source, source_names)
    if last_position_only:
        return None, out, source_acts, target_acts
    return out, None, source_acts, target_acts


@torch.no_grad()
def patch_sweep(
    model,
    clean_tokens: Int[Tensor, "batch seq"],
    corrupt_tokens: Int[Tensor, "batch seq"],
    hook_names: str | Sequence[str],
    metric: Metric,
    *,
    direction: Direction = "denoise",
    positions: Positions = None,
    heads: bool = False,
    batch_size: int | None = None,
    last_position_only: bool = False,
    skip_identical: bool = True,
    progress: bool = True,
) -> Tensor:
    """Patch every site of a sweep, batched; return the metric at each site.

    Args:
        model: a TransformerBridge (compatibility mode).
        clean_tokens, corrupt_tokens: ``[batch, seq]`` token ids of the prompts;
            clean and corrupted prompts must align position by position.
        hook_names: the hooks to sweep over (e.g. ``resid_hook_names(model)``,
            one per layer); one row of the result each.
        metric: ``logits [batch, seq, vocab] -> tensor`` (see the module docstring).
        direction: ``"denoise"`` (clean activations into the corrupted run) or
            ``"noise"`` (corrupted activations into the clean run).
        positions: ``None``: each position separately (``heads=False``), or all
            positions at once (``heads=True``); a list of positions: each of
            them separately; ``"all"``: all positions at once.
        heads: patch one head at a time (hooks with a head axis: ``attn.hook_z``,
            ``hook_q``/``k``/``v``, ``hook_pattern``...).
        batch_size: sequences per forward pass (default: about 4096 tokens per
            pass, 2048 without ``last_position_only``); whole sites only.
        last_position_only: compute the unembedding at the last position only
            (the metric then gets ``[batch, 1, vocab]``): a third less compute.
        skip_identical: give sites whose source and target activations are equal
            the unpatched value without running them.
        progress: show a progress bar when there is more than one pass.

    Returns:
        ``[len(hook_names), n_positions]`` (``heads=False``),
        ``[len(hook_names), n_heads]`` (``heads=True``, all positions together) or
        ``[len(hook_names), n_heads, n_positions]`` (``heads=True`` with a list of
        positions), followed by the metric's own shape. Raw metric values: see
        :func:`normalise`.
    """
    hook_names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    target, source_tokens = _prepare(model, clean_tokens, corrupt_tokens, direction)
    n_prompts, seq = target.shape
    names = _needed_names(hook_names)
    incremental = (any(hook_layer(model, h) >= 0 for h in hook_names)
                   and all(INCREMENTAL_HOOKS.match(h) for h in hook_names)
                   and Gpt2Weights.usable(model) and not hooks_attached(model))
    if incremental:
        weights = Gpt2Weights(model)
        incremental = incremental_agrees(model, weights, target)
    if incremental and _outputs_in_one_pass(target, source_tokens, hook_names, positions, heads, batch_size,
                                            last_position_only):
        return _block_output_sweep(weights, target, source_tokens, hook_names, metric, last_position_only,
                                   skip_identical)

    def start_of(hook: str) -> int:
        """The block a site's rows enter: the next one for a block's output (the incremental pass
        patches the residual stream entering it), the hook's own otherwise."""
        return hook_layer(model, hook) + bool(incremental and _AFTER_BLOCK.match(hook))

    starts = sorted({start_of(h) for h in hook_names if hook_layer(model, h) >= 0})
    resid_names = [f"blocks.{s}.hook_resid_pre" for s in starts if s < model.cfg.n_layers]
    final_name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    if any(s == model.cfg.n_layers for s in starts):
        resid_names.append(final_name)
    if incremental:  # an MLP's output joins the residual stream after its attention
        resid_names += [f"blocks.{hook_layer(model, h)}.hook_resid_mid" for h in hook_names
                        if h.endswith("hook_mlp_out")]
    kv_names = []
    if incremental:
        for layer in range(starts[0], model.cfg.n_layers):
            kv_names += [f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_v"]
    wanted = sorted(set(names) | set(resid_names) | set(kv_names))
    target_final = None  # the target's final LayerNorm output, unembedded with the first pass's sites
    if incremental:  # both reference runs from the model's parameters too
        target_logits, target_final, source_acts, target_acts = _reference_runs(
            weights, target, source_tokens, names, wanted, last_position_only)
    else:
        target_logits, target_acts = _cache(model, target, wanted)
        _, source_acts = _cache(model, source_tokens, names, logits_needed=False)
    resid = {s: target_acts[f"blocks.{s}.hook_resid_pre"] for s in starts if s < model.cfg.n_layers}
    if model.cfg.n_layers in starts:
        resid[model.cfg.n_layers] = target_acts[final_name]

    unpatched = None if target_final is not None else _unpatched(metric, target_logits, last_position_only)
    sites, site_shape = _sites(hook_names, positions, heads, seq, _n_heads_of(source_acts))
    results: list[Tensor | None] = [None] * len(sites)
    todo, same = [], []
    for i, site in enumerate(sites):
        (same if skip_identical and _identical(site, source_acts, target_acts) else todo).append(i)
    if incremental:
        keys = {l: target_acts[f"blocks.{l}.attn.hook_k"] for l in range(starts[0], model.cfg.n_layers)}
        values = {l: target_acts[f"blocks.{l}.attn.hook_v"] for l in range(starts[0], model.cfg.n_layers)}
    if incremental:
        first = {i: _first_change(sites[i], source_acts, target_acts) for i in todo}
        # Passes of one starting position each, earliest layer first within a pass.
        todo.sort(key=lambda i: (first[i], start_of(sites[i].hook)))
        groups = [[i for i in todo if first[i] == p] for p in sorted(set(first.values()))]
    else:
        todo.sort(key=lambda i: hook_layer(model, sites[i].hook))
        groups = [todo] if todo else []
        fast = bool(resid) and fast_path_agrees(model, target, resid, target_logits)
    budget = _pass_tokens(last_position_only)
    chunks = []
    for group in groups:
        width = seq - first[group[0]] if incremental else seq
        per_pass = max(1, (batch_size or max(n_prompts, budget // width)) // n_prompts)
        chunks += [group[k : k + per_pass] for k in range(0, len(group), per_pass)]
    entering: dict[str, Tensor] = {}  # residual streams patched block outputs give the next block
    buffer: dict[str, Tensor] = {}  # one block of logits, reused (every position only)
    bar = _progress(chunks, progress and len(chunks) > 1, "patching")
    prompt_ids = torch.arange(n_prompts)
    unembed_hooked = any(h.startswith("unembed") for h in hook_names)
    for chunk in bar:
        entries = []
        for j, i in enumerate(chunk):
            rows = j * n_prompts + prompt_ids
            entries.append((sites[i], rows, prompt_ids))
        ops = _group_ops(entries, target.device)
        rows_prompt = prompt_ids.repeat(len(chunk)).to(target.device)
        row_starts = [start_of(sites[i].hook) for i in chunk for _ in range(n_prompts)]
        ids = list(chunk)
        if incremental:
            p0 = first[chunk[0]]
            patches = [_inc_patch(op, source_acts, target_acts, entering) for op in ops]
            x = forward_incremental(weights, row_starts, p0, resid, keys, values, rows_prompt, patches,
                                    last_position_only)
            x, ids = _with_target(x, ids, target_final, unpatched is None)

            def logits_of(a, b, x=x, p0=p0):
                return _rows_logits(weights, x, a, b, n_prompts, target_logits, p0, last_position_only, buffer)
        elif fast and row_starts[0] >= 0 and not unembed_hooked:
            # Each site's rows enter at its own layer (``todo`` is sorted by it).
            x = forward_staggered(model, row_starts, resid, rows_prompt, _fwd_hooks(ops, source_acts),
                                  last_position_only, unembed=False)

            def logits_of(a, b, x=x):
                return model.unembed(x[a * n_prompts : b * n_prompts])
        else:
            full = _forward_full(model, target[rows_prompt], _fwd_hooks(ops, source_acts), last_position_only)

            def logits_of(a, b, full=full):
                return full[a * n_prompts : b * n_prompts]
        found = _metric_values(metric, logits_of, ids, results, n_prompts * (1 if last_position_only else seq),
                               model.cfg.d_vocab_out)
        unpatched = found if found is not None else unpatched
    if unpatched is None:  # no pass ran
        unpatched = _metric_tensor(metric(unembed(weights, target_final)))
    for i in same:
        results[i] = unpatched
    out = torch.stack([r.to(unpatched.device) for r in results])
    return out.reshape(*site_shape, *unpatched.shape)


def _outputs_in_one_pass(target: Tensor, source: Tensor, hook_names: list[str], positions: Positions, heads: bool,
                         batch_size: int | None, last_position_only: bool) -> bool:
    """Whether the sweep patches whole block outputs (every position at once) and its rows fit in
    one pass alongside both reference runs (:func:`_block_output_sweep`)."""
    if heads or positions != "all" or not all(_AFTER_BLOCK.match(h) for h in hook_names):
        return False
    differ = (source != target).any(0).nonzero()
    if not len(differ):
        return False
    n_prompts, seq = target.shape
    if batch_size is not None and batch_size < n_prompts * len(hook_names):
        return False
    tokens = n_prompts * (seq + (seq - int(differ[0])) * (1 + len(set(hook_names))))
    return tokens <= _pass_tokens(last_position_only)


def _pass_tokens(last_position_only: bool) -> int:
    """Tokens one batched pass of :func:`patch_sweep` runs by default (every position's logits
    take more memory per token)."""
    return 4096 if last_position_only else 2048


def _block_output_sweep(weights: Gpt2Weights, target: Tensor, source: Tensor, hook_names: list[str], metric: Metric,
                        last_position_only: bool, skip_identical: bool) -> Tensor:
    """:func:`patch_sweep` of whole block outputs (``hook_mlp_out``, ``hook_resid_post``) in one pass
    with both reference runs (:func:`~exercises_lib.patching_fast_path.forward_block_outputs`):
    every weight, the unembedding's included, read once."""
    outputs = [(int(m.group(1)), m.group(2)) for m in map(_AFTER_BLOCK.match, hook_names)]
    final, x, p0, same = forward_block_outputs(weights, target, source, outputs, last_position_only, skip_identical)
    n_prompts, seq = target.shape
    ids: list[int | None] = [i for i in range(len(outputs)) if not (skip_identical and same[i])]
    target_logits, unpatched = None, None
    if last_position_only:  # the target's last position unembedded with the sites'
        x, ids = (final if x is None else torch.cat([final, x])), [None] + ids
    else:
        target_logits = unembed(weights, final)
        unpatched = _unpatched(metric, target_logits, False)
    buffer: dict[str, Tensor] = {}
    results: list[Tensor | None] = [None] * len(outputs)
    found = _metric_values(
        metric, lambda a, b: _rows_logits(weights, x, a, b, n_prompts, target_logits, p0, last_position_only, buffer),
        ids, results, n_prompts * (1 if last_position_only else seq), weights.W_U.shape[1])
    unpatched = found if found is not None else unpatched
    results = [unpatched if r is None else r for r in results]  # outputs the same in both runs
    return torch.stack([r.to(unpatched.device) for r in results]).reshape(len(hook_names), *unpatched.shape)


#: Bytes of logits one unembedding may hold: sites are unembedded together up to this
#: size (one read of the unembedding matrix serves them all) and never all at once.
LOGITS_BUDGET = 64 * 2**20


def _site_logits(logits_of: Callable[[int, int], Tensor], n_sites: int, rows_per_site: int, vocab: int):
    """``(j, logits of site j)`` for each of ``n_sites`` sites, unembedding as many sites at
    once as fit in :data:`LOGITS_BUDGET`; ``logits_of(a, b)`` gives sites ``a..b-1``'s logits
    stacked along the batch axis (``rows_per_site`` positions each)."""
    per = max(1, LOGITS_BUDGET // (4 * rows_per_site * vocab))
    for a in range(0, n_sites, per):
        b = min(n_sites, a + per)
        block = logits_of(a, b)
        step = block.shape[0] // (b - a)
        for j in range(a, b):
            yield j, block[(j - a) * step : (j - a + 1) * step]


def _unpatched(metric: Metric, target_logits: Tensor, last_position_only: bool) -> Tensor:
    """The metric of the target run; on a copy of its logits, which give every site its positions
    before the patch and must survive a metric that edits what it is handed."""
    return _metric_tensor(metric((target_logits[:, -1:] if last_position_only else target_logits).clone()))


def _with_target(x: Tensor, ids: list, target_final: Tensor | None, first: bool) -> tuple[Tensor, list]:
    """An incremental pass's final rows and their sites' ids; the first pass also carries the target
    run's last-position rows in front (id None), so one read of the unembedding serves both."""
    if target_final is None or not first:
        return x, ids
    return torch.cat([target_final.to(x.dtype), x]), [None] + ids


def _rows_logits(weights: Gpt2Weights, x: Tensor, a: int, b: int, n_prompts: int, target_logits: Tensor, p0: int,
                 last_position_only: bool, buffer: dict) -> Tensor:
    """Logits of sites ``a..b-1`` of an incremental pass (``x``: its final LayerNorm's output,
    ``n_prompts`` rows per site); with every position, the positions before ``p0`` are the
    target run's. Those are written into ``buffer["logits"]``, one block of logits kept for the
    whole sweep (grown when too small) and rewritten whole for each block, prefix included, so a
    metric that edits its logits cannot reach the next block's; a metric's value that is a view
    of it must be copied before the next block (:func:`_metric_value`)."""
    part = x[a * n_prompts : b * n_prompts]
    if last_position_only:
        return unembed(weights, part)
    rows, seq, vocab = part.shape[0], p0 + part.shape[1], weights.W_U.shape[1]
    held = buffer.get("logits")
    if held is None or held.shape[0] < rows or held.shape[1:] != (seq, vocab):
        dtype = torch.result_type(part, weights.W_U)
        held = buffer["logits"] = torch.empty(rows, seq, vocab, dtype=dtype, device=part.device)
    out = held[:rows]
    out[:, :p0].unflatten(0, (b - a, n_prompts)).copy_(target_logits[:, :p0])
    unembed(weights, part, out=out[:, p0:])
    return out


def _metric_values(metric: Metric, logits_of: Callable[[int, int], Tensor], ids: list, results: list,
                   rows_per_site: int, vocab: int) -> Tensor | None:
    """The metric of each site of a pass into ``results[ids[j]]`` (logits from ``logits_of``, a few
    sites at a time: :func:`_site_logits`); returns the value of the site whose id is None (the
    unpatched target run, when the pass carries it), else None."""
    unpatched = None
    for j, logits in _site_logits(logits_of, len(ids), rows_per_site, vocab):
        value = _metric_value(metric, logits)
        if ids[j] is None:
            unpatched = value
        else:
            results[ids[j]] = value
    return unpatched


def _metric_value(metric: Metric, logits: Tensor) -> Tensor:
    """The metric's value on ``logits``, as a tensor of its own (copied where it is a view of them:
    the logits' memory is reused for the next block)."""
    value = _metric_tensor(metric(logits))
    if value.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr():
        value = value.clone()
    return value


def _first_change(site: _Site, source: dict[str, Tensor], target: dict[str, Tensor]) -> int:
    """The first position where the site's source and target values differ for any prompt
    (the last position when they are equal everywhere: the patch then changes nothing)."""
    if site.pos is not None:
        return site.pos
    src, tgt = _canonical(source[site.hook], site.hook), _canonical(target[site.hook], site.hook)
    if site.head is not None:
        src, tgt = src[:, :, site.head], tgt[:, :, site.head]
    differ = (src != tgt).transpose(0, 1).reshape(src.shape[1], -1).any(-1).nonzero()
    return int(differ[0]) if len(differ) else src.shape[1] - 1


#: Block outputs: a patch of one is a patch of the residual stream entering the next block.
_AFTER_BLOCK = re.compile(r"^blocks\.(\d+)\.(hook_mlp_out|hook_resid_post)$")


def _inc_patch(op: _Op, source: dict[str, Tensor], target: dict[str, Tensor], entering: dict[str, Tensor]
               ) -> IncPatch:
    """The incremental pass's patch for ``op``. A block's output (``hook_resid_post``, or
    ``hook_mlp_out``: the target's ``hook_resid_mid`` plus the source's MLP output, as the block
    adds them) becomes the residual stream entering the next block, so the rows skip the block
    itself; ``entering`` keeps each such stream, computed once per sweep."""
    m = INCREMENTAL_HOOKS.match(op.hook)
    layer, kind = int(m.group(1)), m.group(2)
    if _AFTER_BLOCK.match(op.hook):
        if op.hook not in entering:
            src = source[op.hook]
            entering[op.hook] = target[f"blocks.{layer}.hook_resid_mid"] + src if kind == "hook_mlp_out" else src
        return IncPatch(layer + 1, "hook_resid_pre", op.rows, op.prompts, op.pos, op.head, entering[op.hook])
    return IncPatch(layer, kind, op.rows, op.prompts, op.pos, op.head, _canonical(source[op.hook], op.hook))


def _identical(site: _Site, source: dict[str, Tensor], target: dict[str, Tensor]) -> bool:
    src, tgt = _canonical(source[site.hook], site.hook), _canonical(target[site.hook], site.hook)
    idx: tuple = (slice(None),)
    if site.pos is not None:
        idx = idx + (site.pos,)
    elif site.head is not None:
        idx = idx + (slice(None),)
    if site.head is not None:
        idx = idx + (site.head,)
    return bool(torch.equal(src[idx], tgt[idx]))


def _progress(items, show: bool, desc: str):
    from exercises_lib.progress import progress

    return progress(items, desc, show=show)


@torch.no_grad()
def patch_loop(model, clean_tokens, corrupt_tokens, hook_names, metric, *, direction: Direction = "denoise",
               positions: Positions = None, heads: bool = False, last_position_only: bool = False,
               progress: bool = True, **_batching) -> Tensor:
    """Reference implementation of :func:`patch_sweep`: one forward pass per site.

    Same arguments and result; the batching options of :func:`patch_sweep`
    (``batch_size``, ``skip_identical``) are accepted and ignored: every site
    gets its own ordinary forward pass over all the prompts.
    """
    hook_names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    target, source_tokens = _prepare(model, clean_tokens, corrupt_tokens, direction)
    _, seq = target.shape
    names = _needed_names(hook_names)
    _, source_acts = _cache(model, source_tokens, names, logits_needed=False)
    sites, site_shape = _sites(hook_names, positions, heads, seq, _n_heads_of(source_acts))
    values = []
    for site in _progress(sites, progress, "patching (loop)"):
        logits = model.run_with_hooks(target, fwd_hooks=_site_hooks(site, source_acts))
        values.append(_metric_tensor(metric(logits[:, -1:] if last_position_only else logits)))
    out = torch.stack(values)
    return out.reshape(*site_shape, *values[0].shape)


def _site_hooks(site: _Site, source: dict[str, Tensor]) -> list[tuple[str, Callable]]:
    """Plain hooks patching one site for every prompt (the loop's building block)."""
    src = source[site.hook]
    if _RESID_MID.match(site.hook):  # the residual stream itself, written through hook_attn_out as in the sweep
        rows = torch.arange(src.shape[0])
        return _fwd_hooks(_group_ops([(site, rows, rows)], src.device), source)

    def patch(act, hook):
        act = act.clone()
        view, sview = _canonical(act, site.hook), _canonical(src, site.hook)
        p = slice(None) if site.pos is None else site.pos
        if site.head is None:
            view[:, p] = sview[:, p]
        else:
            view[:, p, site.head] = sview[:, p, site.head]
        return act

    return [(site.hook, patch)]


def patch_hooks(hook_name: str, source_cache, *, pos: int | None = None, head: int | None = None
                ) -> list[tuple[str, Callable]]:
    """Forward hooks that patch ``hook_name`` (at ``pos`` and ``head``; None: all) with its value in
    ``source_cache``, for every prompt: for ``model.hooks(fwd_hooks=...)`` or ``run_with_hooks``.
    ``hook_resid_mid`` is written through ``hook_attn_out``, so the residual stream itself changes."""
    return _site_hooks(_Site(hook_name, head, pos), source_cache)


@torch.no_grad()
def patch_together(
    model,
    clean_tokens: Int[Tensor, "batch seq"],
    corrupt_tokens: Int[Tensor, "batch seq"],
    sites: Sequence[tuple[str, int | None, int | None]],
    metric: Metric,
    *,
    direction: Direction = "noise",
) -> Tensor:
    """Patch several sites *at once* (one forward pass) and return the metric.

    ``sites``: ``(hook_name, head or None, position or None)`` triples; None
    means every head / every position. E.g. noising every head of layers 1-5
    tests whether those layers matter at all.
    """
    target, source_tokens = _prepare(model, clean_tokens, corrupt_tokens, direction)
    hooks_used = [s[0] for s in sites]
    _, source_acts = _cache(model, source_tokens, _needed_names(hooks_used), logits_needed=False)
    n = target.shape[0]
    prompt_ids = torch.arange(n)
    entries = [(_Site(h, head, None if pos is None else int(pos) % target.shape[1]), prompt_ids, prompt_ids)
               for h, head, pos in sites]
    # One op per site (sites may repeat a hook with different heads/positions).
    hooks = []
    for entry in entries:
        hooks += _fwd_hooks(_group_ops([entry], target.device), source_acts)
    # Captures of resid_pre must come after every patch of the same hook.
    hooks = [h for h in hooks if not _is_capture(h)] + [h for h in hooks if _is_capture(h)]
    logits = model.run_with_hooks(target, fwd_hooks=hooks)
    return _metric_tensor(metric(logits))


def _is_capture(hook: tuple[str, Callable]) -> bool:
    return hook[1].__name__ == "capture"


# ---------------------------------------------------------------------------
# Path patching
# ---------------------------------------------------------------------------


@torch.no_grad()
def path_patch(
    model,
    clean_tokens: Int[Tensor, "batch seq"],
    corrupt_tokens: Int[Tensor, "batch seq"],
    sender: str | tuple[int, int],
    receivers: str | Sequence[str],
    metric: Metric,
    *,
    direction: Direction = "noise",
    receiver_positions: Sequence[int] | None = None,
) -> Tensor:
    """Patch the path from a sender to some receivers only; return the metric.

    The sender's output changes from its target-run value to its source-run
    value (``direction`` as in :func:`patch_sweep`), but the change
    ``delta = out_source - out_target`` is added only to the *inputs* of the
    receivers, not to the residual stream: every component between sender and
    receivers computes exactly what it did in the target run, and everything
    downstream of the receivers is recomputed.

    Args:
        sender: a head ``(layer, head)``, or the hook name of a component output
            that is added to the residual stream (``"blocks.6.hook_attn_out"``,
            ``"blocks.8.hook_mlp_out"``...).
        receivers: hook names of component inputs that do not feed the residual
            stream: ``"blocks.{l}.ln1.hook_in"`` (attention layer ``l``: queries,
            keys and values), ``"blocks.{l}.ln2.hook_in"`` (MLP ``l``) and
            ``"ln_final.hook_in"`` (the unembedding: the direct path).
        receiver_positions: positions where the receivers get ``delta``
            (default: every position).

    With receivers = every such input after the sender, this equals patching
    the sender's output itself (tested).
    """
    target, source_tokens = _prepare(model, clean_tokens, corrupt_tokens, direction)
    receivers = [receivers] if isinstance(receivers, str) else list(receivers)
    for r in receivers:
        if not (re.match(r"^blocks\.\d+\.ln[12]\.hook_in$", r) or r == "ln_final.hook_in"):
            raise ValueError(
                f"receiver {r!r} is not a component input: use 'blocks.{{l}}.ln1.hook_in', "
                "'blocks.{l}.ln2.hook_in' or 'ln_final.hook_in'"
            )
    if isinstance(sender, tuple):
        layer, head = sender
        name = f"blocks.{layer}.attn.hook_z"
        _, tgt = _cache(model, target, [name], logits_needed=False)
        _, src = _cache(model, source_tokens, [name], logits_needed=False)
        W_O = model.W_O[layer, head]
        delta = (src[name][:, :, head] - tgt[name][:, :, head]) @ W_O
    else:
        _, tgt = _cache(model, target, [sender], logits_needed=False)
        _, src = _cache(model, source_tokens, [sender], logits_needed=False)
        delta = src[sender] - tgt[sender]
    pos = slice(None) if receiver_positions is None else list(receiver_positions)

    def add(act, hook):
        act = act.clone()
        act[:, pos] = act[:, pos] + delta[:, pos].to(act.dtype)
        return act

    logits = model.run_with_hooks(target, fwd_hooks=[(r, add) for r in receivers])
    return _metric_tensor(metric(logits))


_RECEIVER = re.compile(r"^blocks\.(\d+)\.(ln[12])\.hook_in$")


def _check_receivers(receivers: Sequence[str]) -> None:
    for r in receivers:
        if not (_RECEIVER.match(r) or r == "ln_final.hook_in"):
            raise ValueError(
                f"receiver {r!r} is not a component input: use 'blocks.{{l}}.ln1.hook_in', "
                "'blocks.{l}.ln2.hook_in' or 'ln_final.hook_in'"
            )


#: Tokens per pass of :func:`path_patch_sweep` (receiver sets are batched up to this many).
PATH_PASS_TOKENS = 4096


@torch.no_grad()
def path_patch_sweep(
    model,
    clean_tokens: Int[Tensor, "batch seq"],
    corrupt_tokens: Int[Tensor, "batch seq"],
    sender: str | tuple[int, int],
    receiver_sets: Sequence[str | Sequence[str]],
    metric: Metric,
    *,
    direction: Direction = "noise",
    receiver_positions: Sequence[int] | None = None,
    last_position_only: bool = False,
    progress: bool = True,
) -> Tensor:
    """:func:`path_patch` for each receiver set, batched: ``[len(receiver_sets), *metric shape]``.

    Each entry of ``receiver_sets`` is what :func:`path_patch` takes as
    ``receivers`` (one hook name, or a list patched together); the numbers are
    those of calling :func:`path_patch` once per entry (tested). The two runs
    are cached once; every set's rows start at its earliest receiver's layer,
    and only the positions from the first one where the sender's output
    changes are recomputed (GPT-2-structured bridges; other models get one
    :func:`path_patch` call per set). ``last_position_only`` as in
    :func:`patch_sweep`.
    """
    sets = [[r] if isinstance(r, str) else list(r) for r in receiver_sets]
    for receivers in sets:
        _check_receivers(receivers)
    target, source_tokens = _prepare(model, clean_tokens, corrupt_tokens, direction)
    n_prompts, seq = target.shape
    L = model.cfg.n_layers

    def one_by_one():
        values = []
        for receivers in _progress(sets, progress and len(sets) > 1, "path patching"):
            logits_metric = metric if not last_position_only else (lambda lg: metric(lg[:, -1:]))
            values.append(path_patch(model, clean_tokens, corrupt_tokens, sender, receivers, logits_metric,
                                     direction=direction, receiver_positions=receiver_positions))
        return torch.stack(values)

    if not sets or not Gpt2Weights.usable(model):
        return one_by_one()
    name = f"blocks.{sender[0]}.attn.hook_z" if isinstance(sender, tuple) else sender
    starts = [min(L if r == "ln_final.hook_in" else int(_RECEIVER.match(r).group(1)) for r in rs) for rs in sets]
    first_layer = min(starts)
    names = {name, f"blocks.{L - 1}.hook_resid_post"}
    names |= {f"blocks.{l}.hook_resid_pre" for l in set(starts) if l < L}
    for l in range(min(first_layer, L - 1), L):
        names |= {f"blocks.{l}.attn.hook_k", f"blocks.{l}.attn.hook_v"}
    if first_layer < L:
        names.add(f"blocks.{first_layer}.hook_resid_pre")
    weights = Gpt2Weights(model)
    if hooks_attached(model) or not incremental_agrees(model, weights, target):
        return one_by_one()
    sender_block = REFERENCE_HOOKS.match(name)
    c_layer = None  # from this block on, the target run goes on alongside the first pass's rows
    if sender_block:  # both reference runs from the model's parameters, up to the sender's block
        c_layer = int(sender_block.group(1)) + 1
        early = {n for n in names if int(_BLOCK.match(n).group(1)) < c_layer and not n.endswith("resid_post")}
        early |= {name, f"blocks.{c_layer - 1}.hook_resid_post"}
        target_logits = None  # from the companion's last block, when needed
        _, tgt, src = forward_pair(weights, target, early, None, source_tokens, [name])
    else:
        target_logits, tgt = _cache(model, target, sorted(names))
        _, src = _cache(model, source_tokens, [name], logits_needed=False)
    if isinstance(sender, tuple):
        layer, head = sender
        delta = (src[name][:, :, head] - tgt[name][:, :, head]) @ model.W_O[layer, head]
    else:
        delta = src[name] - tgt[name]
    if receiver_positions is not None:
        keep = torch.zeros(seq, dtype=torch.bool, device=delta.device)
        keep[list(receiver_positions)] = True
        delta = delta * keep[None, :, None]
    changed = (delta != 0).any(-1).any(0).nonzero()
    if len(changed) == 0:  # the sender's output is the same in both runs: nothing changes
        if target_logits is None:
            target_logits, _ = forward_reference(weights, target, [], "last" if last_position_only else "all")
        return torch.stack([_unpatched(metric, target_logits, last_position_only)] * len(sets))
    p0 = int(changed[0])
    kv_from = min(first_layer, L - 1)
    known = L if c_layer is None else c_layer  # the blocks whose activations the reference runs hold
    keys = {l: tgt[f"blocks.{l}.attn.hook_k"] for l in range(kv_from, known)}
    values = {l: tgt[f"blocks.{l}.attn.hook_v"] for l in range(kv_from, known)}
    resid = {l: tgt[f"blocks.{l}.hook_resid_pre"] for l in set(starts) | {first_layer} if l < known}
    if c_layer is None or c_layer == L:
        resid[L] = tgt[f"blocks.{L - 1}.hook_resid_post"]
    order = sorted(range(len(sets)), key=lambda j: starts[j])
    per_pass = max(1, (PATH_PASS_TOKENS // max(1, seq - p0)) // n_prompts)
    chunks = [order[k : k + per_pass] for k in range(0, len(order), per_pass)]
    prompt_ids = torch.arange(n_prompts, device=target.device)
    results: list[Tensor | None] = [None] * len(sets)
    buffer: dict[str, Tensor] = {}  # one block of logits, reused (every position only)
    for chunk in _progress(chunks, progress and len(chunks) > 1, "path patching"):
        patches = []
        for k, j in enumerate(chunk):
            rows = k * n_prompts + prompt_ids
            for r in sets[j]:
                m = _RECEIVER.match(r)
                where = (L, "lnf_in") if m is None else (int(m.group(1)), f"{m.group(2)}_in")
                patches.append(IncPatch(where[0], where[1], rows, prompt_ids, None, None, delta))
        row_starts = [starts[j] for j in chunk for _ in range(n_prompts)]
        rows_prompt = prompt_ids.repeat(len(chunk))
        companion = None
        if c_layer is not None and chunk is chunks[0]:
            capture: dict[str, Tensor] = {}
            companion = (c_layer, tgt[f"blocks.{c_layer - 1}.hook_resid_post"], capture, len(chunks) == 1)
        x = forward_incremental(weights, row_starts, p0, resid, keys, values, rows_prompt, patches, last_position_only,
                                companion)
        if companion is not None:  # what the later passes and the unembedding need of the target run
            for l in range(c_layer, L):
                keys[l], values[l] = capture[f"blocks.{l}.attn.hook_k"], capture[f"blocks.{l}.attn.hook_v"]
                resid[l] = capture[f"blocks.{l}.hook_resid_pre"]
            resid.setdefault(L, capture.get(f"blocks.{L - 1}.hook_resid_post"))
            if not last_position_only:
                target_logits = unembed(weights, ln_final(weights, resid[L]))

        def logits_of(a, b, x=x):
            return _rows_logits(weights, x, a, b, n_prompts, target_logits, p0, last_position_only, buffer)

        _metric_values(metric, logits_of, chunk, results, n_prompts * (1 if last_position_only else seq),
                       model.cfg.d_vocab_out)
    return torch.stack(results)
