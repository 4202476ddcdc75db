"""Chapter 2's claims (Gibson 2025, "Contextual attention heads in the first layer of GPT-2").

One test per claim of CLAIMS.md, chapter 2, or per part of one. Sources (``tests/claims/conftest.py``):
tests marked ``real_layer0`` are decided by GPT-2 small's real layer 0 and W_pos and run offline on
them (the stand-in's layer 0 is the real one; the token embeddings they need are the stand-in's
surrogate, named in the messages, and ``tests/test_real_layer0.py`` repeats the grouping over many
surrogates); the others state what the stand-in's plants show (the keyword/stopword and first-token
structure of the embeddings and the topic neurons are planted) and, on the real model, the
write-up's findings. The real-model tolerances of the unmarked tests have not been run against the
full real weights here (no network): a failure there is a finding to report, not necessarily a bug.
"""

from __future__ import annotations

import pytest
import torch

from exercises_lib import contextual as cx
from exercises_lib.texts import load_text

real_layer0 = pytest.mark.real_layer0
SURROGATE = "with the stand-in's surrogate token embeddings (random, GPT-2-like norms; exercises_lib.standin.embeddings)"
TEXTS = ["bible_genesis", "bible_psalms", "legal_gpl3", "python_docs", "british_prose", "american_prose",
         "war_history", "cooking", "fiction"]
N_TOKENS = 700
_CACHE: dict[int, dict] = {}


def _the(model) -> int:
    return model.to_single_token(" the")


