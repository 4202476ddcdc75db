"""Chapter 3's helpers: brute-force comparisons, templates, and the plant measured from behaviour."""

from __future__ import annotations

import functools

import pytest
import torch

from exercises_lib import code_prompts
from exercises_lib import polysemantic as P
from exercises_lib.models import build_standin
from exercises_lib.texts import python_source_snippets

# ---------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------


def test_indentation_depths_both_tokenizer_styles():
    gpt2 = ["<|endoftext|>", "if", " x", ":", "\n", " ", " ", " ", " y", " ", "=", "\n\n", " ", "z"]
    assert P.indentation_depths(gpt2) == [-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, 0, 1, -1]
    neox = ["if", " x", ":", "\n   ", " y", "\n       ", " z", "\n", "w", "  \n\t", " v"]
    assert P.indentation_depths(neox) == [-1, -1, -1, 3, -1, 7, -1, 0, -1, 4, -1]


def _brute_masses(pattern, tokens, depths):
    n = len(tokens)
    out = torch.zeros(n, 4)
    for d in range(n):
        used = set()
        out[d, 0] = pattern[d, 0]
        used.add(0)
        if d >= 2:
            out[d, 1] = pattern[d, d - 1]
            used.add(d - 1)
        for s in range(1, d):
            if s not in used and tokens[s - 1] == tokens[d]:
                out[d, 2] += pattern[d, s]
                used.add(s)
        if depths[d] >= 0:
            for s in range(1, d):
                if s not in used and depths[s] > depths[d]:
                    out[d, 3] += pattern[d, s]
    return out


def test_induction_mask_and_masses_match_brute_force():
    g = torch.Generator().manual_seed(0)
    for n in (5, 17, 40):
        tokens = torch.randint(0, 4, (n,), generator=g)
        depths = torch.randint(-1, 4, (n,), generator=g)
        mask = P.induction_mask(tokens)
        for d in range(n):
            for s in range(n):
                assert bool(mask[d, s]) == (1 <= s < d and bool(tokens[s - 1] == tokens[d]))
        scores = torch.randn(n, n, generator=g).masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), -torch.inf)
        pattern = scores.softmax(-1)
        masses = P.behaviour_masses(pattern, tokens, depths)
        torch.testing.assert_close(masses, _brute_masses(pattern, tokens.tolist(), depths.tolist()))
        assert (masses.sum(-1) <= 1 + 1e-5).all()  # each source counted once
        batched = P.behaviour_masses(torch.stack([pattern, pattern.flip(0)]), tokens, depths)
        torch.testing.assert_close(batched[0], masses)


def test_classify_behaviour_rules():
    m = torch.tensor([
        [0.5, 0.4, 0.0, 0.0],  # BOS at the threshold: inactive
        [0.1, 0.3, 0.2, 0.1],  # previous at min_mass
        [0.0, 0.1, 0.5, 0.3],
        [0.0, 0.1, 0.2, 0.6],
        [0.2, 0.25, 0.25, 0.2],  # nothing reaches min_mass
    ])
    assert P.classify_behaviour(m) == ["inactive", "previous", "induction", "bigger-indentation", "unknown"]
    assert P.classify_behaviour(m[0]) == "inactive"
    assert P.classify_behaviour(m.reshape(1, 5, 4))[0][4] == "unknown"
    assert P.classify_behaviour(m, bos_threshold=0.6)[0] == "previous"


def test_behaviour_table_rows_sum_to_one():
    labels = ["previous", "induction", "previous", "inactive"]
    toks = ["a", "b", "a", "c"]
    t = P.behaviour_table(labels, toks, [None, "a", "zzz"])
    torch.testing.assert_close(t[0], torch.tensor([0.5, 0.25, 0.0, 0.25, 0.0]))
    torch.testing.assert_close(t[1], torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))
    assert t[2].sum() == 0


# ---------------------------------------------------------------------------
# Hooks and forward passes (default stand-in)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sets(attn_only_standin):
    return code_prompts.make_prompt_sets(attn_only_standin)


