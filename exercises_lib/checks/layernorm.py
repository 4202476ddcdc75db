"""Checks of chapter 5 (LayerNorm and patching).

Each check runs the student's function on the notebook's example and on hidden
inputs (other layers, other shapes, inputs where epsilon matters, noisy growth
curves, the other patching direction, a model whose logits differ from the
reference at a known place), compares with the reference in
:mod:`exercises_lib.layernorm`, and names typical mistakes.

Taught in: chapter 5 (LayerNorm and patching).
"""

from __future__ import annotations

import types

import torch
from torch import Tensor

from exercises_lib import layernorm as LN
from exercises_lib.checks import register_check, run_with_cache_once

PROMPT = "The red hat sat on the dog, so the answer is"
OTHER_PROMPT = "My blue car and your cat met in the old town, so the answer is"


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cache(model, text: str):
    return run_with_cache_once(model, model.to_tokens(text))[1]


# ---------------------------------------------------------------------------
# 5.1 LayerNorm's scale
# ---------------------------------------------------------------------------


def _cases_ln_scale(model):
    cache = _cache(model, PROMPT)
    other = _cache(model, OTHER_PROMPT)
    g = _g(1)
    return [
        dict(x=cache["blocks.3.hook_resid_pre"]),
        dict(x=other["blocks.11.hook_resid_mid"]),
        dict(x=cache["blocks.0.hook_resid_pre"][0]),  # no batch axis
        dict(x=1e-3 * torch.randn(2, 5, 16, generator=g) + 0.4),  # epsilon matters here
        dict(x=torch.randn(3, 7, 32, generator=g) * 5 + 2, eps=0.1),
    ]


def _scale_divisor(x, eps=LN.EPS):
    return (x.var(-1, unbiased=False) + eps).sqrt()


def _scale_no_centring(x, eps=LN.EPS):
    return (x.pow(2).mean(-1) + eps).rsqrt()


def _scale_unbiased(x, eps=LN.EPS):
    return (x.var(-1, unbiased=True) + eps).rsqrt()


def _scale_eps_outside(x, eps=LN.EPS):
    return 1 / (x.var(-1, unbiased=False).sqrt() + eps)


def _scale_no_eps(x, eps=LN.EPS):
    return x.var(-1, unbiased=False).rsqrt()


register_check(
    "layernorm.ln_scale",
    reference=LN.ln_scale,
    cases=_cases_ln_scale,
    hint=(
        'Centre each vector, take the mean of the squares (divide by d_model, not d_model - 1), add eps, and '
        'return the multiplier (the inverse of the square root): one value per vector.'
    ),
    mistakes={
        "the divisor sqrt(var + eps) (TransformerLens's hook_scale) instead of the multiplier, its inverse": _scale_divisor,
        "the residual stream is not centred before squaring (an RMS, not a LayerNorm)": _scale_no_centring,
        "the variance divides by d_model - 1 (torch's unbiased default)": _scale_unbiased,
        "eps is added outside the square root": _scale_eps_outside,
        "eps is left out": _scale_no_eps,
    },
    atol=1e-6,
    rtol=1e-5,
    needs=("model",),
    model="gpt2-small",
)


# ---------------------------------------------------------------------------
# 5.2 folding a LayerNorm
# ---------------------------------------------------------------------------


def _cases_fold(**_):
    g = _g(2)
    out = []
    for d, d_out in ((16, 16), (8, 5), (6, 11)):  # square first: a wrong axis still runs
        out.append(
            dict(
                w=1 + 0.5 * torch.randn(d, generator=g),
                b=0.3 * torch.randn(d, generator=g),
                W=torch.randn(d, d_out, generator=g),
                b_W=torch.randn(d_out, generator=g),
            )
        )
    return out


def _fold_not_centred(w, b, W, b_W):
    return w[:, None] * W, b_W + b @ W


def _fold_no_bias(w, b, W, b_W):
    folded = w[:, None] * W
    return folded - folded.mean(0, keepdim=True), b_W


