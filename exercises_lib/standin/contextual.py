"""Plant: contextual attention heads and contextual neurons in layer 0 (chapter 2).

The positional plant (:mod:`exercises_lib.standin.positional`) gives layer-0
heads their *positional* patterns. This plant adds the *content* half of
Gibson's (2025) decomposition ``exp(score) = pos_n(i) * c(t_i)`` and the
topic neurons that read the contextual heads' output:

Content weights (QK)
    Each planted head gets one query-key dimension with a constant query (a
    query bias) against a key that reads the token's embedding, so
    ``log c_h(t) = q . K E[t] / sqrt(d_head)`` depends on the source token only:

    * a random per-head term along a direction of the token subspace, with a
      small spread for the *contextual* heads (their normaliser ``Z_n``
      concentrates) and a large one for the *detokenisation* heads (their
      ``Z_n`` is "confetti");
    * a "stopword" direction added to the embeddings of common function words
      and punctuation (:data:`STOPWORDS`), read with a negative sign by the
      keyword head and a positive sign by the stopword head;
    * a "first token" direction added to ``E[<|endoftext|>]`` with a large
      weight in the contextual heads, so ``Z_n`` decays over the first ~100
      tokens as in the write-up.

Topic directions (OV) and neurons (MLP 0)
    Tokens of general vocabulary lists written for this plant (:data:`TOPICS`:
    British vs American spellings and institutions, war words, 19th-20th
    century years vs 21st-century words, religious and King James words) get
    a component along a topic direction of the embedding. Each contextual
    head's OV circuit copies every topic direction to an output direction, and
    MLP-0 neurons read them: the British neuron (300) and its twin (704, same
    input, opposite output), the conflict neuron (1621, war words plus the
    era direction: years positive, 21st-century words negative) and the
    religion neuron (1710). The lists are general vocabulary, not taken from
    the course's texts; the texts simply contain some of their words, so a
    neuron's activation follows the topic along a real text.

Everything is measured from behaviour and weights by chapter 2's analysis; the
analysis never reads this module.

Taught in: chapter 2 (contextual attention heads and contextual neurons).
"""

from __future__ import annotations

import math

import torch

from exercises_lib.standin import TOKEN_NORM, StandinBuild, register_plant
from exercises_lib.vocab import STOPWORDS, single_token_ids

#: Punctuation the stopword head treats as stopwords (besides :data:`exercises_lib.vocab.STOPWORDS`).
STOPWORD_PUNCTUATION = [",", ".", ";", ":", "\n", "\n\n"]

#: General vocabulary lists of the planted topics (leading space added; words
#: that are not one GPT-2 token are skipped). Signed topics list (+1, -1) pairs.
TOPICS: dict[str, dict[str, str]] = {
    "britain": {
        "+": (
            "colour colours favour favourite centre centres programme organise organised realise "
            "recognise behaviour neighbour neighbours labour honour theatre metre metres grey whilst "
            "amongst pavement queue councillors Manchester London Britain British England Scotland "
            "Wales pounds mum holiday autumn petrol railway timetable fortnight rubbish tyre defence "
            "licence travelled cancelled NHS BBC Parliament MPs Tory minister borough scheme flats "
            "Birmingham Leeds Liverpool Glasgow"
        ),
        "-": (
            "color colors favor favorite center centers program organize organized realize recognize "
            "behavior neighbor neighbors labor honor theater meter meters gray sidewalk sidewalks truck "
            "trucks apartment apartments dollars cents mom vacation highway freeway gasoline railroad "
            "garbage tire defense license traveled canceled Chicago America American Americans "
            "Washington Congress Senate Republican Democrats governor county downtown mayor "
            "intersection intersections Boston Texas California Ohio Brooklyn"
        ),
    },
    "war": {
        "+": (
            "war wars battle battles army armies soldiers troops artillery infantry cavalry rifles "
            "generals offensive front trenches siege invasion allied Allied fleet navy regiment "
            "division casualties wounded surrender victory defeat enemy campaign tanks bombers "
            "forces military weapons guns marched fought retreat Confederate Sherman Napoleon "
            "Kaiser Nazi"
        ),
    },
    "era": {
        "+": "1861 1862 1863 1865 1870 1899 1904 1905 1914 1915 1916 1917 1918 1939 1940 1941 1942 1943 1944 1945",
        "-": (
            "internet smartphone online website email app software digital 2012 2013 2014 2015 2016 "
            "2017 2018 2019 2020 Twitter Facebook Google startup podcast"
        ),
    },
    "religion": {
        "+": (
            "God Lord LORD Jesus Christ heaven holy spirit Spirit prayer pray church sin sins "
            "righteous righteousness blessed Blessed faith soul angel angels prophet prophets "
            "disciples Israel temple altar worship mercy salvation thee thou thy hath shalt ye "
            "bishop priest priests pope monastery cathedral Bible scripture gospel sermon clergy "
            "baptism pilgrimage theology divine saint saints psalm hymn"
        ),
    },
}

