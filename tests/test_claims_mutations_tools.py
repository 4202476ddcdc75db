"""Mutation tests of the tools claims (chapter 5, ``tests/claims/test_ch05_layernorm.py``).

For each claims test: break the analysis it relies on in the obvious way and show
that the claims test then fails, so that its pass means something. The residual-norm
test runs only on real weights, which are not here: its criterion is shown to tell
exponential from additive growth on synthetic norms and on models whose growth is
known (the stand-in, additive; the stand-in amplified by a factor per block,
exponential), and the claims test itself is run on those models.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from exercises_lib import layernorm as LN
from exercises_lib import patching_choices as PC
from tests.claims import test_ch05_layernorm as claims


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# ---------------------------------------------------------------------------
# Exponential against additive growth (tools claim 4)
# ---------------------------------------------------------------------------


def _exponential(g: float, n: int = 12, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 40.0 * g ** torch.arange(n, dtype=torch.float64) * torch.exp(noise * torch.randn(n, generator=gen, dtype=torch.float64))


def _additive(total: float, n: int = 12, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A fixed vector's worth added per layer: grows by ``total`` over the ``n`` entries."""
    gen = torch.Generator().manual_seed(seed)
    line = 1 + (total - 1) * torch.arange(n, dtype=torch.float64) / (n - 1)
    return 40.0 * line * torch.exp(noise * torch.randn(n, generator=gen, dtype=torch.float64))


def _with_embedding(later: torch.Tensor) -> torch.Tensor:
    """Entry 0 (the embedding, much smaller than anything after the first block), then ``later``."""
    return torch.cat([later.new_tensor([3.0]), later])


@pytest.mark.parametrize("g", [1.08, 1.15, 1.3, 1.6])
@pytest.mark.parametrize("noise", [0.0, 0.005, 0.01])
@pytest.mark.parametrize("seed", range(3))
def test_growth_shape_tells_exponential_from_additive(g, noise, seed):
    exp_norms = _with_embedding(_exponential(g, noise=noise, seed=seed))
    add_norms = _with_embedding(_additive(g ** 11, noise=noise, seed=seed))  # the same growth over the layers
    assert LN.growth_shape(exp_norms)["verdict"] == "exponential"
    assert LN.growth_shape(add_norms)["verdict"] == "additive"


def test_additive_growth_that_fits_an_exponential_well_is_not_called_exponential():
    """The case the R^2 criterion could not tell apart: slow additive growth (about x1.05 per layer
    on average) whose log norms fit a line with R^2 near 1."""
    norms = _with_embedding(_additive(1.056 ** 11, noise=0.003))
    fit = LN.growth_fit(norms)
    assert 1.05 < float(fit["factor"]) < 1.06 and float(fit["r2"]) > 0.98  # the old bounds pass
    assert LN.growth_shape(norms)["verdict"] == "additive"
    with pytest.raises(AssertionError, match="growth is additive"):
        claims.check_residual_norm_growth(norms)


def test_step_ratios_falling_with_one_large_step_are_not_exponential():
    """Falling step ratios with one large step late (as a plant in a late layer gives): an
    exponential may fit better than a line, the ratios still say it is not exponential."""
    ratios = torch.tensor([1.068, 1.058, 1.058, 1.046, 1.043, 1.046, 1.032, 1.028, 1.13, 1.038, 1.024], dtype=torch.float64)
    norms = _with_embedding(40.0 * torch.cat([torch.ones(1, dtype=torch.float64), ratios.cumprod(0)]))
    shape = LN.growth_shape(norms)
    assert shape["fit_ratio"] > 1 and shape["ratio_trend"] < -0.5
    assert shape["verdict"] != "exponential"


def test_exponential_growth_with_a_slight_steady_drift_is_exponential():
    """Step ratios that fall steadily but immaterially (1.205 down to 1.195: the growth rate moves by 5%):
    their rank correlation with depth is -1, the growth is still exponential. Without the materiality
    condition (``material=0``) the same norms would not be called exponential."""
    ratios = torch.linspace(1.205, 1.195, 11, dtype=torch.float64)
    norms = _with_embedding(40.0 * torch.cat([torch.ones(1, dtype=torch.float64), ratios.cumprod(0)]))
    shape = LN.growth_shape(norms)
    assert shape["ratio_trend"] < -0.99 and 0.9 < shape["rate_change"] < 1.0
    assert shape["verdict"] == "exponential"
    assert LN.growth_shape(norms, material=0.0)["verdict"] != "exponential"


def test_growth_shape_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 4"):
        LN.growth_shape(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="finite, positive"):
        LN.growth_shape(torch.tensor([1.0, 2.0, float("nan"), 4.0, 5.0]))
    with pytest.raises(ValueError, match="finite, positive"):
        LN.growth_shape(torch.tensor([1.0, 2.0, 0.0, 4.0, 5.0]))