def _fold_wrong_axis(w, b, W, b_W):
    folded = W * w[None, :]
    return folded - folded.mean(0, keepdim=True), b_W + b @ W


def _fold_centred_outputs(w, b, W, b_W):
    folded = w[:, None] * W
    return folded - folded.mean(1, keepdim=True), b_W + b @ W


register_check(
    "layernorm.fold_layernorm",
    reference=LN.fold_layernorm,
    cases=_cases_fold,
    hint=(
        "Write LN(x) @ W out with the LayerNorm's weight and bias: the weight scales the rows of W, the bias "
        'goes through the original W into the new bias, and the centring of x can be moved into the new W by '
        'centring it over its input axis.'
    ),
    mistakes={
        "the folded matrix is not centred over its input axis": _fold_not_centred,
        "the LayerNorm bias is not folded into the bias (b @ W is missing)": _fold_no_bias,
        "w scales the output axis of W instead of its input axis": _fold_wrong_axis,
        "W is centred over its output axis instead of its input axis": _fold_centred_outputs,
    },
    atol=1e-5,
)


# ---------------------------------------------------------------------------
# 5.3 the cost of a constant scale
# ---------------------------------------------------------------------------


def _cases_linearisation(model):
    scales, _ = LN.layernorm_scales(model, model.to_tokens([PROMPT]))
    g = _g(3)
    s = torch.rand(4, 2, 9, generator=g) + 0.5
    s[:, :, 0] = 5.0  # a BOS outlier
    return [dict(scales=scales), dict(scales=s), dict(scales=torch.rand(3, 3, 6, generator=g) + 0.1)]


def _lin_with_bos(scales):
    s_bar = scales.mean(dim=(-2, -1), keepdim=True)
    return (scales / s_bar - 1).abs().mean(dim=(-2, -1))


def _lin_signed(scales):
    s = scales[..., 1:]
    return (s / s.mean(dim=(-2, -1), keepdim=True) - 1).mean(dim=(-2, -1))


def _lin_inverse(scales):
    s = scales[..., 1:]
    return (s.mean(dim=(-2, -1), keepdim=True) / s - 1).abs().mean(dim=(-2, -1))


register_check(
    "layernorm.linearisation_error",
    reference=LN.linearisation_error,
    cases=_cases_linearisation,
    hint=(
        "Leave out position 0 (BOS). For each LayerNorm, compare each scale with that LayerNorm's mean scale "
        '(over batch and positions) as a relative deviation, and average its size.'
    ),
    mistakes={
        "position 0 (BOS) is included": _lin_with_bos,
        "the absolute value is missing (signed errors cancel)": _lin_signed,
        "the ratio is inverted (s_bar / s instead of s / s_bar)": _lin_inverse,
    },
    atol=1e-5,
    needs=("model",),
    model="gpt2-small",
)


# ---------------------------------------------------------------------------
# 5.4 growth factor
# ---------------------------------------------------------------------------


def _cases_growth(model):
    norms = LN.residual_norms(model, model.to_tokens(OTHER_PROMPT))
    g = _g(4)
    noisy = 3.0 * 1.3 ** torch.arange(10.0) * torch.exp(0.2 * torch.randn(10, generator=g))
    return [
        dict(norms=norms[1:]),
        dict(norms=noisy),
        dict(norms=torch.tensor([50.0, 55.0, 70.0, 72.0, 90.0, 130.0, 140.0])),
    ]


def _growth_linear(norms):
    l = torch.arange(len(norms), dtype=norms.dtype)
    lc = l - l.mean()
    return (lc * (norms - norms.mean())).sum() / (lc * lc).sum()


def _growth_endpoints(norms):
    return (norms[-1] / norms[0]) ** (1.0 / (len(norms) - 1))


def _growth_mean_ratio(norms):
    return (norms[1:] / norms[:-1]).mean()


def _growth_log10(norms):
    l = torch.arange(len(norms), dtype=norms.dtype)
    y = norms.log10()
    lc = l - l.mean()
    return ((lc * (y - y.mean())).sum() / (lc * lc).sum()).exp()


