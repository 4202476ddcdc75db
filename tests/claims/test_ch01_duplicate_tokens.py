"""Chapter 1 claims (CLAIMS.md, chapter 1), one test per claim or part of a claim.

Sources (``tests/claims/conftest.py``): on GPT-2 small the expectations are the write-up's figures
(Gibson 2024, "Duplicate token neurons in the first layer of GPT-2") with the tolerances stated in
each test; tests marked ``real_layer0`` are what GPT-2 small's real layer 0 and W_pos decide, and
run offline on them (the stand-in's layer 0 is the real one; where token embeddings are needed,
the stand-in's surrogate is used and named in the assertion messages); the other tests state what
the stand-in's plants show (neuron 1168 and its MLP-0 input are planted) and, on the real model,
the write-up's figures. Where the write-up gives no number the tolerance is ours, said so.
"""

import functools

import pytest
import torch

from exercises_lib import duplicate_tokens as dt

torch.set_grad_enabled(False)
pytestmark = pytest.mark.claims
real_layer0 = pytest.mark.real_layer0

SURROGATE = "with the stand-in's surrogate token embeddings (random, GPT-2-like norms; exercises_lib.standin.embeddings)"


@functools.lru_cache(maxsize=None)
def _genesis(model):
    tokens = dt.text_tokens(model, "bible_genesis", 1024)
    return tokens, dt.run_layer0(model, tokens)


def _uniform_duplicate_head(model):
    tokens, cache = _genesis(model)
    pattern = cache["blocks.0.attn.hook_pattern"]
    top2 = dt.duplicate_token_score(pattern, tokens).topk(2).indices.tolist()
    ratio = dt.copy_to_self_ratio(pattern, tokens)
    return max(top2, key=lambda h: float(ratio[h, -2]))


def duplicate_head_findings(model) -> dict:
    """Scores and ratios of claim 1.1 (separate so that the mutation tests can call it)."""
    rep = dt.repeated_random_tokens(model)
    rep_scores = dt.duplicate_token_score(dt.run_layer0(model, rep)["blocks.0.attn.hook_pattern"], rep)
    tokens, cache = _genesis(model)
    pattern = cache["blocks.0.attn.hook_pattern"]
    return dict(rep=rep_scores, text=dt.duplicate_token_score(pattern, tokens),
                ratio=dt.copy_to_self_ratio(pattern, tokens))


@real_layer0
def test_claim1_three_duplicate_token_heads(course_model, source):
    """Heads 1 and 5 top the duplicate-token score on repeated random tokens and on Genesis; 10 is third;
    5 attends to far copies as much as to itself, 1 only to near ones (copy/self ratio at 200-400 tokens)."""
    model = course_model("gpt2-small")
    f = duplicate_head_findings(model)
    where = "" if source == "real" else f" ({SURROGATE})"
    assert set(f["rep"].topk(2).indices.tolist()) == {1, 5}, (f["rep"], where)
    assert set(f["text"].topk(2).indices.tolist()) == {1, 5}, (f["text"], where)
    assert int(f["text"].topk(3).indices[2]) == 10, (f["text"], where)
    if source == "real":  # 0.10: "about 25%" of its attention on copies (tolerance: 0.1 to 0.6 on text)
        assert 0.1 < float(f["text"][10]) < 0.6
    # 0.5 near-uniform over copies, 0.1 decaying (ratio > 0.5 and < 0.5: our threshold; the write-up gives none).
    assert float(f["ratio"][5, -2]) > 0.5 > float(f["ratio"][1, -2]), (f["ratio"][:, -2], where)


GROUPED = (".", ",", " and")


def punctuation_grouping(model) -> dict:
    """Head 0.5's attention per source token on Genesis, from '.', ',' and ' and' (destinations past 100):
    on earlier copies, on the other two tokens of the group, on everything else (claim 1.1's grouping)."""
    tokens, cache = _genesis(model)
    head = _uniform_duplicate_head(model)
    group = [model.to_single_token(s) for s in GROUPED]
    return dt.group_attention_ratio(cache["blocks.0.attn.hook_pattern"][0, head], tokens[0], group)