def test_residual_norm_claim_passes_on_exponential_and_fails_on_additive_norms():
    ok = claims.check_residual_norm_growth(_with_embedding(_exponential(1.15, noise=0.01)))
    assert ok["verdict"] == "exponential"
    with pytest.raises(AssertionError, match="growth is additive"):
        claims.check_residual_norm_growth(_with_embedding(_additive(1.15 ** 11, noise=0.01)))
    with pytest.raises(AssertionError, match="does not grow"):
        claims.check_residual_norm_growth(_with_embedding(_exponential(1.15).flip(0)))


@contextlib.contextmanager
def _amplified(model, g: float):
    """Every block's output residual stream multiplied by ``g``: exponential growth, built in."""
    hooks = [(f"blocks.{layer}.hook_resid_post", lambda x, hook: x * g) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        yield model


def _run_claim(model):
    claims.test_residual_norm_growth(course_model=lambda name: model, source="real")


@pytest.mark.slow
def test_residual_norm_claim_on_models_with_known_growth(gpt2_standin):
    """The claims test as written, run on the stand-in (its norm barely grows: fails) and on the
    stand-in amplified by 1.2 per block (exponential: passes)."""
    with pytest.raises(AssertionError):
        _run_claim(gpt2_standin)
    with _amplified(gpt2_standin, 1.2):
        _run_claim(gpt2_standin)


@pytest.mark.slow
def test_residual_norm_claim_fails_when_the_fit_is_broken(gpt2_standin, monkeypatch):
    """Mutations of the analysis, on the amplified stand-in where the claim holds: a growth
    factor fitted to the norms instead of their logarithm; the two models of growth_shape
    swapped (each fit scored as the other)."""

    def linear_factor(norms):  # the classic slip: least squares on |x| itself
        l = torch.arange(len(norms), dtype=norms.dtype)
        lc = l - l.mean()
        return ((lc * (norms - norms.mean())).sum() / (lc * lc).sum()).exp()

    original_shape = LN.growth_shape

    def swapped_shape(norms, *args, **kwargs):
        out = dict(original_shape(norms, *args, **kwargs))
        out["verdict"] = {"exponential": "additive", "additive": "exponential"}.get(out["verdict"], out["verdict"])
        return out

    for name, mutant in (("fitted_growth_factor", linear_factor), ("growth_shape", swapped_shape)):
        with monkeypatch.context() as m:
            m.setattr(LN, name, mutant)
            with _amplified(gpt2_standin, 1.2), pytest.raises(AssertionError):
                _run_claim(gpt2_standin)


# ---------------------------------------------------------------------------
# The other tools claims, on the stand-in
# ---------------------------------------------------------------------------


@pytest.fixture
def course_model(request):
    """``course_model(name)`` -> the session's stand-in of that name (the claims tests' ``"standin"`` source)."""
    fixture = {"gpt2-small": "gpt2_standin", "gpt2-noLN": "gpt2_noln_standin"}
    return lambda name: request.getfixturevalue(fixture[name])


@pytest.mark.slow
def test_noln_claim_fails_when_the_reference_keeps_its_layernorms(course_model, monkeypatch):
    """The write-up's pitfall: the reference model's LayerNorm epsilon back at 1e-5 (TransformerLens
    overwrote it), so its LayerNorms act again and its logits are not the LayerNorm-free model's."""
    claims.test_noln_logits_equal_hugging_face(course_model, "standin")  # unmutated: passes
    original = LN.layernorm_free_reference

    def with_active_layernorms(model):
        hf = original(model)
        for module in hf.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = 1e-5
        return hf

    monkeypatch.setattr(LN, "layernorm_free_reference", with_active_layernorms)
    with pytest.raises(AssertionError, match="max \\|difference\\|"):
        claims.test_noln_logits_equal_hugging_face(course_model, "standin")


@pytest.mark.slow
def test_patching_direction_claim_fails_when_the_direction_is_ignored(course_model, monkeypatch):
    """Both 'directions' patched the same way (clean activations into the corrupted run)."""
    original = PC.patch_sweep

    def one_direction(*args, **kwargs):
        kwargs["direction"] = "denoise"
        return original(*args, **kwargs)

    monkeypatch.setattr(PC, "patch_sweep", one_direction)
    with pytest.raises(AssertionError):
        claims.test_patching_direction_finds_and_or_gates(course_model, "standin")


@pytest.mark.slow
def test_corrupted_token_claim_fails_when_the_corruption_is_not_applied(course_model, monkeypatch):
    """The candidates never written into the prompt: every 'corrupted' run is the original."""

    def unchanged(model, tokens, position, candidates):
        n = len(candidates)
        batch = tokens[:1].repeat(n + 1, 1)  # the candidates are not put at ``position``
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
        _, cache = model.run_with_cache(batch, names_filter=lambda name: name in set(names))
        pats = torch.stack([cache[name] for name in names], 1)
        return (pats[1:] - pats[:1]).abs().amax(dim=(-2, -1))

    monkeypatch.setattr(PC, "attention_shifts", unchanged)
    with pytest.raises(AssertionError):
        claims.test_corrupted_token_choice_matters(course_model, "standin")
