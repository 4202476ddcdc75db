"""Chapter 2's helpers: weights-only computations against forward passes, and the analysis
finding the contextual plant wherever it is planted.

Nothing here reads ``model.standin_placement`` except to state what a test expects.
"""

from __future__ import annotations


import pytest
import torch

from exercises_lib import contextual as cx
from exercises_lib.layernorm import ln_scale
from exercises_lib.models import build_standin
from exercises_lib.texts import load_text

THE = 262
TOPIC_TEXTS = ["bible_genesis", "bible_psalms", "legal_gpl3", "python_docs", "british_prose", "american_prose",
               "war_history", "cooking", "fiction"]


@pytest.fixture(autouse=True)
def _no_grad():
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(True)


# ---------------------------------------------------------------------------
# Weights-only quantities equal what the forward pass does
# ---------------------------------------------------------------------------


def test_factorisation_recomposes_the_cached_pattern(gpt2_standin):
    model = gpt2_standin
    toks = cx.tokens_of(model, load_text("bible_genesis"), 300)
    cache = cx.layer0_cache(model, toks)
    pi, c, Z = cx.factorise_pattern(model, toks, cache)
    real = cache["blocks.0.attn.hook_pattern"][0]
    torch.testing.assert_close(pi * c / Z[..., None], real, atol=2e-5, rtol=1e-3)
    torch.testing.assert_close(pi.sum(-1), torch.ones_like(Z))
    assert (pi.triu(1) == 0).all() and (c.triu(1) == 0).all()


def test_positional_pattern_is_the_factorised_pi_of_identical_tokens(gpt2_standin):
    model = gpt2_standin
    n = 150
    toks = torch.full((n,), THE)
    cache = cx.layer0_cache(model, toks)
    pi, c, Z = cx.factorise_pattern(model, toks, cache)
    torch.testing.assert_close(cx.positional_pattern(model, THE, n), pi, atol=1e-5, rtol=1e-4)
    # ...and the identical-token pattern differs from it only through the own token's content term
    real = cx.identical_token_pattern(model, THE, n)
    torch.testing.assert_close(pi * c / Z[..., None], real, atol=2e-5, rtol=1e-3)


def test_normalisation_factors_match_the_forward_pass_where_the_token_is_the(gpt2_standin):
    """Where the real destination token is ' the', the fixed-destination Z is the real one."""
    model = gpt2_standin
    toks = cx.tokens_of(model, load_text("war_history"), 400)
    cache = cx.layer0_cache(model, toks)
    _, c, Z_real = cx.factorise_pattern(model, toks, cache)
    Z = cx.normalisation_factors(model, toks, THE)
    where = (toks == THE).nonzero()[:, 0]
    assert len(where) > 10
    torch.testing.assert_close(Z[:, where], Z_real[:, where], atol=1e-4, rtol=1e-3)
    # content weights at the true LN scales are the factorised c of those rows
    n = int(where[-1])
    s = 1.0 / cache["blocks.0.ln1.hook_scale"][0, :, 0]
    cw = cx.content_weights(model, toks[: n + 1], THE, dest_pos=n, scales=s[: n + 1])
    torch.testing.assert_close(cw, c[:, n, : n + 1], atol=1e-5, rtol=1e-3)


def test_neutral_positions_in_the_normalisation_factors(gpt2_standin):
    """neutral=(0,) is Z_n with c_n(0) = 1: Z_n - pi_n(0) c_n(0) + pi_n(0); all positions neutral: Z = 1."""
    model = gpt2_standin
    toks = cx.tokens_of(model, load_text("cooking"), 120)
    cache = cx.layer0_cache(model, toks)
    pi, c, Z_real = cx.factorise_pattern(model, toks, cache)
    where = (toks == THE).nonzero()[:, 0]
    assert len(where) > 2
    Z0 = cx.normalisation_factors(model, toks, THE, neutral=(0,))
    expected = Z_real - pi[:, :, 0] * c[:, :, 0] + pi[:, :, 0]
    torch.testing.assert_close(Z0[:, where], expected[:, where], atol=1e-4, rtol=1e-3)
    ones = cx.normalisation_factors(model, toks, THE, neutral=range(len(toks)))
    torch.testing.assert_close(ones, torch.ones_like(ones), atol=1e-5, rtol=1e-5)


