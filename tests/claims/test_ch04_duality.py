"""Chapter 4's claims (CLAIMS.md, "Chapter 4"), on the stand-in and, where it loads, on GPT-2 small.

Real-model expectations come from the write-up "Exploring Duality" (2023),
with the tolerances stated in each test; they are skipped with a reason where
the real weights cannot be loaded. Nothing here reads where the stand-in's
mechanism was planted: the head under test is discovered from behaviour on
both models (``_dual_head``), then checked against the write-up's head 9.7 on
the real model and against the behaviour the claims describe on the stand-in.
"""

from __future__ import annotations

import pytest
import torch

from exercises_lib import duality as D
from exercises_lib import patching as P

pytestmark = pytest.mark.claims

torch.set_grad_enabled(False)


def _dual_head(model) -> tuple[int, int]:
    """The head found from behaviour on the left-correct prompts.

    Candidates are the heads that "attend mostly" to the earlier dual word:
    from the final position, the dual word is the source they attend to most
    (mean over prompts). Among them, the one with the largest mean direct logit
    attribution to the logit difference. How *much* it attends and how much of
    the DLA it carries are asserted by the claims, not used to pick it.
    On the real model the result must be the write-up's head, 9.7.
    """
    ps = D.left_right_prompts(model, " left")
    _, cache = model.run_with_cache(ps.clean_tokens)
    dla = D.head_logit_attribution(cache, D.logit_diff_directions(model, ps.correct, ps.incorrect)).mean(-1)
    final_attention = torch.stack(
        [cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1, :].mean(0) for layer in range(model.cfg.n_layers)]
    )  # [layer, head, src]
    reads_dual_word = final_attention.argmax(-1) == ps.dual_pos
    assert reads_dual_word.any(), "no head attends mostly from the final position to the dual word"
    layer, head, _ = D.top_heads(dla.masked_fill(~reads_dual_word, float("-inf")), 1)[0]
    assert (layer, head) == (9, 7), f"discovered head {layer}.{head}, the write-up's is 9.7"
    return layer, head


_FOUND: dict = {}


def _found(model) -> dict:
    """The chapter's analysis (``duality.find_circuit``) on two left-correct prompts, once per model."""
    key = id(model)
    if key not in _FOUND:
        _FOUND[key] = D.find_circuit(model, D.left_right_prompts(model, " left").subset([0, 1]))
    return _FOUND[key]


def _lr_dla(model):
    ps = D.left_right_prompts(model, " left")
    logits, cache = model.run_with_cache(ps.clean_tokens)
    dirs = D.logit_diff_directions(model, ps.correct, ps.incorrect)
    return ps, logits, cache, D.head_logit_attribution(cache, dirs).mean(-1)


def test_claim_4_1_opposite_predicted(course_model):
    """4.1: " left" after "...my right hand and my", at high probability; other pairs too; right/wrong."""
    model = course_model("gpt2-small")
    top = D.top_predictions(model, "I have two hands, my right hand and my", k=3)
    assert top[0][0] == " left", top
    # Real: "really high confidence" in the write-up; we ask for more than 0.3.
    assert top[0][1] > 0.3
    lr = D.left_right_prompts(model)
    ld = D.logit_diff(model(lr.clean_tokens), lr.correct, lr.incorrect)
    for answer in (" left", " right"):
        mask = torch.tensor([a == answer for _, a in lr.pairs])
        assert ld[mask].mean() > 0, answer
    pairs = D.pair_prompts(model)
    assert D.logit_diff(model(pairs.clean_tokens), pairs.correct, pairs.incorrect).mean() > 0
    # The asymmetry: " right" also pairs with " wrong": " wrong" gains after " right", not after " left".
    wrong = model.to_single_token(" wrong")
    after_right = model(model.to_tokens("I have two hands, my right hand and my"))[0, -1, wrong]
    after_left = model(model.to_tokens("I have two hands, my left hand and my"))[0, -1, wrong]
    assert after_right - after_left > 1.0, (float(after_right), float(after_left))
    if not model.is_standin:
        probs = dict(D.top_predictions(model, "The difference between right and", k=50))
        assert probs.get(" wrong", 0.0) > probs.get(" left", 0.0)


