"""Each claims test of chapter 3 fails when the analysis behind it is broken the obvious way.

Every test here runs one claims test of ``tests/claims/test_ch03_polysemantic.py``
on the attn-only-4l stand-in, first as it is (it passes), then with one
function of :mod:`exercises_lib.polysemantic` replaced by a broken version (it
must fail with an AssertionError).
"""

from __future__ import annotations

import pytest
import torch

from exercises_lib import polysemantic as P

from claims import test_ch03_polysemantic as claims


@pytest.fixture(scope="module")
def course_model(attn_only_standin):
    return lambda name: attn_only_standin


def _fails(claim, course_model) -> None:
    with pytest.raises(AssertionError):
        claim(course_model)


def test_3_1_fails_when_induction_and_indentation_are_not_measured(course_model, monkeypatch):
    """Mutation: the masses keep BOS and previous token only (induction and indentation zero)."""
    claims.test_claim_3_1_behaviour_distribution(course_model)
    real = P._batched_masses

    def only_bos_and_previous(pattern, tokens, depths):
        m = real(pattern, tokens, depths).clone()
        m[..., 2:] = 0.0
        return m

    monkeypatch.setattr(P, "_batched_masses", only_bos_and_previous)
    _fails(claims.test_claim_3_1_behaviour_distribution, course_model)


def test_3_1_fails_when_depths_are_ignored(course_model, monkeypatch):
    """Mutation: no token is a newline+indent token (every depth -1): no bigger indentation."""
    monkeypatch.setattr(P, "_depths", lambda model, tokens: torch.full(tokens.shape, -1))
    _fails(claims.test_claim_3_1_behaviour_distribution, course_model)


def test_3_2_fails_when_labels_are_read_one_position_early(course_model, monkeypatch):
    """Mutation: the label is read at the token before the destination (off by one)."""
    claims.test_claim_3_2_templates(course_model)

    def off_by_one(model, prompts, layer, head, **rules):
        pattern = P.head_patterns(model, prompts.tokens, [layer])[layer][:, head]
        masses = P._batched_masses(pattern, prompts.tokens, P._depths(model, prompts.tokens))[:, -2]
        labels = [P.BEHAVIOURS[i] for i in P._label_index(masses, **rules).tolist()]
        return {b: labels.count(b) / len(labels) for b in P.BEHAVIOURS if labels.count(b)}

    monkeypatch.setattr(P, "destination_labels", off_by_one)
    _fails(claims.test_claim_3_2_templates, course_model)


def _no_op_hook(pattern, hook, head, dest_positions):
    return pattern


def test_3_3_fails_when_the_ablation_does_nothing(course_model, monkeypatch):
    """Mutation: the BOS-ablation hook leaves the pattern alone (ablated = clean)."""
    claims.test_claim_3_3_bos_ablation_table(course_model)
    monkeypatch.setattr(P, "bos_ablation_hook", _no_op_hook)
    _fails(claims.test_claim_3_3_bos_ablation_table, course_model)


def test_3_3_fails_when_the_wrong_head_is_ablated(course_model, monkeypatch):
    """Mutation: the hook ablates the next head (4 -> 5) instead of the asked one."""
    real = P.bos_ablation_hook
    monkeypatch.setattr(P, "bos_ablation_hook", lambda pattern, hook, head, dest_positions:
                        real(pattern, hook, (head + 1) % pattern.shape[1], dest_positions))
    _fails(claims.test_claim_3_3_bos_ablation_table, course_model)


def test_3_4_fails_when_the_sweep_ablates_the_wrong_position(course_model, monkeypatch):
    """Mutation: copy j of a prompt is ablated at j - 1 (off by one): the largest drop moves."""
    claims.test_claim_3_4_only_the_destination_matters(course_model)
    real = P.bos_ablation_hook

    def shifted(pattern, hook, head, dest_positions):
        pos = torch.as_tensor(dest_positions, device=pattern.device)
        return real(pattern, hook, head, (pos - 1) % pattern.shape[-1])

    monkeypatch.setattr(P, "bos_ablation_hook", shifted)
    _fails(claims.test_claim_3_4_only_the_destination_matters, course_model)


def test_3_4_fails_when_the_sweep_ablates_every_position(course_model, monkeypatch):
    """Mutation: every copy is ablated at the destination whatever its own position."""
    real = P.bos_ablation_hook
    monkeypatch.setattr(P, "bos_ablation_hook", lambda pattern, hook, head, dest_positions:
                        real(pattern, hook, head, pattern.shape[-2] - 1))
    _fails(claims.test_claim_3_4_only_the_destination_matters, course_model)
