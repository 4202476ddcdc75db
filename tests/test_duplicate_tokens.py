"""Chapter 1 helpers: brute-force comparisons with forward passes, and the plant found where it is put.

The stand-in's duplicate-token plant is measured from behaviour only (the model
is run; nothing is read from the plant), at its default place and elsewhere.
"""

import pytest
import torch

from exercises_lib import duplicate_tokens as dt
from exercises_lib.models import build_standin

torch.set_grad_enabled(False)

ELSEWHERE = {
    "duplicate_tokens": {
        "decaying_head": 2, "uniform_head": 9, "partial_head": 7, "cancelling_heads": [4],
        "neuron": 77, "companion_neurons": [10, 20, 30],
    },
    # The positional plant moves out of the way (head 7 stays a decaying head, as 10 is by default).
    "positional": {"previous_token": [3, 4, 11], "decaying": [0, 1, 5, 6, 7, 8], "uniform": [10]},
}


@pytest.fixture(scope="module")
def moved():
    return build_standin("gpt2-small", placement=ELSEWHERE, plants=["positional", "duplicate_tokens"], device="cpu")


@pytest.fixture(scope="module")
def genesis(gpt2_standin):
    tokens = dt.text_tokens(gpt2_standin)[:, :600]
    return tokens, dt.run_layer0(gpt2_standin, tokens)


def test_ln_scale_is_the_inverse_of_the_cached_hook_scale(gpt2_standin, genesis):
    tokens, cache = genesis
    ours = dt.layer0_ln_scale(gpt2_standin, tokens)
    torch.testing.assert_close(ours * cache["blocks.0.ln1.hook_scale"][..., 0], torch.ones_like(ours), atol=1e-3, rtol=0)
    # The approximation (E and P orthogonal) is close: the surrogate E is random against the real P.
    rel = ((dt.layer0_ln_scale_approx(gpt2_standin, tokens) - ours) / ours).abs()
    assert rel.median() < 0.03 and rel.max() < 0.15


def test_pvo_from_weights_equals_a_forward_pass_with_ln_and_patterns_frozen(gpt2_standin, genesis):
    """Brute force: zero the token embeddings, freeze LN scales and patterns at their clean values;
    the neuron's pre-activation is then exactly the positional contributions plus the constant terms."""
    model = gpt2_standin
    tokens, clean = genesis
    neuron = 1168
    frozen = {
        "blocks.0.ln1.hook_scale": clean["blocks.0.ln1.hook_scale"],
        "blocks.0.ln2.hook_scale": clean["blocks.0.ln2.hook_scale"],
        "blocks.0.attn.hook_pattern": clean["blocks.0.attn.hook_pattern"],
    }
    hooks = [(name, (lambda value: lambda act, hook: value)(value)) for name, value in frozen.items()]
    hooks.append(("hook_embed", lambda act, hook: torch.zeros_like(act)))
    seen = {}
    hooks.append(("blocks.0.mlp.hook_pre", lambda act, hook: seen.setdefault("pre", act.clone())))
    hooks.append(("blocks.0.attn.hook_z", lambda act, hook: seen.setdefault("z", act.clone())))
    model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=1)

    s1 = 1 / clean["blocks.0.ln1.hook_scale"][0, :, 0]
    s2 = 1 / clean["blocks.0.ln2.hook_scale"][0, :, 0]
    pattern = clean["blocks.0.attn.hook_pattern"][0]
    contrib = dt.positional_contributions_to_neuron(model, pattern, s1, s2, neuron)
    const = s2 * (model.b_O[0] @ model.W_in[0][:, neuron]) + model.b_in[0, neuron]
    torch.testing.assert_close(contrib.sum(0) + const, seen["pre"][0, :, neuron], atol=2e-3, rtol=1e-3)

    # Head by head: z_h W_O[h] W_in[:, k] * s2 measured by the hook = the PVO row of that head.
    per_head = torch.einsum("phd,hdm,m->hp", seen["z"][0], model.W_O[0], model.W_in[0][:, neuron]) * s2
    torch.testing.assert_close(per_head, contrib[:-1], atol=2e-3, rtol=1e-3)

    # And the PVO matrix itself, row by row, is P[i] V O W_in.
    pvo = dt.pvo_contributions(model, 5)
    i = 123
    torch.testing.assert_close(pvo[i], model.W_pos[i] @ model.W_V[0, 5] @ model.W_O[0, 5] @ model.W_in[0], atol=1e-4, rtol=1e-4)


