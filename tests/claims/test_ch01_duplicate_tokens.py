"""Chapter 1 claims (CLAIMS.md, chapter 1), one test per claim.

On the stand-in the expectations are what the plant was built to show, measured
from behaviour; on GPT-2 small they are the write-up's figures (Gibson 2024,
"Duplicate token neurons in the first layer of GPT-2"), with the tolerances
stated in each test. Where the write-up gives no number, the real-model test
asserts only the qualitative claim.
"""

import functools

import pytest
import torch

from exercises_lib import duplicate_tokens as dt

torch.set_grad_enabled(False)
pytestmark = pytest.mark.claims


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


def test_claim1_three_duplicate_token_heads(course_model):
    model = course_model("gpt2-small")
    rep = dt.repeated_random_tokens(model)
    rep_scores = dt.duplicate_token_score(dt.run_layer0(model, rep)["blocks.0.attn.hook_pattern"], rep)
    tokens, cache = _genesis(model)
    text_scores = dt.duplicate_token_score(cache["blocks.0.attn.hook_pattern"], tokens)
    assert set(rep_scores.topk(2).indices.tolist()) == {1, 5}
    assert set(text_scores.topk(2).indices.tolist()) == {1, 5}
    # 0.10: "about 25%" of its attention on copies (tolerance: 0.1 to 0.6 on text), third on text.
    assert int(text_scores.topk(3).indices[2]) == 10
    assert 0.1 < float(text_scores[10]) < 0.6
    # 0.5 near-uniform over copies, 0.1 decaying (copy/self ratio at 200-400 tokens back).
    ratio = dt.copy_to_self_ratio(cache["blocks.0.attn.hook_pattern"], tokens)
    assert float(ratio[5, -2]) > 0.5 > float(ratio[1, -2])


def test_claim2_layer0_ln_scale(course_model):
    model = course_model("gpt2-small")
    if model.is_standin:
        pytest.skip("the stand-in stores E and P in orthogonal subspaces by construction, so the cosine is 0 "
                    "and the orthogonal approximation is exact: the claim cannot fail on it")
    E, P = model.W_E, model.W_pos
    cos = torch.nn.functional.cosine_similarity(E[:5000:7, None, :], P[None, 100:1000:50, :], dim=-1)
    assert cos.abs().mean() < 0.1  # write-up: about 0.05
    assert abs(P[100:].norm(dim=-1).mean().item() - 3.35) < 0.3  # write-up: about 3.35 past 100
    tokens, cache = _genesis(model)
    exact = 1 / cache["blocks.0.ln1.hook_scale"][..., 0]
    rel = ((dt.layer0_ln_scale_approx(model, tokens) - exact) / exact).abs()
    assert rel.median() < 0.03 and torch.quantile(rel, 0.99) < 0.1


def test_claim3_duplicate_head_output_is_token_plus_positions(course_model):
    model = course_model("gpt2-small")
    tokens, cache = _genesis(model)
    s1 = dt.layer0_ln_scale(model, tokens)[0]
    outs = dt.head_outputs(model, cache)
    pattern = cache["blocks.0.attn.hook_pattern"][0]
    errors = []
    for head in range(model.cfg.n_heads):
        tok, pos = dt.duplicate_head_output_parts(model, tokens[0], pattern[head], head, s1)
        errors.append(float(dt.relative_error(tok + pos, outs[head])[1:].median()))
    tol = 0.1 if model.is_standin else 0.35  # real: no number in the write-up; a loose bound
    assert errors[1] < tol and errors[5] < tol
    assert max(errors[1], errors[5]) < sorted(errors)[len(errors) // 2]


def test_claim4_pvo_norm_map_singles_out_neuron_1168(course_model):
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
    # On both models: nearly constant over tokens and positions, which is what linearising it needs.
    assert scale.std() / scale.mean() < 0.15
    if not model.is_standin:
        # Write-up: "pretty stable around 1.2". Loose (a factor of 2 either way): the write-up gives one
        # rounded figure, does not say over which text or positions, and this was not run on real weights here.
        assert 0.6 < float(scale.median()) < 2.4
    # The stand-in's value (about 4.6) is a consequence of how its residual stream was built, not a claim.


def test_claim5_neuron_1168_reads_far_copies(course_model):
    model = course_model("gpt2-small")
    tokens, cache = _genesis(model)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert set(dt.long_range_heads(dt.mean_attention_distance(pattern))) == {5, 11}
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
    assert (0.5 < gain < 1.5) if model.is_standin else (0.4 < gain < 2.0)
    # Behaviour: a single copy far back raises the pre-activation; a close one does not; nor early ones.
    pre = dt.neuron_pre_vs_copy_distance(model, 1168, [None, 5, 300], position=600, n_samples=8)
    assert pre[2] - pre[0] > 0.5 and pre[1] - pre[0] < 0.25 and pre[2] > 0
    early = dt.neuron_pre_vs_copy_distance(model, 1168, [30], position=50, n_samples=8)
    assert early[0] < pre[2] - 0.5


def test_claim5_neuron_1168_prefers_occasional_over_constant_repeats(course_model):
    """Write-up: neuron 1168 fires on words repeated occasionally, not on words repeated constantly.

    Real model only. The stand-in was built from the uniform-attention formula, which predicts the
    opposite (constant repeats have copies at all distances, so a large mean distance), and it fires
    more on constant repeats: the claim is not reproduced there (chapter 1 says so).
    """
    model = course_model("gpt2-small")
    if model.is_standin:
        pytest.skip("not reproduced on the stand-in: it follows the uniform-attention formula, which predicts "
                    "a larger activation on constantly repeated words")
    tokens, cache = _genesis(model)
    pre = cache["blocks.0.mlp.hook_pre"][0, :, 1168]
    mask = dt.earlier_copy_mask(tokens)[0]
    n_idx = torch.arange(tokens.shape[-1], device=mask.device)
    nearest = torch.where(mask, n_idx[:, None] - n_idx[None, :], 10**6).min(-1).values
    occasional = (nearest >= 100) & (nearest < 10**6) & (n_idx >= 200)
    constant = (nearest <= 10) & (mask.sum(-1) >= 10) & (n_idx >= 200)
    assert occasional.sum() >= 20 and constant.sum() >= 20
    assert float(pre[occasional].mean()) > float(pre[constant].mean())


def test_claim6_weights_only_prediction_tracks_the_neuron(course_model):
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
    rmse = float((pred - actual)[100:].pow(2).mean().sqrt())
    if model.is_standin:
        assert corr > 0.9 and rmse < 0.6
    else:  # the write-up states no error; the token terms it ignores make the fit looser
        assert corr > 0.5
