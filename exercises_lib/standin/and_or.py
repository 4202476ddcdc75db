"""Plant: a two-head AND and a two-head OR (chapter 5, patching direction).

Heimersheim's answer on patching direction (2023, write-up 002) argues that
clean->corrupt patching ("denoising": clean activations inserted into the
corrupted run) cannot find a circuit whose output needs *two* components to be
clean at once (an AND), while corrupt->clean patching ("noising": corrupted
activations inserted into the clean run) cannot find one where *either*
component suffices (an OR). Nothing in GPT-2 small is known to be such a
clean gate, so this plant builds both into the GPT-2-small stand-in, where the
answer is known exactly, for chapter 5's worked example.

Inputs
    Two token classes get their own residual direction added to their
    embeddings: colour words (``' red'``, ``' blue'``, ...) and animal words
    (``' dog'``, ``' cat'``, ...). One member of each class is the *trigger*
    (``' red'`` and ``' dog'``). A class-mate of a trigger is a corruption that
    keeps every planted attention pattern the same and removes only the
    trigger's identity.

Heads
    Four heads, two per gate. Each has a constant query (a query bias) against
    a key that reads its class direction (score ``CLASS_SCORE`` above an
    ordinary token) and a BOS direction added to the ``<|endoftext|>``
    embedding (score ``BOS_SCORE``): it attends to the earlier member of its
    class, or to BOS when there is none. Its OV circuit reads the *identity*
    of its class's trigger (the direction of the trigger's own token
    embedding) and writes ``SIGNAL`` times a direction of its own, so it
    outputs that signal when it attends to the trigger and about nothing when
    it attends to a class-mate (random embeddings are nearly orthogonal) or
    to BOS. The first head of each gate reads the colour trigger, the second
    the animal trigger.

Gates (MLP ``mlp_layer``)
    Two neurons per gate read the sum ``S`` of its two heads' signals (in
    units of one head's signal, after LayerNorm). Their difference is a ramp
    ``clamp((S - lo) / (hi - lo), 0, 1)``: with ``(lo, hi) = (1.4, 1.6)`` it is
    1 only when both heads are on (AND), with ``(0.3, 0.5)`` when at least one
    is (OR). The gain is large, so each neuron sits far in GELU's linear or
    zero part and the gate is exact up to small noise. The AND gate raises the
    logit difference ``' both' - ' none'``, the OR gate ``' either' -
    ' neither'``, by about ``LOGIT_DIFF`` each.

With GPT-2's real layer 0 the residual stream after layer 0 is not quiet: the
real attention adds a large vector that varies from position to position, and
position 0 (BOS) carries a very large vector of its own. Read along a random
direction, that variation swamps a class direction of norm 1. So in that mode
the heads do not read the class, BOS and trigger directions themselves but
*reads* cleaned of it (:func:`_reads`): each is orthogonal to the directions
along which layer 0's output varies most (measured on random tokens), to its
mean, and (except the BOS read) to BOS's residual, and scaled so that the
direction it stands for reads 1. The gate neurons read the heads' signals the
same way. The quiet layers are kept from writing along the reads too.

Default placement: AND heads 10.1 and 10.6, OR heads 11.3 and 11.9, neurons in
MLP 11 (heads and neurons no other plant of the GPT-2-small stand-in uses).
The heads must sit in layers up to ``mlp_layer``.

Taught in: chapter 5 (LayerNorm and patching).
"""

from __future__ import annotations

import math

import torch

from exercises_lib.standin import POS_NORM, StandinBuild, register_plant
from exercises_lib.standin.layer0 import layer0_forward
from exercises_lib.vocab import ANIMALS, COLOURS, GATE_ANSWERS, TRIGGERS

BOS = "<|endoftext|>"

DEFAULT_PLACEMENT = {
    "and_heads": [[10, 1], [10, 6]],  # [layer, head]: reads ' red', reads ' dog'
    "or_heads": [[11, 3], [11, 9]],
    "mlp_layer": 11,
    "and_neurons": [412, 1717],
    "or_neurons": [2048, 2960],
}

