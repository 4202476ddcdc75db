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


MOVED = {"mover_head": [4, 2], "reader_heads": [[7, 0], [7, 5], [7, 10]], "writer_head": [10, 3],
         "early_mlp": 5, "late_mlp": 9}


@pytest.fixture(scope="module")
def moved():
    """The duality circuit planted elsewhere (with the real layer 0 and the embeddings only)."""
    return build_standin("gpt2-small", plants=["surrogate_embeddings", "duality"], placement={"duality": MOVED},
                         device="cpu")


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
    by_hand = torch.stack([logits[b, -1, ps.correct[b]] - logits[b, -1, ps.incorrect[b]] for b in range(len(ps))]).detach()
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
    assert (logits[:, -1].argmax(-1) == ps.correct).float().mean() >= 0.75


def _assert_found(found, where):
    """The chapter's analysis (nothing read from the plant) finds every part where it was planted."""
    mover, writer = tuple(where["mover_head"]), tuple(where["writer_head"])
    readers = {tuple(h) for h in where["reader_heads"]}
    assert found["mover_layer"] == mover[0], found["resid"][:, :, -1]
    assert found["movers"] == [mover], found["movers"]
    assert found["writer"] == writer
    assert set(found["readers"]) == readers, found["readers"]
    assert found["visible_mlp"] == where["early_mlp"], found["visible_from"]
    assert found["writer_mlp"] == where["late_mlp"], found["reader_paths"]


def test_default_plant_is_found_at_the_write_ups_places(gpt2_standin):
    from exercises_lib.standin.duality import DEFAULT_PLACEMENT

    found = D.find_circuit(gpt2_standin, D.left_right_prompts(gpt2_standin, " left").subset([0, 1]))
    _assert_found(found, DEFAULT_PLACEMENT)


def test_plant_elsewhere_is_found_there(moved):
    from exercises_lib.standin.duality import DEFAULT_PLACEMENT

    found = D.find_circuit(moved, D.left_right_prompts(moved, " left").subset([0, 1]))
    _assert_found(found, DEFAULT_PLACEMENT | MOVED)


def test_explorer_builds(gpt2_standin):
    """The explorer draws its figures once while it is built (in a kernel they go to its Output)."""
    import ipywidgets as widgets

    box = D.duality_explorer(gpt2_standin)
    assert isinstance(box, widgets.VBox) and isinstance(box.children[-1], widgets.Output)
    pair_dropdown = box.children[0].children[0]
    pair_dropdown.value = 3  # me / you: the update draws that prompt's figures without error


def test_explorer_shows_each_prompts_own_analysis(gpt2_standin, monkeypatch):
    """The explorer runs every prompt at once, batched by length, when it is built; a change shows the
    chosen prompt's logit lens, DLA and logit difference, equal to a forward pass of that prompt alone."""
    from exercises_lib import plotting

    shown = []
    monkeypatch.setattr(plotting, "line", lambda y, **kw: shown.append(("lens", y, kw["title"])))
    monkeypatch.setattr(plotting, "imshow", lambda z, **kw: shown.append(("dla", z, kw["title"])))
    templates = [D.LEFT_RIGHT_TEMPLATES[0], D.PAIR_TEMPLATES[1]]  # prompts of two lengths
    box = D.duality_explorer(gpt2_standin, templates=templates)
    assert len(box.analyses) == len(D.DUAL_PAIRS) * len(templates) * 2
    for pair, template, first in [(3, templates[0], "second word"), (0, templates[1], "first word"),
                                  (5, templates[1], "second word")]:
        a, b = D.DUAL_PAIRS[pair]
        word, answer = (a, b) if first == "first word" else (b, a)
        text = template.format(word.strip())
        tokens = gpt2_standin.to_tokens(text)
        logits, cache = gpt2_standin.run_with_cache(tokens)
        c = torch.tensor([gpt2_standin.to_single_token(answer)])
        i = torch.tensor([gpt2_standin.to_single_token(word)])
        directions = D.logit_diff_directions(gpt2_standin, c, i)
        shown.clear()
        box.update(pair, template, first)
        (_, lens, lens_title), (_, dla, _) = shown
        torch.testing.assert_close(lens, D.logit_lens_logit_diff(cache, directions)[:, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dla, D.head_logit_attribution(cache, directions)[..., 0], atol=1e-4, rtol=1e-4)
        ld = float(D.logit_diff(logits, c, i)[0].detach())
        assert f"'{text}' -> '{answer.strip()}' vs '{word.strip()}': logit difference {ld:.2f}" in lens_title
