"""GPT-2 small's real layer 0 in the course: the package data, the stand-in built on it, the grouping
rule over many surrogate embeddings, and mutation checks of the claims tests that use it.

The grouping of chapter 2 (and the duplicate-token ranking of chapter 1) must come out as the
write-up's on the real layer 0 for any reasonable surrogate token embedding: the tests below swap
the stand-in's embeddings for surrogates of norm 2.5, 3.5 and 4.5, with and without a shared mean
direction, two seeds each, and print the margins of the rule.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sys
from pathlib import Path

import pytest
import torch

from exercises_lib import contextual as cx
from exercises_lib import duplicate_tokens as dt
from exercises_lib.layernorm import ln_scale
from exercises_lib.standin import real_layer0 as R

torch.set_grad_enabled(False)
CLAIMS = Path(__file__).parent / "claims"


# ---------------------------------------------------------------------------
# Package data
# ---------------------------------------------------------------------------


def test_packaged_weights_match_their_provenance():
    folder = R.real_layer0_dir()
    data = (folder / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == R.expected_sha256()
    prov = (folder / "PROVENANCE.md").read_text()
    assert "OpenAI" in prov and "huplay/GPT2-SMALL" in prov and "LICENSE-openai-gpt-2" in prov
    assert "Modified MIT License" in (folder / "LICENSE-openai-gpt-2").read_text()
    w = R.real_layer0_weights()
    # The spot values PROVENANCE.md gives (Hugging Face layout: c_attn.weight[0, :3] is W_Q[head 0][0, :3]).
    torch.testing.assert_close(w["pos_embed.W_pos"][0, :2], torch.tensor([-0.01882, -0.19742]), atol=1e-5, rtol=0)
    torch.testing.assert_close(w["blocks.0.attn.W_Q"][0, 0, :3], torch.tensor([-0.47385, -0.26137, -0.09780]), atol=1e-5, rtol=0)
    torch.testing.assert_close(w["blocks.0.ln1.w"][:2], torch.tensor([0.22322, 0.18196]), atol=1e-5, rtol=0)


def test_weights_round_trip_to_the_hugging_face_layout():
    """real_layer0_weights -> the stand-in's Hugging Face conversion gives back the file's tensors."""
    from safetensors.torch import load_file

    from exercises_lib.models._bridges import tl_to_hf_gpt2
    from exercises_lib.standin import build_standin_weights

    build = build_standin_weights("gpt2-small", plants=[])
    hf = tl_to_hf_gpt2(build.weights, build.cfg)
    original = load_file(str(R.real_layer0_dir() / "model.safetensors"))
    for key, value in original.items():
        assert torch.equal(hf[key], value), key


@pytest.mark.parametrize("damage", ["missing", "corrupt", "no checksum"])
def test_missing_or_corrupt_weights_say_which_file_and_the_fix(tmp_path, damage):
    folder = tmp_path / "gpt2_small_layer0"
    shutil.copytree(R.real_layer0_dir(), folder)
    target = folder / "model.safetensors"
    if damage == "missing":
        target.unlink()
    elif damage == "corrupt":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (folder / "PROVENANCE.md").write_text("no checksum here\n")
    with pytest.raises(R.RealWeightsError) as err:
        R.real_layer0_weights(folder)
    message = str(err.value)
    assert str(folder) in message and "Reinstall" in message
    assert {"missing": "missing", "corrupt": "corrupt", "no checksum": "no sha256"}[damage] in message


# ---------------------------------------------------------------------------
# The stand-in built on it
# ---------------------------------------------------------------------------


def test_standin_is_built_on_the_real_layer0(gpt2_standin):
    model = gpt2_standin
    assert model.display_name == "GPT-2 small (stand-in, real layer 0)"
    assert "real W_pos, layer-0 attention" in model.provenance and "planted" in model.provenance
    src = model.weight_sources
    for key in ("W_pos", "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.attn.W_O",
                "blocks.0.attn.b_Q", "blocks.0.attn.b_O"):
        assert src[key]["source"] == "real", key
    assert src["W_E"]["source"] == "planted" and "surrogate_embeddings" in src["W_E"]["plants"]
    assert src["blocks.0.mlp.W_in"]["source"] == "planted"
    assert {"duplicate_neuron", "contextual_neurons"} <= set(src["blocks.0.mlp.W_in"]["plants"])
    assert src["blocks.0.mlp.b_in"]["source"] != "real"  # folded: the real b_in plus the real LN-2 bias through W_in
    assert src["blocks.5.attn.W_Q"]["source"] == "stand-in"
    # The loaded W_pos is the real one, centred as TransformerLens centres GPT-2's.
    P = R.real_layer0_weights()["pos_embed.W_pos"]
    torch.testing.assert_close(model.W_pos.cpu(), P - P.mean(-1, keepdim=True), atol=1e-6, rtol=0)


def test_plants_never_write_real_weights():
    from exercises_lib.standin import PLANTS, build_standin_weights, register_plant

    @register_plant("_test_writes_real", models=("gpt2-small",), default_placement={}, description="test",
                    layer0="real")
    def _bad(build, where):
        build.w("blocks.0.attn.W_Q")[0, 0, 0] += 1.0

    try:
        with pytest.raises(RuntimeError, match="changed real weights"):
            build_standin_weights("gpt2-small", plants=["_test_writes_real"])
    finally:
        del PLANTS["_test_writes_real"]


def test_layer0_modes_are_chosen_and_checked():
    from exercises_lib.standin import build_standin_weights

    with pytest.raises(ValueError, match="cannot be built together"):
        build_standin_weights("gpt2-small", plants=["positional", "duplicate_neuron"])
    with pytest.raises(ValueError, match="need layer0='real'"):
        build_standin_weights("gpt2-small", plants=["duplicate_neuron"], layer0="planted")
    with pytest.raises(ValueError, match="no real layer 0"):
        build_standin_weights("attn-only-4l", plants=[], layer0="real")


def test_layer0_forward_matches_the_bridge(gpt2_standin):
    """The builder's plain-torch layer 0 (used by the plants to read the real weights) is the model's."""
    from exercises_lib.standin import build_standin_weights
    from exercises_lib.standin.layer0 import layer0_forward

    build = build_standin_weights("gpt2-small")  # the same build as the fixture's (deterministic)
    tokens = dt.text_tokens(gpt2_standin, "fiction", 200).cpu()
    ours = layer0_forward(build.weights, tokens, 12)
    cache = dt.run_layer0(gpt2_standin, tokens)
    torch.testing.assert_close(ours["pattern"], cache["blocks.0.attn.hook_pattern"].cpu(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours["pre"], cache["blocks.0.mlp.hook_pre"].cpu(), atol=2e-3, rtol=1e-3)


# ---------------------------------------------------------------------------
# The grouping rule on the real layer 0, over many surrogate embeddings
# ---------------------------------------------------------------------------

SURROGATES = list(itertools.product([2.5, 3.5, 4.5], [0.0, 2.0], [0, 1]))  # random part's norm, shared direction's, seed


@pytest.fixture(autouse=True)
def _no_grad():
    """These tests read weights and activations; none needs gradients."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def real_layer0_model():
    """A stand-in with the real layer 0 and nothing else planted (its embeddings are swapped below)."""
    from exercises_lib.models import build_standin

    return build_standin("gpt2-small", plants=["surrogate_embeddings"], device="cpu")


