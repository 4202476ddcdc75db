"""Plant: the duality circuit of "Exploring Duality" (chapter 4).

The write-up "Exploring Duality" (2023) studied GPT-2 small completing
``"I have two hands, my right hand and my"`` with ``" left"``. Its findings,
which this plant builds into the GPT-2-small stand-in at the same places:

* **Attention layer 6 (head 6.1)** moves information from the dual word to the
  final position; it is not in the logit directions yet (patching ``resid_mid 6``
  of the final position changes the logit lens only from ``9_pre`` on).
* **MLP 8** turns it into logits.
* **Heads 8.1, 8.6 and 8.8** also attend to the dual word; what they write is
  read by a later MLP.
* **MLP 10** writes the answer into the logit directions.
* **Head 9.7** attends to the dual word and writes the largest direct logit
  difference of any head.
* **Right and wrong.** ``" right"`` has a second opposite, ``" wrong"``, so the
  right/left prompts are asymmetric.
* **Partial generalisation.** The same heads attend to the dual word of every
  pair, but each pair uses the circuit to a different degree
  (:data:`PAIR_ROUTES`); two pairs are hardly completed.

How it is built (every direction from the layout, orthogonal to everything
else planted, and projected out of the quiet weights' outputs so only the
planted parts write it):

* **Dual-word direction** ``u``, amplitude :data:`DUAL_AMP`, added to the
  embedding (and so the tied unembedding) of every word of
  :data:`exercises_lib.vocab.DUAL_PAIRS` and of ``" wrong"``.
* **Every planted head** has a constant query (a query bias) against a key
  reading ``u``: from any later position it attends to the dual word. Its
  value reads the word's identity (a biorthogonal basis of the words' own
  token embeddings), one head dimension per word.
* **Mover head** (6.1): word ``j`` -> a feature direction ``m_j`` (logit-invisible).
  **Early MLP** (8): one neuron per word whose pair takes this route, reading
  ``m_j`` and writing the opposite's token direction.
* **Reader heads** (8.1, 8.6, 8.8): word ``j`` -> ``r_j`` (shares 0.40, 0.33, 0.27).
  **Late MLP** (10): one neuron per word whose pair takes this route, reading
  ``r_j``, writing the opposite's token direction.
* **Writer head** (9.7): word ``j`` -> the opposite's token direction (strength
  per pair), and for ``" right"`` also ``" wrong"``'s.

Sizes are in logit-difference units at the final position
(:data:`LOGIT_BUDGET`), converted with LayerNorm-scale estimates sized from the
measured layer-0 output (:meth:`StandinBuild.layer0_output_norm`).

Default placement: the write-up's locations (above). ``placement`` moves any part.

Taught in: chapter 4 (the duality circuit).
"""

from __future__ import annotations

import math

import torch

from exercises_lib.standin import StandinBuild, register_plant
from exercises_lib.vocab import DUAL_PAIRS, OPPOSITE, SECOND_OPPOSITE

DEFAULT_PLACEMENT = {
    "mover_head": [6, 1],
    "reader_heads": [[8, 1], [8, 6], [8, 8]],
    "writer_head": [9, 7],
    "early_mlp": 8,
    "late_mlp": 10,
    "first_neuron": 1000,  # the neurons of both MLPs start here
    "key_gap": 10.0,  # attention score of the dual word above other sources
}