def test_extended_embeddings_brute_force(gpt2_standin):
    model = gpt2_standin
    heads, Z = [0, 6, 8], torch.tensor([1.1, 0.6, 3.0])
    ids = torch.tensor([THE, 5, 1000, 34000])
    ext = cx.extended_embeddings(model, heads, Z, ids)
    c = cx.content_weights(model, ids, THE, 500)
    s = cx.token_ln_scale(model, ids)
    for j, t in enumerate(ids.tolist()):
        want = sum(
            c[h, j] / Z[k] * s[j] * model.W_E[t] @ model.W_V[0, h] @ model.W_O[0, h] for k, h in enumerate(heads)
        )
        torch.testing.assert_close(ext[j], want, atol=1e-5, rtol=1e-4)


def test_token_ln_scale_is_close_to_the_exact_scale_past_100(gpt2_standin):
    model = gpt2_standin
    toks = cx.tokens_of(model, load_text("fiction"), 600)
    exact = ln_scale(model.W_E[toks] + model.W_pos[: len(toks)])
    approx = cx.token_ln_scale(model, toks)
    rel = ((approx - exact) / exact)[100:].abs()
    assert rel.mean() < 0.03 and rel.max() < 0.12


def test_contribution_summary_equals_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    ext, W_in = torch.randn(1234, 64, generator=g), torch.randn(64, 40, generator=g)
    top_v, top_i, bot_v, bot_i, mean, std = cx.contribution_summary(ext, W_in, 2.5, k=7, chunk_size=100)
    C = 2.5 * ext @ W_in
    tv, ti = C.topk(7, dim=0)
    bv, bi = C.topk(7, dim=0, largest=False)
    torch.testing.assert_close(top_v, tv.T)
    torch.testing.assert_close(bot_v, bv.T)
    assert torch.equal(top_i, ti.T) and torch.equal(bot_i, bi.T)
    torch.testing.assert_close(mean, C.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(std, C.std(0, unbiased=False), atol=1e-4, rtol=1e-4)


def test_bag_of_tokens_prediction_brute_force():
    g = torch.Generator().manual_seed(1)
    T, toks = torch.randn(3, 20, generator=g), torch.randint(0, 20, (9,), generator=g)
    pi = torch.randn(3, 12, 12, generator=g).masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), -1e9).softmax(-1)
    Z = torch.rand(3, 12, generator=g) + 0.5
    got = cx.bag_of_tokens_prediction(T, toks, pi, Z)
    want = torch.tensor([
        sum(pi[h, n, i] * T[h, toks[i]] / Z[h, n] for h in range(3) for i in range(n + 1)) for n in range(9)
    ])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_contribution_components_add_up():
    g = torch.Generator().manual_seed(2)
    rows, w = torch.randn(30, 8, generator=g), torch.randn(8, generator=g)
    parts = cx.contribution_components(rows, w, 8)
    torch.testing.assert_close(parts.sum(-1), rows @ w, atol=1e-4, rtol=1e-4)
    # sign conventions of the SVD do not matter
    torch.testing.assert_close(cx.contribution_components(-rows, -w, 3), cx.contribution_components(rows, w, 3), atol=1e-4, rtol=1e-4)


def test_predicted_preactivation_of_an_unplanted_neuron_is_close(gpt2_standin):
    """A neuron that reads nothing contextual is predicted closely (LN and the other plants' heads approximated)."""
    model = gpt2_standin
    toks = cx.tokens_of(model, load_text("cooking"), 500)
    ctrl = cx.tokens_of(model, load_text("fiction"), 500)
    approx = cx.fit_layer0_approximation(model, ctrl, [0, 2, 6, 8, 9, 10])
    pred = cx.predict_preactivation(model, toks, 5, approx)
    act = cx.actual_preactivation(model, toks, 5)
    assert torch.corrcoef(torch.stack([pred[100:], act[100:]]))[0, 1] > 0.7


# ---------------------------------------------------------------------------
# The analysis finds the plant (default placement and elsewhere)
# ---------------------------------------------------------------------------


