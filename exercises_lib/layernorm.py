"""LayerNorm three ways, the residual stream's norm, and the choices behind patching.

The tools the other chapters lean on, after Heimersheim's notes and answers in
write-up 002 (Heimersheim, comments and snippets on LayerNorm-free GPT-2,
patching direction and corrupted tokens, 2023-2024).

LayerNorm
---------
``LN(x) = w * (x - mean(x)) / s(x) + b`` with ``s(x) = sqrt(var(x) + eps)``.

* *As computed*: :func:`ln_scale` recomputes ``s`` from the residual stream.
* *Folded* (what :func:`exercises_lib.models.load_model` does, as
  ``HookedTransformer`` did): ``w`` and ``b`` move into the weights that read
  the LayerNorm's output (:func:`fold_layernorm`), which are also centred, so
  only ``(x - mean) / s`` is left. *Linearised*: ``s`` treated as a constant;
  :func:`linearisation_error` and :func:`frozen_scale_effects` measure what
  that costs, per LayerNorm.
* *Removed*: a model without LayerNorm. The real one is
  ``apollo-research/gpt2_noLN`` (GPT-2 small fine-tuned without LayerNorm; on
  the hub its LayerNorms are neutralised by ``eps = 1e12`` and weights scaled by
  ``1e6``, so ``LN(x) = w' (x - mean)`` with ``w' = w / sqrt(eps)``).
  :func:`load_real_layernorm_free` loads it into a TransformerBridge the way
  TransformerLens 4 allows: the constant scale, ``w'`` and ``b`` are folded into
  the reading weights (which are centred), and each LayerNorm's module is
  replaced by ``nn.Identity``, which the bridge's normalisation component
  supports (``hook_scale`` then reads 1). This is the 4.x translation of the
  write-up's 2.x recipe (``fold_ln=False``, ``center_unembed=False``, every
  ``ln.eps = 1e12``): the unembedding is not centred, so the logits equal the
  Hugging Face model's (:func:`max_logit_difference`). The stand-in
  (:func:`make_layernorm_free_standin`) is LayerNorm-free *by construction*:
  each LayerNorm's data-dependent scale is replaced by a constant (its median
  on a reference text), folded the same way; :func:`layernorm_free_reference`
  gives the matching Hugging Face model with the hub's ``eps = 1e12`` trick, for
  the same check.

The residual stream's norm
--------------------------
:func:`residual_norms` and :func:`growth_fit` (exponential fit, one factor per
layer).

Patching
--------
:func:`patching_effect` (what a patched value means in each direction),
:func:`direction_effects` (both directions at once, with
:func:`exercises_lib.patching.patch_sweep`), the AND/OR worked example
(:func:`and_or_task`, on the stand-in's ``and_or`` plant), and the choice of
corrupted tokens: :func:`attention_shift`, :func:`attention_shifts`,
:func:`token_class` and :func:`matched_corruptions`.

Nothing here knows where a stand-in's mechanism was planted.

Taught in: chapter 5 (LayerNorm and patching).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "ln_scale",
    "ln_hook_names",
    "layernorm_scales",
    "fold_layernorm",
    "linearisation_error",
    "block_groups",
    "frozen_scale_effects",
    "make_layernorm_free_standin",
    "load_real_layernorm_free",
    "layernorm_free_reference",
    "max_logit_difference",
    "residual_norms",
    "fitted_growth_factor",
    "growth_fit",
    "patching_effect",
    "direction_effects",
    "attention_effects_by_direction",
    "gate_like_sites",
    "and_or_task",
    "attention_shift",
    "attention_shifts",
    "token_class",
    "matched_corruptions",
    "direction_explorer",
]

EPS = 1e-5  # GPT-2's LayerNorm epsilon


# ---------------------------------------------------------------------------
# LayerNorm as computed and folded
# ---------------------------------------------------------------------------


def ln_scale(resid: Float[Tensor, "... d_model"], eps: float = EPS) -> Float[Tensor, "... 1"]:
    """LayerNorm's scale ``s = sqrt(mean_i (x_i - mean(x))^2 + eps)`` (the ``hook_scale``)."""
    centred = resid - resid.mean(-1, keepdim=True)
    return (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def ln_hook_names(n_layers: int) -> list[str]:
    """Every LayerNorm of a GPT-2-like model in order: ``ln1``, ``ln2`` of each block, ``ln_final``."""
    names = []
    for layer in range(n_layers):
        names += [f"blocks.{layer}.ln1", f"blocks.{layer}.ln2"]
    return names + ["ln_final"]


def layernorm_scales(model, tokens: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "ln batch pos"], list[str]]:
    """The scale of every LayerNorm at every position (one forward pass), and their names."""
    names = ln_hook_names(model.cfg.n_layers)
    wanted = {f"{n}.hook_scale" for n in names}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return torch.stack([cache[f"{n}.hook_scale"][..., 0] for n in names]), names


