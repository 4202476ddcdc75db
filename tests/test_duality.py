"""Chapter 4's helpers (exercises_lib.duality) and the duality plant, measured from behaviour.

Brute-force checks: the logit lens and the DLA computed by hand from cached
activations equal the library's; every component's contribution adds up to
the logit difference. The plant is found by the chapter's analysis (DLA,
attention, activation patching, head patching) wherever it is planted.
"""

from __future__ import annotations

import pytest
import torch

from exercises_lib import duality as D
from exercises_lib import patching as P
from exercises_lib.models import build_standin
from exercises_lib.standin import build_standin_weights


@pytest.fixture(scope="module")
def lr_run(gpt2_standin):
    ps = D.left_right_prompts(gpt2_standin)
    logits, cache = gpt2_standin.run_with_cache(ps.clean_tokens)
    return ps, logits, cache


@pytest.fixture(scope="module")
def moved():
    """The duality head planted at 7.3 instead of 9.7 (with only that plant)."""
    return build_standin("gpt2-small", plants=["duality"], placement={"duality": {"layer": 7, "head": 3}}, device="cpu")


# ---------------------------------------------------------------------------
# Prompt set
# ---------------------------------------------------------------------------


def test_prompt_set_is_aligned(gpt2_standin):
    ps = D.left_right_prompts(gpt2_standin)
    assert len(ps) == 2 * len(D.LEFT_RIGHT_TEMPLATES) and ps.dual_pos == 7 and ps.seq_len == 11
    diff = ps.clean_tokens != ps.corrupt_tokens
    assert diff.sum(1).eq(1).all() and diff[:, ps.dual_pos].all()
    assert (ps.clean_tokens[:, ps.dual_pos] == ps.incorrect).all()
    assert (ps.corrupt_tokens[:, ps.dual_pos] == ps.correct).all()
    assert len(ps.where_answer(" left")) == len(D.LEFT_RIGHT_TEMPLATES)
    for template in D.PAIR_TEMPLATES:
        pp = D.pair_prompts(gpt2_standin, template)
        assert len(pp) == 2 * len(D.DUAL_PAIRS)
    for word, opposite in D.OPPOSITE.items():
        assert D.OPPOSITE[opposite] == word
        assert len(gpt2_standin.to_tokens(word, prepend_bos=False)[0]) == 1


def test_prompt_set_rejects_bad_prompts(gpt2_standin):
    with pytest.raises(ValueError, match="different token lengths"):
        D.build_prompt_set(gpt2_standin, ["Both {} and", "The difference between {} and"], [(" up", " down")])
    with pytest.raises(ValueError, match="another dual word"):
        D.build_prompt_set(gpt2_standin, ["Go up, not {} and"], [(" left", " right")])
    with pytest.raises(ValueError, match="single GPT-2 token"):
        D.build_prompt_set(gpt2_standin, ["Both {} and"], [(" leftwards", " rightwards")])


# ---------------------------------------------------------------------------
# Metric, logit lens, DLA: brute force
# ---------------------------------------------------------------------------


def test_logit_diff_by_hand(lr_run):
    ps, logits, _ = lr_run
    by_hand = torch.tensor([logits[b, -1, ps.correct[b]] - logits[b, -1, ps.incorrect[b]] for b in range(len(ps))])
    torch.testing.assert_close(D.logit_diff(logits, ps.correct, ps.incorrect), by_hand)
    metric = D.logit_diff_metric(ps)
    torch.testing.assert_close(metric(logits), by_hand.mean())
    torch.testing.assert_close(metric(logits[:, -1:]), by_hand.mean())  # last position only is enough


def test_logit_lens_by_hand(gpt2_standin, lr_run):
    ps, logits, cache = lr_run
    dirs = D.logit_diff_directions(gpt2_standin, ps.correct, ps.incorrect)
    lens = D.logit_lens_logit_diff(cache, dirs)
    L = gpt2_standin.cfg.n_layers
    assert lens.shape == (2 * L + 1, len(ps))
    scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]
    names = [f"blocks.{l}.hook_{k}" for l in range(L) for k in ("resid_pre", "resid_mid")]
    names.append(f"blocks.{L - 1}.hook_resid_post")
    for row, name in enumerate(names):
        x = cache[name][:, -1]
        x = (x - x.mean(-1, keepdim=True)) / scale
        torch.testing.assert_close(lens[row], (x * dirs).sum(-1), atol=1e-3, rtol=1e-4)
    b_U = gpt2_standin.b_U[ps.correct] - gpt2_standin.b_U[ps.incorrect]
    torch.testing.assert_close(lens[-1] + b_U, D.logit_diff(logits, ps.correct, ps.incorrect), atol=1e-3, rtol=1e-4)


def test_head_dla_by_hand(gpt2_standin, lr_run):
    ps, logits, cache = lr_run
    dirs = D.logit_diff_directions(gpt2_standin, ps.correct, ps.incorrect)
    dla = D.head_logit_attribution(cache, dirs)
    scale = cache["ln_final.hook_scale"][:, -1]
    for layer, head in ((9, 7), (3, 0), (11, 11)):
        out = cache[f"blocks.{layer}.attn.hook_z"][:, -1, head] @ gpt2_standin.W_O[layer, head]
        out = (out - out.mean(-1, keepdim=True)) / scale
        torch.testing.assert_close(dla[layer, head], (out * dirs).sum(-1), atol=1e-3, rtol=1e-4)