CLASS_AMP = 1.0  # norm of the class direction added to each class word's embedding
BOS_AMP = 1.0  # norm of the BOS direction added to <|endoftext|>'s embedding
# By layers 10-11 the quiet layers have added a vector of about this norm to every
# position's residual stream (measured on the stand-in: |x| ~ 9.7 there against ~5 for a
# layer-0 input), so LayerNorm multiplies by less there. Only the sizes below depend on
# this estimate, not the gates' logic.
QUIET_NORM = 8.5
CLASS_SCORE = 20.0  # attention score of a class word above an ordinary token
BOS_SCORE = 8.0  # attention score of BOS above an ordinary token
SIGNAL = 2.0  # norm of each of a planted head's two outputs (presence, identity)
GAIN = 30.0  # neuron pre-activation per unit of S - t R (one head's signal after LN)
LOGIT_DIFF = 20.0  # logit difference a gate adds when it is on (large next to the ~1 by which
# the quiet weights make the logits of prompts with different words differ)
# Ramps on the fraction S/R of class words seen that are triggers: 0, 1/2 or 1.
# Real layer 0: the reads avoid the directions that hold this fraction of the variance of
# layer 0's output (positional part and attention output) over ordinary positions.
NOISE_FRAC = 0.97
AND_RAMP = (0.7, 0.8)
OR_RAMP = (0.2, 0.3)


def _layer0_norms(build: StandinBuild, e_trigger: torch.Tensor, e_bos: torch.Tensor) -> tuple[float, float]:
    """Norms of the residual after layer 0 at a class word and at BOS (position 0)."""
    if build.layer0 == "real":
        return build.layer0_output_norm(), build.layer0_output_norm(position0=True)
    class_norm = math.sqrt(float(e_trigger.norm()) ** 2 + POS_NORM**2)
    bos_norm = float((e_bos + build.read("pos_embed.W_pos")[0]).norm())
    return class_norm, bos_norm


def _late_ln_scale(norm0: float, d_model: int) -> float:
    """LayerNorm's multiplier sqrt(d_model) / |x| in a late layer, for a position whose
    layer-0 input has norm ``norm0`` (the quiet layers' vector added, orthogonally)."""
    return math.sqrt(d_model) / math.sqrt(norm0**2 + QUIET_NORM**2)


def _orthonormal(rows: torch.Tensor) -> torch.Tensor:
    q, r = torch.linalg.qr(rows.T.double())
    keep = r.diagonal().abs() > 1e-8
    return q[:, keep].T.to(rows.dtype)