def fold_layernorm(
    w: Float[Tensor, "d_model"],
    b: Float[Tensor, "d_model"],
    W: Float[Tensor, "d_model d_out"],
    b_W: Float[Tensor, "d_out"],
) -> tuple[Float[Tensor, "d_model d_out"], Float[Tensor, "d_out"]]:
    """Fold a LayerNorm's weight and bias into the matrix that reads it.

    ``LN(x) @ W + b_W = ((x - mean) / s) @ W' + b'`` with
    ``W' = diag(w) W`` centred over its input axis (``W' -= W'.mean(0)``, so it
    ignores the mean of its input and ``(x - mean)`` can become ``x``) and
    ``b' = b_W + b @ W``.
    """
    folded = w[:, None] * W
    return folded - folded.mean(0, keepdim=True), b_W + b @ W


def linearisation_error(scales: Float[Tensor, "ln batch pos"]) -> Float[Tensor, "ln"]:
    """Relative error of treating each LayerNorm's scale as a constant.

    With the constant ``s_bar`` = the mean scale over the batch and positions
    1.. (BOS, position 0, is an outlier in GPT-2 and is left out), the
    linearised output ``(x - mean) / s_bar`` differs from the true one by the
    factor ``s / s_bar``: the error is ``mean |s / s_bar - 1|`` over those
    positions.
    """
    s = scales[..., 1:]
    s_bar = s.mean(dim=(-2, -1), keepdim=True)
    return (s / s_bar - 1).abs().mean(dim=(-2, -1))


def block_groups(n_layers: int) -> list[list[str]]:
    """LayerNorms grouped per block (``ln1`` and ``ln2`` together), then ``ln_final`` alone."""
    return [[f"blocks.{layer}.ln1", f"blocks.{layer}.ln2"] for layer in range(n_layers)] + [["ln_final"]]


@torch.no_grad()
def frozen_scale_effects(
    model,
    tokens: Int[Tensor, "1 pos"],
    groups: Sequence[Sequence[str]] | None = None,
    rows_per_pass: int = 8,
) -> dict:
    """What freezing LayerNorm scales costs, one group of LayerNorms at a time and all at once.

    Each group (default: :func:`block_groups`, the two LayerNorms of each block,
    then the final one) gets its scales replaced, at positions 1.., by their
    means over those positions in the unpatched run (the scale of BOS is kept).
    One run per group, then one with every LayerNorm of the groups frozen.
    Returns the mean KL divergence (nats) of each run's next-token
    distributions from the unpatched run's (positions 1..), the fraction of
    those positions whose top prediction is unchanged, and the group labels
    (``"all"`` last).
    """
    tokens = tokens[:1]
    groups = [list(g) for g in (groups if groups is not None else block_groups(model.cfg.n_layers))]
    names = [n for g in groups for n in g]
    scales, all_names = layernorm_scales(model, tokens)
    means = {n: scales[all_names.index(n), 0, 1:].mean() for n in names}
    runs = groups + [names]  # each run: the LayerNorms it freezes

    def freeze(act, hook, rows, value):
        act = act.clone()
        act[rows, 1:] = value
        return act

    clean_logp = model(tokens)[0, 1:].log_softmax(-1)
    clean_top = clean_logp.argmax(-1)
    kl, same_top = [], []
    for start in range(0, len(runs), rows_per_pass):
        chunk = runs[start : start + rows_per_pass]
        hooks = []
        for n in names:
            rows = torch.tensor([r for r, run in enumerate(chunk) if n in run], dtype=torch.long)
            if len(rows):
                hooks.append((f"{n}.hook_scale", functools.partial(freeze, rows=rows, value=means[n])))
        logp = model.run_with_hooks(tokens.expand(len(chunk), -1), fwd_hooks=hooks)[:, 1:].log_softmax(-1)
        kl.append((clean_logp.exp() * (clean_logp - logp)).sum(-1).mean(-1))
        same_top.append((logp.argmax(-1) == clean_top).float().mean(-1))
        del logp
    labels = [" + ".join(g) for g in groups] + ["all"]
    return {"kl": torch.cat(kl), "top1_agreement": torch.cat(same_top), "names": labels}