def _swap_embeddings(model, norm: float, mean_norm: float, seed: int) -> None:
    """Replace the model's (processed, centred) token embeddings by a surrogate: random directions over
    all of the residual stream with norm ``norm``, plus a shared direction of norm ``mean_norm``
    (rows of norm sqrt(norm^2 + mean_norm^2): two tokens then have cosine mean_norm^2 / that^2)."""
    total = (norm**2 + mean_norm**2) ** 0.5
    from exercises_lib.standin.embeddings import surrogate_rows

    d = model.cfg.d_model
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g) - 0)[0].T  # [d, d]: a random orthonormal basis
    ones = torch.ones(d) / d**0.5
    basis = basis - (basis @ ones)[:, None] * ones  # centred, as LayerNorm sees it
    basis = torch.linalg.qr(basis.T)[0].T[: d - 2]
    mean_dir = basis[-1]
    E = surrogate_rows(model.cfg.d_vocab, basis[:-1], g, norm_mean=total, norm_std=0.0, norm_min=total - 0.01,
                       norm_max=total + 0.01, mean_dir=mean_dir, mean_norm=mean_norm)
    with torch.no_grad():
        model.W_E.copy_((E - E.mean(-1, keepdim=True)).to(model.W_E.device))


@pytest.mark.slow
def test_grouping_is_the_write_ups_for_any_surrogate(real_layer0_model):
    """Detokenisation 3, 4, 7; contextual 0, 2, 6, 8, 9, 10; duplicate-token 1, 5; unclear 11, for every
    surrogate; heads 1 and 5 top the duplicate-token score on repeated random tokens."""
    model = real_layer0_model
    worst = torch.full((12, 3), float("inf"))
    for norm, mean_norm, seed in SURROGATES:
        _swap_embeddings(model, norm, mean_norm, seed)
        features = cx.head_features(cx.positional_pattern(model, model.to_single_token(" the"), model.cfg.n_ctx))
        copy = cx.copy_attention_score(model)
        margins = cx.classification_margins(features, copy)
        groups = cx.classify_heads(features, copy)
        label = f"norm {norm}, mean direction {mean_norm}, seed {seed}"
        print(f"{label}: margins [copy, local, recent] per head {margins.round(decimals=2).tolist()}")
        assert groups == {"duplicate": [1, 5], "detokenisation": [3, 4, 7], "contextual": [0, 2, 6, 8, 9, 10],
                          "unclear": [11]}, (label, groups)
        rep = dt.repeated_random_tokens(model)
        scores = dt.duplicate_token_score(dt.run_layer0(model, rep)["blocks.0.attn.hook_pattern"], rep)
        assert set(scores.topk(2).indices.tolist()) == {1, 5}, (label, scores)
        # Each head's margin on the rule that decides it (its own group's threshold, and the ones before).
        decide = {1: [0], 5: [0], 3: [1], 4: [1], 7: [1], 0: [2], 2: [2], 6: [2], 8: [2], 9: [2], 10: [2]}
        for head in range(12):
            own = decide.get(head, [])
            before = [k for k in range(3) if k < (own[0] if own else 3)]
            m = [float(margins[head, k]) for k in own] + [-float(margins[head, k]) for k in before]
            worst[head, 0] = min(worst[head, 0], min(m) if m else float("inf"))
    print("smallest margin per head over all surrogates:", worst[:, 0].round(decimals=3).tolist())