def test_claim_4_2_logit_lens(course_model):
    """4.2: the logit lens ends at the logit difference and starts near zero; it rises late."""
    model = course_model("gpt2-small")
    ps = D.left_right_prompts(model)
    logits, cache = model.run_with_cache(ps.clean_tokens)
    lens = D.logit_lens_logit_diff(cache, D.logit_diff_directions(model, ps.correct, ps.incorrect))
    b_U = model.b_U[ps.correct] - model.b_U[ps.incorrect]
    torch.testing.assert_close(lens[-1] + b_U, D.logit_diff(logits, ps.correct, ps.incorrect), atol=1e-3, rtol=1e-4)
    mean = lens.mean(1)
    assert abs(mean[0]) < 0.5 * mean[-1]
    labels = D.resid_labels(model.cfg.n_layers)
    half = labels[int((mean > 0.5 * mean[-1]).nonzero()[0])]
    layer = int(half.split("_")[0]) if half != "final_post" else model.cfg.n_layers
    assert layer >= 6  # the write-up's curve rises in the second half of the network


def test_claim_4_3_one_head_dominates_dla(course_model):
    """4.3: one head (9.7 on the real model) dominates the DLA and attends to the dual word."""
    model = course_model("gpt2-small")
    ps, logits, cache, dla = _lr_dla(model)
    layer, head = _dual_head(model)  # on the real model: asserted to be 9.7
    (top_layer, top_head, value), second = D.top_heads(dla, 2)
    # The head that reads the dual word is also the top DLA head over all heads, far ahead of the next.
    assert (top_layer, top_head) == (layer, head)
    assert value > 2 * abs(second[2])  # "only one head provides a significant logit difference"
    att = D.dual_word_attention(cache[f"blocks.{layer}.attn.hook_pattern"], head, ps.dual_pos).mean()
    assert att > 0.5  # "almost all of its attention" on the real model


def _resid_scores(model, positions):
    sweep = D.left_right_prompts(model, " left").subset([0, 1, 2, 3])
    metric = D.logit_diff_metric(sweep)
    clean, corrupt = metric(model(sweep.clean_tokens)), metric(model(sweep.corrupt_tokens))
    hooks = P.resid_hook_names(model, "resid_pre") + P.resid_hook_names(model, "resid_mid")
    raw = P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric, positions=positions(sweep),
                        last_position_only=True, progress=False)
    return sweep, P.normalise(raw, clean, corrupt).reshape(2, model.cfg.n_layers, -1)


def test_claim_4_4_patching_hot_spots(course_model):
    """4.4: denoising resid_pre/resid_mid: the dual word at resid_pre 6 recovers most; the last token almost
    nothing at resid_pre 6 and some at resid_mid 6; attention layer 6 is where information first moves."""
    model = course_model("gpt2-small")
    found = _found(model)
    pre, mid = found["resid"][0], found["resid"][1]  # [layer, pos]
    dual = D.left_right_prompts(model, " left").dual_pos
    assert pre[6, dual] > 0.5  # "recovers most"
    assert pre[6, -1] < 0.2  # "recovers almost no performance"
    assert mid[6, -1] > pre[6, -1] + 0.05  # "recovers some"
    assert found["mover_layer"] == 6, found["mover_layer"]


def test_claim_4_4_visible_only_after_mlp_8(course_model):
    """4.4: with resid_mid 6 of the last token denoised, the logit difference appears only at 9_pre (after MLP 8)."""
    model = course_model("gpt2-small")
    found = _found(model)
    assert found["visible_from"] == "9_pre", found["visible_from"]
    assert found["visible_mlp"] == 8


def test_claim_4_4_heads_6_1_and_layer_8(course_model):
    """4.4: head 6.1 moves the information in attention layer 6; heads 8.1, 8.6 and 8.8 (attending to the dual
    word) matter; 9.7 writes the most directly. Found by head-level patching, attention and DLA."""
    model = course_model("gpt2-small")
    found = _found(model)
    assert found["movers"] == [(6, 1)], found["movers"]
    assert found["writer"] == (9, 7), found["writer"]
    layer8 = {h for h in found["readers"] if h[0] == 8}
    assert layer8 and layer8 <= {(8, 1), (8, 6), (8, 8)}, found["readers"]
    if model.is_standin:  # the write-up: "heads 1, 6 and 8 seem important"
        assert layer8 == {(8, 1), (8, 6), (8, 8)}


def test_claim_4_4_mlps_8_and_10(course_model):
    """4.4 (MLPs): patching one MLP's output (all positions) per layer, both directions, and path patching
    from the layer-8 heads: MLP 10 writes the answer."""
    model = course_model("gpt2-small")
    left = D.left_right_prompts(model, " left")
    sweep = left.subset([0, 1])
    metric = D.logit_diff_metric(sweep)
    clean, corrupt = metric(model(sweep.clean_tokens)), metric(model(sweep.corrupt_tokens))
    hooks = P.resid_hook_names(model, "mlp_out")
    scores = {d: P.normalise(P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric, direction=d,
                                           positions="all", last_position_only=True, progress=False),
                             clean, corrupt).flatten()
              for d in ("denoise", "noise")}
    recovered, lost = scores["denoise"], 1 - scores["noise"]  # [layer] each
    # The write-up has no per-MLP patching figure: its MLP evidence is indirect (the patched logit difference
    # jumps after MLP 8; MLP 10 is said to write what attention layer 8 provides into the logit subspace) and
    # its credences for MLP 8 / MLP 10 mechanisms are 50 % each. So: MLP 10 moves at least a tenth of the
    # difference, and the layer-8 heads act through it more than through any other MLP (path patching).
    assert max(float(recovered[10]), float(lost[10])) > 0.1, (recovered.tolist(), lost.tolist())
    assert _found(model)["writer_mlp"] == 10, _found(model)["reader_paths"].tolist()