def test_positional_plus_token_contributions_give_the_pre_activation(gpt2_standin, genesis):
    tokens, cache = genesis
    s1 = 1 / cache["blocks.0.ln1.hook_scale"][0, :, 0]
    s2 = 1 / cache["blocks.0.ln2.hook_scale"][0, :, 0]
    pattern = cache["blocks.0.attn.hook_pattern"][0]
    total = dt.positional_contributions_to_neuron(gpt2_standin, pattern, s1, s2, 1168).sum(0)
    total = total + dt.token_contributions_to_neuron(gpt2_standin, tokens[0], pattern, s1, s2, 1168).sum(0)
    torch.testing.assert_close(total, cache["blocks.0.mlp.hook_pre"][0, :, 1168], atol=2e-3, rtol=1e-3)


def test_head_output_parts_add_up_for_a_duplicate_head(gpt2_standin, genesis):
    tokens, cache = genesis
    s1 = dt.layer0_ln_scale(gpt2_standin, tokens)[0]
    outs = dt.head_outputs(gpt2_standin, cache)
    tok, pos = dt.duplicate_head_output_parts(gpt2_standin, tokens[0], cache["blocks.0.attn.hook_pattern"][0, 5], 5, s1)
    assert dt.relative_error(tok + pos, outs[5]).median() < 0.15  # the real head 0.5, mostly on copies
    # With the exact token part (attention-weighted tokens) the split is exact for any head.
    for head in (0, 3):
        pattern = cache["blocks.0.attn.hook_pattern"][0, head]
        OV = gpt2_standin.W_V[0, head] @ gpt2_standin.W_O[0, head]
        exact_tok = pattern @ ((s1[:, None] * gpt2_standin.W_E[tokens[0]]) @ OV)
        _, pos = dt.duplicate_head_output_parts(gpt2_standin, tokens[0], pattern, head, s1)
        torch.testing.assert_close(exact_tok + pos, outs[head], atol=2e-4, rtol=1e-3)


def test_copy_masks_and_weights():
    tokens = torch.tensor([[9, 1, 2, 1, 3, 1, 2]])
    mask = dt.earlier_copy_mask(tokens)[0]
    assert mask[3, 1] and mask[5, 1] and mask[5, 3] and mask[6, 2]
    assert not mask[1, 1] and not mask[1, 3] and mask.sum() == 4
    w = dt.uniform_copy_weights(tokens[0])
    torch.testing.assert_close(w.sum(-1), torch.ones(7))
    assert w[5, 1] == w[5, 3] == w[5, 5] == pytest.approx(1 / 3)
    assert torch.all(w.triu(1) == 0)


def test_repeated_random_tokens_have_exactly_one_earlier_copy(gpt2_standin):
    tokens = dt.repeated_random_tokens(gpt2_standin, half_len=30, batch=3)
    mask = dt.earlier_copy_mask(tokens)
    assert tokens.shape == (3, 61)
    assert torch.equal(mask.sum(-1)[:, 31:], torch.ones(3, 30, dtype=torch.long))
    assert mask[:, :31].sum() == 0


def test_single_copy_sequences():
    class _M:
        class cfg:
            d_vocab, device = 50257, "cpu"

    seqs = dt.single_copy_sequences(_M, position=100, distance=40, n_samples=3)
    assert seqs.shape == (3, 101) and torch.all(seqs[:, 60] == seqs[:, 100]) and torch.all(seqs[:, 0] == dt.BOS)
    assert dt.earlier_copy_mask(seqs).sum() == 3
    with pytest.raises(ValueError):
        dt.single_copy_sequences(_M, position=10, distance=10)