def test_the_old_copy_score_puts_head_3_with_the_duplicate_heads(real_layer0_model):
    """Why the copy score counts only earlier copies: counting the token itself as its own copy (the
    previous definition) puts the previous-token head 3 among the duplicate-token heads on the real
    layer 0, because it attends to the current position."""
    model = real_layer0_model
    _swap_embeddings(model, 3.5, 0.0, 0)
    g = torch.Generator().manual_seed(0)
    block = torch.randint(1000, 20000, (4, 25), generator=g)
    tokens = torch.cat([torch.full((4, 1), 50256), block.repeat(1, 4)], dim=1)
    pattern = cx.layer0_cache(model, tokens, names=("blocks.0.attn.hook_pattern",))["blocks.0.attn.hook_pattern"]
    same = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(101, 101, dtype=torch.bool).tril()
    with_self = (pattern * same[:, None]).sum(-1)[:, :, 26:].mean((0, 2))
    assert with_self[3] > cx.CLASSIFY_THRESHOLDS["duplicate"] and with_self[3] > 0.5
    assert float(cx.copy_attention_score(model)[3]) < cx.CLASSIFY_THRESHOLDS["duplicate"]


def test_head5_positional_output_is_a_line_whatever_the_embeddings():
    """Claim 1.4's real part depends on no embedding: W_pos and head 0.5's OV circuit only."""
    from exercises_lib.standin.layer0 import value_output

    w = R.real_layer0_weights()
    out = value_output(w, w["pos_embed.W_pos"][:1000])[5]
    out = out - out.mean(-1, keepdim=True)
    _, S, Vh = torch.linalg.svd(out - out.mean(0), full_matrices=False)
    fit = dt.line_fit(out[20:] @ Vh[0], torch.arange(20, 1000))
    assert float(S[0] ** 2 / (S**2).sum()) > 0.5 and fit["r2"] > 0.8 and 350 < fit["zero_crossing"] < 650