def test_claim_4_5_same_head_for_other_pairs(course_model):
    """4.5: the left/right head is among the top three DLA heads for the other dual pairs."""
    model = course_model("gpt2-small")
    pairs = D.pair_prompts(model)
    _, cache = model.run_with_cache(pairs.clean_tokens)
    dla = D.head_logit_attribution(cache, D.logit_diff_directions(model, pairs.correct, pairs.incorrect)).mean(-1)
    assert _dual_head(model) in [(l, h) for l, h, _ in D.top_heads(dla, 3)]
    # "the same heads in layer 8 attend to the dual tokens"
    layer8 = [h for h in _found(model)["readers"] if h[0] == 8]
    attention = D.final_attention_to(cache, pairs, layer8)
    assert layer8 and min(attention.values()) > 0.5, attention
    # Partial: the pairs are completed to different degrees, not all of them.
    ld = D.logit_diff(model(pairs.clean_tokens), pairs.correct, pairs.incorrect)
    completed = float((ld > 1.0).float().mean())
    assert 0.3 < completed < 1.0, ld.tolist()


def test_claim_4_6_hypotheses_are_testable(course_model):
    """4.6: path patching runs on the write-up's heads; with every later input as receiver it equals
    activation patching. Stand-in: the discovered head acts directly (its direct path carries its effect)."""
    model = course_model("gpt2-small")
    sweep = D.left_right_prompts(model, " left").subset([0, 1])
    metric = D.logit_diff_metric(sweep)
    layer, head = _dual_head(model)  # on the real model: asserted to be 9.7
    receivers = [f"blocks.{layer}.ln2.hook_in"]
    for later in range(layer + 1, model.cfg.n_layers):
        receivers += [f"blocks.{later}.ln1.hook_in", f"blocks.{later}.ln2.hook_in"]
    receivers.append("ln_final.hook_in")
    total = P.path_patch(model, sweep.clean_tokens, sweep.corrupt_tokens, (layer, head), receivers, metric)
    act = P.patch_together(model, sweep.clean_tokens, sweep.corrupt_tokens, [(f"blocks.{layer}.attn.hook_z", head, None)], metric)
    torch.testing.assert_close(total, act, atol=1e-3, rtol=1e-4)
    clean, corrupt = metric(model(sweep.clean_tokens)), metric(model(sweep.corrupt_tokens))
    lost_total = 1 - P.normalise(total, clean, corrupt)
    direct = P.path_patch(model, sweep.clean_tokens, sweep.corrupt_tokens, (layer, head), "ln_final.hook_in", metric)
    lost_direct = 1 - P.normalise(direct, clean, corrupt)
    # The head matters (write-up: 90 %) on both models.
    assert lost_total > 0.3
    if model.is_standin:  # the stand-in's 9.7 writes its part directly (the write-up's 10 % hypothesis)
        assert lost_direct > 0.8 * lost_total


def test_across_2_patching_directions(course_model):
    """Across chapters 2: run both directions. A single-path circuit gives denoise + noise = 1 at every
    site (the stand-in); on the real model the deviations mark AND-like (< 0) and OR-like (> 0) sites."""
    model = course_model("gpt2-small")
    sweep = D.left_right_prompts(model, " left").subset([0, 1])
    metric = D.logit_diff_metric(sweep)
    clean, corrupt = metric(model(sweep.clean_tokens)), metric(model(sweep.corrupt_tokens))
    hooks = P.resid_hook_names(model, "resid_pre")[::3]
    scores = {d: P.normalise(P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric, direction=d,
                                           last_position_only=True, progress=False), clean, corrupt)
              for d in ("denoise", "noise")}
    interaction = scores["denoise"] + scores["noise"] - 1
    # Positions before the dual word are untouched by the corruption: exactly 0 + 1.
    assert interaction[:, : sweep.dual_pos].abs().max() < 1e-3
    if model.is_standin:  # every path of the stand-in's circuit adds up at the residual sites
        assert interaction.abs().max() < 0.15
