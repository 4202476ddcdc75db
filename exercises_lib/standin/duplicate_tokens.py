"""Plant: layer-0 duplicate-token heads and a duplicate-token neuron (chapter 1).

Gibson's write-up on duplicate-token neurons (2024) finds three layer-0 heads
of GPT-2 small that attend to earlier copies of the current token, and an
MLP-0 neuron, 1168, that reads where those copies are. This plant gives the
GPT-2-small stand-in the same mechanism at the same places (movable with the
placement, so the tests can check that chapter 1's analysis finds it
anywhere):

Heads (layer ``layer``)
    * ``decaying_head`` (0.1): attends to copies of the current token, the
      attention on a copy falling as ``exp(-distance / TAU_DECAYING)``;
    * ``uniform_head`` (0.5): attends to copies near-uniformly (a very slow
      decay), and treats the ``grouped_tokens`` ('.', ',', ' and') as one token;
    * ``partial_head`` (0.10): a decaying positional head of the positional
      plant; here it gets a weak copy bonus, so that about a quarter of its
      attention goes to nearby copies.

    Copies are matched through a random low-rank projection ``R`` of the
    token subspace, read by both ``W_Q`` and ``W_K``: the score of a source
    token ``u`` seen from a destination token ``t`` is ``a (E_t R).(E_u R)``,
    large when ``u = t`` (``|E_t R|^2``) and small noise otherwise. The current
    token is always its own copy, so a token with no earlier copy attends to
    itself.

    The two duplicate heads copy a projection of the token (their token part)
    into ``dup_tokens.token_out``; the uniform head also copies the *position*
    of what it attends to: its OV circuit maps the positional ramp to a fresh
    direction ``r`` (``dup_tokens.copy_position``). So the uniform head's
    output along ``r`` is the mean position of the copies.

Neuron (MLP ``layer``)
    ``W_in[:, neuron]`` reads ``r`` (head 5's positional output) with a sign
    that makes its PVO contribution fall linearly with the source position,
    ``NEURON_SLOPE`` per token, crossing zero at the middle of the context.
    Its *direct path* (``W_in`` reading the positional embedding itself)
    cancels that term for a token that only attends to itself, and adds a
    barrier that is lowest at the start of the text. With the bias the
    combined positional term of a token with no earlier copy is about
    ``NEURON_BASELINE`` (-0.2) past position ~200, lower before. A token with
    earlier copies gets the extra ``mean_j (PVO[i_j] - PVO[n])``, about
    ``NEURON_SLOPE * mean distance``: +1 for copies ~100 tokens back, so the
    neuron fires on words whose copies are far back, not on close repeats and
    not in the first ~100 tokens. ``companion_neurons`` read ``r`` too, with
    smaller weights (the few neurons the PVO norm map singles out).

Everything is written in this plant's own head dimensions and residual
directions (``build.layout``), so it composes with the positional plant.

Taught in: chapter 1 (duplicate-token heads and neurons).
"""

from __future__ import annotations

import math

import torch

from exercises_lib.standin import POS_NORM, TOKEN_NORM, StandinBuild, register_plant, typical_ln_scale

DEFAULT_PLACEMENT = {
    "layer": 0,
    "decaying_head": 1,
    "uniform_head": 5,
    "partial_head": 10,
    # The previous-token head whose positional output cancels head 5's for a
    # token with no earlier copy (the write-up names head 3).
    "cancelling_heads": [3],
    "neuron": 1168,
    # Not from the write-up (its figure of the other neurons did not survive):
    # arbitrary neurons that also read head 5's positional output.
    "companion_neurons": [455, 1587, 2843],
    "grouped_tokens": [".", ",", " and"],
}

#: Head dimensions given to the token-matching projection (QK) per head.
MATCH_DIMS = 56
#: Score of a copy over a non-copy for the two duplicate heads (in logits).
MATCH_GAP = 14.0
#: Score of a copy for the partial head (about a quarter of its attention on copies).
PARTIAL_GAP = 5.2
PARTIAL_DIMS = 40
#: Attention on copies decays as exp(-distance / tau).
TAU_DECAYING = 80.0
TAU_UNIFORM = 2000.0
#: Dimensions and output norm of the token part of the duplicate heads' OV circuits.
TOKEN_OV_DIMS = 8
TOKEN_OUT_NORM = 1.0
#: Gain of the uniform head's ramp -> r map (r output is ~ +-1.3 at the context's ends).
POSITION_GAIN = 0.5
#: The neuron: PVO slope (pre-activation per token of distance), baseline, early barrier.
NEURON_SLOPE = 0.01
NEURON_BASELINE = -0.2
BARRIER_HEIGHT = 0.8
BARRIER_LENGTH = 60.0
#: Share of the base random weights kept in the neuron's input column.
NEURON_NOISE_KEEP = 0.25
#: Weights of the companion neurons on r, relative to the neuron's.
COMPANION_WEIGHTS = (0.7, -0.55, 0.45)