def assert_punctuation_grouped(model) -> None:
    """The write-up: head 0.5 "behaves differently on certain common tokens however, like '.', ',', and ' and'.
    These tokens seem to be grouped together." It gives no number; ours: from one of them, head 0.5 puts at
    least half as much attention on an earlier other member of the group as on an earlier copy (ratio > 0.5),
    and at least five times as much as on an unrelated earlier token."""
    f = punctuation_grouping(model)
    assert f["destinations"] >= 50, f
    assert f["ratio"] > 0.5 and f["group"] > 5 * f["rest"], f


def test_claim1_head5_groups_punctuation(course_model, source):
    """Claim 1.1's grouping of '.', ',' and ' and' by head 0.5. It depends on GPT-2's token embeddings, which
    the course does not have: the stand-in's are a random surrogate, and the grouping is not planted."""
    model = course_model("gpt2-small")
    if model.is_standin:
        pytest.skip("not planted: head 0.5 matches tokens through their embeddings, and the stand-in's are a "
                    "random surrogate (GPT-2's W_E is not available offline); measured only where GPT-2 loads")
    assert_punctuation_grouped(model)


@real_layer0
def test_claim2_positional_norm_and_layer0_ln_scale(course_model, source):
    """|P[i]| is about flat past position 100, about 3.35 (write-up). Tolerances (ours; the write-up says
    "about"): mean within 0.15 of 3.35, relative spread below 0.1. The LN-scale approximation
    sqrt(d) / sqrt(|E|^2 + |P|^2) is within 3% (median) and 10% (99th percentile) of the exact scale
    on Genesis (ours; the write-up gives no error). On the real model also: the mean cosine of E[t] and P[i]
    (signed, as the write-up states it: "~ 0.05 on average") between 0 and 0.1 (the write-up's one digit)."""
    model = course_model("gpt2-small")
    norms = model.W_pos[100:1000].norm(dim=-1)
    assert abs(float(norms.mean()) - 3.35) < 0.15, float(norms.mean())
    assert float(norms.std() / norms.mean()) < 0.1, float(norms.std() / norms.mean())
    if source == "real":
        cos = dt.mean_cosine(model.W_E, model.W_pos[100:1000])
        assert 0.0 < cos < 0.1, cos  # write-up: about 0.05
    tokens, cache = _genesis(model)
    exact = 1 / cache["blocks.0.ln1.hook_scale"][..., 0]
    rel = ((dt.layer0_ln_scale_approx(model, tokens) - exact) / exact).abs()
    where = "" if source == "real" else SURROGATE
    assert rel.median() < 0.03 and torch.quantile(rel, 0.99) < 0.1, (float(rel.median()), where)