# ---------------------------------------------------------------------------
# Plants of the real-layer-0 stand-in, moved: the analysis finds them there
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_real_layer0_plants_elsewhere_are_found_there():
    from exercises_lib.models import build_standin

    placement = {"duplicate_neuron": {"neuron": 77, "companion_neurons": [10, 20, 30]},
                 "content_structure": {"keyword_head": 9, "stopword_head": 0}}
    model = build_standin("gpt2-small", plants=["surrogate_embeddings", "content_structure", "duplicate_neuron"],
                          placement=placement, device="cpu")
    pvo = dt.pvo_contributions(model, 5)
    assert dt.outlier_neurons(pvo.norm(dim=0))[0] == 77
    the = model.to_single_token(" the")
    from exercises_lib.texts import load_text

    names = ["bible_genesis", "legal_gpl3", "python_docs", "cooking", "fiction", "war_history"]
    toks = {n: cx.tokens_of(model, load_text(n), 600) for n in names}
    stop = torch.tensor([cx.stopword_fraction(model, t) for t in toks.values()])
    means = torch.stack([cx.normalisation_factors(model, t, the)[:, 300:].mean(-1) for t in toks.values()])
    corr = {h: float(torch.corrcoef(torch.stack([stop, means[:, h]]))[0, 1]) for h in range(12)}
    assert corr[9] < 0 < corr[0], corr  # the keyword head follows the stopword share down, the stopword head up


# ---------------------------------------------------------------------------
# Mutation checks: breaking the analysis in the obvious way makes the claims tests fail
# ---------------------------------------------------------------------------


def _claims_module(name: str):
    sys.path.insert(0, str(CLAIMS))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(CLAIMS))


@pytest.fixture
def ch1(monkeypatch):
    mod = _claims_module("test_ch01_duplicate_tokens")
    mod._genesis.cache_clear()
    yield mod
    mod._genesis.cache_clear()


@pytest.fixture
def ch2(monkeypatch):
    mod = _claims_module("test_ch02_contextual")
    monkeypatch.setattr(mod, "_CACHE", {})
    return mod


def _run(test, model, source="real-layer0"):
    test(lambda name: model, source)


def _score_with_self(pattern, tokens):
    pos = tokens.shape[-1]
    mask = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(pos, pos, dtype=torch.bool, device=tokens.device).tril()
    has = dt.earlier_copy_mask(tokens).any(-1)
    return (pattern * mask[:, None]).sum(-1).permute(1, 0, 2)[:, has].mean(-1)


def _ln_approx_sum_of_norms(model, tokens):
    e = model.W_E[tokens].norm(dim=-1)
    p = model.W_pos[: tokens.shape[-1]].norm(dim=-1)
    return model.cfg.d_model**0.5 / (e + p)


