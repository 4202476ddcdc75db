"""Chapter 2's checks: the reference passes every case, typical mistakes fail with their name."""

from __future__ import annotations

import pytest
import torch

from exercises_lib import contextual as cx
from exercises_lib.checks import CHECKS, _load_check_modules, run_check

_load_check_modules()
NAMES = sorted(n for n in CHECKS if n.startswith("contextual."))


@pytest.fixture(autouse=True)
def _no_raise(monkeypatch):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(True)


def _context(name, model):
    return {"model": model} if "model" in CHECKS[name].needs else {}


def test_every_exercise_has_a_check():
    expected = {
        "positional_pattern", "factorise_pattern", "head_features", "classify_heads", "normalisation_factors",
        "independent_model_variance", "extended_embeddings", "contribution_summary", "bag_of_tokens_prediction",
        "contribution_components",
    }
    assert {n.split(".", 1)[1] for n in NAMES} == expected


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, gpt2_standin):
    result = run_check(name, CHECKS[name].reference, **_context(name, gpt2_standin))
    assert result.passed, result.message


@pytest.mark.parametrize(
    "name, mistake",
    [(name, desc) for name in NAMES for desc in CHECKS[name].mistakes],
)
def test_each_typical_mistake_fails_and_is_named(name, mistake, gpt2_standin):
    wrong = CHECKS[name].mistakes[mistake]
    result = run_check(name, wrong, **_context(name, gpt2_standin))
    assert not result.passed, f"{name}: the mistake {mistake!r} passed"
    assert mistake in result.message, result.message


@pytest.mark.parametrize("name", NAMES)
def test_at_least_two_mistakes_registered(name):
    assert len(CHECKS[name].mistakes) >= 2


def test_right_only_on_the_visible_example_fails(gpt2_standin):
    """A positional pattern hard-wired to the notebook's length fails a hidden case."""
    the = gpt2_standin.to_single_token(" the")
    visible = cx.positional_pattern(gpt2_standin, the, 200)

    def memorised(model, dest_token, n_ctx):
        return visible

    result = run_check("contextual.positional_pattern", memorised, model=gpt2_standin)
    assert not result.passed and "hidden test case" in result.message


def test_a_student_error_is_reported_without_traceback(gpt2_standin):
    def broken(model, tokens, cache):
        raise NotImplementedError("write me")

    result = run_check("contextual.factorise_pattern", broken, model=gpt2_standin)
    assert not result.passed and "not written yet" in result.message and "Traceback" not in result.message
