"""The course's patching sweeps give TransformerLens's numbers (transformer_lens.patching).

``bench/bench_patching.py`` times the same pairs on whole sweeps; here each pair
runs on a few sites, so the test is quick. TransformerLens's functions take the
clean run's cache and patch it into the corrupted run: the course's
``direction="denoise"``.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from exercises_lib import duality as D
from exercises_lib import patching as P
from exercises_lib.patching_fast_path import _INC_AGREES

tlp = pytest.importorskip("transformer_lens.patching")


@pytest.fixture(scope="module")
def setup(gpt2_standin):
    model = gpt2_standin
    ps = D.left_right_prompts(model, " left").subset([0, 1])
    return model, ps, D.logit_diff_metric(ps)


def _cache(model, tokens, names):
    wanted = set(names)
    return model.run_with_cache(tokens, names_filter=lambda n: n in wanted)[1]


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=1e-4)


def test_resid_pre_by_layer_and_position(setup):
    model, ps, metric = setup
    layers, positions = [0, 5, 11], [ps.dual_pos - 1, ps.dual_pos, ps.seq_len - 1]
    hooks = [f"blocks.{l}.hook_resid_pre" for l in layers]
    index = pd.DataFrame([(l, p) for l in layers for p in positions], columns=["layer", "pos"])
    peer = tlp.generic_activation_patch(model, ps.corrupt_tokens, _cache(model, ps.clean_tokens, hooks), metric,
                                        patch_setter=tlp.layer_pos_patch_setter, activation_name="resid_pre",
                                        index_df=index)
    ours = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, positions=positions,
                         last_position_only=True, progress=False)
    _close(ours.flatten(), peer)
    assert _INC_AGREES.get(model) is True  # the incremental path ran (no silent fallback)
    assert float(ours.std()) > 1e-2  # the sites differ: not a constant


def test_resid_mid_through_attn_out(setup):
    """TransformerLens's resid_mid hook on the bridge is the MLP's input only; the residual
    stream itself is patched as attn_out := clean resid_mid - resid_pre (what the course does)."""
    model, ps, metric = setup
    layers, positions = [3, 9], [ps.dual_pos, ps.seq_len - 1]
    mid = [f"blocks.{l}.hook_resid_mid" for l in layers]
    src = _cache(model, ps.clean_tokens, mid)
    tgt = _cache(model, ps.corrupt_tokens, [f"blocks.{l}.hook_resid_pre" for l in layers])
    fake = {f"blocks.{l}.hook_attn_out": src[f"blocks.{l}.hook_resid_mid"] - tgt[f"blocks.{l}.hook_resid_pre"]
            for l in layers}
    index = pd.DataFrame([(l, p) for l in layers for p in positions], columns=["layer", "pos"])
    peer = tlp.generic_activation_patch(model, ps.corrupt_tokens, fake, metric, patch_setter=tlp.layer_pos_patch_setter,
                                        activation_name="attn_out", index_df=index)
    ours = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, mid, metric, positions=positions, progress=False)
    _close(ours.flatten(), peer)


def test_heads_all_positions_and_by_position(setup):
    model, ps, metric = setup
    layer = 9
    z = f"blocks.{layer}.attn.hook_z"
    cache = _cache(model, ps.clean_tokens, [z])
    index = pd.DataFrame([(layer, h) for h in range(model.cfg.n_heads)], columns=["layer", "head"])
    peer = tlp.generic_activation_patch(model, ps.corrupt_tokens, cache, metric,
                                        patch_setter=tlp.layer_head_vector_patch_setter, activation_name="z",
                                        index_df=index)
    ours = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, [z], metric, heads=True,
                         last_position_only=True, progress=False)
    _close(ours.flatten(), peer)
    assert float(ours.std()) > 1e-2
    positions = [ps.dual_pos, ps.seq_len - 1]
    index = pd.DataFrame([(layer, p, h) for h in range(4) for p in positions], columns=["layer", "pos", "head"])
    peer = tlp.generic_activation_patch(model, ps.corrupt_tokens, cache, metric,
                                        patch_setter=tlp.layer_pos_head_vector_patch_setter, activation_name="z",
                                        index_df=index)
    ours = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, [z], metric, heads=True, positions=positions,
                         progress=False)
    _close(ours[0, :4].flatten(), peer)


def test_mlp_out_all_positions(setup):
    model, ps, metric = setup
    hooks = [f"blocks.{l}.hook_mlp_out" for l in (2, 10)]
    index = pd.DataFrame([(2,), (10,)], columns=["layer"])
    peer = tlp.generic_activation_patch(model, ps.corrupt_tokens, _cache(model, ps.clean_tokens, hooks), metric,
                                        patch_setter=lambda act, idx, clean: clean.clone(),
                                        activation_name="mlp_out", index_df=index)
    ours = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, positions="all",
                         last_position_only=True, progress=False)
    _close(ours, peer)


def test_path_patching_equals_the_hook_loop(setup):
    model, ps, metric = setup
    layer, head = 6, 1
    z = f"blocks.{layer}.attn.hook_z"
    src, tgt = _cache(model, ps.corrupt_tokens, [z]), _cache(model, ps.clean_tokens, [z])
    delta = (src[z][:, :, head] - tgt[z][:, :, head]) @ model.W_O[layer, head]
    receivers = ["blocks.6.ln2.hook_in", "blocks.8.ln1.hook_in", "blocks.8.ln2.hook_in", "ln_final.hook_in"]
    swept = P.path_patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, (layer, head), receivers, metric,
                               progress=False)
    assert swept.shape == (len(receivers),)
    for receiver, value in zip(receivers, swept):
        peer = metric(model.run_with_hooks(ps.clean_tokens, fwd_hooks=[(receiver, lambda act, hook: act + delta)]))
        ours = P.path_patch(model, ps.clean_tokens, ps.corrupt_tokens, (layer, head), receiver, metric)
        _close(ours, peer)
        _close(value, peer)
    # Sets patched together, restricted positions, and an MLP sender: the sweep equals path_patch.
    sets = [receivers[1:3], "ln_final.hook_in"]
    for sender in [(layer, head), "blocks.5.hook_mlp_out"]:
        for pos in (None, [ps.seq_len - 1]):
            swept = P.path_patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, sender, sets, metric,
                                       receiver_positions=pos, progress=False)
            for rs, value in zip(sets, swept):
                _close(value, P.path_patch(model, ps.clean_tokens, ps.corrupt_tokens, sender, rs, metric,
                                           receiver_positions=pos))


def test_a_wrong_patch_is_caught(setup):
    """The comparison can fail: patching the wrong position gives other numbers."""
    model, ps, metric = setup
    hooks = ["blocks.4.hook_resid_pre"]
    index = pd.DataFrame([(4, ps.dual_pos)], columns=["layer", "pos"])
    peer = tlp.generic_activation_patch(model, ps.corrupt_tokens, _cache(model, ps.clean_tokens, hooks), metric,
                                        patch_setter=tlp.layer_pos_patch_setter, activation_name="resid_pre",
                                        index_df=index)
    wrong = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, positions=[ps.dual_pos + 1],
                          progress=False)
    with pytest.raises(AssertionError):
        _close(wrong.flatten(), peer)