def _reads(build: StandinBuild, class_dirs: torch.Tensor, bos_dir: torch.Tensor, tokens: list[int],
           identity: torch.Tensor, presence: torch.Tensor) -> dict:
    """The vectors the planted heads and neurons read: ``{"class": [2, d], "bos": [d], "identity": [2, d]}``
    for the heads, ``{"gate_identity", "gate_presence"}`` ([2, d] each) for the neurons.

    Planted layer 0: the class and BOS directions and each trigger's token part
    themselves. Real layer 0: each cleaned of the directions along which layer 0's
    output varies most over ordinary positions (``NOISE_FRAC`` of the variance),
    of its mean and, except the BOS read, of BOS's residual after layer 0; then
    scaled so that what it stands for (the class direction, BOS's residual, the
    trigger's token part) reads 1.
    """
    E = build.read("embed.W_E")
    tok_dirs = build.layout._named["tok"]  # the token subspace, [n_tok, d_model]
    e_tok = torch.stack([(E[t] @ tok_dirs.T) @ tok_dirs for t in tokens])  # no class or topic directions
    if build.layer0 != "real":
        return {"class": class_dirs.clone(), "bos": bos_dir.clone(), "identity": e_tok / e_tok.norm(dim=-1, keepdim=True) ** 2,
                "gate_identity": identity.clone(), "gate_presence": presence.clone()}
    g = torch.Generator().manual_seed(4321)
    ids = torch.randint(1000, 40000, (4, 128), generator=g)
    ids[:, 0] = build.token_ids([BOS])[0]
    out = layer0_forward(build.weights, ids, build.cfg["n_heads"], mlp=False)
    rest = out["resid_mid"] - build.weights["embed.W_E"][ids]  # positional part + attention output
    rest = rest - rest.mean(-1, keepdim=True)
    ordinary = rest[:, 1:].reshape(-1, rest.shape[-1])
    mean = ordinary.mean(0)
    _, sv, vh = torch.linalg.svd(ordinary - mean, full_matrices=False)
    k = int((sv.pow(2).cumsum(0) / sv.pow(2).sum() < NOISE_FRAC).sum()) + 1
    bos = out["resid_mid"][0, 0] - out["resid_mid"][0, 0].mean()
    b_out = build.weights["blocks.0.mlp.b_out"]  # MLP 0's (real) bias: the same at every position
    # What layer 0's attention writes at each class word (averaged over contexts): the reads
    # ignore it, so that they see a class word's own embedding and not a real head's copy of it.
    class_ids = build.token_ids(COLOURS) + build.token_ids(ANIMALS)
    written = _layer0_outputs(build, class_ids)
    noise = _orthonormal(torch.cat([vh[:k], mean[None], (b_out - b_out.mean())[None], written]))
    avoid = _orthonormal(torch.cat([noise, bos[None]]))

    def clean(v, basis, target):
        r = v - (v @ basis.T) @ basis
        return r / (target @ r)

    reads = {"class": torch.stack([clean(c, avoid, c) for c in class_dirs])}
    reads["bos"] = clean(bos, _orthonormal(torch.cat([noise, class_dirs])), bos)
    identity_avoid = _orthonormal(torch.cat([avoid, class_dirs]))
    reads["identity"] = torch.stack([clean(e, identity_avoid, e) for e in e_tok])
    signals = torch.cat([identity, presence])  # what the heads write; each read must ignore the other three
    for j, key in enumerate(("gate_identity", "gate_presence")):
        rows = []
        for g in range(2):
            target = signals[2 * j + g]
            others = torch.cat([signals[: 2 * j + g], signals[2 * j + g + 1:]])
            rows.append(clean(target, _orthonormal(torch.cat([noise, others])), target))
        reads[key] = torch.stack(rows)
    # Each class word's class read, and each trigger's and class-mate's identity read, as the
    # real layer 0 leaves them (averaged over contexts and positions) set to 1 (trigger) or 0
    # (class-mate) through its embedding: then a class-mate differs from the trigger only in identity.
    E = build.weights["embed.W_E"]
    for c, words in enumerate((COLOURS, ANIMALS)):
        ids = build.token_ids(words)
        for _ in range(2):
            E[ids] += (1 - _responses(build, ids, reads["class"][c]))[:, None] * class_dirs[c]
        for _ in range(2):
            target = torch.tensor([1.0 if i == tokens[c] else 0.0 for i in ids])
            E[ids] += (target - _responses(build, ids, reads["identity"][c]))[:, None] * e_tok[c]
    build.notes.append(f"and_or: heads read past the {k} directions of largest variance of the real layer 0's output")
    return reads


def _layer0_outputs(build: StandinBuild, ids: list[int]) -> torch.Tensor:
    """Mean attention output of layer 0 (centred) at each token of ``ids``, over a few contexts and positions."""
    batch, positions, n_ctx = _contexts(build, ids)
    out = layer0_forward(build.weights, batch, build.cfg["n_heads"], mlp=False)["attn_out"][:, positions]
    out = out - out.mean(-1, keepdim=True)
    return out.reshape(len(ids), -1, out.shape[-1]).mean(1)


def _contexts(build: StandinBuild, ids: list[int]):
    g = torch.Generator().manual_seed(99)
    n_ctx, positions = 3, torch.tensor([4, 17, 30, 45])
    base = torch.randint(1000, 40000, (n_ctx, 48), generator=g)
    base[:, 0] = build.token_ids([BOS])[0]
    batch = base.repeat(len(ids), 1)
    for i, t in enumerate(ids):
        batch[i * n_ctx:(i + 1) * n_ctx, positions] = t
    return batch, positions, n_ctx