# ---------------------------------------------------------------------------
# LayerNorm removed
# ---------------------------------------------------------------------------


# The LayerNorm-free models are built and loaded by the model package (the only
# code that touches TransformerLens internals); chapter 5 uses these names.
from exercises_lib.models.layernorm_free import (  # noqa: E402
    layernorm_free_reference,
    load_real_layernorm_free,
    make_layernorm_free_standin,
)


@torch.no_grad()
def max_logit_difference(model, hf_model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """``max |logits_model - logits_hf|`` over every prompt, position and token of ``tokens``."""
    ours = model(tokens)
    theirs = hf_model(tokens.to(next(hf_model.parameters()).device)).logits
    return (ours - theirs.to(ours.device)).abs().max()


# ---------------------------------------------------------------------------
# The residual stream's norm
# ---------------------------------------------------------------------------


@torch.no_grad()
def residual_norms(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "n_layers_plus_1"]:
    """Mean norm of the residual stream entering each block, then after the last one.

    Entry ``l`` is ``|resid_pre_l|`` (``l = 0`` is the embedding), the last is
    ``|resid_post|`` of the last block; the mean is over the batch and over
    positions 1.. (BOS, position 0, has a much larger norm in GPT-2).
    """
    L = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    wanted = set(names)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return torch.stack([cache[n][:, 1:].norm(dim=-1).mean() for n in names])


def fitted_growth_factor(norms: Float[Tensor, "layer"]) -> Float[Tensor, ""]:
    """Per-layer growth factor ``g`` of the least-squares fit ``log |x_l| = a + l log g``.

    ``l`` counts the given entries ``0, 1, ...``; returns ``exp(slope)``.
    """
    l = torch.arange(len(norms), dtype=norms.dtype, device=norms.device)
    y = norms.log()
    lc = l - l.mean()
    slope = (lc * (y - y.mean())).sum() / (lc * lc).sum()
    return slope.exp()


def growth_fit(norms: Float[Tensor, "layer"], start: int = 1) -> dict[str, Tensor]:
    """Exponential fit of ``norms[start:]``: factor per layer, fitted curve, R^2 of ``log`` norms, step ratios."""
    part = norms[start:].double()
    g = fitted_growth_factor(part)
    l = torch.arange(len(part), dtype=part.dtype)
    y = part.log()
    a = y.mean() - g.log() * l.mean()
    fit = a + g.log() * l
    r2 = 1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return {
        "factor": g.float(),
        "fitted": fit.exp().float(),
        "layers": torch.arange(start, len(norms)),
        "r2": r2.float(),
        "ratios": (norms[1:] / norms[:-1]).float(),
    }


# ---------------------------------------------------------------------------
# Patching in both directions
# ---------------------------------------------------------------------------


def patching_effect(
    values: Tensor, clean_value: Tensor | float, corrupt_value: Tensor | float, direction: str
) -> Tensor:
    """How much a patched site matters, on one scale for both directions.

    ``denoise`` (clean activations into the corrupted run): the fraction of the
    clean behaviour the site restores on its own, ``(v - corrupt) / (clean - corrupt)``.
    ``noise`` (corrupted activations into the clean run): the fraction of the
    clean behaviour lost when the site alone is corrupted,
    ``(clean - v) / (clean - corrupt)``. 0: the site does nothing; 1: all of it.
    """
    clean = torch.as_tensor(clean_value, dtype=values.dtype, device=values.device)
    corrupt = torch.as_tensor(corrupt_value, dtype=values.dtype, device=values.device)
    if direction == "denoise":
        return (values - corrupt) / (clean - corrupt)
    if direction == "noise":
        return (clean - values) / (clean - corrupt)
    raise ValueError(f"direction must be 'denoise' or 'noise', not {direction!r}")


@torch.no_grad()
def direction_effects(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    hook_names: Sequence[str],
    metric: Callable[[Tensor], Tensor],
    **sweep_kwargs,
) -> dict[str, Tensor]:
    """Patch every site both ways; return the :func:`patching_effect` of each.

    ``sweep_kwargs`` go to :func:`exercises_lib.patching.patch_sweep` (e.g.
    ``heads=True``, ``positions="all"``). Returns ``{"denoise": ..., "noise": ...,
    "clean": clean metric, "corrupt": corrupted metric}``.
    """
    from exercises_lib.patching import patch_sweep

    clean_value = torch.as_tensor(metric(model(clean_tokens))).float()
    corrupt_value = torch.as_tensor(metric(model(corrupt_tokens))).float()
    out = {"clean": clean_value, "corrupt": corrupt_value}
    for direction in ("denoise", "noise"):
        values = patch_sweep(model, clean_tokens, corrupt_tokens, hook_names, metric, direction=direction, **sweep_kwargs)
        out[direction] = patching_effect(values, clean_value, corrupt_value, direction)
    return out


@torch.no_grad()
def attention_effects_by_direction(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    threshold: float = 0.5,
) -> dict:
    """Coarse to fine, in both directions: attention layers first, then the heads of the layers that matter.

    Stage 1 patches each attention layer's output (all positions at once);
    stage 2 patches each head (``attn.hook_z``, all positions) of every layer
    whose effect reaches ``threshold`` in either direction for any component of
    the metric. Head effects of the layers not patched are NaN. Returns
    ``{"layers": {"denoise", "noise"} [layer, *metric],
    "heads": {"denoise", "noise"} [layer, head, *metric], "flagged": [layers],
    "clean", "corrupt"}``.
    """
    from exercises_lib.patching import resid_hook_names

    kw = dict(last_position_only=True, progress=False)
    layers = direction_effects(model, clean_tokens, corrupt_tokens, resid_hook_names(model, "attn_out"), metric,
                               positions="all", **kw)
    big = (layers["denoise"] >= threshold) | (layers["noise"] >= threshold)
    flagged = [int(l) for l in big.reshape(big.shape[0], -1).any(-1).nonzero().flatten()]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    shape = (L, H, *layers["clean"].shape)
    heads = {d: torch.full(shape, float("nan")) for d in ("denoise", "noise")}
    if flagged:
        names = [f"blocks.{l}.attn.hook_z" for l in flagged]
        found = direction_effects(model, clean_tokens, corrupt_tokens, names, metric, heads=True, **kw)
        for d in ("denoise", "noise"):
            heads[d][flagged] = found[d].to(heads[d].dtype)
    return {
        "layers": {d: layers[d] for d in ("denoise", "noise")},
        "heads": heads,
        "flagged": flagged,
        "clean": layers["clean"],
        "corrupt": layers["corrupt"],
    }


def gate_like_sites(
    denoise: Tensor, noise: Tensor, threshold: float = 0.5
) -> dict[str, list[tuple[int, ...]]]:
    """Sites found by one direction only, or by both (effects above ``threshold``).

    ``"denoise_only"``: sufficient alone but not necessary (OR-like inputs);
    ``"noise_only"``: necessary but not sufficient alone (AND-like inputs);
    ``"both"``: a site that carries the whole effect by itself.
    """
    d, n = denoise >= threshold, noise >= threshold  # NaN (not patched) is neither

    def where(mask):
        return [tuple(int(i) for i in idx) for idx in mask.nonzero()]

    return {"denoise_only": where(d & ~n), "noise_only": where(n & ~d), "both": where(d & n)}


#: The AND/OR example's prompts: ``{c}`` a colour, ``{a}`` an animal (single tokens).
AND_OR_TEMPLATES: tuple[str, ...] = (
    "The {c} hat sat on the {a}, so the answer is",
    "A {c} ball hit the {a}, so then the answer is",
    "My {c} car and your {a} met, so the answer is",
    "One {c} box and one {a}, and so the answer is",
)


def and_or_task(model, n_templates: int = 2, n_corruptions: int = 1):
    """The worked example's prompts and metric, for a model with the ``and_or`` plant.

    Clean prompts (``n_corruptions`` per template, for the first
    ``n_templates`` of :data:`AND_OR_TEMPLATES`) contain the two trigger
    words (``' red'`` and ``' dog'``); each corrupted prompt swaps both for
    class-mates (another colour, another animal, different ones across
    prompts), so every planted attention pattern stays where it was. Returns
    ``(clean_tokens, corrupt_tokens, metric)`` where ``metric(logits)`` is the
    mean over prompts of ``[logit(' both') - logit(' none'),
    logit(' either') - logit(' neither')]`` at the last position: the AND
    gate's and the OR gate's output.
    """
    from exercises_lib.standin.and_or import ANIMALS, ANSWERS, COLOURS, TRIGGERS

    colour, animal = TRIGGERS
    mates_c = [c for c in COLOURS if c != colour]
    mates_a = [a for a in ANIMALS if a != animal]
    clean_text, corrupt_text = [], []
    for k, template in enumerate(AND_OR_TEMPLATES[:n_templates]):
        for j in range(n_corruptions):
            i = (k + j * len(AND_OR_TEMPLATES)) % len(mates_c)
            clean_text.append(template.format(c=colour.strip(), a=animal.strip()))
            corrupt_text.append(template.format(c=mates_c[i].strip(), a=mates_a[i].strip()))
    clean, corrupt = model.to_tokens(clean_text), model.to_tokens(corrupt_text)
    if clean.shape != corrupt.shape or (clean == model.tokenizer.pad_token_id)[:, 1:].any():
        raise ValueError("the AND/OR prompts must all have the same length")
    ids = {w: model.to_single_token(w) for pair in ANSWERS.values() for w in pair}
    pairs = [tuple(ids[w] for w in ANSWERS[k]) for k in ("and", "or")]

    def metric(logits: Tensor) -> Tensor:
        last = logits[:, -1]
        return torch.stack([(last[:, g] - last[:, b]).mean() for g, b in pairs])

    return clean, corrupt, metric


# ---------------------------------------------------------------------------
# Choosing corrupted tokens
# ---------------------------------------------------------------------------


@torch.no_grad()
def attention_shifts(
    model, tokens: Int[Tensor, "1 pos"], position: int, candidates: Sequence[int] | Tensor
) -> Float[Tensor, "candidate layer head"]:
    """For each candidate token put at ``position``: the largest change of each head's pattern.

    ``max_{dest, src} |pattern_new - pattern_orig|`` per layer and head.
    """
    tokens = tokens[:1]
    cands = torch.as_tensor(list(candidates) if not isinstance(candidates, Tensor) else candidates)
    batch = tokens.repeat(len(cands) + 1, 1)
    batch[1:, position] = cands.to(batch.device)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    wanted = set(names)
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n in wanted)
    pats = torch.stack([cache[n] for n in names], 1)  # [batch, layer, head, dest, src]
    return (pats[1:] - pats[:1]).abs().amax(dim=(-2, -1))