def analyse(model, n_texts=TOPIC_TEXTS):
    """Chapter 2's pipeline, weights and behaviour only; returns what it found."""
    found = {}
    pi = cx.positional_pattern(model, THE, model.cfg.n_ctx)
    copy = cx.copy_attention_score(model, n_sequences=2)
    groups = cx.classify_heads(cx.head_features(pi), copy)
    found["groups"] = {k: set(v) for k, v in groups.items()}
    ctx = sorted(groups["contextual"])
    toks = {n: cx.tokens_of(model, load_text(n), 700) for n in n_texts}
    Z = {n: cx.normalisation_factors(model, t, THE) for n, t in toks.items()}
    cv = cx.variation_across_texts(Z)
    plain = [h for h in ctx if copy[h] < cx.PARTIAL_DUPLICATE]
    found["most_variable"] = set(sorted(plain, key=lambda h: -float(cv[h]))[:2])
    stop = torch.tensor([cx.stopword_fraction(model, t) for t in toks.values()])
    means = torch.stack([z[:, 300:].mean(-1) for z in Z.values()]).cpu()  # [text, head]
    corr = {h: float(torch.corrcoef(torch.stack([stop, means[:, h]]))[0, 1]) for h in found["most_variable"]}
    found["stopword_head"] = max(corr, key=corr.get)
    found["keyword_head"] = min(corr, key=corr.get)
    approx = cx.fit_layer0_approximation(model, toks["fiction"], ctx, n_ctx=700)
    ext = cx.extended_embeddings(model, ctx, approx.Z_median[ctx])
    ext[50256] = 0
    W_in = cx.layer0_weights(model)["W_in"]
    summary = cx.contribution_summary(ext, W_in, approx.ln2_scale)
    top, bottom = cx.tail_scores(summary)
    found["tail_neurons"] = set((top.maximum(bottom) > 12).nonzero()[:, 0].tolist())
    M = cx.mean_contribution_per_text(ext, W_in, approx.ln2_scale, list(toks.values()))
    sel = cx.text_selectivity(M, summary[5])
    names = list(toks)
    found["religion"] = int(sel[names.index("bible_genesis")].argmax())
    found["war"] = int(sel[names.index("war_history")].argmax())
    diff = sel[names.index("british_prose")] - sel[names.index("american_prose")]
    found["britain"] = set(diff.topk(2).indices.tolist())
    found["approx"], found["ctx"] = approx, ctx
    return found


def _check_found(model, found, pos, plant):
    assert found["groups"]["detokenisation"] == set(pos["previous_token"])
    assert found["groups"]["contextual"] == set(plant["contextual"])
    assert found["most_variable"] == {plant["keyword_head"], plant["stopword_head"]}
    assert found["keyword_head"] == plant["keyword_head"]
    assert found["stopword_head"] == plant["stopword_head"]
    neurons = {plant[k] for k in ("britain_neuron", "britain_twin_neuron", "conflict_neuron", "religion_neuron")}
    assert found["tail_neurons"] == neurons
    assert found["religion"] == plant["religion_neuron"]
    assert found["war"] == plant["conflict_neuron"]
    assert found["britain"] == {plant["britain_neuron"], plant["britain_twin_neuron"]}
    # the religion neuron's predicted and real activations are higher on the Bible than on cooking
    for name, sign in (("bible_genesis", 1), ("cooking", -1)):
        toks = cx.tokens_of(model, load_text(name), 600)
        act = cx.actual_preactivation(model, toks, found["religion"])[100:].mean()
        pred = cx.predict_preactivation(model, toks, found["religion"], found["approx"])[100:].mean()
        assert sign * act > 0 and sign * pred > 0, (name, act, pred)


def test_plant_elsewhere_is_found_there():
    pos = {"previous_token": [1, 5, 11], "decaying": [0, 3, 4, 7, 8, 10], "uniform": [2]}
    plant = {
        "contextual": [0, 3, 4, 7, 8, 10], "detokenisation": [1, 5, 11], "keyword_head": 4, "stopword_head": 10,
        "britain_neuron": 12, "britain_twin_neuron": 2999, "conflict_neuron": 77, "religion_neuron": 500,
    }
    model = build_standin(
        "gpt2-small", plants=["positional", "contextual"], placement={"positional": pos, "contextual": plant}, device="cpu"
    )
    found = analyse(model)
    _check_found(model, found, pos, plant)


def test_plant_rejects_inconsistent_placements():
    from exercises_lib.standin import build_standin_weights

    with pytest.raises(ValueError, match="both contextual and detokenisation"):
        build_standin_weights("gpt2-small", plants=["positional", "contextual"],
                              placement={"contextual": {"detokenisation": [3, 4, 6]}})
    with pytest.raises(ValueError, match="share an index"):
        build_standin_weights("gpt2-small", plants=["positional", "contextual"],
                              placement={"contextual": {"conflict_neuron": 300}})