def _token_projection(build: StandinBuild, k: int) -> torch.Tensor:
    """``k`` orthonormal residual directions [d_model, k] inside the token subspace.

    Sketched from the token embeddings themselves (``W_E^T Omega``), so they
    lie in the span of ``W_E`` and are random within it.
    """
    W_E = build.read("embed.W_E")
    omega = build.randn(W_E.shape[0], k)
    sketch = W_E.T @ omega  # [d_model, k]
    q, _ = torch.linalg.qr(sketch)
    return q


def _clear_qk(build: StandinBuild, layer: int, head: int, dims: slice) -> None:
    for name in ("W_Q", "W_K"):
        build.w(f"blocks.{layer}.attn.{name}")[head][:, dims] = 0.0
    for name in ("b_Q", "b_K"):
        build.w(f"blocks.{layer}.attn.{name}")[head][dims] = 0.0


def _clear_ov(build: StandinBuild, layer: int, head: int, dims: slice) -> None:
    build.w(f"blocks.{layer}.attn.W_V")[head][:, dims] = 0.0
    build.w(f"blocks.{layer}.attn.b_V")[head][dims] = 0.0
    build.w(f"blocks.{layer}.attn.W_O")[head][dims, :] = 0.0


def plant_copy_matching(
    build: StandinBuild, layer: int, head: int, gap: float, k: int, grouped: list[int] | None = None
) -> None:
    """Token-identity matching in ``k`` QK dims: a copy scores about ``gap`` over a non-copy."""
    dims = build.layout.head_dims(layer, head, "qk", k)
    _clear_qk(build, layer, head, dims)
    R = _token_projection(build, k)  # [d, k]
    W_E = build.read("embed.W_E")
    sample = W_E[torch.randint(0, W_E.shape[0], (4000,), generator=build.generator)]
    proj2 = (sample @ R).pow(2).sum(-1)  # |E_t R|^2
    scale2 = typical_ln_scale(build.cfg["d_model"], sample.norm(dim=-1)) ** 2
    self_score = (scale2 * proj2).median() / math.sqrt(build.cfg["d_head"])
    a = gap / float(self_score)
    W_Q = build.w(f"blocks.{layer}.attn.W_Q")[head]
    W_K = build.w(f"blocks.{layer}.attn.W_K")[head]
    W_K[:, dims] = R
    if grouped:
        # Every grouped token gets the same projected vector v, so they match each other.
        E_g = W_E[grouped]  # [g, d]
        v = build.randn(k)
        v = v / v.norm() * float(proj2.median().sqrt())
        delta = v[None, :] - E_g @ R  # [g, k]
        W_K[:, dims] += (E_g / E_g.pow(2).sum(-1, keepdim=True)).T @ delta
    W_Q[:, dims] = a * W_K[:, dims]


def plant_distance_decay(build: StandinBuild, layer: int, head: int, tau: float) -> None:
    """A query bias against the positional ramp: scores fall by 1 per ``tau`` tokens back."""
    dims = build.layout.head_dims(layer, head, "qk", 1)
    _clear_qk(build, layer, head, dims)
    ramp_dir = build.layout.direction("pos.ramp", 1)[0]
    n_ctx, d_head = build.cfg["n_ctx"], build.cfg["d_head"]
    slope_per_unit = build.typical_ln_scale() * build.cfg["_pos_ramp_amp"] / (n_ctx / 2)
    build.w(f"blocks.{layer}.attn.W_K")[head][:, dims.start] = ramp_dir
    build.w(f"blocks.{layer}.attn.b_Q")[head][dims.start] = math.sqrt(d_head) / (tau * slope_per_unit)


def plant_token_copy(build: StandinBuild, layer: int, head: int) -> None:
    """OV: copy a random projection of the token into ``dup_tokens.token_out``."""
    dims = build.layout.head_dims(layer, head, "ov", TOKEN_OV_DIMS)
    _clear_ov(build, layer, head, dims)
    R = _token_projection(build, TOKEN_OV_DIMS)
    out = build.layout.direction("dup_tokens.token_out", TOKEN_OV_DIMS)
    W_E = build.read("embed.W_E")
    typical = float((W_E[:2000] @ R).norm(dim=-1).median()) * build.typical_ln_scale()
    build.w(f"blocks.{layer}.attn.W_V")[head][:, dims] = R
    build.w(f"blocks.{layer}.attn.W_O")[head][dims, :] = (TOKEN_OUT_NORM / typical) * out