def _responses(build: StandinBuild, ids: list[int], read: torch.Tensor) -> torch.Tensor:
    """Mean of ``read`` over the residual stream after layer 0 (centred) at each token of ``ids``,
    put at a few positions of a few random contexts."""
    batch, positions, _ = _contexts(build, ids)
    mid = layer0_forward(build.weights, batch, build.cfg["n_heads"], mlp=False)["resid_mid"][:, positions]
    b_out = build.weights["blocks.0.mlp.b_out"]
    mid = mid + b_out
    mid = mid - mid.mean(-1, keepdim=True)
    return (mid @ read).reshape(len(ids), -1).mean(-1)


def _plant_head(
    build: StandinBuild,
    layer: int,
    head: int,
    class_read: torch.Tensor,
    bos_read: torch.Tensor,
    trigger_id: int,
    identity_read: torch.Tensor,
    identity_dir: torch.Tensor,
    presence_dir: torch.Tensor,
) -> None:
    w, d = build.weights, build.cfg["d_model"]
    d_head = build.cfg["d_head"]
    p = f"blocks.{layer}.attn"
    qk = build.layout.head_dims(layer, head, "qk", 2)
    ov = build.layout.head_dims(layer, head, "ov", 2)
    # LayerNorm multipliers of the source positions (a class word's layer-0 input has norm
    # ~ |E + class + P|; BOS's also has the large early positional part; with GPT-2's real
    # layer 0, layer 0's output is measured: it adds a large, nearly constant vector).
    E = build.read("embed.W_E")
    class_norm, bos_norm = _layer0_norms(build, E[trigger_id], E[build.token_ids([BOS])[0]])
    s_class, s_bos = _late_ln_scale(class_norm, d), _late_ln_scale(bos_norm, d)
    # QK: a constant query (bias) against keys reading the class and BOS directions.
    a, b = qk.start, qk.start + 1
    for name in ("W_Q", "W_K"):
        w[f"{p}.{name}"][head][:, qk] = 0.0
    for name in ("b_Q", "b_K"):
        w[f"{p}.{name}"][head][qk] = 0.0
    w[f"{p}.W_K"][head][:, a] = class_read
    w[f"{p}.W_K"][head][:, b] = bos_read
    w[f"{p}.b_Q"][head][a] = CLASS_SCORE * math.sqrt(d_head) / (s_class * CLASS_AMP)
    w[f"{p}.b_Q"][head][b] = BOS_SCORE * math.sqrt(d_head) / (s_bos * BOS_AMP)
    # OV: presence (any class word) and identity (the trigger's own token part).
    reads = [class_read / (CLASS_AMP * s_class), identity_read / s_class]
    for dim, read, out in zip((ov.start, ov.start + 1), reads, (presence_dir, identity_dir)):
        w[f"{p}.W_V"][head][:, dim] = read
        w[f"{p}.b_V"][head][dim] = 0.0
        w[f"{p}.W_O"][head][dim, :] = SIGNAL * out


def _plant_gate(
    build: StandinBuild,
    layer: int,
    neurons: list[int],
    identity_read: torch.Tensor,
    presence_read: torch.Tensor,
    ramp: tuple[float, float],
    answer: tuple[str, str],
    other_answer: tuple[str, str],
) -> None:
    """Two neurons whose difference is clamp((S/R - lo) / (hi - lo), 0, 1) times the output.

    The output moves the logit difference of ``answer`` and, being orthogonal to the
    other gate's logit-difference direction, leaves the other gate's metric alone.
    """
    w, d = build.weights, build.cfg["d_model"]
    p = f"blocks.{layer}.mlp"
    # One head's signal after LN2 (the gate's logic does not depend on this estimate,
    # only the neurons' margins and the height of the output do).
    late_scale = _late_ln_scale(build.layer0_output_norm(), d)
    unit = SIGNAL * late_scale
    lo, hi = ramp
    E = build.read("embed.W_E")
    good, bad = build.token_ids(answer)
    diff = E[good] - E[bad]
    other = E[build.token_ids(other_answer)[0]] - E[build.token_ids(other_answer)[1]]
    direction = diff - (diff @ other) / (other @ other) * other
    # The final LN multiplies the residual by about late_scale before W_U = W_E^T.
    out = LOGIT_DIFF * direction / ((direction @ diff) * late_scale)
    height = GAIN * 2 * (hi - lo)  # G (S - lo R) - G (S - hi R) with R = 2 units
    for neuron, threshold, sign in zip(neurons, (lo, hi), (1.0, -1.0)):
        w[f"{p}.W_in"][:, neuron] = GAIN * (identity_read - threshold * presence_read) / unit
        w[f"{p}.b_in"][neuron] = 0.0
        w[f"{p}.W_out"][neuron, :] = sign * out / height