def _shared(model) -> dict:
    """What several claims use, computed once per model (weights and layer-0 runs only)."""
    key = id(model)
    if key in _CACHE:
        return _CACHE[key]
    torch.set_grad_enabled(False)
    the = _the(model)
    d = {"the": the}
    d["pi"] = cx.positional_pattern(model, the, model.cfg.n_ctx)
    d["copy"] = cx.copy_attention_score(model)
    d["features"] = cx.head_features(d["pi"])
    d["groups"] = cx.classify_heads(d["features"], d["copy"])
    d["texts"] = {n: cx.tokens_of(model, load_text(n), N_TOKENS) for n in TEXTS}
    d["Z"] = {n: cx.normalisation_factors(model, t, the) for n, t in d["texts"].items()}
    d["plain"] = [h for h in d["groups"]["contextual"] if d["copy"][h] < cx.PARTIAL_DUPLICATE]
    stop = {n: cx.stopword_fraction(model, t) for n, t in d["texts"].items()}
    control = sorted(stop, key=stop.get)[len(stop) // 2]
    d["approx"] = cx.fit_layer0_approximation(model, d["texts"][control], d["plain"])
    d["control"] = control
    ext = cx.extended_embeddings(model, d["plain"], d["approx"].Z_median[d["plain"]])
    ext[model.tokenizer.eos_token_id] = 0.0
    d["ext"] = ext
    W_in = cx.layer0_weights(model)["W_in"]
    d["summary"] = cx.contribution_summary(ext, W_in, d["approx"].ln2_scale)
    M = cx.mean_contribution_per_text(ext, W_in, d["approx"].ln2_scale, list(d["texts"].values()))
    sel = cx.text_selectivity(M, d["summary"][5])
    idx = {n: i for i, n in enumerate(TEXTS)}
    d["sel"] = {
        "religion": sel[[idx["bible_genesis"], idx["bible_psalms"]]].mean(0),
        "conflict": sel[idx["war_history"]],
        "britain": sel[idx["british_prose"]] - sel[idx["american_prose"]],
    }
    _CACHE[key] = d
    return d


def _two_part(model, first, second, n=500):
    return torch.cat([cx.tokens_of(model, load_text(first), n), cx.tokens_of(model, load_text(second), n + 1)[1:]])


def pattern_shapes(pi: torch.Tensor, n_min: int = 500, n_max: int = 1000) -> dict:
    """Per head, over destinations n_min <= n < n_max of the positional patterns: the effective number of
    tokens N_eff = 1 / sum_i pi_n(i)^2, its fraction of the n + 1 available, and the mass on the last 100."""
    dests = torch.arange(n_min, n_max)
    rows = pi[:, dests]
    n_eff = 1.0 / rows.pow(2).sum(-1)
    recent = torch.stack([rows[:, k, d - 99 : d + 1].sum(-1) for k, d in enumerate(dests.tolist())], dim=-1)
    return dict(n_eff=n_eff.mean(-1), fraction=(n_eff / (dests + 1)).mean(-1), recent=recent.mean(-1))


@real_layer0
def test_claim_2_1_positional_patterns(course_model, source):
    """The positional patterns, from the weights: detokenisation heads 3, 4, 7 look at the previous few
    tokens; contextual heads 0, 2, 6, 8, 9, 10 decay over tens of tokens; 11 is near-uniform (the
    write-up's 20x20 images). Tolerances (ours; the write-up shows images, no numbers), over destinations
    500-999: 3, 4, 7 spread over fewer than 20 tokens (N_eff); the contextual heads over more than 30
    tokens with most of their pattern (> 0.5) in the last 100 tokens; 11 over more than 30% of the prefix
    with less than 0.3 in the last 100. Destination token: ' the' (its embedding is the surrogate's on
    the stand-in)."""
    model = course_model("gpt2-small")
    shapes = pattern_shapes(_shared(model)["pi"])
    where = "" if source == "real" else SURROGATE
    for h in (3, 4, 7):
        assert shapes["n_eff"][h] < 20, (h, shapes, where)
    for h in (0, 2, 6, 8, 9, 10):
        assert shapes["n_eff"][h] > 30 and shapes["recent"][h] > 0.5, (h, shapes, where)
    assert shapes["fraction"][11] > 0.3 and shapes["recent"][11] < 0.3, (shapes, where)


@real_layer0
def test_claim_2_1_positional_pattern_from_the_weights(course_model, source):
    """pi is computed from the weights for all destinations; it is the identical-token pattern's
    factorised pi exactly, and the groups it gives do not change with the destination token (' the',
    ' and', ' water', '.'; their embeddings are the surrogate's on the stand-in)."""
    model = course_model("gpt2-small")
    d = _shared(model)
    toks = torch.full((150,), d["the"])
    cache = cx.layer0_cache(model, toks)
    pi, c, Z = cx.factorise_pattern(model, toks, cache)
    torch.testing.assert_close(cx.positional_pattern(model, d["the"], 150), pi, atol=1e-5, rtol=1e-3)
    for word in [" and", " water", "."]:
        pi_w = cx.positional_pattern(model, model.to_single_token(word), model.cfg.n_ctx)
        assert cx.classify_heads(cx.head_features(pi_w), d["copy"]) == d["groups"], word


def test_claim_2_1_positional_pattern_barely_depends_on_the_destination(course_model, source):
    """The positional pattern is close to the identical-token pattern and barely depends on the
    destination token: total-variation distance below 0.15 (ours; the write-up says "slightly
    influenced") for heads without duplicate-token behaviour. Not on the stand-in: there the
    destination's embedding is a random surrogate, and the real queries make pi depend on it more
    (TV up to about 0.4 for ' water'); the chapter prints the distances."""
    model = course_model("gpt2-small")
    if model.is_standin:
        pytest.skip("the stand-in's destination embeddings are a random surrogate: how much pi depends on "
                    "them is the surrogate's, not GPT-2's (printed in the chapter, asserted on the real model)")
    d = _shared(model)
    pi400 = d["pi"][:, :400, :400]
    same = cx.identical_token_pattern(model, d["the"], 400)
    tv = 0.5 * (pi400 - same).abs().sum(-1)[:, 20:].mean(-1)
    non_dup = d["copy"] < cx.CLASSIFY_THRESHOLDS["duplicate"]
    assert (tv[non_dup] < 0.15).all(), tv
    for word in [" and", " God", "."]:
        pi_w = cx.positional_pattern(model, model.to_single_token(word), 400)
        tv_w = 0.5 * (pi_w - pi400).abs().sum(-1)[:, 20:].mean(-1)
        assert (tv_w[non_dup] < 0.15).all(), (word, tv_w)


def test_claim_2_2_content_factor_is_a_per_token_weight(course_model, source):
    """a = pi c / Z, with c a weight of the *source token*: the content factor computed from the weights
    alone (fixed destination ' the', cx.content_weights), times the real pi and renormalised, reproduces
    the plain contextual heads' real patterns better than pi alone does.

    The recomposition pi c / Z == pattern is an identity (checked as an invariant in the notebook), so it
    is not asserted here. Real model: TV below 0.25 and 0.03 better than pi alone (ours, not run on the
    real weights here). Stand-in: only "better than pi alone": its surrogate embeddings are random, so a
    source token's content weight depends on the destination token more than the write-up assumes of
    GPT-2 (c is computed for ' the'), and the gain is small (TV about 0.31 against 0.33).
    """
    model = course_model("gpt2-small")
    d = _shared(model)
    plain = d["plain"]
    assert plain, "no contextual head without duplicate-token behaviour was found"
    with_c, without_c = [], []
    for name in ("bible_genesis", "legal_gpl3", "british_prose"):
        toks = d["texts"][name][:400]
        cache = cx.layer0_cache(model, toks)
        pi, _, _ = cx.factorise_pattern(model, toks, cache)
        real = cache["blocks.0.attn.hook_pattern"][0]
        c = cx.content_weights(model, toks, d["the"])  # [head, pos], from the weights
        approx = pi * c[:, None, :]
        approx = approx / approx.sum(-1, keepdim=True)
        with_c.append(0.5 * (approx - real).abs().sum(-1)[plain, 100:].mean())
        without_c.append(0.5 * (pi - real).abs().sum(-1)[plain, 100:].mean())
    with_c, without_c = float(torch.stack(with_c).mean()), float(torch.stack(without_c).mean())
    if model.is_standin:
        assert with_c < without_c, (with_c, without_c)
    else:
        assert with_c < 0.25 and with_c < without_c - 0.03, (with_c, without_c)


@real_layer0
def test_claim_2_3_head_groups(course_model, source):
    """Write-up: detokenisation 3, 4, 7; contextual 0, 2, 6, 8, 9, 10; duplicate 1, 5; unclear 11.
    The rule (cx.classify_heads) and its thresholds are the chapter's; the margins are printed."""
    d = _shared(course_model("gpt2-small"))
    margins = cx.classification_margins(d["features"], d["copy"])
    print("margins [copy - duplicate, local - local, recent - recent] per head:", margins.round(decimals=3).tolist())
    groups = d["groups"]
    where = "" if source == "real" else SURROGATE
    assert set(groups["detokenisation"]) == {3, 4, 7}, (groups, where)
    assert set(groups["duplicate"]) == {1, 5}, (groups, where)
    assert set(groups["contextual"]) == {0, 2, 6, 8, 9, 10}, (groups, where)
    assert set(groups["unclear"]) == {11}, (groups, where)


@real_layer0
def test_claim_2_4_normalisers_concentrate_for_contextual_heads(course_model, source):
    """Z_n (destination ' the') is smooth for the contextual heads and "confetti" for the
    detokenisation heads: within a text (n >= 300) its relative spread is smaller for every plain
    contextual head than for every detokenisation head, on every text; and the independent-token model
    sigma^2 sum_j pi_n(j)^2 predicts the variances' order (log-log correlation > 0.8, ours) and size
    (median measured / predicted between 0.1 and 10, ours). With the
    stand-in's surrogate embeddings, the content weights' spread comes from the real query-key circuits
    (the keyword/stopword structure planted on the embeddings is what the unmarked test checks)."""
    model = course_model("gpt2-small")
    d = _shared(model)
    plain, detok = d["plain"], sorted(d["groups"]["detokenisation"])
    rel_std = torch.stack([Z[:, 300:].std(-1) / Z[:, 300:].mean(-1) for Z in d["Z"].values()])
    assert (rel_std[:, plain].max(-1).values < rel_std[:, detok].min(-1).values).all(), rel_std
    pi = cx.positional_pattern(model, d["the"], N_TOKENS)[:, 300:]
    keep = [h for h in range(12) if d["copy"][h] < cx.PARTIAL_DUPLICATE and h in plain + detok]
    pred = torch.stack([cx.independent_model_variance(pi, cx.content_weights(model, t[100:], d["the"])).mean(-1)
                        for t in d["texts"].values()])[:, keep]
    meas = torch.stack([Z[:, 300:].var(-1) for Z in d["Z"].values()])[:, keep]
    assert torch.corrcoef(torch.stack([pred.log10().flatten(), meas.log10().flatten()]))[0, 1] > 0.8
    ratio = float((meas / pred).median())
    assert 0.1 < ratio < 10, ratio  # the right order of magnitude (ours)


def test_claim_2_4_normalisers(course_model, source):
    """Z_n (destination ' the') decays over the first tokens because of the first token's content weight;
    6 (keywords) and 8 (stopwords) follow the texts' share of stopwords, in opposite directions, and
    (real model) vary most across texts; on the real model also: Z_n concentrates for
    contextual heads (relative spread < 0.15, ours) and is confetti for detokenisation heads (> 0.4,
    ours). On the stand-in the first token's weight and the keyword/stopword structure are planted on
    the surrogate embeddings; its contextual heads' spread (real query-key circuits, random surrogate)
    reaches about 0.23, and the real-layer0 test checks the order instead. The keyword/stopword vector
    is solved for ' the' at position 500 only, and the real queries change with the position, so on
    the stand-in heads 2 and 10 vary across texts about as much as 6 and 8 (not asserted there)."""
    model = course_model("gpt2-small")
    d = _shared(model)
    plain, detok = d["plain"], sorted(d["groups"]["detokenisation"])
    rel_std = torch.stack([Z[:, 300:].std(-1) / Z[:, 300:].mean(-1) for Z in d["Z"].values()])
    early = torch.stack([Z[:, 1:20].mean(-1) / Z[:, 300:].mean(-1) for Z in d["Z"].values()])
    if not model.is_standin:
        assert (rel_std[:, plain] < 0.15).all() and (rel_std[:, detok] > 0.4).all(), rel_std
    if model.is_standin:  # planted for the contextual heads together (the real queries change with the position)
        assert (early[:, plain].mean(-1) > 1.2).all(), early
    else:
        assert (early[:, plain] > 1.2).all(), early
    # ... and the early decay is the first token's: with its content weight made neutral, most of it goes.
    early_without_first = torch.stack([
        Z[:, 1:20].mean(-1) / Z[:, 300:].mean(-1)
        for Z in (cx.normalisation_factors(model, t, d["the"], neutral=(0,)) for t in d["texts"].values())
    ])
    assert (early_without_first[:, plain] < early[:, plain]).all()
    assert (early_without_first[:, plain].mean() - 1).abs() < 0.5 * (early[:, plain].mean() - 1)
    variation = cx.variation_across_texts(d["Z"])
    if not model.is_standin:  # on the stand-in, heads 2 and 10 vary as much (see the docstring)
        assert set(sorted(plain, key=lambda h: -float(variation[h]))[:2]) == {6, 8}, variation
    stop = torch.tensor([cx.stopword_fraction(model, t) for t in d["texts"].values()])
    means = torch.stack([Z[:, 300:].mean(-1) for Z in d["Z"].values()]).cpu()
    corr = {h: float(torch.corrcoef(torch.stack([stop, means[:, h]]))[0, 1]) for h in (6, 8)}
    assert corr[6] < 0 < corr[8], corr


def test_claim_2_5_bag_of_tokens(course_model, source):
    """The contextual heads' summed output is close to sum_i pi(n-i) e~(t_i) plus their positional part."""
    model = course_model("gpt2-small")
    d = _shared(model)
    check = next(n for n in ("british_prose", "american_prose") if n != d["control"])  # not fitted on
    toks = d["texts"][check][:600]
    real = cx.contextual_output(model, toks, d["plain"])
    bag = cx.bag_of_tokens_output(model, toks, d["plain"], d["approx"], d["ext"])
    assert cx.cosine_per_position(real, bag)[100:].mean() > 0.7


def test_claim_2_6_contextual_neurons_from_the_weights(course_model, source):
    """Contextual neurons are found from token contributions and token counts alone.

    The write-up's neurons 300, 704 (Britain), 1621 (conflict), 1710 (religion) are among the 1% most
    selective for their texts (ours), and 300 and 704 read alike and write in opposite directions. On
    the stand-in they are planted (their MLP-0 input solved to read the real contextual heads' output
    of planted topic directions): there the analysis must also discover the British pair without its
    numbers (the two most selective neurons for British vs American prose), and the others must be
    among the 3.5% most selective: the stand-in's random MLP-0 neurons read the planted stopword vectors
    too, which makes a few of them look selective for texts with many or few stopwords (the Bible, the
    war history). Token-contribution tails are not asserted on the stand-in: its random surrogate
    gives a few tokens very large content weights, so every neuron's tail is long.
    """
    model = course_model("gpt2-small")
    d = _shared(model)
    found = {"religion": [int(d["sel"]["religion"].argmax())],
             "britain": d["sel"]["britain"].topk(2).indices.tolist()}
    share = 0.035 if model.is_standin else 0.01
    if model.is_standin:
        assert set(found["britain"]) == {300, 704}, found
    W_in = cx.layer0_weights(model)["W_in"]
    W_out = model.W_out[0]
    pairs = [tuple(found["britain"])] if model.is_standin else [(300, 704)]
    for a, b in pairs:
        contrib = [cx.token_contributions(d["ext"], W_in[:, k], 1.0) for k in (a, b)]
        assert torch.corrcoef(torch.stack(contrib))[0, 1] > 0.5, (a, b)
        assert torch.nn.functional.cosine_similarity(W_out[a], W_out[b], dim=0) < 0, (a, b)
    for k, topic in [(300, "britain"), (704, "britain"), (1621, "conflict"), (1710, "religion")]:
        sel = d["sel"][topic]
        assert int((sel > sel[k]).sum()) < share * len(sel), (k, topic, int((sel > sel[k]).sum()))


def _no_bag(T, tokens, pi, Z):
    return torch.zeros(tokens.shape[-1], dtype=T.dtype, device=T.device)


def test_claim_2_7_prediction_follows_the_topic(course_model, source):
    """Predicted vs actual pre-activation of the religion neuron (1710) along a text that changes topic:
    the shape and the decision boundary agree (real model: correlation > 0.6, sign agreement > 0.75, ours),
    point values do not (RMSE stated, not bounded); both rise where the text turns religious.

    And it is the bag of tokens that does it: the current token alone (the prediction without the
    contextual heads' bag, a reader's ``bag_fn`` of zeros) also moves with the topic, since religious words
    reach the neuron directly, so the claim is also tested on what the bag adds: with it the prediction is
    closer to the neuron (smaller RMSE, larger correlation) than without it, and the bag's part rises where
    the text turns religious. A bag at the wrong size (every normaliser Z set to 1) makes the RMSE worse
    than no bag at all. On the stand-in the correlation is only asserted > 0.3: its heads are real, its
    embeddings a random surrogate, so c depends on the destination more than the write-up assumes
    (claim 2.2), a looser fit."""
    model = course_model("gpt2-small")
    d = _shared(model)
    neuron = 1710  # the write-up's religion neuron (its example); claim 2.6 checks it is found
    toks = _two_part(model, "cooking", "bible_genesis")
    pred = cx.predict_preactivation(model, toks, neuron, d["approx"])
    act = cx.actual_preactivation(model, toks, neuron)
    err = cx.prediction_errors(pred, act)
    if model.is_standin:
        assert err["corr"] > 0.3, err
    else:
        assert err["corr"] > 0.6 and err["sign_agreement"] > 0.75, err
    assert act[500:].mean() > act[100:500].mean() and pred[500:].mean() > pred[100:500].mean(), err
    token_only = cx.predict_preactivation(model, toks, neuron, d["approx"], bag_fn=_no_bag)
    without = cx.prediction_errors(token_only, act)
    assert err["rmse"] < without["rmse"] and err["corr"] > without["corr"], ("the bag does not help", err, without)
    bag = (pred - token_only)[100:]
    assert bag[400:].mean() > bag[:400].mean(), "the bag rises where the text turns religious"


def test_claim_2_8_appendix(course_model, source):
    """Appendix: several layer-1 (second layer) heads attend almost purely positionally (the same rows on
    two unrelated texts). Real model only: the stand-in's layer 1 carries no planted mechanism, so its
    near-uniform random heads would pass trivially. The SVD split of a neuron's contributions is
    exploratory in the write-up and its parts add up to the input by construction: it is not asserted.
    """
    model = course_model("gpt2-small")
    if model.is_standin:
        pytest.skip("the stand-in's layer 1 has nothing planted: its near-uniform heads are positional trivially")
    d = _shared(model)
    patterns = [cx.layer_patterns(model, d["texts"][name][:400], 1) for name in ("bible_genesis", "legal_gpl3")]
    tv = 0.5 * (patterns[0] - patterns[1]).abs().sum(-1)[:, 100:].mean(-1)
    assert int((tv < 0.3).sum()) >= 3, tv