register_check(
    "layernorm.fitted_growth_factor",
    reference=LN.fitted_growth_factor,
    cases=_cases_growth,
    hint=(
        'Exponential growth is a straight line on a log scale: fit a line to the logarithm of the norms '
        'against the layer index by least squares; the factor per layer undoes the logarithm of the slope.'
    ),
    mistakes={
        "a straight line is fitted to the norms themselves, not to their logarithm": _growth_linear,
        "only the first and last norms are used": _growth_endpoints,
        "the mean of the step ratios is returned instead of a fit": _growth_mean_ratio,
        "log10 is fitted but exp (base e) undoes it": _growth_log10,
    },
    atol=1e-4,
    needs=("model",),
    model="gpt2-small",
)


# ---------------------------------------------------------------------------
# 5.5 patching effect in both directions
# ---------------------------------------------------------------------------


def _cases_effect(**_):
    g = _g(5)
    return [
        dict(values=torch.tensor([2.9, 17.5, 10.0]), clean_value=18.0, corrupt_value=3.0, direction="denoise"),
        dict(values=torch.tensor([2.9, 17.5, 10.0]), clean_value=18.0, corrupt_value=3.0, direction="noise"),
        dict(values=torch.randn(4, 3, 2, generator=g), clean_value=torch.tensor([1.5, 2.0]),
             corrupt_value=torch.tensor([-1.0, 0.5]), direction="noise"),
        dict(values=torch.randn(5, generator=g), clean_value=-2.0, corrupt_value=1.0, direction="denoise"),
    ]


def _effect_same_formula(values, clean_value, corrupt_value, direction):
    return LN.patching_effect(values, clean_value, corrupt_value, "denoise")


def _effect_unnormalised(values, clean_value, corrupt_value, direction):
    clean = torch.as_tensor(clean_value, dtype=values.dtype)
    corrupt = torch.as_tensor(corrupt_value, dtype=values.dtype)
    return values - corrupt if direction == "denoise" else clean - values


def _effect_swapped(values, clean_value, corrupt_value, direction):
    return LN.patching_effect(values, clean_value, corrupt_value, "noise" if direction == "denoise" else "denoise")


register_check(
    "layernorm.patching_effect",
    reference=LN.patching_effect,
    cases=_cases_effect,
    hint=(
        'Both directions share the same denominator, the gap between the clean and corrupted values; the '
        'numerator is measured from where the patched run starts: the corrupted run when denoising, the clean '
        'run when noising.'
    ),
    mistakes={
        "the denoising formula is used for noising too (an unimportant site then scores 1)": _effect_same_formula,
        "the effect is not divided by clean - corrupt": _effect_unnormalised,
        "the two directions' formulas are swapped": _effect_swapped,
    },
    atol=1e-5,
)


# ---------------------------------------------------------------------------
# 5.6 attention shift
# ---------------------------------------------------------------------------


def _cases_shift(model):
    t0 = model.to_tokens(PROMPT)
    t1 = model.to_tokens(OTHER_PROMPT)
    ids = [model.to_single_token(w) for w in (" blue", " big", " old")]
    return [
        dict(model=model, tokens=t0, position=2, candidates=ids, layer=10, head=1),
        dict(model=model, tokens=t1, position=7, candidates=[model.to_single_token(w) for w in (" dog", " car")], layer=0, head=3),
        dict(model=model, tokens=t0, position=7, candidates=torch.tensor([model.to_single_token(" cat")]), layer=11, head=9),
    ]


@torch.no_grad()
def _patterns(model, tokens, position, candidates, layer):
    cands = torch.as_tensor(list(candidates) if not isinstance(candidates, Tensor) else candidates)
    batch = tokens[:1].repeat(len(cands) + 1, 1)
    batch[1:, position] = cands
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n == name)
    return cache[name]