def plant_position_copy(build: StandinBuild, layer: int, head: int, gain: float = POSITION_GAIN) -> torch.Tensor:
    """OV: map the positional ramp to ``gain`` times a fresh direction r; returns r."""
    dims = build.layout.head_dims(layer, head, "ov", 1)
    _clear_ov(build, layer, head, dims)
    ramp_dir = build.layout.direction("pos.ramp", 1)[0]
    r = build.layout.direction("dup_tokens.copy_position", 1)[0]
    build.w(f"blocks.{layer}.attn.W_V")[head][:, dims.start] = ramp_dir
    build.w(f"blocks.{layer}.attn.W_O")[head][dims.start, :] = gain * r
    return r


def _nominal_mlp_scale(build: StandinBuild) -> float:
    """Typical LayerNorm-2 scale sqrt(d)/|resid_mid| of layer 0 (planted head outputs included).

    The uniform head's and the cancelling head's outputs along r cancel for most
    tokens, so only the token parts of the duplicate heads add to the norm.
    """
    norm2 = TOKEN_NORM**2 + POS_NORM**2 + 2 * TOKEN_OUT_NORM**2
    return math.sqrt(build.cfg["d_model"]) / math.sqrt(norm2)


def _read_from_positions(build: StandinBuild, P: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A residual vector w in the positional subspace with ``P @ w`` close to ``target`` (ridge fit)."""
    from exercises_lib.standin import N_FREQUENCIES

    basis = torch.cat(
        [
            build.layout.direction("pos.sin", N_FREQUENCIES),
            build.layout.direction("pos.cos", N_FREQUENCIES),
            build.layout.direction("pos.ramp", 1),
            build.layout.direction("pos.early", 1),
        ]
    )  # [k, d]
    coords = (P @ basis.T).double()  # [pos, k]
    gram = coords.T @ coords + 1e-3 * torch.eye(basis.shape[0], dtype=torch.float64)
    w = torch.linalg.solve(gram, coords.T @ target.double())
    return (w.float() @ basis).contiguous()


def plant_duplicate_neuron(build: StandinBuild, layer: int, neuron: int, r: torch.Tensor) -> float:
    """Write the duplicate-token neuron: reads r, plus an early barrier by the direct path.

    Returns its weight on r.
    """
    n_ctx = build.cfg["n_ctx"]
    P = build.read("pos_embed.W_pos")  # [pos, d]
    W_in = build.w(f"blocks.{layer}.mlp.W_in")
    s2 = _nominal_mlp_scale(build)
    # A copy at i seen from n moves the uniform head's r output by
    # gain * s1 * ramp_amp * (i - n) / (n_ctx/2); the neuron turns that into NEURON_SLOPE * (n - i).
    per_token = POSITION_GAIN * build.typical_ln_scale() * build.cfg["_pos_ramp_amp"] / (n_ctx / 2)
    alpha = -NEURON_SLOPE / (s2 * per_token)
    i = torch.arange(n_ctx, dtype=torch.float32)
    barrier = -BARRIER_HEIGHT * torch.exp(-i / BARRIER_LENGTH)
    column = NEURON_NOISE_KEEP * W_in[:, neuron]
    # The direct path reads the barrier from P[n] (and removes the kept noise's reading of P).
    w_pos = _read_from_positions(build, P, barrier / s2 - P @ column)
    W_in[:, neuron] = column + w_pos + alpha * r
    build.w(f"blocks.{layer}.mlp.b_in")[neuron] = NEURON_BASELINE
    return alpha


@register_plant(
    "duplicate_tokens",
    models=("gpt2-small",),
    default_placement=DEFAULT_PLACEMENT,
    description="layer-0 duplicate-token heads (0.1 decaying, 0.5 uniform, 0.10 partial) and duplicate-token neuron 1168",
    order=20,
    layer0="planted",
)
def plant_duplicate_tokens(build: StandinBuild, where: dict) -> None:
    layer = where["layer"]
    heads = [where["decaying_head"], where["uniform_head"], where["partial_head"]]
    if len(set(heads)) != 3:
        raise ValueError(f"the three duplicate-token heads must differ: {heads}")
    if set(where["cancelling_heads"]) & set(heads) or not where["cancelling_heads"]:
        raise ValueError(f"the cancelling heads {where['cancelling_heads']} must be other heads than {heads}")
    neurons = [where["neuron"], *where["companion_neurons"]]
    if len(set(neurons)) != len(neurons):
        raise ValueError(f"the neuron and its companions must differ: {neurons}")
    grouped = build.token_ids(where["grouped_tokens"]) if where["grouped_tokens"] else None

    plant_copy_matching(build, layer, where["decaying_head"], MATCH_GAP, MATCH_DIMS)
    plant_distance_decay(build, layer, where["decaying_head"], TAU_DECAYING)
    plant_token_copy(build, layer, where["decaying_head"])

    plant_copy_matching(build, layer, where["uniform_head"], MATCH_GAP, MATCH_DIMS, grouped=grouped)
    plant_distance_decay(build, layer, where["uniform_head"], TAU_UNIFORM)
    plant_token_copy(build, layer, where["uniform_head"])
    r = plant_position_copy(build, layer, where["uniform_head"])

    plant_copy_matching(build, layer, where["partial_head"], PARTIAL_GAP, PARTIAL_DIMS)
    for head in where["cancelling_heads"]:
        # A head that looks at the current position (or the previous one) writes
        # -gain * s1 * ramp(n) along r: it cancels the uniform head's output for
        # a token whose only copy is itself.
        plant_position_copy(build, layer, head, gain=-POSITION_GAIN / len(where["cancelling_heads"]))

    alpha = plant_duplicate_neuron(build, layer, where["neuron"], r)
    W_in = build.w(f"blocks.{layer}.mlp.W_in")
    for neuron, weight in zip(where["companion_neurons"], COMPANION_WEIGHTS):
        W_in[:, neuron] += weight * alpha * r
    build.notes.append(
        f"duplicate-token heads {layer}.{heads[0]} (decaying), {layer}.{heads[1]} (uniform), "
        f"{layer}.{heads[2]} (partial); duplicate-token neuron {where['neuron']}"
    )


# ---------------------------------------------------------------------------
# The duplicate-token neuron on GPT-2 small's real layer 0 (layer0="real")
# ---------------------------------------------------------------------------
#
# With the real layer 0, heads 0.1, 0.5 and 0.10 are GPT-2's: the real head 0.5
# already writes where the copies of the current token are (its OV circuit
# applied to the real W_pos). What is missing is MLP 0's W_in, so this plant
# writes only the neuron's input column (and its companions'), solved against
# the real weights as one regularised least-squares problem in the reader
# ``r = ln2.w * W_in[:, neuron]`` (what the neuron reads from the centred
# residual stream, i.e. the loaded model's folded ``W_in`` column):
#
# * the PVO curve of the uniform duplicate head, P[i] V_5 O_5 . r, falls
#   linearly with the source position, NEURON_SLOPE per token once scaled by
#   typical LN-1 and LN-2 scales, crossing zero at the middle of the context
#   (the write-up's description of 1168: planted);
# * for a token with no earlier copy, the positional terms of all heads
#   (through their real mean attention patterns on random tokens), the direct
#   path and the constant terms add up to NEURON_BASELINE past the first
#   tokens, lower before (BARRIER_HEIGHT over BARRIER_LENGTH tokens);
# * the penalty is the variance the token-dependent parts of the residual
#   stream (the real heads' outputs and E) give the neuron on random text,
#   so the neuron reads positions, not tokens, as far as the real heads allow.
#
# The companions read the same with smaller weights. The real b_in of every
# neuron is kept; the level is set through the reader of the residual
# stream's constant part (and the real LN-2 bias through W_in).

REAL_DUPLICATE_PLACEMENT = {
    "uniform_head": 5,
    "neuron": 1168,
    "companion_neurons": [455, 1587, 2843],
}
SOLVE_LENGTH = 1000  # positions the fit uses (GPT-2's last positions are atypical)
SOLVE_SEQUENCES = 6  # random-token sequences of that length for the mean patterns and the noise
PVO_WEIGHT = 3.0  # weight of the PVO-line equations against the baseline ones
NOISE_PENALTY = 100.0  # weight of the token-noise variance against the squared fit errors
SHIFT_WEIGHT = 30.0  # weight of "text's mean residual leaves the level alone"


@register_plant(
    "duplicate_neuron",
    models=("gpt2-small",),
    default_placement=REAL_DUPLICATE_PLACEMENT,
    description=(
        "duplicate-token neuron 1168 (and companions) in MLP 0, its input solved to read the real "
        "head 0.5's positional output, falling linearly with the copy's position"
    ),
    order=40,
    layer0="real",
)
def plant_duplicate_neuron_real(build: StandinBuild, where: dict) -> None:
    from exercises_lib.standin.contextual import stopword_ids
    from exercises_lib.standin.layer0 import layer0_forward, text_like_tokens, value_output

    head = where["uniform_head"]
    neurons = [where["neuron"], *where["companion_neurons"]]
    if len(set(neurons)) != len(neurons):
        raise ValueError(f"the neuron and its companions must differ: {neurons}")
    n_heads, d = build.cfg["n_heads"], build.cfg["d_model"]
    if not 0 <= head < n_heads:
        raise ValueError(f"uniform_head {head} is not a head of layer 0")
    L = SOLVE_LENGTH
    P = build.read("pos_embed.W_pos")[:L]
    # The real layer 0 on random tokens without repeats (BOS first).
    g = torch.Generator().manual_seed(5)
    tokens = torch.stack([torch.randperm(40000, generator=g)[:L] + 1000 for _ in range(SOLVE_SEQUENCES)])
    tokens[:, 0] = 50256
    run = layer0_forward(build.weights, tokens, n_heads, mlp=False)
    a = run["pattern"].mean(0)  # [head, dest, src]
    s1, s2 = run["s1"].mean(0), run["s2"].mean(0)  # [pos]
    s1_typ, s2_typ = float(s1[100:].median()), float(s2[100:].median())
    w2, b2 = build.read("blocks.0.ln2.w"), build.read("blocks.0.ln2.b")
    pos_out = value_output(build.weights, P)  # [head, pos, d]: P[i] (LN'd, unscaled) through each head's OV

    def centred(v):
        return v - v.mean(-1, keepdim=True)

    # Equations on r. 1. The PVO curve (the chapter's PVO: folded V and W_in, no LN scales).
    i = torch.arange(L, dtype=torch.float32)
    pvo_rows = centred(pos_out[head])
    pvo_target = -NEURON_SLOPE / (s1_typ * s2_typ) * (i - build.cfg["n_ctx"] / 2)
    # 2. A token with no earlier copy: its mean pre-activation, positional and constant parts,
    #    b2 . W_in = (b2 / w2) . r, and the real b_in.
    mid = centred(run["resid_mid"])
    base_rows = s2[:L, None] * mid.mean(0) + (b2 / w2)[None]
    base_target = NEURON_BASELINE - BARRIER_HEIGHT * torch.exp(-i / BARRIER_LENGTH)
    # 3. The penalty: the variance of the token-dependent part of the residual stream, on random
    #    tokens and on text-like tokens (common words repeat, with the vectors planted on them) ...
    text = layer0_forward(build.weights, text_like_tokens(torch.tensor(stopword_ids(build)), 2, L, g), n_heads, mlp=False)
    text_mid = centred(text["resid_mid"])
    devs = [((m - m.mean(0, keepdim=True))[:, 50:] * s2[None, 50:L, None]).double() for m in (mid, text_mid)]
    noise = sum(torch.einsum("bnd,bne->de", v, v) / (v.shape[0] * v.shape[1]) for v in devs) / 2
    # ... and text's mean residual must not move the neuron away from its level.
    shift = (s2[:L, None] * (text_mid.mean(0) - mid.mean(0)))[50:].mean(0)
    W_in = build.w("blocks.0.mlp.W_in")
    b_in = build.read("blocks.0.mlp.b_in")
    k = where["neuron"]
    A = torch.cat([PVO_WEIGHT * pvo_rows, base_rows, SHIFT_WEIGHT * shift[None]]).double()
    target = torch.cat([PVO_WEIGHT * pvo_target, base_target - float(b_in[k]), torch.zeros(1)]).double()
    keep = NEURON_NOISE_KEEP * W_in[:, k] * w2  # a share of the random column, as a reader
    lhs = A.T @ A + NOISE_PENALTY * noise + 1e-6 * torch.eye(d, dtype=torch.float64)
    reader = keep + torch.linalg.solve(lhs, A.T @ (target - A @ keep.double())).float()
    W_in[:, k] = reader / w2
    for neuron, weight in zip(where["companion_neurons"], COMPANION_WEIGHTS):
        W_in[:, neuron] = NEURON_NOISE_KEEP * W_in[:, neuron] + weight * (reader - keep) / w2
    build.notes.append(
        f"duplicate-token neuron {k} reading the real head 0.{head}'s positional output; "
        f"companions {where['companion_neurons']}"
    )
