"""Chapter 3's checks accept the reference and reject typical mistakes, naming them."""

from __future__ import annotations

import functools

import pytest
import torch

from exercises_lib import polysemantic as P
from exercises_lib.checks import CHECKS, _load_check_modules, run_check

_load_check_modules()
NAMES = sorted(n for n in CHECKS if n.startswith("polysemantic."))
MODEL_FREE = [n for n in NAMES if "model" not in CHECKS[n].needs]


def test_every_exercise_has_a_check():
    expected = {
        "indentation_depths", "induction_mask", "behaviour_masses", "classify_behaviour", "behaviour_table",
        "prompt_and_answer", "bos_ablation_hook", "clean_vs_ablated", "ablation_sweep",
    }
    assert {n.split(".", 1)[1] for n in NAMES} == expected


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, attn_only_standin):
    chk = CHECKS[name]
    ctx = {"model": attn_only_standin} if "model" in chk.needs else {}
    result = run_check(name, chk.reference, **ctx)
    assert result.passed, result.message


@pytest.mark.parametrize("name", MODEL_FREE)
def test_registered_mistakes_are_named(name):
    """Each typical mistake fails, and the message says which mistake it is."""
    chk = CHECKS[name]
    assert len(chk.mistakes) >= 2
    for description, wrong in chk.mistakes.items():
        result = run_check(name, wrong)
        assert not result.passed, description
        assert description in result.message, (description, result.message)


# Hand-written wrong answers, as a student might write them (not the registered ones).


def test_hook_in_place_without_renormalising_is_caught():
    def hook(pattern, hook, head, dest_positions):
        pos = torch.as_tensor(dest_positions).expand(pattern.shape[0])
        pattern[torch.arange(pattern.shape[0]), head, pos, 0] = 1.0  # forgets to zero the rest
        return pattern

    result = run_check("polysemantic.bos_ablation_hook", hook)
    assert not result.passed and "not renormalised" in result.message


def test_hook_at_the_wrong_position_is_caught():
    def hook(pattern, hook, head, dest_positions):
        pos = torch.as_tensor(dest_positions).expand(pattern.shape[0])
        rows = torch.arange(pattern.shape[0])
        pattern[rows, head, :, pos] = 0.0  # the source column, not the destination row
        pattern[rows, head, :, 0] = 1.0
        return pattern

    result = run_check("polysemantic.bos_ablation_hook", hook)
    assert not result.passed and "source column" in result.message


def test_hook_that_ignores_per_element_positions_fails():
    def hook(pattern, hook, head, dest_positions):
        d = int(torch.as_tensor(dest_positions).reshape(-1)[0])  # uses the first position for all
        pattern[:, head, d] = 0.0
        pattern[:, head, d, 0] = 1.0
        return pattern

    assert not run_check("polysemantic.bos_ablation_hook", hook).passed


def test_induction_mask_off_by_one_is_caught():
    def mask(tokens):
        n = tokens.shape[0]
        idx = torch.arange(n)
        return (tokens[None, :] == tokens[:, None]) & (idx[None, :] < idx[:, None])

    result = run_check("polysemantic.induction_mask", mask)
    assert not result.passed and "off by one" in result.message


def test_depths_right_only_on_the_visible_example_fail():
    visible = CHECKS["polysemantic.indentation_depths"].cases()[0]["str_tokens"]
    answer = P.indentation_depths(visible)
    result = run_check("polysemantic.indentation_depths", lambda str_tokens: answer)
    assert not result.passed and "hidden test case" in result.message


def test_clean_vs_ablated_mistakes(attn_only_standin):
    def read_too_early(model, tokens, answers, layer, head):
        dest = tokens.shape[1] - 1
        hook = functools.partial(P.bos_ablation_hook, head=head, dest_positions=dest)
        out = torch.zeros(2, 2)
        for i, hooks in enumerate([[], [(f"blocks.{layer}.attn.hook_pattern", hook)]]):
            logits = P.logits_at(attn_only_standin, tokens, dest - 1, hooks)
            out[i, 0] = (logits.argmax(-1) == answers).float().mean()
            out[i, 1] = logits.softmax(-1)[torch.arange(len(answers)), answers].mean()
        return out

    result = run_check("polysemantic.clean_vs_ablated", read_too_early, model=attn_only_standin)
    assert not result.passed and "one position too early" in result.message
    wrong = CHECKS["polysemantic.clean_vs_ablated"].mistakes["mean logit instead of mean probability"]
    result = run_check("polysemantic.clean_vs_ablated", wrong, model=attn_only_standin)
    assert not result.passed and "mean logit" in result.message


def test_ablation_sweep_mistakes(attn_only_standin):
    mistakes = CHECKS["polysemantic.ablation_sweep"].mistakes
    for description in ("the sign is flipped (ablated minus clean)", "off by one: drop[j] comes from ablating position j + 1"):
        result = run_check("polysemantic.ablation_sweep", mistakes[description], model=attn_only_standin)
        assert not result.passed and description in result.message


def test_prompt_and_answer_mistakes(attn_only_standin):
    for description, wrong in CHECKS["polysemantic.prompt_and_answer"].mistakes.items():
        result = run_check("polysemantic.prompt_and_answer", wrong, model=attn_only_standin)
        assert not result.passed and description in result.message, description