def test_planted_token_lists_are_general_vocabulary_not_the_texts():
    """The topic lists hold many words that the shipped texts never use (the plant is not fitted to them)."""
    from exercises_lib.standin.contextual import TOPICS
    from exercises_lib.texts import list_texts

    corpus = " ".join(load_text(t.name) for t in list_texts())
    for topic, signs in TOPICS.items():
        words = [w for ws in signs.values() for w in ws.split()]
        unused = [w for w in words if f" {w}" not in corpus]
        assert len(unused) >= 0.25 * len(words), (topic, len(unused), len(words))


def test_no_time_or_memory_blowup_of_the_contribution_summary():
    """All-vocabulary-sized input, in a fresh process: the extra memory is a few chunks, not the matrix."""
    import json
    import subprocess
    import sys

    script = """
import json, resource, time, torch
torch.set_num_threads(2)
from exercises_lib.contextual import contribution_summary
g = torch.Generator().manual_seed(3)
ext, W_in = torch.randn(50257, 768, generator=g) * 0.1, torch.randn(768, 3072, generator=g) * 0.02
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
contribution_summary(ext, W_in, 5.0)
print(json.dumps({"s": time.monotonic() - start,
                  "gb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e6}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["gb"] < 0.6, result  # the whole matrix alone would be 0.62 GB
    assert result["s"] < 90, result  # about 8 s on 2 idle cores; generous for a shared CI machine


# ---------------------------------------------------------------------------
# The neuron explorer
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explorer_inputs(gpt2_standin):
    model = gpt2_standin
    ctrl = cx.tokens_of(model, load_text("fiction"), 300)
    approx = cx.fit_layer0_approximation(model, ctrl, [0, 2, 6, 8, 9])
    ext = cx.extended_embeddings(model, [0, 2, 6, 8, 9], approx.Z_median[[0, 2, 6, 8, 9]])
    return model, approx, ext


def test_prediction_vectors_give_predict_preactivation(explorer_inputs):
    """The explorer's one-matrix-product prediction is the chapter's prediction, for any neuron."""
    from exercises_lib.contextual_explorer import prediction_vectors

    model, approx, _ = explorer_inputs
    toks = cx.tokens_of(model, load_text("cooking"), 300)
    r = prediction_vectors(model, toks, approx)
    W_in, b_in = cx.layer0_weights(model)["W_in"], cx.layer0_weights(model)["b_in"]
    for neuron in (5, 1710, 3000):
        expected = cx.predict_preactivation(model, toks, neuron, approx)
        torch.testing.assert_close(approx.ln2_scale * (r @ W_in[:, neuron]) + b_in[neuron], expected, atol=1e-3, rtol=1e-4)


def test_neuron_explorer_update_shows_the_chosen_neuron(explorer_inputs):
    from exercises_lib.contextual_explorer import neuron_explorer

    model, approx, ext = explorer_inputs
    box = neuron_explorer(model, ext, approx, [1710, 300])
    fig = box.explorer.last_figure
    assert "neuron 1710" in fig.layout.title.text and model.display_name in fig.layout.title.text
    box.update("704", "American | British")
    fig = box.explorer.last_figure
    assert "neuron 704" in fig.layout.title.text
    contrib = cx.token_contributions(ext, cx.layer0_weights(model)["W_in"][:, 704], approx.ln2_scale)
    bars = fig.data[0]
    torch.testing.assert_close(torch.tensor(bars.x[:10]), contrib.topk(10).values, atol=1e-5, rtol=1e-5)
    toks = box.explorer.text("American | British").tokens
    actual = cx.actual_preactivation(model, toks, 704)
    # from position 1 (position 0 is outside the approximation)
    assert list(fig.data[1].x) == list(range(1, len(actual)))
    torch.testing.assert_close(torch.tensor(fig.data[1].y, dtype=torch.float32), actual[1:], atol=2e-3, rtol=0)
    # Bad input: a message, the last figure kept.
    box.update("abc", "American | British")
    assert box.explorer.last_figure is fig
    with pytest.raises(ValueError, match="neuron must be"):
        box.explorer.figure(5000, "American | British")