def _pattern_transposed(orig):
    """The attention pattern read source-by-destination (``pattern[h, src, dest]``)."""
    return lambda model, pattern, *a: orig(model, pattern.transpose(-1, -2), *a)


MUTATIONS_CH1 = {
    "claim 1.1, the token counted as its own copy": (
        "test_claim1_three_duplicate_token_heads", "duplicate_token_score", lambda orig: _score_with_self),
    "claim 1.2, the norms added instead of their squares": (
        "test_claim2_positional_norm_and_layer0_ln_scale", "layer0_ln_scale_approx",
        lambda orig: _ln_approx_sum_of_norms),
    "claim 1.3, the positional part left out": (
        "test_claim3_duplicate_head_output_is_token_plus_positions", "duplicate_head_output_parts",
        lambda orig: lambda *a: (orig(*a)[0], 0 * orig(*a)[1])),
    "claim 1.4, the line read off the wrong duplicate head": (
        "test_claim4_uniform_head_positional_output_is_a_line", "copy_to_self_ratio",
        lambda orig: lambda pattern, tokens, *a, **k: -orig(pattern, tokens, *a, **k)),
    "claim 1.4, the norm map laid out column by column": (
        "test_claim4_pvo_norm_map_singles_out_neuron_1168", "pvo_norm_grid",
        lambda orig: lambda pvo, shape=(48, 64): pvo.norm(dim=0).reshape(shape[::-1]).T),
    "claim 1.5, distances measured from the start": (
        "test_claim5_long_range_heads", "mean_attention_distance",
        lambda orig: lambda pattern, min_dest=200: (pattern * torch.arange(pattern.shape[-1], device=pattern.device)).sum(-1)[..., min_dest:].mean(dim=(0, 2))),
    "claim 1.5, the attention pattern read source by destination": (
        "test_claim5_neuron_1168_reads_far_copies", "positional_contributions_to_neuron", _pattern_transposed),
    "claim 1.5, the level read after the GELU": (
        "test_claim5_combined_positional_term", "no_copy_level",
        lambda orig: lambda model, neuron, **k: orig(model, neuron, **{**k, "hook": "post"})),
    "claim 1.5, the token counted as its own copy when finding the nearest copy": (
        "test_claim5_neuron_1168_prefers_occasional_over_constant_repeats", "earlier_copy_mask",
        lambda orig: lambda tokens: orig(tokens) | torch.eye(tokens.shape[-1], dtype=torch.bool, device=tokens.device)),
    "claim 1.6, the attention's output bias left out": (
        "test_claim6_weights_only_prediction_tracks_the_neuron", "predict_neuron_pre",
        lambda orig: lambda model, tokens, neuron, *a: orig(model, tokens, neuron, *a)
        - a[-1] * (model.b_O[0] @ model.W_in[0][:, neuron])),
}


def test_every_chapter1_claims_test_has_a_mutation():
    mod = _claims_module("test_ch01_duplicate_tokens")
    claims = {name for name in dir(mod) if name.startswith("test_claim")}
    mutated = {test for test, _, _ in MUTATIONS_CH1.values()} | {"test_claim1_head5_groups_punctuation"}
    assert claims <= mutated, sorted(claims - mutated)


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS_CH1))
def test_chapter1_claims_fail_when_the_analysis_is_broken(mutation, ch1, gpt2_standin, monkeypatch):
    test_name, function, make = MUTATIONS_CH1[mutation]
    test = getattr(ch1, test_name)
    marked = test.__dict__.get("pytestmark", [])
    source = "real-layer0" if any(m.name == "real_layer0" for m in marked) else "standin"
    monkeypatch.setattr(dt, function, make(getattr(dt, function)))
    with pytest.raises(AssertionError):
        _run(test, gpt2_standin, source)