def test_line_fit_and_outliers():
    fit = dt.line_fit(3.0 - 0.01 * torch.arange(1000.0))
    assert fit["slope"] == pytest.approx(-0.01) and fit["zero_crossing"] == pytest.approx(300) and fit["r2"] > 0.999
    norms = torch.ones(100)
    norms[[7, 42]] = torch.tensor([20.0, 30.0])
    assert dt.outlier_neurons(norms) == [42, 7]


def _findings(model):
    """Everything the chapter finds from behaviour and weights, on any GPT-2-small-shaped model."""
    rep = dt.repeated_random_tokens(model)
    rep_scores = dt.duplicate_token_score(dt.run_layer0(model, rep)["blocks.0.attn.hook_pattern"], rep)
    text = dt.text_tokens(model)[:, :700]
    cache = dt.run_layer0(model, text)
    pattern = cache["blocks.0.attn.hook_pattern"]
    text_scores = dt.duplicate_token_score(pattern, text)
    top2 = [int(h) for h in text_scores.topk(2).indices]
    ratio = dt.copy_to_self_ratio(pattern, text)
    uniform_dup = max(top2, key=lambda h: float(ratio[h, -2]))
    pvo = dt.pvo_contributions(model, uniform_dup)
    neurons = dt.outlier_neurons(dt.pvo_norm_grid(pvo).flatten())
    far = dt.long_range_heads(dt.mean_attention_distance(pattern))
    return dict(rep_scores=rep_scores, text_scores=text_scores, uniform_dup=uniform_dup,
                neurons=neurons, long_range=far, text=text, cache=cache)


def test_default_plant_is_where_the_write_up_puts_it(gpt2_standin):
    f = _findings(gpt2_standin)
    assert set(f["rep_scores"].topk(2).indices.tolist()) == {1, 5}
    assert set(f["text_scores"].topk(2).indices.tolist()) == {1, 5}
    assert int(f["text_scores"].topk(3).indices[2]) == 10  # the real heads, the surrogate embeddings
    assert f["uniform_dup"] == 5
    assert f["neurons"][0] == 1168 and len(f["neurons"]) <= 6
    # The real heads 0.5 and 0.11 look far back: over the whole 1,024 tokens of Genesis (on 700, the real
    # head 0.5's copies are too near for its mean distance to stand out).
    text = dt.text_tokens(gpt2_standin)
    pattern = dt.run_layer0(gpt2_standin, text)["blocks.0.attn.hook_pattern"]
    assert set(dt.long_range_heads(dt.mean_attention_distance(pattern))) == {5, 11}


def test_neuron_fires_on_far_copies_only(gpt2_standin):
    """Behaviour: pre-activation against the distance to a single earlier copy (the planted neuron read
    through the real head 0.5, whose attention on a copy varies from token to token: 32 samples)."""
    pre = dt.neuron_pre_vs_copy_distance(gpt2_standin, 1168, [None, 5, 150, 300], position=600, n_samples=32)
    none, close, far, farther = pre.tolist()
    assert none < 0 and close - none < 0.25 and farther > far > none and farther - none > 0.5, pre
    early = dt.neuron_pre_vs_copy_distance(gpt2_standin, 1168, [None, 40], position=60, n_samples=32)
    assert early.max() < farther - 0.5, (early, pre)


def test_plant_elsewhere_is_found_there(moved):
    f = _findings(moved)
    assert set(f["rep_scores"].topk(2).indices.tolist()) == {2, 9}
    assert set(f["text_scores"].topk(2).indices.tolist()) == {2, 9}
    assert int(f["text_scores"].topk(3).indices[2]) == 7
    assert f["uniform_dup"] == 9
    assert f["neurons"][0] == 77
    assert set(f["long_range"]) == {9, 10}
    pre = dt.neuron_pre_vs_copy_distance(moved, 77, [None, 200], position=500, n_samples=6)
    assert pre[1] - pre[0] > 0.5
    # The weights-only prediction tracks the moved neuron too.
    text, cache = f["text"], f["cache"]
    s1 = dt.layer0_ln_scale_approx(moved, text)[0]
    s2 = float((1 / cache["blocks.0.ln2.hook_scale"][0, :, 0]).median())
    pred = dt.predict_neuron_pre(moved, text[0], 77, 9, [h for h in f["long_range"] if h != 9], s1, s2)
    actual = cache["blocks.0.mlp.hook_pre"][0, :, 77]
    assert torch.corrcoef(torch.stack([pred, actual]))[0, 1] > 0.9