#: Amplitude of the dual-word direction added to the dual words' embeddings.
DUAL_AMP = 2.0
#: Logit difference (correct - incorrect) each route writes for a fully routed pair.
LOGIT_BUDGET = {"early_mlp": 14.0, "late_mlp": 12.0, "writer": 15.0}
#: Shares of the reader heads in what the late MLP reads.
READER_SHARES = (0.40, 0.33, 0.27)
#: Per pair: (the writer head's strength, routed through the early MLP, through the late MLP).
PAIR_ROUTES: dict[tuple[str, str], tuple[float, bool, bool]] = {
    (" left", " right"): (1.0, True, True),
    (" up", " down"): (0.8, False, True),
    (" in", " out"): (0.5, True, False),
    (" me", " you"): (0.8, True, True),
    (" day", " night"): (0.6, False, True),
    (" hot", " cold"): (0.4, True, True),
    (" top", " bottom"): (0.7, False, False),
    (" north", " south"): (0.3, True, False),
    (" men", " women"): (0.3, False, True),
    (" rich", " poor"): (0.0, False, False),
    (" husband", " wife"): (0.1, False, False),
}
#: " right"'s second opposite is written with this share of its first (" left").
SECOND_SHARE = 0.6
#: Norm the quiet layers add to a late residual stream, by layer (measured on the stand-in).
QUIET_NORM_PER_LAYER = 0.85
#: Feature amplitude written by the mover and reader heads (before LN).
FEATURE_AMP = 4.0
#: MLP neurons: gain and threshold (in units of the feature's expected size).
GAIN, THRESHOLD = 8.0, 0.15


def _late_scale(build: StandinBuild, layer: int, extra: float = 0.0) -> float:
    """LayerNorm's multiplier at ``layer`` of a late position: the layer-0 output, the quiet layers'
    growth and ``extra`` (planted features), added orthogonally."""
    norm0 = build.layer0_output_norm()
    return math.sqrt(build.cfg["d_model"]) / math.sqrt(norm0**2 + (QUIET_NORM_PER_LAYER * layer) ** 2 + extra**2)