@pytest.fixture
def punctuation_grouped_model(gpt2_standin):
    """The stand-in with ',' and ' and' given the embedding of '.': any head then treats the three as one
    token (the grouping is not planted in the stand-in, and GPT-2's embeddings are not at hand)."""
    model = gpt2_standin
    ids = [model.to_single_token(s) for s in (".", ",", " and")]
    saved = model.W_E[ids].clone()
    with torch.no_grad():
        model.W_E[ids[1:]] = model.W_E[ids[0]].clone()
    yield model
    with torch.no_grad():
        model.W_E[ids] = saved


@pytest.mark.slow
def test_claim_1_1_grouping_fails_when_the_analysis_is_broken(ch1, punctuation_grouped_model, gpt2_standin, monkeypatch):
    """The grouping assertion of claim 1.1 passes where the three tokens are one group, fails on the stand-in
    (no grouping planted), and fails on the grouped model when the pattern is read source by destination."""
    ch1.assert_punctuation_grouped(punctuation_grouped_model)
    orig = dt.group_attention_ratio
    monkeypatch.setattr(dt, "group_attention_ratio", lambda pattern, *a, **k: orig(pattern.T, *a, **k))
    ch1._genesis.cache_clear()
    with pytest.raises(AssertionError):
        ch1.assert_punctuation_grouped(punctuation_grouped_model)


@pytest.mark.slow
def test_claim_1_1_grouping_is_not_shown_by_the_stand_in(ch1, gpt2_standin):
    with pytest.raises(AssertionError):
        ch1.assert_punctuation_grouped(gpt2_standin)


