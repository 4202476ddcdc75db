"""Each claims test of chapter 4 fails when the analysis behind it is broken the obvious way.

Every test runs one claims test of ``tests/claims/test_ch04_duality.py`` on the
GPT-2 small stand-in with one function of :mod:`exercises_lib.duality` (or of
:mod:`exercises_lib.patching`) replaced by a broken version: it must fail with
an AssertionError. The claims tests themselves (unbroken) run in ``tests/claims``.
"""

from __future__ import annotations

import pytest
import torch

from exercises_lib import duality as D
from exercises_lib import patching as P

from claims import test_ch04_duality as claims

pytestmark = pytest.mark.slow

torch.set_grad_enabled(False)


@pytest.fixture
def course_model(gpt2_standin, monkeypatch):
    monkeypatch.setattr(claims, "_FOUND", {})  # the broken analysis is run afresh
    return lambda name: gpt2_standin


def _fails(claim, course_model) -> None:
    with pytest.raises(AssertionError):
        claim(course_model)


def test_4_1_fails_when_the_logit_difference_is_reversed(course_model, monkeypatch):
    real = D.logit_diff
    monkeypatch.setattr(D, "logit_diff", lambda logits, c, i: real(logits, i, c))
    _fails(claims.test_claim_4_1_opposite_predicted, course_model)


def test_4_2_fails_when_the_lens_reads_the_first_position(course_model, monkeypatch):
    def first_position(cache, directions):
        stack = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=0)
        return (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=0) * directions[None]).sum(-1)

    monkeypatch.setattr(D, "logit_lens_logit_diff", first_position)
    _fails(claims.test_claim_4_2_logit_lens, course_model)


def test_4_3_fails_when_dla_reads_the_first_position(course_model, monkeypatch):
    def first_position(cache, directions):
        results = cache.stack_head_results(layer=-1, pos_slice=0)
        dla = (cache.apply_ln_to_stack(results, layer=-1, pos_slice=0) * directions[None]).sum(-1)
        return dla.reshape(cache.model.cfg.n_layers, cache.model.cfg.n_heads, -1)

    monkeypatch.setattr(D, "head_logit_attribution", first_position)
    _fails(claims.test_claim_4_3_one_head_dominates_dla, course_model)


def test_4_4_hot_spots_fail_when_resid_mid_is_resid_pre(course_model, monkeypatch):
    """Mutation: the resid_mid rows are the resid_pre sweep (no layer ever moves anything)."""
    real = D.resid_patching
    monkeypatch.setattr(D, "resid_patching", lambda *a, **k: real(*a, **k)[[0, 0]])
    _fails(claims.test_claim_4_4_patching_hot_spots, course_model)


def test_4_4_visible_fails_when_the_patch_is_at_the_dual_word(course_model, monkeypatch):
    """Mutation: the patched logit lens patches the position before the last one."""
    real = D.patched_logit_lens
    monkeypatch.setattr(D, "patched_logit_lens", lambda model, prompts, layer, pos, **k: real(model, prompts, layer, pos - 1, **k))
    _fails(claims.test_claim_4_4_visible_only_after_mlp_8, course_model)


def test_4_4_heads_fail_when_heads_are_ranked_by_dla_alone(course_model, monkeypatch):
    """Mutation: "heads that matter" taken from one patching direction with the threshold of the top head only."""
    monkeypatch.setattr(D, "circuit_heads", lambda den, noi, threshold=0.03: [tuple(int(x) for x in (den == den.max()).nonzero()[0])])
    _fails(claims.test_claim_4_4_heads_6_1_and_layer_8, course_model)


def test_4_4_mlps_fail_when_paths_go_to_the_attention_inputs(course_model, monkeypatch):
    """Mutation: the readers' paths end in the next attention layer's input instead of the MLP's."""
    real = P.path_patch

    def to_attention(model, clean, corrupt, sender, receivers, metric, **k):
        if isinstance(receivers, str) and receivers.endswith("ln2.hook_in"):
            layer = int(receivers.split(".")[1])
            receivers = f"blocks.{min(layer + 1, model.cfg.n_layers - 1)}.ln1.hook_in"
        return real(model, clean, corrupt, sender, receivers, metric, **k)

    monkeypatch.setattr(P, "path_patch", to_attention)
    _fails(claims.test_claim_4_4_mlps_8_and_10, course_model)


def test_4_5_fails_when_attention_is_read_from_the_first_token(course_model, monkeypatch):
    def from_bos(cache, prompts, heads):
        return {(l, h): float(cache[f"blocks.{l}.attn.hook_pattern"][:, h, 0, prompts.dual_pos].mean()) for l, h in heads}

    monkeypatch.setattr(D, "final_attention_to", from_bos)
    _fails(claims.test_claim_4_5_same_head_for_other_pairs, course_model)


def test_4_6_fails_when_path_patching_patches_nothing(course_model, monkeypatch):
    real = P.path_patch
    monkeypatch.setattr(P, "path_patch", lambda model, clean, corrupt, sender, receivers, metric, **k:
                        real(model, clean, clean, sender, receivers, metric, **k))
    _fails(claims.test_claim_4_6_hypotheses_are_testable, course_model)