def _shift_row_only(model, tokens, position, candidates, layer, head):
    p = _patterns(model, tokens, position, candidates, layer)[:, head, position]
    return (p[1:] - p[:1]).abs().amax(-1)


def _shift_mean(model, tokens, position, candidates, layer, head):
    p = _patterns(model, tokens, position, candidates, layer)[:, head]
    return (p[1:] - p[:1]).abs().mean(dim=(-2, -1))


def _shift_signed(model, tokens, position, candidates, layer, head):
    p = _patterns(model, tokens, position, candidates, layer)[:, head]
    return (p[1:] - p[:1]).amax(dim=(-2, -1))


register_check(
    "layernorm.attention_shift",
    reference=LN.attention_shift,
    cases=_cases_shift,
    hint=(
        'Run the original sequence and one copy per candidate (the token at `position` replaced) together, '
        "take the given head's pattern, and report the largest absolute change anywhere in it: later "
        'destinations move too.'
    ),
    mistakes={
        "only the row of the replaced position (as a destination) is compared: later destinations move too": _shift_row_only,
        "the mean change is returned instead of the largest": _shift_mean,
        "the absolute value is missing (attention that drops is not counted)": _shift_signed,
    },
    atol=1e-4,
    needs=("model",),
    model="gpt2-small",
)


# ---------------------------------------------------------------------------
# 5.7 LayerNorm-free model against Hugging Face
# ---------------------------------------------------------------------------


class _OffsetLogits(torch.nn.Module):
    """A Hugging Face-like model whose logits are ``inner``'s plus a fixed offset.

    Lets a hidden case know exactly where and by how much two models differ.
    """

    def __init__(self, inner, position: int, token: int, offset: float):
        super().__init__()
        self.inner, self.position, self.token, self.offset = inner, position, token, offset

    def forward(self, tokens):
        logits = self.inner(tokens).logits.clone()
        logits[:, self.position, self.token] += self.offset
        return types.SimpleNamespace(logits=logits)


def _cases_logits(model, hf_model):
    t0 = model.to_tokens(PROMPT)
    t1 = model.to_tokens([PROMPT, PROMPT.replace("red", "blue")])
    t2 = model.to_tokens(OTHER_PROMPT)
    with torch.no_grad():  # the last position's two most likely tokens
        (first, second), (top, _) = hf_model(t2).logits[0, -1].topk(2)
    return [
        dict(model=model, hf_model=hf_model, tokens=t0),
        # A large offset at the last position first, which makes the most likely token
        # unlikely: a last-position-only answer passes it, while the mean and the
        # probabilities fail it with values of their own; then an offset at an earlier position.
        dict(model=model, hf_model=_OffsetLogits(hf_model, -1, int(top), -float(first - second) - 5.0), tokens=t2),
        dict(model=model, hf_model=_OffsetLogits(hf_model, 3, 1000, -0.75), tokens=t1),
    ]


@torch.no_grad()
def _logits_last_only(model, hf_model, tokens):
    ours = model(tokens)[:, -1]
    theirs = hf_model(tokens).logits[:, -1]
    return (ours - theirs).abs().max()


@torch.no_grad()
def _logits_mean(model, hf_model, tokens):
    return (model(tokens) - hf_model(tokens).logits).abs().mean()


@torch.no_grad()
def _logits_probs(model, hf_model, tokens):
    return (model(tokens).softmax(-1) - hf_model(tokens).logits.softmax(-1)).abs().max()


register_check(
    "layernorm.max_logit_difference",
    reference=LN.max_logit_difference,
    cases=_cases_logits,
    hint=(
        'Run both models on the same tokens (BOS included); the Hugging Face model returns an output object '
        'that holds its logits. Return the largest absolute difference over every prompt, position and token.'
    ),
    mistakes={
        "only the last position is compared": _logits_last_only,
        "the mean difference is returned instead of the largest": _logits_mean,
        "probabilities are compared instead of logits": _logits_probs,
    },
    atol=1e-4,
    rtol=1e-3,
    needs=("model", "hf_model"),
    model="gpt2-noLN",
)
