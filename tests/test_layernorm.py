"""Chapter 5's helpers: LayerNorm three ways, residual norms, patching direction, corrupted tokens.

Brute-force comparisons where possible (a formula against what the model's
hooks measure), and the AND/OR plant found by behaviour where it is planted, by
default and elsewhere. The LayerNorm-free models are tested in
``test_layernorm_free.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from exercises_lib import layernorm as LN
from exercises_lib import patching_choices as PC
from exercises_lib.models import build_standin
from exercises_lib.standin import build_standin_weights

PROMPT = "The red hat sat on the dog, so the answer is"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# ---------------------------------------------------------------------------
# LayerNorm as computed and folded
# ---------------------------------------------------------------------------


def test_ln_scale_equals_every_hook_scale(gpt2_standin):
    model = gpt2_standin
    _, cache = model.run_with_cache(model.to_tokens([PROMPT, "One more text, of the same length!!"]))
    L = model.cfg.n_layers
    def divisor(name):  # TransformerLens caches 1 / s
        return 1 / cache[f"{name}.hook_scale"][..., 0]

    for layer in (0, 5, L - 1):
        torch.testing.assert_close(LN.ln_scale(cache[f"blocks.{layer}.hook_resid_pre"]), divisor(f"blocks.{layer}.ln1"))
        torch.testing.assert_close(LN.ln_scale(cache[f"blocks.{layer}.hook_resid_mid"]), divisor(f"blocks.{layer}.ln2"))
    torch.testing.assert_close(LN.ln_scale(cache[f"blocks.{L - 1}.hook_resid_post"]), divisor("ln_final"))


def test_layernorm_scales_names_and_shape(gpt2_standin):
    tokens = gpt2_standin.to_tokens(PROMPT)
    scales, names = LN.layernorm_scales(gpt2_standin, tokens)
    assert names[:2] == ["blocks.0.ln1", "blocks.0.ln2"] and names[-1] == "ln_final"
    assert scales.shape == (2 * gpt2_standin.cfg.n_layers + 1, 1, tokens.shape[1])


def test_fold_layernorm_reproduces_layernorm_then_linear():
    g = torch.Generator().manual_seed(0)
    d, d_out = 12, 7
    w, b = 1 + 0.5 * torch.randn(d, generator=g), torch.randn(d, generator=g)
    W, b_W = torch.randn(d, d_out, generator=g), torch.randn(d_out, generator=g)
    x = 3 * torch.randn(5, d, generator=g) + 1.0
    expected = torch.nn.functional.layer_norm(x, (d,), w, b, LN.EPS) @ W + b_W
    W2, b2 = LN.fold_layernorm(w, b, W, b_W)
    s = LN.ln_scale(x)[:, None]
    torch.testing.assert_close((x - x.mean(-1, keepdim=True)) * s @ W2 + b2, expected, atol=1e-5, rtol=1e-5)
    # W2 is centred, so the centring is no longer needed:
    torch.testing.assert_close(x * s @ W2 + b2, expected, atol=1e-4, rtol=1e-5)


def test_linearisation_error_known_values():
    s = torch.ones(2, 3, 5)
    assert torch.equal(LN.linearisation_error(s), torch.zeros(2))
    s[0, :, 0] = 100.0  # BOS is left out
    assert float(LN.linearisation_error(s)[0]) == 0.0
    s[1, 0, 1:] = torch.tensor([1.0, 3.0, 1.0, 3.0])  # ten 1s and two 3s: s_bar = 4/3
    want = (10 * abs(0.75 - 1) + 2 * abs(2.25 - 1)) / 12
    assert math.isclose(float(LN.linearisation_error(s)[1]), want, rel_tol=1e-5)


def test_frozen_scale_effects(gpt2_standin):
    tokens = gpt2_standin.to_tokens(PROMPT)
    names = ["blocks.0.ln1", "blocks.6.ln2", "ln_final"]
    out = LN.frozen_scale_effects(gpt2_standin, tokens, [[n] for n in names], rows_per_pass=3)
    assert out["names"] == names + ["all"]
    assert LN.block_groups(2) == [["blocks.0.ln1", "blocks.0.ln2"], ["blocks.1.ln1", "blocks.1.ln2"], ["ln_final"]]
    assert out["kl"].shape == (4,) and (out["kl"] >= -1e-6).all()
    assert ((out["top1_agreement"] >= 0) & (out["top1_agreement"] <= 1)).all()
    assert out["kl"][-1] > 0  # freezing changes the output
    # Brute force for one LayerNorm: freeze ln_final with a hook of our own.
    scales, all_names = LN.layernorm_scales(gpt2_standin, tokens)
    divisor = 1 / scales[all_names.index("ln_final"), 0, 1:].mean()  # hook_scale is 1 / s

    def freeze(act, hook):
        act = act.clone()
        act[:, 1:] = divisor
        return act

    clean = gpt2_standin(tokens)[0, 1:].log_softmax(-1)
    frozen = gpt2_standin.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_scale", freeze)])[0, 1:].log_softmax(-1)
    kl = (clean.exp() * (clean - frozen)).sum(-1).mean()
    torch.testing.assert_close(out["kl"][2], kl, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------
# Residual norms
# ---------------------------------------------------------------------------


def test_residual_norms_brute_force(gpt2_standin):
    tokens = gpt2_standin.to_tokens([PROMPT, "A different prompt of much the same length."])
    norms = LN.residual_norms(gpt2_standin, tokens)
    _, cache = gpt2_standin.run_with_cache(tokens)
    L = gpt2_standin.cfg.n_layers
    assert norms.shape == (L + 1,)
    for layer in (0, 4, L - 1):
        r = cache[f"blocks.{layer}.hook_resid_pre"][:, 1:]
        assert math.isclose(float(norms[layer]), float(r.norm(dim=-1).mean()), rel_tol=1e-5)
    assert math.isclose(float(norms[L]), float(cache[f"blocks.{L - 1}.hook_resid_post"][:, 1:].norm(dim=-1).mean()), rel_tol=1e-5)


def test_growth_fit_recovers_an_exponential():
    norms = torch.cat([torch.tensor([3.0]), 40 * 1.25 ** torch.arange(12.0)])
    fit = LN.growth_fit(norms, start=1)
    assert math.isclose(float(fit["factor"]), 1.25, rel_tol=1e-5)
    assert math.isclose(float(fit["r2"]), 1.0, abs_tol=1e-6)
    torch.testing.assert_close(fit["fitted"], norms[1:], rtol=1e-5, atol=1e-4)
    assert math.isclose(float(LN.fitted_growth_factor(torch.tensor([2.0, 4.0, 8.0, 16.0]))), 2.0, rel_tol=1e-6)


# ---------------------------------------------------------------------------
# Patching direction
# ---------------------------------------------------------------------------


def test_patching_effect_endpoints():
    v = torch.tensor([3.0, 18.0])
    torch.testing.assert_close(PC.patching_effect(v, 18.0, 3.0, "denoise"), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(PC.patching_effect(v, 18.0, 3.0, "noise"), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="direction"):
        PC.patching_effect(v, 1.0, 0.0, "sideways")


def _gate_heads(model):
    clean, corrupt, metric = PC.and_or_task(model)
    found = PC.attention_effects_by_direction(model, clean, corrupt, metric)
    out = {}
    for k, gate in enumerate(("and", "or")):
        sites = PC.gate_like_sites(found["heads"]["denoise"][..., k], found["heads"]["noise"][..., k])
        out[gate] = {key: sorted(v) for key, v in sites.items()}
    return out, found


def test_and_or_default_placement_found_by_one_direction_each(gpt2_standin):
    from exercises_lib.standin.and_or import DEFAULT_PLACEMENT as D

    gates, found = _gate_heads(gpt2_standin)
    assert gates["and"] == {"denoise_only": [], "noise_only": sorted(map(tuple, D["and_heads"])), "both": []}
    assert gates["or"] == {"denoise_only": sorted(map(tuple, D["or_heads"])), "noise_only": [], "both": []}
    # Close to exact: each gate head's effect is 0 or 1 within 0.1 (the real layer 0's output,
    # which differs between a trigger and its class-mates, is what is left between them).
    heads = found["heads"]
    for (l, h) in map(tuple, D["and_heads"]):
        assert abs(float(heads["noise"][l, h, 0]) - 1) < 0.1 and abs(float(heads["denoise"][l, h, 0])) < 0.1
    for (l, h) in map(tuple, D["or_heads"]):
        assert abs(float(heads["denoise"][l, h, 1]) - 1) < 0.1 and abs(float(heads["noise"][l, h, 1])) < 0.1
    # At the level of whole attention layers both directions find them.
    assert set(found["flagged"]) == {l for l, _ in D["and_heads"] + D["or_heads"]}


def test_and_or_planted_elsewhere_is_found_there():
    where = {"and_heads": [[6, 2], [7, 5]], "or_heads": [[8, 0], [8, 11]], "mlp_layer": 8,
             "and_neurons": [10, 20], "or_neurons": [30, 40]}
    model = build_standin("gpt2-small", plants=["positional", "and_or"], placement={"and_or": where}, device="cpu")
    gates, _ = _gate_heads(model)
    assert gates["and"]["noise_only"] == [(6, 2), (7, 5)] and gates["and"]["denoise_only"] == []
    assert gates["or"]["denoise_only"] == [(8, 0), (8, 11)] and gates["or"]["noise_only"] == []


def test_and_or_plant_rejects_bad_placements():
    with pytest.raises(ValueError, match="four different heads"):
        build_standin_weights("gpt2-small", plants=["and_or"], placement={"and_or": {"or_heads": [[10, 1], [11, 9]]}})
    with pytest.raises(ValueError, match="up to mlp_layer"):
        build_standin_weights("gpt2-small", plants=["and_or"], placement={"and_or": {"mlp_layer": 10}})


# ---------------------------------------------------------------------------
# Corrupted tokens
# ---------------------------------------------------------------------------


def test_attention_shift_is_a_slice_of_attention_shifts(gpt2_standin):
    model = gpt2_standin
    tokens = model.to_tokens(PROMPT)
    ids = [model.to_single_token(w) for w in (" blue", " big")]
    all_heads = PC.attention_shifts(model, tokens, 2, ids)
    assert all_heads.shape == (2, model.cfg.n_layers, model.cfg.n_heads)
    for layer, head in ((0, 3), (10, 1), (11, 9)):
        torch.testing.assert_close(PC.attention_shift(model, tokens, 2, ids, layer, head), all_heads[:, layer, head])


def test_matched_corruptions_keep_the_colour_heads(gpt2_standin):
    """Find the heads that treat colour words specially (from behaviour), then ask for
    replacements of ' red' that leave them alone: the other colours, nothing else."""
    from exercises_lib.vocab import COLOURS

    model = gpt2_standin
    tokens = model.to_tokens(PROMPT)
    others = [" big", " old", " small", " new", " tall"]
    shifts = PC.attention_shifts(model, tokens, 2, [model.to_single_token(w) for w in others + [" blue"]])
    special = (shifts[:-1].amin(0) > 0.5) & (shifts[-1] < 0.05)  # moved by every non-colour, not by ' blue'
    heads = [tuple(int(i) for i in idx) for idx in special.nonzero()]
    assert heads  # the stand-in has such heads (planted: the colour heads of the AND/OR gates)
    picked = PC.matched_corruptions(model, tokens, 2, [*COLOURS, *others, " Blue", "blue"], heads=heads, tol=0.05)
    names = [model.to_string(torch.tensor([i])) for i in picked]
    assert set(names) == set(COLOURS) - {" red"}


def test_token_class():
    assert PC.token_class(" red") == PC.token_class(" big") == (True, "lower", "alpha")
    assert PC.token_class(" Blue") == (True, "title", "alpha")
    assert PC.token_class("blue") == (False, "lower", "alpha")
    assert PC.token_class(" 42") == (True, "none", "digit")
    assert PC.token_class(",") == (False, "none", "punct")
