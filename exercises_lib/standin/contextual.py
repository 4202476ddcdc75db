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
    x0 = build.w("embed.W_E")[FIRST_TOKEN] + build.w("pos_embed.W_pos")[0]
    x0 = x0 - x0.mean()
    s_bos = math.sqrt(build.cfg["d_model"]) / float(x0.norm())
    heads = [(h, CONTEXTUAL_SPREAD) for h in where["contextual"]]
    heads += [(h, DETOKENISATION_SPREAD) for h in where["detokenisation"]]
    for head, spread in heads:
        dims = build.layout.head_dims(layer, head, "qk", 1)
        # A random direction of the token subspace, scaled so E[t].u has std 1.
        u = build.randn(tok_dirs.shape[0]) @ tok_dirs
        u = u / u.norm()
        proj_std = float((build.w("embed.W_E") @ u).std())
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
