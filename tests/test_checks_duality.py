"""Chapter 4's checks: each passes the reference and rejects typical mistakes by name."""

from __future__ import annotations

import pytest
import torch

from exercises_lib import duality as D
from exercises_lib import patching as P
from exercises_lib.checks import CHECKS, run_check
from exercises_lib.checks import duality as C

NAMES = [
    "duality.logit_diff",
    "duality.logit_diff_directions",
    "duality.logit_lens_logit_diff",
    "duality.head_logit_attribution",
    "duality.dual_word_attention",
    "duality.normalise",
    "duality.patch_resid_pre",
    "duality.patch_resid_mid",
    "duality.patch_rows",
    "duality.patch_head_z",
    "duality.head_output_delta",
]


@pytest.fixture(autouse=True)
def _no_raise(monkeypatch):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)


def test_all_checks_registered():
    run_check("duality.normalise", P.normalise)  # loads the check modules
    assert set(NAMES) <= set(CHECKS)
    for name in NAMES:
        assert len(CHECKS[name].mistakes) >= 2, name


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, gpt2_standin):
    result = run_check(name, CHECKS[name].reference, model=gpt2_standin)
    assert result.passed, result.message


# (check, a wrong implementation, words the message must contain)
WRONG = [
    ("duality.logit_diff", lambda logits, correct, incorrect: -D.logit_diff(logits, correct, incorrect), "sign is flipped"),
    ("duality.logit_diff", C._mistake_first_position, "first position"),
    ("duality.logit_diff_directions", lambda model, correct, incorrect: -D.logit_diff_directions(model, correct, incorrect), "sign is flipped"),
    ("duality.logit_diff_directions", lambda model, correct, incorrect: model.W_U[:, correct] - model.W_U[:, incorrect], "shape"),
    ("duality.logit_lens_logit_diff", C._lens_without_ln, "scale is not applied"),
    ("duality.logit_lens_logit_diff", C._lens_recomputed_ln, "re-normalised"),
    ("duality.logit_lens_logit_diff",
     lambda cache, directions: (cache.accumulated_resid(layer=-1, pos_slice=-1) * directions[None]).sum(-1), "shape"),
    ("duality.head_logit_attribution", C._dla_without_ln, "scale is not applied"),
    ("duality.head_logit_attribution", C._dla_first_position, "first position"),
    ("duality.head_logit_attribution", lambda cache, directions: -D.head_logit_attribution(cache, directions), "sign is flipped"),
    ("duality.dual_word_attention", lambda pattern, head, dual_pos: pattern[:, head, dual_pos, -1], "swapped"),
    ("duality.dual_word_attention", lambda pattern, head, dual_pos: pattern[:, :, -1, dual_pos].mean(1), "averaged"),
    ("duality.normalise", lambda metric_values, clean_value, corrupt_value: (metric_values - clean_value) / (corrupt_value - clean_value), "wrong baseline"),
    ("duality.normalise", lambda metric_values, clean_value, corrupt_value: metric_values / clean_value, "clean value only"),
    ("duality.patch_resid_pre", C._patch_every_position, "every position"),
    ("duality.patch_resid_pre", C._patch_other_position, "wrong position"),
    ("duality.patch_resid_mid", C._write_ln2_input, "MLP's input"),
    ("duality.patch_resid_mid", C.patch_resid_pre_reference, "resid_pre was patched"),
    ("duality.patch_rows", C._rows_all_positions, "every position"),
    ("duality.patch_rows", C._rows_wrong_prompt, "prompt 0"),
    ("duality.patch_head_z", C._head_on_pos_axis, "position axis"),
    ("duality.patch_head_z", lambda z, source_z, head: source_z.clone(), "every head"),
    ("duality.head_output_delta", lambda model, source_cache, target_cache, layer, head:
        -C.head_output_delta_reference(model, source_cache, target_cache, layer, head), "swapped"),
    ("duality.head_output_delta", C._delta_all_heads, "every head"),
]


@pytest.mark.parametrize("name, wrong, words", WRONG, ids=[f"{n}-{w}" for n, _, w in WRONG])
def test_mistakes_are_rejected_and_named(name, wrong, words, gpt2_standin):
    result = run_check(name, wrong, model=gpt2_standin)
    assert not result.passed
    assert words in result.message, result.message


def test_right_only_on_the_visible_example_fails(gpt2_standin):
    """A patch hard-wired to the visible example's site fails on a hidden case."""

    def hardwired(model, target_tokens, source_cache, layer, pos, metric):
        return C.patch_resid_pre_reference(model, target_tokens, source_cache, 3, pos, metric)

    result = run_check("duality.patch_resid_pre", hardwired, model=gpt2_standin)
    assert not result.passed and "hidden test case" in result.message


def test_not_implemented_is_reported(gpt2_standin):
    def student(logits, correct, incorrect):
        raise NotImplementedError("todo")

    assert "not written yet" in run_check("duality.logit_diff", student, model=gpt2_standin).message
