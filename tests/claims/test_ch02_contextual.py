"""Chapter 2's claims (Gibson 2025, "Contextual attention heads in the first layer of GPT-2").

One test per claim of CLAIMS.md, chapter 2, on the stand-in and on the real GPT-2 small (skipped when
its weights cannot be loaded). The real-model expectations restate the write-up's findings (head
groups, neurons 300/704/1621/1710, behaviour of Z_n); the tolerances were set on the stand-in and have
NOT been run against the real weights here (no network): a failure on the real model is a finding
to report, not necessarily a bug.
"""

from __future__ import annotations

import pytest
import torch

from exercises_lib import contextual as cx
from exercises_lib.texts import load_text

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
    d["pi"] = cx.positional_pattern(model, the, 400)
    d["copy"] = cx.copy_attention_score(model)
    d["groups"] = cx.classify_heads(cx.head_features(d["pi"]), d["copy"])
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


def test_claim_2_1_positional_pattern_from_weights(course_model):
    """pi is computed from the weights for all destinations; it is the identical-token pattern
    (exactly, once the own token's content term is put back; approximately without it) and barely
    depends on the destination token."""
    model = course_model("gpt2-small")
    d = _shared(model)
    toks = torch.full((150,), d["the"])
    cache = cx.layer0_cache(model, toks)
    pi, c, Z = cx.factorise_pattern(model, toks, cache)
    torch.testing.assert_close(cx.positional_pattern(model, d["the"], 150), pi, atol=1e-5, rtol=1e-3)
    same = cx.identical_token_pattern(model, d["the"], 400)
    tv = 0.5 * (d["pi"] - same).abs().sum(-1)[:, 20:].mean(-1)
    non_dup = d["copy"] < cx.CLASSIFY_THRESHOLDS["duplicate"]
    assert (tv[non_dup] < 0.15).all(), tv
    for word in [" and", " God", "."]:
        pi_w = cx.positional_pattern(model, model.to_single_token(word), 400)
        assert cx.classify_heads(cx.head_features(pi_w), d["copy"]) == d["groups"], word
        tv_w = 0.5 * (pi_w - d["pi"]).abs().sum(-1)[:, 20:].mean(-1)
        assert (tv_w[non_dup] < 0.15).all(), (word, tv_w)


def test_claim_2_2_content_factor_is_a_per_token_weight(course_model):
    """a = pi c / Z, with c a weight of the *source token*: the content factor computed from the weights
    alone (fixed destination ' the', cx.content_weights), times the real pi and renormalised, reproduces
    the plain contextual heads' real patterns better than pi alone does.

    The recomposition pi c / Z == pattern is an identity (checked as an invariant in the notebook), so it
    is not asserted here. Tolerances set on the stand-in (TV about 0.18 with c, 0.27 without); not run
    on the real weights here.
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
    assert with_c < 0.25 and with_c < without_c - 0.03, (with_c, without_c)


def test_claim_2_3_head_groups(course_model):
    """Write-up: detokenisation 3, 4, 7; contextual 0, 2, 6, 8, 9, 10; duplicate 1, 5; unclear 11."""
    groups = _shared(course_model("gpt2-small"))["groups"]
    assert set(groups["detokenisation"]) == {3, 4, 7}
    assert set(groups["duplicate"]) == {1, 5}
    assert set(groups["contextual"]) - {11} == {0, 2, 6, 8, 9, 10}


def test_claim_2_4_normalisers(course_model):
    """Z_n (destination ' the') concentrates for contextual heads, is confetti for detokenisation heads,
    decays over the first tokens because of the first token's content weight; 6 (keywords) and 8 (stopwords) vary most across texts; the
    independent-token model predicts the variances' order of magnitude."""
    model = course_model("gpt2-small")
    d = _shared(model)
    plain, detok = d["plain"], sorted(d["groups"]["detokenisation"])
    rel_std = torch.stack([Z[:, 300:].std(-1) / Z[:, 300:].mean(-1) for Z in d["Z"].values()])
    early = torch.stack([Z[:, 1:20].mean(-1) / Z[:, 300:].mean(-1) for Z in d["Z"].values()])
    assert (rel_std[:, plain] < 0.15).all() and (rel_std[:, detok] > 0.4).all()
    assert (early[:, plain] > 1.2).all()
    # ... and the early decay is the first token's: with its content weight made neutral, most of it goes.
    early_without_first = torch.stack([
        Z[:, 1:20].mean(-1) / Z[:, 300:].mean(-1)
        for Z in (cx.normalisation_factors(model, t, d["the"], neutral=(0,)) for t in d["texts"].values())
    ])
    assert (early_without_first[:, plain] < early[:, plain]).all()
    assert (early_without_first[:, plain].mean() - 1).abs() < 0.5 * (early[:, plain].mean() - 1)
    variation = cx.variation_across_texts(d["Z"])
    assert set(sorted(plain, key=lambda h: -float(variation[h]))[:2]) == {6, 8}
    stop = torch.tensor([cx.stopword_fraction(model, t) for t in d["texts"].values()])
    means = torch.stack([Z[:, 300:].mean(-1) for Z in d["Z"].values()]).cpu()
    corr = {h: float(torch.corrcoef(torch.stack([stop, means[:, h]]))[0, 1]) for h in (6, 8)}
    assert corr[6] < 0 < corr[8], corr
    pi = cx.positional_pattern(model, d["the"], N_TOKENS)[:, 300:]
    keep = [h for h in range(12) if d["copy"][h] < cx.PARTIAL_DUPLICATE and h in plain + detok]
    pred = torch.stack([cx.independent_model_variance(pi, cx.content_weights(model, t[100:], d["the"])).mean(-1)
                        for t in d["texts"].values()])[:, keep]
    meas = torch.stack([Z[:, 300:].var(-1) for Z in d["Z"].values()])[:, keep]
    assert torch.corrcoef(torch.stack([pred.log10().flatten(), meas.log10().flatten()]))[0, 1] > 0.8