FIRST_TOKEN = 50256  # <|endoftext|>, which TransformerLens puts at position 0

DEFAULT_PLACEMENT = {
    "layer": 0,
    "contextual": [0, 2, 6, 8, 9, 10],
    "detokenisation": [3, 4, 7],
    "keyword_head": 6,  # attends more to keywords (stopwords have low content weight)
    "stopword_head": 8,  # attends more to stopwords
    "britain_neuron": 300,
    "britain_twin_neuron": 704,  # same input as 300, opposite output direction
    "conflict_neuron": 1621,
    "religion_neuron": 1710,
}

# Log content weights (before the LayerNorm-scale variation). Chosen so that
# the contextual heads' normalisers concentrate and the detokenisation heads'
# do not; see tests/test_contextual.py for the measured behaviour.
CONTEXTUAL_SPREAD = 0.2  # std of the random per-token log content weight
DETOKENISATION_SPREAD = 1.5
STOPWORD_LOG_WEIGHT = 2.5  # +-, keyword / stopword heads
FIRST_TOKEN_LOG_WEIGHT = 2.0  # log c(<|endoftext|>) at position 0, relative to a head's typical log c
TYPICAL_STOPWORD_SHARE = 0.45  # share of stopword tokens in typical English text (for the line above)
STOPWORD_NORM = 1.0  # size of the stopword component added to E
FIRST_TOKEN_NORM = 2.0
TOPIC_NORM = 2.0  # size of a topic component added to E
TOPIC_OV_GAIN = 0.1  # head output along a topic direction per unit of LN'd input
BAG_DIMS = 24  # head dimensions of the contextual heads' generic token map
BAG_OUT_DIMS = 60  # residual directions the generic maps write to
BAG_GAIN = 0.5  # generic output of a head ~ BAG_GAIN * 5 per attended token
NEURON_READ = {  # neuron -> (topic weights, bias): pre-activation ~ +1..3 on topic text
    "britain_neuron": ({"britain": 2.5}, -1.0),
    "britain_twin_neuron": ({"britain": 2.0}, -0.8),
    "conflict_neuron": ({"war": 1.1, "era": 2.2}, -1.0),
    "religion_neuron": ({"religion": 1.75}, -1.2),
}
NEURON_OUT = 0.5  # |W_out| of the British neuron and its twin along a shared output direction


def stopword_ids(build: StandinBuild) -> list[int]:
    words = [" " + w for w in STOPWORDS] + [" " + w.capitalize() for w in STOPWORDS]
    words += [w.capitalize() for w in STOPWORDS] + STOPWORD_PUNCTUATION
    return single_token_ids(build.tokenizer, words)


def topic_ids(build: StandinBuild, topic: str) -> dict[str, list[int]]:
    return {sign: single_token_ids(build.tokenizer, [" " + w for w in words.split()]) for sign, words in TOPICS[topic].items()}


