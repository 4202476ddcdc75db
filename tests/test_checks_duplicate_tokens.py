"""Chapter 1 checks: each passes the reference and rejects typical wrong answers, naming them."""

import pytest
import torch

from exercises_lib.checks import CHECKS, _load_check_modules, run_check

torch.set_grad_enabled(False)
_load_check_modules()

NAMES = sorted(n for n in CHECKS if n.startswith("duplicate_tokens."))


def _ctx(name, model):
    return {"model": model} if "model" in CHECKS[name].needs else {}


def test_the_chapter_has_its_checks():
    assert len(NAMES) == 9


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, gpt2_standin):
    result = run_check(name, CHECKS[name].reference, **_ctx(name, gpt2_standin))
    assert result.passed, result.message


@pytest.mark.parametrize(
    "name, description",
    [(n, d) for n in NAMES for d in CHECKS[n].mistakes],
)
def test_typical_mistake_is_rejected_and_named(name, description, gpt2_standin):
    wrong = CHECKS[name].mistakes[description]
    result = run_check(name, wrong, **_ctx(name, gpt2_standin))
    assert not result.passed
    assert description in result.message, result.message


@pytest.mark.parametrize("name", NAMES)
def test_every_check_names_at_least_two_mistakes(name):
    assert len(CHECKS[name].mistakes) >= 2


def test_right_only_on_the_visible_example_fails(gpt2_standin):
    """The half-sequence-back score is right on repeated random tokens and wrong on text."""
    chk = CHECKS["duplicate_tokens.duplicate_token_score"]
    wrong = chk.mistakes["you only looked half a sequence back: right for repeated random tokens, not for real text"]
    result = run_check("duplicate_tokens.duplicate_token_score", wrong)
    assert "hidden test case" in result.message


def test_not_implemented_is_reported(gpt2_standin):
    def student(**kwargs):
        raise NotImplementedError("todo")

    for name in NAMES:
        assert "not written yet" in run_check(name, student, **_ctx(name, gpt2_standin)).message
