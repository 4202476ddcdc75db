"""Chapter 5's checks: the reference passes every case, typical mistakes fail with their name."""

from __future__ import annotations

import pytest
import torch

from exercises_lib import layernorm as LN
from exercises_lib.checks import CHECKS, _load_check_modules, run_check

_load_check_modules()
NAMES = sorted(n for n in CHECKS if n.startswith("layernorm."))


@pytest.fixture(autouse=True)
def _no_raise(monkeypatch):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def tiny_noln(tmp_path_factory):
    """A tiny LayerNorm-free GPT-2 in the hub's format, loaded as the course loads gpt2-noLN."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    with torch.no_grad():
        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=64,
                                        layer_norm_epsilon=1e12))
        for name, p in hf.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_((1 + 0.3 * torch.randn_like(p)) * 1e6)
            elif name.endswith("weight"):
                p.mul_(5.0)
    path = tmp_path_factory.mktemp("noln") / "tiny"
    hf.save_pretrained(path)
    model = LN.load_real_layernorm_free(str(path), "cpu")
    model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return model, LN.layernorm_free_reference(model)


def _context(name, gpt2_standin, tiny_noln):
    needs = CHECKS[name].needs
    if "hf_model" in needs:
        model, hf = tiny_noln
        return {"model": model, "hf_model": hf}
    return {"model": gpt2_standin} if "model" in needs else {}


def test_every_exercise_has_a_check():
    expected = {
        "ln_scale", "fold_layernorm", "linearisation_error", "fitted_growth_factor",
        "patching_effect", "attention_shift", "max_logit_difference",
    }
    assert {n.split(".", 1)[1] for n in NAMES} == expected
    assert CHECKS["layernorm.max_logit_difference"].model == "gpt2-noLN"


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, gpt2_standin, tiny_noln):
    result = run_check(name, CHECKS[name].reference, **_context(name, gpt2_standin, tiny_noln))
    assert result.passed, result.message


@pytest.mark.parametrize("name, mistake", [(n, d) for n in NAMES for d in CHECKS[n].mistakes])
def test_each_typical_mistake_fails_and_is_named(name, mistake, gpt2_standin, tiny_noln):
    wrong = CHECKS[name].mistakes[mistake]
    result = run_check(name, wrong, **_context(name, gpt2_standin, tiny_noln))
    assert not result.passed, f"{name}: the mistake {mistake!r} passed"
    assert mistake in result.message, result.message


def test_unwritten_exercise_is_reported(gpt2_standin):
    def todo(resid, eps=1e-5):
        raise NotImplementedError("compute the scale")

    result = run_check("layernorm.ln_scale", todo, model=gpt2_standin)
    assert not result.passed and "not written yet" in result.message


def test_max_logit_difference_needs_the_reference_model(gpt2_standin):
    result = run_check("layernorm.max_logit_difference", LN.max_logit_difference, model=gpt2_standin)
    assert not result.passed and "hf_model" in result.message