def _plant_content_weights(build: StandinBuild, where: dict, stop_dir, bos_dir) -> None:
    layer = where["layer"]
    d_head = build.cfg["d_head"]
    s_typ = build.typical_ln_scale()
    tok_dirs = _token_subspace(build)
    # LayerNorm scale of <|endoftext|> at position 0, where it always sits.
    x0 = build.read("embed.W_E")[FIRST_TOKEN] + build.read("pos_embed.W_pos")[0]
    x0 = x0 - x0.mean()
    s_bos = math.sqrt(build.cfg["d_model"]) / float(x0.norm())
    heads = [(h, CONTEXTUAL_SPREAD) for h in where["contextual"]]
    heads += [(h, DETOKENISATION_SPREAD) for h in where["detokenisation"]]
    for head, spread in heads:
        dims = build.layout.head_dims(layer, head, "qk", 1)
        # A random direction of the token subspace, scaled so E[t].u has std 1.
        u = build.randn(tok_dirs.shape[0]) @ tok_dirs
        u = u / u.norm()
        proj_std = float((build.read("embed.W_E") @ u).std())
        key = spread / proj_std * u
        stop_weight = 0.0
        if head == where["keyword_head"]:
            stop_weight = -STOPWORD_LOG_WEIGHT
        if head == where["stopword_head"]:
            stop_weight = STOPWORD_LOG_WEIGHT
        key = key + stop_weight / STOPWORD_NORM * stop_dir
        if head in where["contextual"]:
            # The first token's weight is large relative to the head's typical content weight.
            typical = math.log(1 - TYPICAL_STOPWORD_SHARE + TYPICAL_STOPWORD_SHARE * math.exp(stop_weight))
            bos_log = FIRST_TOKEN_LOG_WEIGHT + typical
            key = key + bos_log * (s_typ / s_bos) / FIRST_TOKEN_NORM * bos_dir
        W_Q = build.w(f"blocks.{layer}.attn.W_Q")[head]
        W_K = build.w(f"blocks.{layer}.attn.W_K")[head]
        W_Q[:, dims] = 0.0
        build.w(f"blocks.{layer}.attn.b_K")[head][dims] = 0.0
        # score = b_Q * (s * E[t]) . key / sqrt(d_head) ~ log c(t) at the typical scale s.
        W_K[:, dims.start] = key
        build.w(f"blocks.{layer}.attn.b_Q")[head][dims.start] = math.sqrt(d_head) / s_typ


def _token_subspace(build: StandinBuild) -> torch.Tensor:
    """The orthonormal directions [k, d_model] spanned by the base token embeddings."""
    return build.layout._named["tok"]


def _plant_topics(build: StandinBuild, where: dict) -> None:
    layer = where["layer"]
    E = build.w("embed.W_E")
    names = list(TOPICS)
    in_dirs = build.layout.direction("contextual.topic_in", len(names))
    out_dirs = build.layout.direction("contextual.topic_out", len(names))
    for j, topic in enumerate(names):
        for sign, ids in topic_ids(build, topic).items():
            E[ids] += (1.0 if sign == "+" else -1.0) * TOPIC_NORM * in_dirs[j]
    # Contextual heads map every token to a generic output (a random linear map
    # of the token subspace: the bag of tokens), and copy each topic direction
    # to its own output direction.
    tok_dirs = _token_subspace(build)
    bag_out = build.layout.direction("contextual.bag_out", BAG_OUT_DIMS)
    n_tok = tok_dirs.shape[0]
    for head in where["contextual"]:
        dims = build.layout.head_dims(layer, head, "ov", BAG_DIMS)
        W_V = build.w(f"blocks.{layer}.attn.W_V")[head]
        W_O = build.w(f"blocks.{layer}.attn.W_O")[head]
        # values ~ N(0, 1) per dimension: a LayerNormed token has |s E[t]| ~ s * TOKEN_NORM
        read = build.randn(n_tok, BAG_DIMS) / (build.typical_ln_scale() * TOKEN_NORM)
        W_V[:, dims] = tok_dirs.T @ read
        build.w(f"blocks.{layer}.attn.b_V")[head][dims] = 0.0
        W_O[dims, :] = BAG_GAIN * (build.randn(BAG_DIMS, BAG_OUT_DIMS) / math.sqrt(BAG_OUT_DIMS)) @ bag_out
    for head in where["contextual"]:
        dims = build.layout.head_dims(layer, head, "ov", len(names))
        W_V = build.w(f"blocks.{layer}.attn.W_V")[head]
        W_O = build.w(f"blocks.{layer}.attn.W_O")[head]
        W_V[:, dims] = in_dirs.T
        build.w(f"blocks.{layer}.attn.b_V")[head][dims] = 0.0
        W_O[dims, :] = TOPIC_OV_GAIN * out_dirs
    # Neurons read the topic outputs (their base random input is halved).
    W_in = build.w(f"blocks.{layer}.mlp.W_in")
    b_in = build.w(f"blocks.{layer}.mlp.b_in")
    W_out = build.w(f"blocks.{layer}.mlp.W_out")
    neuron_out = build.layout.direction("contextual.neuron_out", 1)[0]
    for key, (reads, bias) in NEURON_READ.items():
        k = where[key]
        W_in[:, k] *= 0.5
        for topic, weight in reads.items():
            W_in[:, k] += weight * out_dirs[names.index(topic)]
        b_in[k] = bias
    W_out[where["britain_neuron"]] = NEURON_OUT * neuron_out
    W_out[where["britain_twin_neuron"]] = -NEURON_OUT * neuron_out