def _old_copy_score(model, period=25, n_repeats=4, n_sequences=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(1000, 20000, (n_sequences, period), generator=g)
    tokens = torch.cat([torch.full((n_sequences, 1), 50256), block.repeat(1, n_repeats)], dim=1)
    pattern = cx.layer0_cache(model, tokens, names=("blocks.0.attn.hook_pattern",))["blocks.0.attn.hook_pattern"]
    n = tokens.shape[1]
    same = ((tokens[:, :, None] == tokens[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril()).to(pattern.device)
    return (pattern * same[:, None]).sum(-1)[:, :, 1 + period :].mean((0, 2))


def _pi_variant(model, dest_token, n_ctx, *, mask=True, sqrt=True):
    """cx.positional_pattern with one of its steps left out."""
    import math

    w = cx.layer0_weights(model)
    W_Q, b_Q, W_K, b_K = w["W_Q"], w["b_Q"], w["W_K"], w["b_K"]
    E, P = model.W_E[dest_token], model.W_pos[:n_ctx]
    x = E[None] + P
    s = ln_scale(x, model.cfg.eps)[:, None]
    q = torch.einsum("pd,hde->hpe", s * x, W_Q) + b_Q[:, None]
    k = torch.einsum("pd,hde->hpe", s * P, W_K) + b_K[:, None]
    scores = torch.einsum("hne,hie->hni", q, k) / (math.sqrt(W_Q.shape[-1]) if sqrt else 1.0)
    if mask:
        allowed = torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1)


MUTATIONS_CH2 = {
    "claim 2.1, no causal mask in the positional pattern": (
        "test_claim_2_1_positional_patterns", "positional_pattern",
        lambda orig: lambda model, t, n: _pi_variant(model, t, n, mask=False)),
    "claim 2.1, scores not divided by sqrt(d_head)": (
        "test_claim_2_1_positional_pattern_from_the_weights", "positional_pattern",
        lambda orig: lambda model, t, n: _pi_variant(model, t, n, sqrt=False)),
    "claim 2.3, the token counted as its own copy (the old copy score)": (
        "test_claim_2_3_head_groups", "copy_attention_score", lambda orig: _old_copy_score),
    "claim 2.4, the independent model without the positional pattern": (
        "test_claim_2_4_normalisers_concentrate_for_contextual_heads", "independent_model_variance",
        lambda orig: lambda pi, c: c.var(-1)[:, None].expand(-1, pi.shape[1]).clone()),
    "claim 2.4 (stand-in), the first token never made neutral": (
        "test_claim_2_4_normalisers", "normalisation_factors",
        lambda orig: lambda model, tokens, dest_token, neutral=(): orig(model, tokens, dest_token)),
    "claim 2.6, token contributions of the wrong sign": (
        "test_claim_2_6_contextual_neurons_from_the_weights", "mean_contribution_per_text",
        lambda orig: lambda *a, **k: -orig(*a, **k)),
    "claim 2.7, no bag of tokens in the prediction": (
        "test_claim_2_7_prediction_follows_the_topic", "bag_of_tokens_prediction",
        lambda orig: lambda T, tokens, pi, Z: torch.zeros(tokens.shape[-1], device=T.device)),
    "claim 2.7, every Z set to 1 in the bag": (
        "test_claim_2_7_prediction_follows_the_topic", "bag_of_tokens_prediction",
        lambda orig: lambda T, tokens, pi, Z: orig(T, tokens, pi, torch.ones_like(Z))),
    "claim 2.7, every normaliser Z set to 1": (
        "test_claim_2_7_prediction_follows_the_topic", "normalisation_factors",
        lambda orig: lambda model, tokens, dest_token, neutral=(): torch.ones_like(orig(model, tokens, dest_token, neutral))),
    "claim 2.2, the content factor left out (c = 1)": (
        "test_claim_2_2_content_factor_is_a_per_token_weight", "content_weights",
        lambda orig: lambda *a, **k: torch.ones_like(orig(*a, **k))),
    "claim 2.5, the bag of extended embeddings left out": (
        "test_claim_2_5_bag_of_tokens", "bag_of_tokens_output",
        lambda orig: lambda model, tokens, heads, approx, ext: orig(model, tokens, heads, approx, torch.zeros_like(ext))),
    "claim 2.1 (real model), scores not divided by sqrt(d_head)": (
        "test_claim_2_1_positional_pattern_barely_depends_on_the_destination", "positional_pattern",
        lambda orig: lambda model, t, n: _pi_variant(model, t, n, sqrt=False)),
    "claim 2.8 (real model), the two texts' rows compared one position apart": (
        "test_claim_2_8_appendix", "layer_patterns",
        lambda orig: lambda model, tokens, layer: orig(model, tokens, layer).roll(1, dims=-2)),
}

#: Chapter-2 claims tests that only the real model decides (skipped on the stand-in): their mutations
#: run on the real model, where its weights can be loaded.
REAL_ONLY_CH2 = {"test_claim_2_1_positional_pattern_barely_depends_on_the_destination", "test_claim_2_8_appendix"}


def test_every_chapter2_claims_test_has_a_mutation(ch2):
    tests = {name for name in dir(ch2) if name.startswith("test_claim")}
    assert tests == {test for test, _, _ in MUTATIONS_CH2.values()}


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS_CH2))
def test_chapter2_claims_fail_when_the_analysis_is_broken(mutation, ch2, gpt2_standin, monkeypatch):
    test_name, function, make = MUTATIONS_CH2[mutation]
    marked = getattr(ch2, test_name).__dict__.get("pytestmark", [])
    source = "real-layer0" if any(m.name == "real_layer0" for m in marked) else "standin"
    model = gpt2_standin
    if test_name in REAL_ONLY_CH2:
        from exercises_lib.models import load_model, real_weights_available

        if not real_weights_available("gpt2-small"):
            pytest.skip("the claim is decided by the real GPT-2 small only, whose weights cannot be loaded here")
        source, model = "real", load_model("gpt2-small", source="real", device="cpu", quiet=True)
    monkeypatch.setattr(cx, function, make(getattr(cx, function)))
    with pytest.raises(AssertionError):
        _run(getattr(ch2, test_name), model, source)