@torch.no_grad()
def attention_shift(
    model,
    tokens: Int[Tensor, "1 pos"],
    position: int,
    candidates: Sequence[int] | Tensor,
    layer: int,
    head: int,
) -> Float[Tensor, "candidate"]:
    """``max_{dest, src} |A' - A|`` of head ``layer.head`` when ``tokens[0, position]``
    is replaced by each candidate (``A``: the original pattern, ``A'``: the new one)."""
    tokens = tokens[:1]
    cands = torch.as_tensor(list(candidates) if not isinstance(candidates, Tensor) else candidates)
    batch = tokens.repeat(len(cands) + 1, 1)
    batch[1:, position] = cands.to(batch.device)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n == name)
    pattern = cache[name][:, head]  # [batch, dest, src]
    return (pattern[1:] - pattern[:1]).abs().amax(dim=(-2, -1))


def token_class(token: str) -> tuple[bool, str, str]:
    """A coarse class of a token string: (leading space, case, kind).

    case: ``"lower"``, ``"title"``, ``"upper"`` or ``"none"``; kind:
    ``"alpha"``, ``"digit"``, ``"punct"`` or ``"mixed"``. Two tokens of the same
    class look alike on the surface (e.g. ``' red'`` and ``' big'``); that is not
    enough to make them equivalent for a given head.
    """
    space = token.startswith(" ")
    core = token.strip()
    if core.isalpha():
        kind = "alpha"
    elif core.isdigit():
        kind = "digit"
    elif core and all(not ch.isalnum() for ch in core):
        kind = "punct"
    else:
        kind = "mixed"
    if not any(ch.isalpha() for ch in core):
        case = "none"
    elif core.islower():
        case = "lower"
    elif core.isupper() and len(core) > 1:
        case = "upper"
    elif core[:1].isupper() and core[1:].islower():
        case = "title"
    else:
        case = "mixed"
    return space, case, kind