@real_layer0
def test_claim3_duplicate_head_output_is_token_plus_positions(course_model, source):
    """Heads 1 and 5's outputs are close to token part + positional part (relative error below 0.35:
    ours, loose, the write-up gives none) and closer than the median head's."""
    model = course_model("gpt2-small")
    tokens, cache = _genesis(model)
    s1 = dt.layer0_ln_scale(model, tokens)[0]
    outs = dt.head_outputs(model, cache)
    pattern = cache["blocks.0.attn.hook_pattern"][0]
    errors = []
    for head in range(model.cfg.n_heads):
        tok, pos = dt.duplicate_head_output_parts(model, tokens[0], pattern[head], head, s1)
        errors.append(float(dt.relative_error(tok + pos, outs[head])[1:].median()))
    assert errors[1] < 0.35 and errors[5] < 0.35, errors
    assert max(errors[1], errors[5]) < sorted(errors)[len(errors) // 2], errors


@real_layer0
def test_claim4_uniform_head_positional_output_is_a_line(course_model, source):
    """Claim 1.4's real part: head 0.5's positional output P V_5 O_5 is mostly one direction whose size
    falls or rises linearly with position and crosses zero near 500, so any MLP-0 neuron reading it has
    a linear PVO curve crossing zero there (the write-up: "linear graphs passing through the origin at
    about position 500"). Tolerances: share > 0.5 (ours: "mostly"), R^2 > 0.8 (ours), zero crossing
    350-650 (the write-up's "about 500")."""
    model = course_model("gpt2-small")
    assert _uniform_duplicate_head(model) == 5
    line = dt.head_positional_line(model, 5)
    assert line["share"] > 0.5 and line["r2"] > 0.8 and 350 < line["zero_crossing"] < 650, line


def test_claim4_pvo_norm_map_singles_out_neuron_1168(course_model, source):
    """The PVO norm map of head 5 singles out 1168, whose PVO curve is linear, falling, crossing ~500.
    On the stand-in, 1168's MLP-0 input is planted (solved to read the real head 0.5): what is measured
    here is that the analysis finds it."""
    model = course_model("gpt2-small")
    head = _uniform_duplicate_head(model)
    assert head == 5
    pvo = dt.pvo_contributions(model, head)
    norms = dt.pvo_norm_grid(pvo).flatten()
    if model.is_standin:
        outliers = dt.outlier_neurons(norms)
    else:  # the write-up's threshold: norm > 30
        outliers = [int(k) for k in torch.nonzero(norms > 30).flatten()]
    assert 1168 in outliers and 1 <= len(outliers) <= 40
    fit = dt.line_fit(pvo[20:1000, 1168], torch.arange(20, 1000))
    assert fit["r2"] > 0.8 and 350 < fit["zero_crossing"] < 650 and fit["slope"] < 0  # write-up: ~500
    tokens, cache = _genesis(model)
    # The write-up's convention: a multiplicative scale sqrt(d_model) / |x| (its "lnscale" multiplies the
    # residual), i.e. the inverse of TransformerLens's divisor ``hook_scale``.
    scale = 1 / cache["blocks.0.ln2.hook_scale"][0, 100:, 0]
    # Nearly constant over tokens and positions, which is what linearising it needs.
    assert scale.std() / scale.mean() < 0.15
    if not model.is_standin:
        # Write-up: "pretty stable around 1.2". Loose (a factor of 2 either way): the write-up gives one
        # rounded figure, does not say over which text or positions, and this was not run on real weights here.
        assert 0.6 < float(scale.median()) < 2.4
    # The stand-in's value (about 0.9) depends on its surrogate embeddings: it is not a claim.


@real_layer0
def test_claim5_long_range_heads(course_model, source):
    """Most layer-0 heads look a few dozen tokens back; the exceptions are 5 and 11 (mean attention
    distance on Genesis more than twice the median head's: our rule, the write-up gives no number)."""
    model = course_model("gpt2-small")
    _, cache = _genesis(model)
    distance = dt.mean_attention_distance(cache["blocks.0.attn.hook_pattern"])
    assert set(dt.long_range_heads(distance)) == {5, 11}, distance


def test_claim5_neuron_1168_reads_far_copies(course_model, source):
    """Other components cancel head 5's slope along Genesis; copies ~100 tokens back add about +1.0;
    a single far copy raises the pre-activation, a close one does not, nor one in the first tokens.
    On the stand-in these are the planted neuron's behaviour with the real heads."""
    model = course_model("gpt2-small")
    tokens, cache = _genesis(model)
    pattern = cache["blocks.0.attn.hook_pattern"]
    s1 = 1 / cache["blocks.0.ln1.hook_scale"][0, :, 0]
    s2 = 1 / cache["blocks.0.ln2.hook_scale"][0, :, 0]
    contrib = dt.positional_contributions_to_neuron(model, pattern[0], s1, s2, 1168)
    n = torch.arange(200, 1024)
    head5 = dt.line_fit(contrib[5, 200:], n)["slope"]
    others = dt.line_fit(contrib.sum(0)[200:] - contrib[5, 200:], n)["slope"]
    assert head5 < 0 and 0.5 < others / -head5 < 2.0  # the other components cancel head 5's slope
    # Copies ~100 tokens back add about +1.0: PVO_5[n - 100] - PVO_5[n], scaled.
    pvo5 = dt.pvo_contributions(model, 5)[:, 1168] * float(s1.median()) * float(s2.median())
    gain = float((pvo5[300:900] - pvo5[400:1000]).mean())
    assert 0.4 < gain < 2.0
    # Behaviour (32 random sequences per distance: the real heads' attention varies from token to token).
    pre = dt.neuron_pre_vs_copy_distance(model, 1168, [None, 5, 300], position=600, n_samples=32)
    assert pre[2] - pre[0] > 0.5 and pre[1] - pre[0] < 0.25 and pre[2] > 0, pre
    early = dt.neuron_pre_vs_copy_distance(model, 1168, [30], position=50, n_samples=32)
    assert early[0] < pre[2] - 0.5, (early, pre)


def test_claim5_combined_positional_term(course_model, source):
    """The write-up: past the first 200 tokens the combined positional contribution of all components, "the
    positional contribution for non-duplicate tokens", averages about -0.2. Measured as the neuron's mean
    pre-activation past 200 on random tokens seen once (token terms averaged out, constant terms in).
    Tolerance from the write-up's one significant digit, read off a graph: within 0.1 of -0.2.
    On the stand-in this level is planted (neuron 1168's input is solved to give it)."""
    model = course_model("gpt2-small")
    level = dt.no_copy_level(model, 1168)
    assert abs(level + 0.2) < 0.1, level


def test_claim5_neuron_1168_prefers_occasional_over_constant_repeats(course_model, source):
    """Write-up: neuron 1168 fires on words repeated occasionally, not on words repeated constantly.

    On the stand-in this is measured, not planted: the neuron's input is solved from the uniform-attention
    formula, which says nothing about constant repeats; the real heads' attention on Genesis (with the
    surrogate token embeddings) decides it. Tolerance (ours): the occasional group's mean is higher.
    """
    model = course_model("gpt2-small")
    tokens, cache = _genesis(model)
    pre = cache["blocks.0.mlp.hook_pre"][0, :, 1168]
    mask = dt.earlier_copy_mask(tokens)[0]
    n_idx = torch.arange(tokens.shape[-1], device=mask.device)
    nearest = torch.where(mask, n_idx[:, None] - n_idx[None, :], 10**6).min(-1).values
    occasional = (nearest >= 100) & (nearest < 10**6) & (n_idx >= 200)
    constant = (nearest <= 10) & (mask.sum(-1) >= 10) & (n_idx >= 200)
    assert occasional.sum() >= 20 and constant.sum() >= 20
    assert float(pre[occasional].mean()) > float(pre[constant].mean())


def test_claim6_weights_only_prediction_tracks_the_neuron(course_model, source):
    """The weights-only prediction (positions only; token terms left out, as in the write-up) follows the
    neuron along Genesis. Tolerance (ours; the write-up states no error): correlation > 0.5 on the real
    model; on the stand-in, whose heads are the real ones but whose token embeddings are a random
    surrogate, the token terms the prediction leaves out are larger: correlation > 0.25."""
    model = course_model("gpt2-small")
    tokens, cache = _genesis(model)
    pattern = cache["blocks.0.attn.hook_pattern"]
    dup = _uniform_duplicate_head(model)
    uniform = [h for h in dt.long_range_heads(dt.mean_attention_distance(pattern)) if h != dup]
    s1 = dt.layer0_ln_scale_approx(model, tokens)[0]
    s2 = float((1 / cache["blocks.0.ln2.hook_scale"][0, :, 0]).median())
    pred = dt.predict_neuron_pre(model, tokens[0], 1168, dup, uniform, s1, s2)
    actual = cache["blocks.0.mlp.hook_pre"][0, :, 1168]
    corr = float(torch.corrcoef(torch.stack([pred[100:], actual[100:]]))[0, 1])
    assert corr > (0.25 if model.is_standin else 0.5), corr
    # The level is right too: the prediction's mean is within one standard deviation of the actual mean.
    assert abs(float(pred[100:].mean() - actual[100:].mean())) < float(actual[100:].std()), (pred.mean(), actual.mean())