@register_plant(
    "and_or",
    models=("gpt2-small",),
    default_placement=DEFAULT_PLACEMENT,
    description="a two-head AND gate and a two-head OR gate on two trigger words (patching direction)",
    order=90,
)
def plant_and_or(build: StandinBuild, where: dict) -> None:
    heads = [tuple(h) for h in where["and_heads"]] + [tuple(h) for h in where["or_heads"]]
    if len(heads) != 4 or len(set(heads)) != 4:
        raise ValueError(f"the AND and OR gates need four different heads, got {heads}")
    mlp_layer = where["mlp_layer"]
    if any(layer > mlp_layer for layer, _ in heads):
        raise ValueError(f"every planted head must sit in a layer up to mlp_layer={mlp_layer}: {heads}")
    neurons = list(where["and_neurons"]) + list(where["or_neurons"])
    if len(neurons) != 4 or len(set(neurons)) != 4:
        raise ValueError(f"the gates need four different neurons, got {neurons}")

    E = build.weights["embed.W_E"]  # W_U is its transpose (tied): both change together
    class_dirs = build.layout.direction("and_or.class", 2)
    bos_dir = build.layout.direction("and_or.bos", 1)[0]
    identity = build.layout.direction("and_or.identity", 2)  # one per gate
    presence = build.layout.direction("and_or.presence", 2)
    E[build.token_ids(COLOURS)] += CLASS_AMP * class_dirs[0]
    E[build.token_ids(ANIMALS)] += CLASS_AMP * class_dirs[1]
    E[build.token_ids([BOS])] += BOS_AMP * bos_dir
    triggers = build.token_ids(TRIGGERS)
    reads = _reads(build, class_dirs, bos_dir, triggers, identity, presence)  # with the embeddings as they now are
    # Only the embeddings and the planted heads may write along these directions (the
    # quiet weights would, at random, about 0.3 along any fixed direction by layer 10):
    # then each planted head and gate reads only what it is meant to, whatever else is planted.
    ours = torch.cat([class_dirs, bos_dir[None], identity, presence])  # [7, d_model], orthonormal
    if build.layer0 == "real":  # ... and along what the heads read
        ours = _orthonormal(torch.cat([ours, reads["class"], reads["bos"][None], reads["identity"],
                                       reads["gate_identity"], reads["gate_presence"]]))
    # (Real weights stay as they are: the layout keeps these directions orthogonal to the
    # constant part of GPT-2's real layer-0 output.)
    for layer in range(build.cfg["n_layers"]):
        for key in (f"blocks.{layer}.attn.W_O", f"blocks.{layer}.mlp.W_out",
                    f"blocks.{layer}.attn.b_O", f"blocks.{layer}.mlp.b_out"):
            if key in build.weights and key not in build.real_keys:
                W = build.weights[key]
                W -= (W @ ours.T) @ ours
    for k, (layer, head) in enumerate(heads):
        gate, inp = divmod(k, 2)  # first head of a gate reads the colour class, second the animal class
        _plant_head(build, layer, head, reads["class"][inp], reads["bos"], triggers[inp], reads["identity"][inp],
                    identity[gate], presence[gate])
    for gate, key, other, ramp in ((0, "and", "or", AND_RAMP), (1, "or", "and", OR_RAMP)):
        neurons = list(where[f"{key}_neurons"])
        _plant_gate(build, mlp_layer, neurons, reads["gate_identity"][gate], reads["gate_presence"][gate], ramp,
                    GATE_ANSWERS[key], GATE_ANSWERS[other])
    build.notes.append(
        f"and_or: AND of heads {heads[:2]}, OR of heads {heads[2:]}, gates in MLP {mlp_layer}"
    )