@torch.no_grad()
def matched_corruptions(
    model,
    tokens: Int[Tensor, "1 pos"],
    position: int,
    candidates: Iterable[str | int],
    *,
    heads: Sequence[tuple[int, int]] | str | None = "all",
    tol: float = 0.05,
    same_class: bool = True,
) -> list[int]:
    """Corruption tokens for ``tokens[0, position]`` that change nothing but the token.

    Keeps the candidates (strings or ids, single tokens) that
    * have the same :func:`token_class` as the original token (``same_class``), and
    * change the attention pattern of every head in ``heads`` by at most ``tol``
      (:func:`attention_shifts`; ``"all"``: every head of the model, ``None``:
      attention is not checked).
    Returns their ids, in the order given.
    """
    ids = [c if isinstance(c, int) else model.to_single_token(c) for c in candidates]
    original = model.to_string(tokens[0, position : position + 1])
    ids = [i for i in ids if i != int(tokens[0, position])]
    if same_class:
        want = token_class(original)
        ids = [i for i in ids if token_class(model.to_string(torch.tensor([i]))) == want]
    if not ids or heads is None:
        return ids
    shifts = attention_shifts(model, tokens, position, ids)  # [cand, layer, head]
    if heads == "all":
        worst = shifts.flatten(1).amax(-1)
    else:
        worst = torch.stack([shifts[:, layer, head] for layer, head in heads], -1).amax(-1)
    return [i for i, w in zip(ids, worst) if float(w) <= tol]