def _word_inputs(build: StandinBuild, ids: torch.Tensor, positions: range = range(4, 12), batch: int = 4
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each word's residual stream after layer 0 (centred, as LayerNorm sees it), averaged over random
    contexts and the positions where the chapter's prompts put the dual word; and its typical norm.
    GPT-2's real layer 0 adds a large vector that depends on the token, so reading a word's identity from
    its embedding alone would mix the words up."""
    from exercises_lib.standin.layer0 import layer0_forward

    g = torch.Generator().manual_seed(2468)
    n, length = len(ids), positions.stop + 1
    tokens = torch.randint(1000, 40000, (n, len(positions), batch, length), generator=g)
    tokens[..., 0] = build.token_ids(["<|endoftext|>"])[0]
    for k, pos in enumerate(positions):
        tokens[:, k, :, pos] = ids[:, None]
    flat = tokens.reshape(-1, length)
    out = layer0_forward(build.weights, flat, build.cfg["n_heads"], mlp=True)
    gelu = torch.nn.functional.gelu(out["pre"], approximate="tanh")
    after = out["resid_mid"] + gelu @ build.read("blocks.0.mlp.W_out") + build.read("blocks.0.mlp.b_out")
    after = after - after.mean(-1, keepdim=True)
    after = after.reshape(n, len(positions), batch, length, -1)
    at_word = torch.stack([after[:, k, :, pos] for k, pos in enumerate(positions)], 1)  # [n, positions, batch, d]
    return at_word.mean((1, 2)), at_word.norm(dim=-1).mean((1, 2))


def _check_placement(where: dict, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    heads = [tuple(where["mover_head"]), *map(tuple, where["reader_heads"]), tuple(where["writer_head"])]
    for layer, head in heads:
        if not (0 < layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"duality head {layer}.{head} is outside layers 1-{n_layers - 1} / heads 0-{n_heads - 1}")
    if len(set(heads)) != len(heads):
        raise ValueError(f"the duality circuit needs different heads, got {heads}")
    if len(where["reader_heads"]) != len(READER_SHARES):
        raise ValueError(f"the duality circuit has {len(READER_SHARES)} reader heads, got {where['reader_heads']}")
    early, late = int(where["early_mlp"]), int(where["late_mlp"])
    if not where["mover_head"][0] <= early < n_layers:
        raise ValueError(f"the early MLP ({early}) must be in or after the mover head's layer {where['mover_head'][0]}")
    if not all(layer <= late < n_layers for layer, _ in where["reader_heads"]):
        raise ValueError(f"the late MLP ({late}) must be in or after every reader head's layer")
    if early == late:
        raise ValueError("the early and the late MLP must differ")
    return heads


@register_plant(
    "duality",
    models=("gpt2-small",),
    default_placement=DEFAULT_PLACEMENT,
    description="the duality circuit: a mover head and an MLP, reader heads and an MLP, a writer head",
    order=95,  # after the AND/OR plant: its protection of the end-of-text and stopword logits sees every embedding change
)
def plant_duality_circuit(build: StandinBuild, where: dict) -> None:
    L, H, d_head = build.cfg["n_layers"], build.cfg["n_heads"], build.cfg["d_head"]
    _check_placement(where, L, H)
    words = [w for pair in DUAL_PAIRS for w in pair] + [w for w in SECOND_OPPOSITE if w not in OPPOSITE]
    index = {w: i for i, w in enumerate(words)}
    n = len(words)
    ids = torch.tensor(build.token_ids(words))
    routes = {}
    for pair, route in PAIR_ROUTES.items():
        routes[pair[0]] = routes[pair[1]] = route
    for w in words:
        routes.setdefault(w, (SECOND_SHARE, False, False))  # the second opposites: the writer only

    # Directions: the dual-word flag, one mover feature and one reader feature per word.
    u = build.layout.direction("duality.dual_word", 1)[0]
    moved = build.layout.direction("duality.moved", n)
    read = build.layout.direction("duality.read", n)
    ours = torch.cat([u[None], moved, read])
    # End of text and the stopwords: other plants give their embeddings (and so their tied unembeddings)
    # large parts outside the token subspace, so the quiet layers' random writes along those parts, and the
    # real layer 0's output at later positions, would give them the top logits everywhere (GPT-2 does not
    # predict them all the time). Only planted parts write along them, and the late MLP's bias removes what
    # layer 0 writes there on average (measured below).
    from exercises_lib.vocab import STOPWORDS, single_token_ids

    tok = build.layout._named["tok"]
    E0 = build.read("embed.W_E")
    eot = build.token_ids(["<|endoftext|>"])[0]
    stop = single_token_ids(build.tokenizer, [" " + w for w in STOPWORDS])
    extra = []
    for rows in (E0[[eot]], E0[stop]):
        v = rows - (rows @ tok.T) @ tok
        v = v.mean(0)
        v = v - v.mean() - (ours @ v) @ ours
        if float(v.norm()) > 1e-3:
            extra.append(v / v.norm())
    protected = torch.linalg.qr(torch.cat([ours, *[e[None] for e in extra]]).T)[0].T
    extra = protected[len(ours):]
    for layer in range(L):
        for key in (f"blocks.{layer}.attn.W_O", f"blocks.{layer}.mlp.W_out",
                    f"blocks.{layer}.attn.b_O", f"blocks.{layer}.mlp.b_out"):
            if key in build.weights and key not in build.real_keys:
                W = build.weights[key]
                W -= (W @ protected.T) @ protected

    E = build.w("embed.W_E")  # W_U is the same storage (tied): both change
    token_part = (E[ids] @ tok.T) @ tok  # each word's own embedding, without other plants' features
    E[ids] += DUAL_AMP * u
    words_in, words_norm = _word_inputs(build, ids)
    unit = token_part / token_part.norm(dim=-1, keepdim=True)
    tp_norm = token_part.norm(dim=-1)

    def targets(word: str) -> list[tuple[int, float]]:
        """(word index, share) of what ``word``'s opposite(s) are."""
        out = []
        if word in OPPOSITE:
            out.append((index[OPPOSITE[word]], 1.0))
        if word in SECOND_OPPOSITE:
            out.append((index[SECOND_OPPOSITE[word]], SECOND_SHARE if word in OPPOSITE else 1.0))
        return out

    final_scale = _late_scale(build, L, extra=5.0)  # the final LayerNorm, planted outputs included
    d_model = build.cfg["d_model"]

    def plant_head(layer: int, head: int, outputs: torch.Tensor) -> None:
        """Attend to the dual word; value = the word's one-hot (after LN); output row j = ``outputs[j]``."""
        p = f"blocks.{layer}.attn"
        scale = _late_scale(build, layer)
        # What LayerNorm hands this layer at each word: the word's residual after layer 0, centred, grown by
        # the quiet layers before this one (orthogonally); the value reads it through the pseudo-inverse.
        grown = words_norm**2 + (QUIET_NORM_PER_LAYER * (layer - 1)) ** 2
        readers = torch.linalg.pinv(words_in * (math.sqrt(d_model) / grown.sqrt())[:, None])  # [d_model, n]
        qk = build.layout.head_dims(layer, head, "qk", 1)
        for name in ("W_Q", "W_K"):
            build.w(f"{p}.{name}")[head][:, qk] = 0.0
        for name in ("b_Q", "b_K"):
            build.w(f"{p}.{name}")[head][qk] = 0.0
        build.w(f"{p}.W_K")[head][:, qk.start] = u
        build.w(f"{p}.b_Q")[head][qk.start] = where["key_gap"] * math.sqrt(d_head) / (scale * DUAL_AMP)
        ov = build.layout.head_dims(layer, head, "ov", n)
        build.w(f"{p}.W_V")[head][:, ov] = readers
        build.w(f"{p}.b_V")[head][ov] = 0.0
        W_O = build.w(f"{p}.W_O")[head]
        W_O[ov, :] = outputs

    def plant_neurons(layer: int, start: int, features: torch.Tensor, reads: list[int], logit: float) -> None:
        """Neuron k reads ``features[reads[k]]`` (expected size FEATURE_AMP before LN) and writes the
        opposite(s) of word ``reads[k]`` worth ``logit`` of logit difference."""
        p = f"blocks.{layer}.mlp"
        scale = _late_scale(build, layer, extra=FEATURE_AMP)
        on = GAIN * (1 - THRESHOLD)
        for k, j in enumerate(reads):
            neuron = start + k
            build.w(f"{p}.W_in")[:, neuron] = GAIN * features[j] / (FEATURE_AMP * scale)
            build.w(f"{p}.b_in")[neuron] = -GAIN * THRESHOLD
            out = sum(share * unit[t] * logit / (final_scale * tp_norm[t]) for t, share in targets(words[j]))
            build.w(f"{p}.W_out")[neuron, :] = out / on

    if build.layer0 == "real":
        from exercises_lib.standin.layer0 import layer0_forward

        g = torch.Generator().manual_seed(4321)
        tokens = torch.randint(1000, 40000, (2, 128), generator=g)
        tokens[:, 0] = eot
        out = layer0_forward(build.weights, tokens, build.cfg["n_heads"], mlp=True)
        gelu = torch.nn.functional.gelu(out["pre"], approximate="tanh")
        after = out["resid_mid"] + gelu @ build.read("blocks.0.mlp.W_out") + build.read("blocks.0.mlp.b_out")
        along = (after[:, 8:] @ extra.T).mean((0, 1))  # [n_extra]
        build.w(f"blocks.{int(where['late_mlp'])}.mlp.b_out").sub_(along @ extra)
    # Mover head -> early MLP.
    layer, head = where["mover_head"]
    plant_head(layer, head, FEATURE_AMP * moved)
    early = [index[w] for w in words if routes[w][1]]
    plant_neurons(int(where["early_mlp"]), int(where["first_neuron"]), moved, early, LOGIT_BUDGET["early_mlp"])
    # Reader heads -> late MLP.
    for (layer, head), share in zip(where["reader_heads"], READER_SHARES):
        plant_head(layer, head, share * FEATURE_AMP * read)
    late = [index[w] for w in words if routes[w][2]]
    plant_neurons(int(where["late_mlp"]), int(where["first_neuron"]), read, late, LOGIT_BUDGET["late_mlp"])
    # Writer head: each word -> its opposite(s), directly.
    writes = torch.zeros(n, d_model)
    for j, w in enumerate(words):
        for t, share in targets(w):
            writes[j] += routes[w][0] * share * unit[t] * LOGIT_BUDGET["writer"] / (final_scale * tp_norm[t])
    layer, head = where["writer_head"]
    plant_head(layer, head, writes)
    build.notes.append(
        f"duality: mover {where['mover_head']} -> MLP {where['early_mlp']}, readers {where['reader_heads']} -> "
        f"MLP {where['late_mlp']}, writer {where['writer_head']} ({n} words)"
    )