def test_claim_2_5_bag_of_tokens(course_model):
    """The contextual heads' summed output is close to sum_i pi(n-i) e~(t_i) plus their positional part."""
    model = course_model("gpt2-small")
    d = _shared(model)
    check = next(n for n in ("british_prose", "american_prose") if n != d["control"])  # not fitted on
    toks = d["texts"][check][:600]
    real = cx.contextual_output(model, toks, d["plain"])
    bag = cx.bag_of_tokens_output(model, toks, d["plain"], d["approx"], d["ext"])
    assert cx.cosine_per_position(real, bag)[100:].mean() > 0.7


def test_claim_2_6_contextual_neurons_from_the_weights(course_model):
    """Contextual neurons are found from token contributions and token counts alone.

    On the stand-in (neurons discovered, never named): the most selective neuron for religious text, for
    the war history and the two most selective for British vs American prose stand far out of the bulk
    (selectivity more than 10 median absolute deviations above the median neuron, token-contribution
    tails above 10 where Gaussian contributions give about 4); the British pair reads alike and writes
    in opposite directions. On the real model, the write-up's neurons 300, 704 (Britain), 1621 (conflict), 1710 (religion) must
    be among the 1% most selective for their texts, and 300 and 704 read alike and write oppositely.
    """
    model = course_model("gpt2-small")
    d = _shared(model)
    top, bottom = cx.tail_scores(d["summary"])
    tail = top.maximum(bottom)
    found = {"religion": [int(d["sel"]["religion"].argmax())], "conflict": [int(d["sel"]["conflict"].argmax())],
             "britain": d["sel"]["britain"].topk(2).indices.tolist()}
    for topic, neurons in (found.items() if model.is_standin else []):
        sel = d["sel"][topic]
        median = sel.median()
        mad = (sel - median).abs().median()
        for k in neurons:
            assert float((sel[k] - median) / mad) > 10, (topic, k)
            assert float(tail[k]) > 10, (topic, k, float(tail[k]))
    W_in = cx.layer0_weights(model)["W_in"]
    W_out = model.W_out[0]
    pairs = [tuple(found["britain"])] if model.is_standin else [(300, 704)]
    for a, b in pairs:
        contrib = [cx.token_contributions(d["ext"], W_in[:, k], 1.0) for k in (a, b)]
        assert torch.corrcoef(torch.stack(contrib))[0, 1] > 0.5, (a, b)
        assert torch.nn.functional.cosine_similarity(W_out[a], W_out[b], dim=0) < 0, (a, b)
    if not model.is_standin:  # the write-up's neurons
        for k, topic in [(300, "britain"), (704, "britain"), (1621, "conflict"), (1710, "religion")]:
            sel = d["sel"][topic]
            assert int((sel > sel[k]).sum()) < 0.01 * len(sel), (k, topic)


def test_claim_2_7_prediction_follows_the_topic(course_model):
    """Predicted vs actual pre-activation along a text that changes topic: the shape and the decision
    boundary agree (correlation, sign agreement), point values do not (RMSE stated, not bounded)."""
    model = course_model("gpt2-small")
    d = _shared(model)
    neuron = int(d["sel"]["religion"].argmax())
    toks = _two_part(model, "cooking", "bible_genesis")
    pred = cx.predict_preactivation(model, toks, neuron, d["approx"])
    act = cx.actual_preactivation(model, toks, neuron)
    err = cx.prediction_errors(pred, act)
    assert err["corr"] > 0.6 and err["sign_agreement"] > 0.75, err
    assert act[500:].mean() > act[100:500].mean() and pred[500:].mean() > pred[100:500].mean()


def test_claim_2_8_appendix(course_model):
    """Appendix: several layer-1 (second layer) heads attend almost purely positionally (the same rows on
    two unrelated texts). Real model only: the stand-in's layer 1 carries no planted mechanism, so its
    near-uniform random heads would pass trivially. The SVD split of a neuron's contributions is
    exploratory in the write-up and its parts add up to the input by construction: it is not asserted.
    """
    model = course_model("gpt2-small")
    if model.is_standin:
        pytest.skip("the stand-in's layer 1 has nothing planted: its near-uniform heads are positional trivially")
    d = _shared(model)
    patterns = []
    for name in ("bible_genesis", "legal_gpl3"):
        _, cache = model.run_with_cache(d["texts"][name][None, :400].to(model.cfg.device),
                                        names_filter=lambda n: n == "blocks.1.attn.hook_pattern", stop_at_layer=2)
        patterns.append(cache["blocks.1.attn.hook_pattern"][0])
    tv = 0.5 * (patterns[0] - patterns[1]).abs().sum(-1)[:, 100:].mean(-1)
    assert int((tv < 0.3).sum()) >= 3, tv