# ---------------------------------------------------------------------------
# Explorer
# ---------------------------------------------------------------------------


def direction_explorer(experiments: dict[str, dict[str, Tensor]], model):
    """Widget: pick an experiment and a view; see its head effects as a layer x head map.

    ``experiments``: ``{name: {"denoise": [layer, head], "noise": [layer, head]}}``
    (effects as returned by :func:`attention_effects_by_direction`, one metric
    component each; NaN = not patched). Views: either direction, or their
    difference ``denoise - noise`` (about +1 for an OR input, -1 for an AND
    input, 0 for a site that carries the effect alone or does nothing). Drawn
    once before it is returned, so it renders statically too.
    """
    import ipywidgets as widgets

    from exercises_lib.plotting import imshow

    names = list(experiments)
    exp_w = widgets.Dropdown(options=names, value=names[0], description="experiment")
    view_w = widgets.ToggleButtons(
        options=["denoise (clean → corrupt)", "noise (corrupt → clean)", "denoise − noise"], description="view"
    )
    out = widgets.Output()

    def update(*_):
        e = experiments[exp_w.value]
        if view_w.index == 0:
            values = e["denoise"]
        elif view_w.index == 1:
            values = e["noise"]
        else:
            values = e["denoise"] - e["noise"]
        out.clear_output(wait=True)
        with out:
            imshow(values, model=model, zmin=-1, zmax=1, height=380,
                   title=f"{exp_w.value}: {view_w.value} (blank rows: layers not patched)",
                   labels={"x": "head", "y": "layer", "color": "effect"})

    exp_w.observe(update, names="value")
    view_w.observe(update, names="value")
    update()
    return widgets.VBox([exp_w, view_w, out])