def test_logits_at_and_head_patterns_match_a_full_forward(attn_only_standin):
    m = attn_only_standin
    tokens = m.to_tokens(["def f(a, b):\n    return a + b", "class Node:\n    pass\nx = Node"])[:, :10]
    with torch.no_grad():
        full, cache = m.run_with_cache(tokens)
    pos = torch.tensor([9, 4])
    torch.testing.assert_close(P.logits_at(m, tokens, pos), full[torch.arange(2), pos], atol=1e-4, rtol=1e-4)
    for layers in ([1], [0, 3]):
        pats = P.head_patterns(m, tokens, layers)
        for layer in layers:
            torch.testing.assert_close(pats[layer], cache[f"blocks.{layer}.attn.hook_pattern"])


def test_bos_ablation_makes_the_head_write_bos_value(attn_only_standin):
    """With the hook, the head's z at the ablated position is its value vector at BOS,
    and that vector is not empty: BOS has a value like any token."""
    m = attn_only_standin
    tokens = m.to_tokens(["import os\nx = os.path", "for i in range(10):\n    print(i)"])[:, :9]
    pos = torch.tensor([8, 5])
    hook = functools.partial(P.bos_ablation_hook, head=4, dest_positions=pos)
    with torch.no_grad(), m.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", hook)]):
        _, cache = m.run_with_cache(tokens)
    z, v = cache["blocks.1.attn.hook_z"], cache["blocks.1.attn.hook_v"]
    for b in range(2):
        torch.testing.assert_close(z[b, pos[b], 4], v[b, 0, 4], atol=1e-5, rtol=1e-4)
    assert v[:, 0, 4].norm(dim=-1).min() > 0.3 * v[:, 1:, 4].norm(dim=-1).mean()


def test_bos_ablation_is_not_zero_ablation(attn_only_standin, sets):
    """BOS-ablation writes BOS's value vector, so its logits differ from zeroing the head's output."""
    m, ps = attn_only_standin, sets["induction"]
    tokens = ps.tokens[:12]
    dest = tokens.shape[1] - 1

    def zero_z(z, hook):
        z[:, dest, 4] = 0.0
        return z

    hook = functools.partial(P.bos_ablation_hook, head=4, dest_positions=dest)
    bos = P.logits_at(m, tokens, dest, [("blocks.1.attn.hook_pattern", hook)])
    zero = P.logits_at(m, tokens, dest, [("blocks.1.attn.hook_z", zero_z)])
    assert (bos - zero).abs().max(-1).values.min() > 0.5


