"""Plant: one head that completes a dual word's opposite (chapter 4).

In GPT-2 small, the write-up "Exploring Duality" (2023) found that head 9.7 attends
from the final position of ``"I have two hands, my right hand and my"`` to the
earlier ``" right"`` and writes most of the direct logit difference
``" left" - " right"``; the rest of the real circuit (head 6.1, heads 8.1, 8.6
and 8.8, MLPs 8 and 10) was left as hypotheses. This plant gives the GPT-2-small
stand-in only the head:

* **Dual-word direction.** A fresh residual direction ``u`` is added, with
  amplitude ``DUAL_AMP``, to the embedding of every word of
  :data:`exercises_lib.vocab.DUAL_PAIRS` (and so to their unembeddings too:
  GPT-2's ``W_U`` is ``W_E.T``, the same storage).
* **QK.** One head dimension: the key reads ``u``, the query is a constant (a
  query bias). The score of a dual word exceeds every other source's by about
  ``key_gap`` (after the LayerNorm scale), whatever the distance: the head
  attends from every later position, the final one included, to the dual word.
* **OV.** One head dimension per dual word: the value reads the word (a
  biorthogonal basis of the dual words' embeddings, so each word switches on
  its own dimension and other tokens barely any) and the output writes
  ``output_norm`` times the unit direction of the *opposite* word's token
  embedding (without ``u``). Through the tied unembedding this raises the
  opposite's logit far above every other, so the stand-in predicts it top-1.

Everything else in the stand-in stays quiet, so activation patching localises
to the dual word's position up to the head's layer and to the final position
after it, and head-level patching to the head. The real model's multi-layer
circuit is not planted.

Default placement: head 9.7 (the write-up's head).

Taught in: chapter 4 (the duality circuit).
"""

from __future__ import annotations

import math

import torch

from exercises_lib.standin import TOKEN_NORM, StandinBuild, register_plant
from exercises_lib.vocab import DUAL_PAIRS, OPPOSITE

DEFAULT_PLACEMENT = {
    "layer": 9,
    "head": 7,
    "key_gap": 12.0,  # attention score of a dual word above other sources
    "output_norm": 3.5,  # |head output| in units of a token embedding's norm (times LN scale)
}

#: Amplitude of the dual-word direction added to the dual words' embeddings.
DUAL_AMP = 2.0


@register_plant(
    "duality",
    models=("gpt2-small",),
    default_placement=DEFAULT_PLACEMENT,
    description="a head attending to an earlier dual word and writing its opposite's unembedding",
    order=60,
)
def plant_duality_head(build: StandinBuild, where: dict) -> None:
    layer, head = int(where["layer"]), int(where["head"])
    n_layers, n_heads = build.cfg["n_layers"], build.cfg["n_heads"]
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(f"duality head {layer}.{head} is outside the model")
    words = [w for pair in DUAL_PAIRS for w in pair]
    ids = build.token_ids(words)
    index = {w: i for i, w in enumerate(words)}
    opposite = OPPOSITE
    d_head = build.cfg["d_head"]
    p = f"blocks.{layer}.attn"

    # 1. The dual-word direction, added in place (W_U is the same storage as W_E).
    u = build.layout.direction("duality.dual_word", 1)[0]
    E = build.w("embed.W_E")
    ids_t = torch.tensor(ids)
    tok = build.layout._named["tok"]  # the base token subspace [k, d_model]
    token_part = (E[ids_t] @ tok.T) @ tok  # each word's own random embedding, without other plants' features
    E[ids_t] += DUAL_AMP * u

    # Typical LayerNorm scale of a dual word's residual (layer 0's output, u added).
    scale = math.sqrt(build.cfg["d_model"]) / math.sqrt(build.layer0_output_norm() ** 2 + DUAL_AMP**2)

    # 2. QK: constant query against the dual-word direction.
    qk = build.layout.head_dims(layer, head, "qk", 1)
    for name in ("W_Q", "W_K"):
        build.w(f"{p}.{name}")[head][:, qk] = 0.0
    for name in ("b_Q", "b_K"):
        build.w(f"{p}.{name}")[head][qk] = 0.0
    build.w(f"{p}.W_K")[head][:, qk.start] = u
    build.w(f"{p}.b_Q")[head][qk.start] = where["key_gap"] * math.sqrt(d_head) / (scale * DUAL_AMP)

    # 3. OV: word j -> value dimension j -> the opposite's token direction.
    ov = build.layout.head_dims(layer, head, "ov", len(words))
    # Biorthogonal readers inside the token subspace: E[word_i] . readers[:, j] = delta_ij,
    # and they ignore u, the positional directions and other plants' features.
    readers = torch.linalg.pinv(token_part)  # [d_model, n_words]
    W_V, W_O = build.w(f"{p}.W_V")[head], build.w(f"{p}.W_O")[head]
    W_V[:, ov] = readers / scale  # value ~ 1 on the word's own dimension after LN
    build.w(f"{p}.b_V")[head][ov] = 0.0
    W_O[ov, :] = 0.0
    for word in words:
        target = token_part[index[opposite[word]]]
        W_O[ov.start + index[word], :] = where["output_norm"] * TOKEN_NORM * target / target.norm()
    build.notes.append(
        f"duality: head {layer}.{head} attends to the earlier dual word and writes its opposite "
        f"({len(words)} words)"
    )
