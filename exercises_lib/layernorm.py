"""LayerNorm three ways, and the residual stream's norm that it hides.

The tools the other chapters lean on, after Heimersheim's notes and answers in
write-up 002 (Heimersheim, comments and snippets on LayerNorm-free GPT-2,
patching direction and corrupted tokens, 2023-2024). The patching half of
chapter 5 (directions, the AND/OR example, corrupted tokens) is in
:mod:`exercises_lib.patching_choices`.

LayerNorm
---------
``LN(x) = w * (x - mean(x)) * s(x) + b`` with the LN scale (the multiplier)
``s(x) = 1 / sqrt(var(x) + eps)``, about ``sqrt(d_model) / |x - mean(x)|``.
TransformerLens caches the divisor ``1 / s`` as ``hook_scale``.

* *As computed*: :func:`ln_scale` recomputes ``s`` from the residual stream.
* *Folded* (what :func:`exercises_lib.models.load_model` does, as
  ``HookedTransformer`` did): ``w`` and ``b`` move into the weights that read
  the LayerNorm's output (:func:`fold_layernorm`), which are also centred, so
  only ``(x - mean) * s`` is left. *Linearised*: ``s`` treated as a constant;
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
layer). A good exponential fit alone does not say that growth is exponential:
over a dozen layers of slow growth, a straight line (additive growth, a fixed
vector added per layer) fits about as well. :func:`growth_shape` compares the
two models of the norms and the trend of the step ratios, and says which
kind of growth the norms show.

Chapter 5's two patching exercises live with their tools and are imported here
under the chapter's name: :func:`patching_effect`
(:mod:`exercises_lib.patching_choices`) and :func:`attention_shift` (same
module).

Nothing here knows where a stand-in's mechanism was planted.

Taught in: chapter 5 (LayerNorm and patching).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from exercises_lib.models.layernorm_free import (  # re-exported for chapter 5
    layernorm_free_reference,
    load_real_layernorm_free,
    make_layernorm_free_standin,
)
from exercises_lib.patching_choices import attention_shift, patching_effect

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
    "growth_shape",
    "patching_effect",
    "attention_shift",
]

EPS = 1e-5  # GPT-2's LayerNorm epsilon


# ---------------------------------------------------------------------------
# LayerNorm as computed and folded
# ---------------------------------------------------------------------------


def ln_scale(x: Float[Tensor, "... d_model"], eps: float = 1e-5) -> Float[Tensor, "..."]:
    """LayerNorm's scale, the multiplier ``s = 1 / sqrt(mean_i (x_i - mean(x))^2 + eps)``, over the last axis.

    About ``sqrt(d_model) / |x - mean(x)|``. TransformerLens's ``hook_scale`` is
    the divisor, ``1 / s`` (with a trailing axis of size 1).
    """
    # SOLUTION: centre, mean of squares, + eps, inverse square root
    centred = x - x.mean(-1, keepdim=True)
    return (centred.pow(2).mean(-1) + eps).rsqrt()
    # END SOLUTION


def ln_hook_names(n_layers: int) -> list[str]:
    """Every LayerNorm of a GPT-2-like model in order: ``ln1``, ``ln2`` of each block, ``ln_final``."""
    names = []
    for layer in range(n_layers):
        names += [f"blocks.{layer}.ln1", f"blocks.{layer}.ln2"]
    return names + ["ln_final"]


def layernorm_scales(model, tokens: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "ln batch pos"], list[str]]:
    """The LN scale ``s`` (the multiplier) of every LayerNorm at every position (one forward pass), and their names."""
    names = ln_hook_names(model.cfg.n_layers)
    wanted = {f"{n}.hook_scale" for n in names}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return torch.stack([1.0 / cache[f"{n}.hook_scale"][..., 0] for n in names]), names


def fold_layernorm(
    w: Float[Tensor, "d_model"],
    b: Float[Tensor, "d_model"],
    W: Float[Tensor, "d_model d_out"],
    b_W: Float[Tensor, "d_out"],
) -> tuple[Float[Tensor, "d_model d_out"], Float[Tensor, "d_out"]]:
    """Fold a LayerNorm's weight and bias into the matrix that reads it.

    ``LN(x) @ W + b_W = ((x - mean) * s) @ W' + b'`` with
    ``W' = diag(w) W`` centred over its input axis (``W' -= W'.mean(0)``, so it
    ignores the mean of its input and ``(x - mean)`` can become ``x``) and
    ``b' = b_W + b @ W``.
    """
    # SOLUTION: scale the rows of W by w, centre over the input axis, fold b through the original W
    folded = w[:, None] * W
    return folded - folded.mean(0, keepdim=True), b_W + b @ W
    # END SOLUTION


def linearisation_error(scales: Float[Tensor, "ln batch pos"]) -> Float[Tensor, "ln"]:
    """Relative error of treating each LayerNorm's scale as a constant.

    With the constant ``s_bar`` = the mean scale over the batch and positions
    1.. (BOS, position 0, is an outlier in GPT-2 and is left out), the
    linearised output ``(x - mean) * s_bar`` differs from the true one by the
    factor ``s_bar / s``; the error reported is ``mean |s / s_bar - 1|`` over
    those positions.
    """
    # SOLUTION: drop BOS, mean scale per LayerNorm, mean relative deviation
    s = scales[..., 1:]
    s_bar = s.mean(dim=(-2, -1), keepdim=True)
    return (s / s_bar - 1).abs().mean(dim=(-2, -1))
    # END SOLUTION


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
    then the final one) gets its LN scales replaced, at positions 1.., by their
    means ``s_bar`` over those positions in the unpatched run (the divisor
    ``hook_scale`` is set to ``1 / s_bar``; BOS keeps its scale).
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
    divisors = {n: 1.0 / scales[all_names.index(n), 0, 1:].mean() for n in names}
    runs = groups + [names]  # each run: the LayerNorms it freezes

    def freeze(act, hook, rows, value):
        act = act.clone()
        act[rows, 1:] = value
        return act

    clean_logp = model(tokens)[0, 1:].log_softmax(-1)
    clean_top = clean_logp.argmax(-1)
    kl, same_top = [], []
    from exercises_lib.progress import progress

    starts = range(0, len(runs), rows_per_pass)
    for start in progress(starts, "frozen scales", unit="pass", show=len(starts) > 1):
        chunk = runs[start : start + rows_per_pass]
        hooks = []
        for n in names:
            rows = torch.tensor([r for r, run in enumerate(chunk) if n in run], dtype=torch.long)
            if len(rows):
                hooks.append((f"{n}.hook_scale", functools.partial(freeze, rows=rows, value=divisors[n])))
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
# code that touches TransformerLens internals); chapter 5 uses the names imported above.


@torch.no_grad()
def max_logit_difference(model, hf_model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """``max |logits_model - logits_hf|`` over every prompt, position and token of ``tokens``."""
    # SOLUTION: both forward passes (the Hugging Face model's logits are its output's .logits), largest absolute difference
    ours = model(tokens)
    theirs = hf_model(tokens.to(next(hf_model.parameters()).device)).logits
    return (ours - theirs.to(ours.device)).abs().max()
    # END SOLUTION


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
    # SOLUTION: least squares on the logarithm
    l = torch.arange(len(norms), dtype=norms.dtype, device=norms.device)
    y = norms.log()
    lc = l - l.mean()
    slope = (lc * (y - y.mean())).sum() / (lc * lc).sum()
    return slope.exp()
    # END SOLUTION


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


def growth_shape(
    norms: Float[Tensor, "layer"], start: int = 1, margin: float = 1.5, falling: float = -0.6, material: float = 0.2
) -> dict[str, object]:
    """Exponential or additive growth of ``norms[start:]``? Two ways to tell them apart.

    *Two models, two parameters each*: exponential ``|x_l| = A g^l`` (least
    squares on the log norms, as :func:`growth_fit`) and additive
    ``|x_l| = a + b l`` (least squares on the norms). Each is scored by the RMS
    of its relative residuals ``(|x_l| - fit_l) / |x_l|``;
    ``fit_ratio = rms(additive) / rms(exponential)`` is above 1 where the
    exponential fits better.

    *Step ratios* ``|x_{l+1}| / |x_l|``: constant (up to noise) for exponential
    growth, falling with depth for additive growth (``1 + b / (a + b l)``).
    ``ratio_trend`` is their Spearman rank correlation with depth (-1: every
    ratio smaller than the one before). The ratios *fall* where that trend is at
    most ``falling`` and the fall is material: the median growth rate
    ``ratio - 1`` of the later half of the steps is below ``1 - material`` times
    that of the earlier half (``rate_change`` is their quotient). Ratios that are
    all about equal rank in any order; their trend says nothing.

    ``verdict``: ``"exponential"`` where ``fit_ratio >= margin`` and the ratios do
    not fall; ``"additive"`` where the line fits clearly better
    (``fit_ratio <= 1 / margin``), or no clearly better than the line while the
    ratios fall; ``"undecided"`` otherwise (for instance a
    better exponential fit made by one large step among falling ratios).
    """
    part = norms[start:].detach().double().cpu()
    if part.ndim != 1 or len(part) < 4:
        raise ValueError(f"growth_shape needs at least 4 norms after start={start}, got shape {tuple(norms.shape)}")
    if not bool(torch.isfinite(part).all()) or bool((part <= 0).any()):
        raise ValueError("growth_shape needs finite, positive norms")
    l = torch.arange(len(part), dtype=part.dtype)
    lc = l - l.mean()

    def line_fit(y):
        slope = (lc * (y - y.mean())).sum() / (lc * lc).sum()
        return y.mean() + slope * lc

    exponential = line_fit(part.log()).exp()
    additive = line_fit(part)
    rms_exp = ((part - exponential) / part).pow(2).mean().sqrt()
    rms_add = ((part - additive) / part).pow(2).mean().sqrt()
    fit_ratio = float(rms_add / rms_exp.clamp_min(1e-12))

    ratios = part[1:] / part[:-1]
    rank = ratios.argsort().argsort().double()
    depth = torch.arange(len(ratios), dtype=rank.dtype)
    rc, dc = rank - rank.mean(), depth - depth.mean()
    trend = float((rc * dc).sum() / ((rc * rc).sum() * (dc * dc).sum()).sqrt().clamp_min(1e-12))
    if float(ratios.max() - ratios.min()) <= 1e-9 * float(ratios.abs().max()):
        trend = 0.0  # equal ratios (exact exponential growth): no trend, whatever rounding ranks them
    half = len(ratios) // 2
    early, late = (ratios[:half] - 1).median(), (ratios[-half:] - 1).median()
    rate_change = float(late / early) if float(early) > 0 else float("nan")
    falls = trend <= falling and not rate_change >= 1 - material  # a NaN change (no early growth) counts as falling

    if fit_ratio >= margin and not falls:
        verdict = "exponential"
    elif fit_ratio <= 1 / margin or (fit_ratio < margin and falls):
        verdict = "additive"
    else:
        verdict = "undecided"
    return {
        "verdict": verdict,
        "fit_ratio": fit_ratio,
        "ratio_trend": trend,
        "rate_change": rate_change,
        "rms_exponential": float(rms_exp),
        "rms_additive": float(rms_add),
        "exponential": exponential.float(),
        "additive": additive.float(),
        "layers": torch.arange(start, len(norms)),
    }