def test_sweep_matches_one_forward_per_position(attn_only_standin, sets):
    m, ps = attn_only_standin, sets["previous"]
    tokens, answers = ps.tokens[:2], ps.answers[:2]
    batched = P.ablation_sweep(m, tokens, answers, 1, 4, batch_size=7)  # batches cut across prompts
    seq = tokens.shape[1]
    p_clean = P.logits_at(m, tokens, -1).softmax(-1)[torch.arange(2), answers]
    for j in [0, 1, seq // 2, seq - 3, seq - 2, seq - 1]:
        hook = functools.partial(P.bos_ablation_hook, head=4, dest_positions=j)
        p = P.logits_at(m, tokens, -1, [("blocks.1.attn.hook_pattern", hook)]).softmax(-1)[torch.arange(2), answers]
        assert abs(float((p_clean - p).mean()) - float(batched[j])) < 1e-4


def test_clean_vs_ablated_by_hand(attn_only_standin, sets):
    m, ps = attn_only_standin, sets["induction"]
    table = P.clean_vs_ablated(m, ps.tokens[:10], ps.answers[:10], 1, 4)
    logits = m(ps.tokens[:10])[:, -1]
    torch.testing.assert_close(table[0, 0], (logits.argmax(-1) == ps.answers[:10]).float().mean())
    torch.testing.assert_close(table[0, 1], logits.softmax(-1)[torch.arange(10), ps.answers[:10]].mean(), atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------


def test_templates_have_the_writeup_sizes_and_single_token_answers(attn_only_standin, sets):
    m = attn_only_standin
    assert {k: len(v) for k, v in sets.items()} == {"induction": 120, "indentation": 50, "previous": 50}
    for name, ps in sets.items():
        assert ps.tokens[:, 0].eq(m.tokenizer.bos_token_id).all()
        for text, toks, ans in zip(ps.texts[:10], ps.tokens, ps.answers):
            full = m.to_tokens(text)[0]
            assert torch.equal(full[:-1], toks) and full[-1] == ans
    ind = sets["induction"]
    for toks, ans in zip(ind.tokens, ind.answers):
        copies = (toks[1:-1] == toks[-1]).nonzero()[:, 0] + 1
        assert len(copies) == 1 and toks[copies[0] + 1] == ans  # answer = token after the earlier copy
    assert len(set(ind.answers.tolist())) == 3  # three class names, as in the write-up
    assert {m.to_string(a).strip() for a in sets["indentation"].answers} == {")"}
    assert {m.to_string(a) for a in sets["previous"].answers} == {"self"}
    for toks in sets["previous"].tokens:
        assert (toks == toks[-1]).sum() == 1  # the bracket has no earlier copy


def test_templates_are_deterministic(attn_only_standin):
    a = code_prompts.induction_texts(attn_only_standin, n=5, seed=3)
    assert a == code_prompts.induction_texts(attn_only_standin, n=5, seed=3)
    assert a != code_prompts.induction_texts(attn_only_standin, n=5, seed=4)


def test_prompt_and_answer_rejects_unequal_lengths(attn_only_standin):
    with pytest.raises(ValueError):
        P.prompt_and_answer(attn_only_standin, ["x = 1", "x = foo(bar, baz)"])


# ---------------------------------------------------------------------------
# The plant, measured from behaviour
# ---------------------------------------------------------------------------


def _previous_token_heads(model, tokens, layer=0):
    pat = P.head_patterns(model, tokens, [layer])[layer]  # batch head dest src
    prev = pat.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 5:].mean((0, 2))
    return {h for h in range(model.cfg.n_heads) if prev[h] > 0.8}


@pytest.fixture(scope="module")
def code(attn_only_standin):
    return P.code_tokens(attn_only_standin, python_source_snippets(8, 1200, seed=1), n_tokens=160)


def test_default_plant(attn_only_standin, sets, code):
    m = attn_only_standin
    assert _previous_token_heads(m, code) == {7}
    profile = P.head_behaviour_profile(m, code)
    poly = P.polysemanticity(profile)
    assert (poly >= 2).nonzero().tolist() == [[1, 4]]
    # inactive on single letters: ' R' attends to BOS
    toks = m.to_tokens("value = compute(R, width)\nresult = R")
    pat = P.head_patterns(m, toks, [1])[1][0, 4]
    assert pat[-1, 0] > 0.5
    for name in ("induction", "indentation", "previous"):
        drops = P.ablation_by_head(m, sets[name].first(8))
        assert divmod(int(drops.argmax()), 8) == (1, 4)
    # bigger indentation: from a dedented line, the head attends to the deeper lines above
    labels = P.destination_labels(m, sets["indentation"], 1, 4)
    assert labels.get("bigger-indentation", 0) >= 0.5


@pytest.fixture(scope="module")
def moved():
    return build_standin(
        "attn-only-4l", device="cpu", placement={"polysemantic": {"prev_head": 2, "layer": 2, "head": 3}}
    )


def test_moved_plant_is_found_there(moved, code):
    """The analysis finds the plant at 2.3 (with the layer-0 head 0.2) without being told."""
    assert _previous_token_heads(moved, code) == {2}
    profile = P.head_behaviour_profile(moved, code)
    assert (P.polysemanticity(profile) >= 2).nonzero().tolist() == [[2, 3]]
    sets = code_prompts.make_prompt_sets(moved, sizes={"induction": 12, "indentation": 12, "previous": 12})
    for name in ("induction", "indentation", "previous"):
        drops = P.ablation_by_head(moved, sets[name])
        assert divmod(int(drops.argmax()), 8) == (2, 3)
        table = P.clean_vs_ablated(moved, sets[name].tokens, sets[name].answers, 2, 3)
        assert table[0, 1] - table[1, 1] >= 0.15 and table[1, 0] <= table[0, 0]
    assert P.destination_labels(moved, sets["induction"], 2, 3).get("induction", 0) >= 0.5
    assert P.destination_labels(moved, sets["indentation"], 2, 3).get("bigger-indentation", 0) >= 0.5


def test_plant_placement_errors():
    from exercises_lib.standin import build_standin_weights

    with pytest.raises(ValueError, match="layer below"):
        build_standin_weights("attn-only-4l", plants=["polysemantic"], placement={"polysemantic": {"prev_layer": 1}})