def test_decomposition_adds_up(gpt2_standin, lr_run):
    ps, logits, cache = lr_run
    values, labels = D.logit_diff_decomposition(gpt2_standin, cache, ps.correct, ps.incorrect)
    L, H = gpt2_standin.cfg.n_layers, gpt2_standin.cfg.n_heads
    assert len(labels) == values.shape[0] == 2 + L * H + 2 * L + 1
    torch.testing.assert_close(values.sum(0), D.logit_diff(logits, ps.correct, ps.incorrect), atol=1e-3, rtol=1e-4)


def test_helpers(gpt2_standin):
    scores = torch.zeros(3, 4)
    scores[2, 1], scores[0, 3] = 5.0, 2.0
    assert [(l, h) for l, h, _ in D.top_heads(scores, 2)] == [(2, 1), (0, 3)]
    assert D.resid_labels(2) == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    pattern = torch.zeros(1, 2, 4, 4)
    pattern[0, 1, -1, 2] = 0.7
    assert float(D.dual_word_attention(pattern, 1, 2)[0]) == pytest.approx(0.7)


# ---------------------------------------------------------------------------
# The plant, measured from behaviour
# ---------------------------------------------------------------------------


def test_plant_keeps_the_unembedding_tied():
    build = build_standin_weights("gpt2-small", plants=["duality"])
    assert build.weights["unembed.W_U"].data_ptr() == build.weights["embed.W_E"].data_ptr()


def test_standin_predicts_the_opposite(gpt2_standin, lr_run):
    ps, logits, cache = lr_run
    assert (logits[:, -1].argmax(-1) == ps.correct).all()
    for template in D.PAIR_TEMPLATES:
        pp = D.pair_prompts(gpt2_standin, template)
        assert (gpt2_standin(pp.clean_tokens)[:, -1].argmax(-1) == pp.correct).all(), template


def _analyse(model):
    """Everything the chapter finds, from behaviour only (nothing read from the plant)."""
    ps = D.left_right_prompts(model)
    logits, cache = model.run_with_cache(ps.clean_tokens)
    dla = D.head_logit_attribution(cache, D.logit_diff_directions(model, ps.correct, ps.incorrect)).mean(-1)
    (layer, head, value), second = D.top_heads(dla, 2)
    attention = D.dual_word_attention(cache[f"blocks.{layer}.attn.hook_pattern"], head, ps.dual_pos).mean()
    sweep = ps.where_answer(" left").subset([0])
    metric = D.logit_diff_metric(sweep)
    clean, corrupt = metric(model(sweep.clean_tokens)), metric(model(sweep.corrupt_tokens))
    hooks = P.resid_hook_names(model, "resid_pre") + P.resid_hook_names(model, "resid_mid")
    resid = P.normalise(P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric,
                                      positions=[sweep.dual_pos, sweep.seq_len - 1], last_position_only=True,
                                      progress=False), clean, corrupt).reshape(2, model.cfg.n_layers, 2)
    # Head patching where the resid_mid map hands over from the dual word to the last token
    # (and in layer 0, as a control).
    handover = int((resid[1, :, 1] > resid[1, :, 0]).nonzero()[0])
    layers = sorted({0, handover})
    heads = P.normalise(P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens,
                                      [f"blocks.{l}.attn.hook_z" for l in layers], metric,
                                      heads=True, direction="noise", last_position_only=True, progress=False),
                        clean, corrupt)
    return dict(top=(layer, head), top_value=value, second_value=second[2], attention=float(attention),
                resid=resid, heads=heads, head_layers=layers)


def _assert_found(found, layer, head, n_layers):
    assert found["top"] == (layer, head)
    assert found["top_value"] > 5 * abs(found["second_value"])
    assert found["attention"] > 0.8
    pre, mid = found["resid"][0], found["resid"][1]  # [layer, (dual, last)]
    for l in range(n_layers):
        # resid_pre: the dual word up to the head's layer, the last token after it
        if l <= layer:
            assert pre[l, 0] > 0.9 and abs(pre[l, 1]) < 0.1, (l, pre[l])
        else:
            assert pre[l, 1] > 0.9 and abs(pre[l, 0]) < 0.1, (l, pre[l])
        # resid_mid: after the head's attention layer, the last token
        if l < layer:
            assert mid[l, 0] > 0.9 and abs(mid[l, 1]) < 0.1, (l, mid[l])
        else:
            assert mid[l, 1] > 0.9 and abs(mid[l, 0]) < 0.1, (l, mid[l])
    # Noising the planted head alone removes the behaviour; no other head of those layers matters.
    assert layer in found["head_layers"]
    necessary = 1 - found["heads"]
    row = found["head_layers"].index(layer)
    assert necessary[row, head] > 0.9
    necessary[row, head] = 0
    assert necessary.abs().max() < 0.1


def test_default_plant_is_found_at_9_7(gpt2_standin):
    _assert_found(_analyse(gpt2_standin), 9, 7, gpt2_standin.cfg.n_layers)


def test_plant_elsewhere_is_found_there(moved):
    _assert_found(_analyse(moved), 7, 3, moved.cfg.n_layers)


def test_explorer_builds(gpt2_standin):
    """The explorer draws its figures once while it is built (in a kernel they go to its Output)."""
    import ipywidgets as widgets

    box = D.duality_explorer(gpt2_standin)
    assert isinstance(box, widgets.VBox) and isinstance(box.children[-1], widgets.Output)
    pair_dropdown = box.children[0].children[0]
    pair_dropdown.value = 3  # me / you: the update runs the model again without error