@register_plant(
    "contextual",
    models=("gpt2-small",),
    default_placement=DEFAULT_PLACEMENT,
    description=(
        "layer-0 content weights (contextual, detokenisation, keyword and stopword heads), "
        "topic directions copied by the contextual heads, and topic neurons of MLP 0"
    ),
    order=30,
    layer0="planted",
)
def plant_contextual(build: StandinBuild, where: dict) -> None:
    ctx, detok = list(where["contextual"]), list(where["detokenisation"])
    if set(ctx) & set(detok):
        raise ValueError(f"a head is both contextual and detokenisation: {ctx}, {detok}")
    for key in ("keyword_head", "stopword_head"):
        if where[key] not in ctx:
            raise ValueError(f"{key} {where[key]} must be one of the contextual heads {ctx}")
    neurons = [where[k] for k in NEURON_READ]
    if len(set(neurons)) != len(neurons):
        raise ValueError(f"two topic neurons share an index: {neurons}")
    E = build.w("embed.W_E")
    stop_dir = build.layout.direction("contextual.stopword", 1)[0]
    bos_dir = build.layout.direction("contextual.first_token", 1)[0]
    E[stopword_ids(build)] += STOPWORD_NORM * stop_dir
    E[FIRST_TOKEN] += FIRST_TOKEN_NORM * bos_dir
    _plant_content_weights(build, where, stop_dir, bos_dir)
    _plant_topics(build, where)
    build.notes.append(
        f"contextual: content weights in heads {ctx} (contextual) and {detok} (detokenisation); "
        f"topic neurons {neurons}"
    )


# ---------------------------------------------------------------------------
# The same chapter on GPT-2 small's real layer 0 (layer0="real")
# ---------------------------------------------------------------------------
#
# With the real layer 0 the heads' queries, keys and values are GPT-2's: their
# positional patterns, their groups and how much their content weights vary
# with random embeddings are the real weights'. What the surrogate embeddings
# lack is GPT-2's vocabulary structure, so two plants write it, each solved
# against the real weights (they read them, never change them):
#
# ``content_structure``
#     adds a vector to the embeddings of stopwords and one to ``<|endoftext|>``,
#     chosen (least norm, in fresh residual directions) so that, seen from
#     ``' the'`` at position 500, the stopwords' log content weight is
#     ``-STOPWORD_LOG_WEIGHT`` lower in the keyword head (6) and as much higher
#     in the stopword head (8) and unchanged in every other head, and the first
#     token's is ``REAL_FIRST_TOKEN_LOG_WEIGHT`` above a typical text's (stopwords
#     TYPICAL_STOPWORD_SHARE of it) in the contextual heads (so ``Z_n`` decays over
#     the first tokens) and at a typical text's in the others.
# ``contextual_neurons``
#     adds topic directions to the topic words' embeddings (chosen so that no
#     head's content weight changes) and writes MLP-0 neurons 300, 704, 1621 and
#     1710 to read what the *real* contextual heads' OV circuits make of them,
#     and nothing of what the other heads or the direct path make of them.

REAL_CONTENT_PLACEMENT = {
    "contextual": [0, 2, 6, 8, 9, 10],
    "keyword_head": 6,
    "stopword_head": 8,
}
REAL_NEURON_PLACEMENT = {
    "contextual": [0, 2, 6, 8, 9, 10],
    "britain_neuron": 300,
    "britain_twin_neuron": 704,
    "conflict_neuron": 1621,
    "religion_neuron": 1710,
}
THE = 262  # ' the', the write-up's fixed destination token
DEST_POS = 500
CONTENT_DIMS = 32  # fresh residual directions the stopword and first-token vectors are solved in
REAL_FIRST_TOKEN_LOG_WEIGHT = 3.0  # log c(<|endoftext|>) above a typical text's, contextual heads
FIRST_TOKEN_DESTS = (3, 10, 30, 100, 500)  # destinations ' the' is seen from when solving for it
TOPIC_DIMS = 64  # fresh directions the topic directions are chosen in (the least read by any head's QK)
REAL_TOPIC_NORM = 4.0  # topic words carry a strong topic component (their norm grows to about 5.3)
#: Pre-activation added by a topic text (about 1 token in 12 of the topic's words) and the neurons'
#: level on other text; the neurons' bias (real) is compensated through W_in reading the constant
#: part of the residual stream.
TOPIC_GAIN = 6.0
NEURON_LEVEL = -1.0
TOPIC_DENSITY = 1 / 12
TOPIC_PENALTY = 0.1  # weight of the penalties (each scaled to mean eigenvalue 1) against the fit
EXT_SAMPLE = 8192  # vocabulary sample whose extended embeddings the neurons should not read
EXT_WEIGHT_CAP = 20.0