def test_plant_rejects_bad_placements():
    from exercises_lib.standin import build_standin_weights

    with pytest.raises(ValueError, match="must differ"):
        build_standin_weights("gpt2-small", plants=["duplicate_tokens"], placement={"duplicate_tokens": {"uniform_head": 1}})
    with pytest.raises(ValueError, match="cancelling heads"):
        build_standin_weights("gpt2-small", plants=["duplicate_tokens"], placement={"duplicate_tokens": {"cancelling_heads": [5]}})


def test_explorer_renders_once(gpt2_standin):
    box = dt.duplicate_neuron_explorer(gpt2_standin, [1168, 455], 5, [11], ln2_scale=4.6, ln1_scale=5.5)
    fig = box.figure(1168, 600)
    assert len(fig.data[0].y) == gpt2_standin.cfg.n_ctx and len(fig.data[1].y) == 599
    assert "stand-in" in fig.layout.title.text


def test_group_attention_ratio_on_hand_made_patterns():
    """Three group tokens (7, 8, 9) among others: a pattern that spreads evenly over every earlier group
    token gives a ratio near 1; one that attends only to exact copies gives ratio 0."""
    tokens = torch.tensor([1, 7, 2, 8, 3, 9, 4, 7, 5, 8, 6, 9])
    pos = len(tokens)
    member = torch.isin(tokens, torch.tensor([7, 8, 9]))
    even = torch.zeros(pos, pos)
    copies = torch.zeros(pos, pos)
    for n in range(pos):
        earlier_group = [i for i in range(n) if member[i]]
        if member[n] and earlier_group:
            even[n, earlier_group] = 1 / len(earlier_group)
        same = [i for i in range(n) if tokens[i] == tokens[n]]
        if member[n] and same:
            copies[n, same] = 1 / len(same)
    r_even = dt.group_attention_ratio(even, tokens, [7, 8, 9], min_dest=6)
    r_copies = dt.group_attention_ratio(copies, tokens, [7, 8, 9], min_dest=6)
    # Pooled over the destinations 7, 9, 11 (3, 4 and 5 earlier group tokens, one of them a copy each).
    pooled = ((2 / 3 + 3 / 4 + 4 / 5) / 9) / ((1 / 3 + 1 / 4 + 1 / 5) / 3)
    assert r_even["destinations"] == 3 and abs(r_even["ratio"] - pooled) < 1e-6 and r_even["rest"] == 0
    assert r_copies["ratio"] == 0 and r_copies["copy"] > 0


def test_mean_cosine_is_signed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert abs(dt.mean_cosine(a, a) - 0.5) < 1e-6  # (1 + 0 + 0 + 1) / 4
    assert abs(dt.mean_cosine(a, -a) + 0.5) < 1e-6  # signed: not the mean |cos|


def test_weights_basis_names_each_source(gpt2_standin):
    text = dt.weights_basis(gpt2_standin, ("attention", "blocks.0.attn.W_Q"), ("embeddings", "W_E"), ("W_pos", "W_pos"))
    assert text == "real: attention, W_pos; planted: embeddings"

    class Real:
        is_standin = False
        weight_sources = {"*": {"source": "real", "plants": []}}

    assert dt.weights_basis(Real(), ("embeddings", "W_E")) == "real: embeddings"


def test_no_copy_level_reads_the_pre_activation(gpt2_standin):
    """The level is the mean of hook_pre past ``start`` over random tokens seen once (recomputed by hand)."""
    level = dt.no_copy_level(gpt2_standin, 1168, start=50, length=120, n_samples=2, seed=3)
    seqs = dt.single_copy_sequences(gpt2_standin, 119, None, n_samples=2, seed=3)
    pre = dt.run_layer0(gpt2_standin, seqs)["blocks.0.mlp.hook_pre"][:, 50:, 1168]
    assert abs(level - float(pre.mean())) < 1e-6
    assert (seqs[:, 1:, None] == seqs[:, None, 1:]).sum() == 2 * 119  # no repeats: only the diagonal