def centred_rows(v: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean (what LayerNorm's centring does)."""
    return v - v.mean(-1, keepdim=True)


def _typical_s(build: StandinBuild) -> float:
    """Typical LN-1 multiplier sqrt(d) / |E[t] + P[i]| of an ordinary token past position 100."""
    E, P = build.read("embed.W_E"), build.read("pos_embed.W_pos")
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, E.shape[0], (2000,), generator=g)
    pos = torch.randint(100, 1000, (2000,), generator=g)
    x = E[idx] + P[pos]
    return float((math.sqrt(build.cfg["d_model"]) / (x - x.mean(-1, keepdim=True)).norm(dim=-1)).median())


def _solve_in(basis: torch.Tensor, A: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The least-norm vector ``basis.T @ a`` with ``A @ (basis.T @ a) = target`` (A: [m, d], basis: [k, d])."""
    M = (A @ basis.T).double()  # [m, k]
    a = torch.linalg.lstsq(M, target.double()[:, None]).solution[:, 0]
    return (a.float() @ basis).contiguous()


@register_plant(
    "content_structure",
    models=("gpt2-small",),
    default_placement=REAL_CONTENT_PLACEMENT,
    description=(
        "stopword and first-token vectors in the surrogate embeddings, solved so that the real head 0.6 "
        "favours keywords, 0.8 stopwords, and the contextual heads weight <|endoftext|> highly"
    ),
    order=25,
    layer0="real",
)
def plant_content_structure(build: StandinBuild, where: dict) -> None:
    from exercises_lib.standin.layer0 import content_vectors

    ctx = list(where["contextual"])
    for key in ("keyword_head", "stopword_head"):
        if where[key] not in ctx:
            raise ValueError(f"{key} {where[key]} must be one of the contextual heads {ctx}")
    if where["keyword_head"] == where["stopword_head"]:
        raise ValueError("the keyword head and the stopword head must differ")
    n_heads = build.cfg["n_heads"]
    E = build.w("embed.W_E")
    basis = build.layout.direction("contextual.content", CONTENT_DIMS)
    stops = stopword_ids(build)
    s = _typical_s(build)
    P0 = build.read("pos_embed.W_pos")[0]
    # The stopword vector changes ' the' itself (a stopword) and so the queries: solve twice.
    for _ in range(2):
        U = content_vectors(build.weights, THE, DEST_POS)  # [head, d]
        now = s * (E[stops] @ U.T).mean(0) - s * (E @ U.T).mean(0)  # stopwords' mean log c minus all tokens'
        target = -now
        target[where["keyword_head"]] -= STOPWORD_LOG_WEIGHT
        target[where["stopword_head"]] += STOPWORD_LOG_WEIGHT
        E[stops] += _solve_in(basis, s * U, target)
    U = content_vectors(build.weights, THE, DEST_POS)
    # A typical text's content weight: stopwords make up TYPICAL_STOPWORD_SHARE of it.
    log_c = s * (E @ U.T)  # [vocab, head]
    typical = torch.log((1 - TYPICAL_STOPWORD_SHARE) * log_c.exp().mean(0)
                        + TYPICAL_STOPWORD_SHARE * log_c[stops].exp().mean(0))
    # Seen from ' the' at early positions too: the queries of layer 0 change with the position.
    U_at = torch.cat([content_vectors(build.weights, THE, p) for p in FIRST_TOKEN_DESTS])  # [dests * head, d]
    bos_basis = build.layout.direction("contextual.first_token", CONTENT_DIMS)
    for _ in range(2):  # the first token's LN scale depends on the vector added to it
        x0 = E[FIRST_TOKEN] + P0
        s0 = math.sqrt(build.cfg["d_model"]) / float((x0 - x0.mean()).norm())
        now = s0 * (E[FIRST_TOKEN] @ U_at.T) - typical.repeat(len(FIRST_TOKEN_DESTS))
        target = torch.zeros(n_heads)
        target[ctx] = REAL_FIRST_TOKEN_LOG_WEIGHT
        E[FIRST_TOKEN] += _solve_in(bos_basis, s0 * U_at, target.repeat(len(FIRST_TOKEN_DESTS)) - now)
    build.notes.append(
        f"content structure: stopwords {-STOPWORD_LOG_WEIGHT:+} in head {where['keyword_head']}, "
        f"{STOPWORD_LOG_WEIGHT:+} in head {where['stopword_head']}; <|endoftext|> +{REAL_FIRST_TOKEN_LOG_WEIGHT} in heads {ctx}"
    )


def _reference_run(build: StandinBuild):
    """Layer 0 on two text-like token sequences (:func:`~exercises_lib.standin.layer0.text_like_tokens`):
    the residual's constant part, its variation and the LN scales of ordinary text."""
    from exercises_lib.standin.layer0 import layer0_forward, text_like_tokens

    g = torch.Generator().manual_seed(11)
    tokens = text_like_tokens(torch.tensor(stopword_ids(build)), 3, 512, g)
    return layer0_forward(build.weights, tokens, build.cfg["n_heads"], mlp=False)


@register_plant(
    "contextual_neurons",
    models=("gpt2-small",),
    default_placement=REAL_NEURON_PLACEMENT,
    description=(
        "topic directions in the topic words' surrogate embeddings and MLP-0 neurons 300, 704 (British), "
        "1621 (conflict), 1710 (religion) reading what the real contextual heads make of them"
    ),
    order=35,
    layer0="real",
)
def plant_contextual_neurons(build: StandinBuild, where: dict) -> None:
    from exercises_lib.standin.layer0 import content_vectors, value_output

    ctx = list(where["contextual"])
    others = [h for h in range(build.cfg["n_heads"]) if h not in ctx]
    keys = [k for k in NEURON_READ]
    neurons = [where[k] for k in keys]
    if len(set(neurons)) != len(neurons):
        raise ValueError(f"two topic neurons share an index: {neurons}")
    names = list(TOPICS)
    E = build.w("embed.W_E")
    # Topic directions: fresh directions that no head's query-key circuit reads (seen from any
    # destination: the content vectors of several destination tokens and positions), so
    # adding them changes no attention pattern.
    block = build.layout.direction("contextual.topic_in", TOPIC_DIMS)
    readers = torch.cat([content_vectors(build.weights, THE, p) for p in (5, 20, 50, 100, 200, 350, 500, 700, 900)])
    _, _, Vh = torch.linalg.svd(readers @ block.T, full_matrices=True)  # the block's least-read directions last
    topic_dirs = Vh[-len(names):] @ block  # [topic, d], orthonormal, barely read by any head's QK from ' the' 
    for j, topic in enumerate(names):
        for sign, ids in topic_ids(build, topic).items():
            E[ids] += (1.0 if sign == "+" else -1.0) * REAL_TOPIC_NORM * topic_dirs[j]
    # What each head writes for a unit of each topic direction in its LayerNormed input.
    out = value_output(build.weights, topic_dirs)  # [head, topic, d]
    run = _reference_run(build)
    s1 = float(run["s1"][:, 100:].median())
    s2 = float(run["s2"][:, 100:].median())
    mid = run["resid_mid"][:, 100:]
    mid = mid - mid.mean(-1, keepdim=True)
    const = mid.mean((0, 1))  # the residual's constant part
    # The penalty: what a neuron reading r would see on random text that is not a topic: the
    # token-dependent and the position-dependent parts of the residual stream (variance).
    def unit(m):  # a covariance scaled to mean eigenvalue 1
        return m * (m.shape[0] / float(m.trace()))

    dev = ((mid - const).reshape(-1, mid.shape[-1]) * s2).double()
    penalty = unit(dev.T @ dev)
    # ... and every head's positional output at every position (weights only), so that the
    # topic neurons read no position (they stay out of chapter 1's PVO norm map).
    P = build.read("pos_embed.W_pos")
    pos_out = value_output(build.weights, P[: build.cfg["n_ctx"] - 24])  # [head, pos, d]
    pos_dev = torch.cat([s1 * s2 * centred_rows(pos_out.reshape(-1, pos_out.shape[-1])), s2 * centred_rows(P)])
    pos_dev = (pos_dev - pos_dev.mean(0)).double()
    penalty = penalty + unit(pos_dev.T @ pos_dev)
    # ... and what the contextual heads make of a sample of the vocabulary (their extended
    # embeddings, the content weights' heavy tail included): a topic neuron's strongest tokens
    # should be its topic's words, not tokens the heads happen to weight highly.
    U = content_vectors(build.weights, THE, DEST_POS)[ctx]  # [ctx, d]
    log_c_all = s1 * (E @ U.T)  # [vocab, ctx]
    mean_c = log_c_all.exp().mean(0)
    topical = torch.tensor(sorted({t for topic in names for ids in topic_ids(build, topic).values() for t in ids}))
    log_c_all[topical] = -float("inf")  # the topic words are what the neurons should read
    g = torch.Generator().manual_seed(13)
    heavy = log_c_all.max(-1).values.topk(EXT_SAMPLE // 4).indices  # the heavy tail, all of it
    rest = torch.randint(0, E.shape[0], (EXT_SAMPLE,), generator=g)
    rest = rest[~torch.isin(rest, topical)]
    ids = torch.cat([heavy, rest])
    weight = (log_c_all[ids].exp() / mean_c).clamp(max=EXT_WEIGHT_CAP)  # c / mean c, its tail compressed
    vals = value_output(build.weights, E[ids])[ctx]  # [ctx, sample, d]
    ext = s1 * torch.einsum("sh,hsd->sd", weight, vals) * TOPIC_DENSITY
    ext = (s2 * (ext - ext[len(heavy) :].mean(0))).double()
    penalty = penalty + unit(ext.T @ ext)
    # A topic text: a fraction TOPIC_DENSITY of the recent tokens carries the topic direction;
    # the contextual heads spread their attention over recent tokens, so their summed output
    # along the topic is about density * s1 * norm * sum_h out_h.
    bag = TOPIC_DENSITY * s1 * REAL_TOPIC_NORM * out[ctx].sum(0)  # [topic, d]
    w2, b2 = build.read("blocks.0.ln2.w"), build.read("blocks.0.ln2.b")
    b_in_real = build.read("blocks.0.mlp.b_in")
    W_in, W_out = build.w("blocks.0.mlp.W_in"), build.w("blocks.0.mlp.W_out")

    def centred(v):
        return v - v.mean(-1, keepdim=True)

    # Equations on the reader r = ln2.w * W_in[:, k] (pre-activation = s2 * mid_c . r + (b2 / w2) . r + b_in).
    rows, kinds = [], []
    for j in range(len(names)):
        rows.append(s2 * centred(bag[j]))  # the contextual heads' bag of topic j
        kinds.append(("bag", j))
    for j in range(len(names)):
        rows.append(s2 * s1 * REAL_TOPIC_NORM * centred(topic_dirs[j]))  # direct path: none
        kinds.append(("zero", j))
        for h in others:  # the other heads' copies of a topic word: none
            rows.append(s2 * s1 * REAL_TOPIC_NORM * centred(out[h, j]))
            kinds.append(("zero", j))
    rows.append(s2 * const + b2 / w2)  # the constant part: sets the level
    kinds.append(("level", None))
    A = torch.stack(rows).double()
    neuron_out = build.layout.direction("contextual.neuron_out", 1)[0]
    gram = A.T @ A
    lhs = gram + TOPIC_PENALTY * float(gram.trace()) / gram.shape[0] * penalty
    for key, k in zip(keys, neurons):
        reads, _ = NEURON_READ[key]
        target = torch.zeros(A.shape[0], dtype=torch.float64)
        total = sum(abs(v) for v in reads.values())
        for r, (kind, j) in enumerate(kinds):
            if kind == "bag" and names[j] in reads:
                target[r] = TOPIC_GAIN * reads[names[j]] / total * len(reads)
            elif kind == "level":
                target[r] = NEURON_LEVEL - float(b_in_real[k])
        keep = 0.5 * W_in[:, k] * w2
        reader = keep + torch.linalg.solve(lhs, A.T @ (target - A @ keep.double())).float()
        W_in[:, k] = reader / w2
    W_out[where["britain_neuron"]] = NEURON_OUT * neuron_out
    W_out[where["britain_twin_neuron"]] = -NEURON_OUT * neuron_out
    build.notes.append(f"contextual neurons {neurons} reading the real contextual heads {ctx}")
