"""Plant: layer-0 heads with planted positional patterns (the worked example).

GPT-2 small's layer-0 heads fall into groups by their *positional pattern*, the
pattern a head would have if every token were the same (Gibson 2025, see
chapter 2): previous-token heads (3, 4, 7), heads whose attention decays
exponentially over about 50 tokens (0, 2, 6, 8, 9, 10) and a near-uniform
head (11). This plant gives the stand-in the same groups, reading only the
positional embedding:

* previous-token heads rotate each sinusoid pair of the query by one position,
  so ``q_n . k_i = beta * sum_k cos(w_k (n - 1 - i))``, largest at ``i = n - 1``;
* decaying heads have a constant query (a query bias) against a key that reads
  the positional ramp, so the score is linear in the source position ``i`` and
  ``softmax`` gives ``exp(-(n - i) / tau)``;
* uniform heads have (near) zero queries and keys.

Taught in: chapter 0 (setup); analysed in chapter 2.
"""

from __future__ import annotations

import math

import torch

from exercises_lib.standin import StandinBuild, register_plant

DEFAULT_PLACEMENT = {
    "layer": 0,
    "previous_token": [3, 4, 7],
    "decaying": [0, 2, 6, 8, 9, 10],
    "uniform": [11],
    "decay_tokens": 50.0,  # tau: attention ~ exp(-(n - i) / tau)
    "previous_token_gap": 5.0,  # score gap between i = n - 1 and its neighbours
}


def _zero_head_qk(build: StandinBuild, layer: int, head: int, dims: slice) -> None:
    for name in ("W_Q", "W_K"):
        build.w(f"blocks.{layer}.attn.{name}")[head][:, dims] = 0.0
    for name in ("b_Q", "b_K"):
        build.w(f"blocks.{layer}.attn.{name}")[head][dims] = 0.0


def plant_previous_token(build: StandinBuild, layer: int, head: int, gap: float) -> None:
    """Rotate the query's sinusoid pairs by one position (see module docstring)."""
    omega = build.cfg["_pos_omega"]
    amp = build.cfg["_pos_wave_amp"]
    n_freq = omega.shape[0]
    dims = build.layout.head_dims(layer, head, "qk", 2 * n_freq)
    _zero_head_qk(build, layer, head, dims)
    cos_dirs = build.layout.direction("pos.cos", n_freq)
    sin_dirs = build.layout.direction("pos.sin", n_freq)
    d_head = build.cfg["d_head"]
    s = build.typical_ln_scale()
    # Score gap between i = n-1 and i = n (or n-2): sum_k (1 - cos w_k) per unit.
    unit_gap = float((1 - torch.cos(omega)).sum())
    beta = gap * math.sqrt(d_head) / (unit_gap * (s * amp) ** 2)
    W_Q = build.w(f"blocks.{layer}.attn.W_Q")[head]
    W_K = build.w(f"blocks.{layer}.attn.W_K")[head]
    c, sn = torch.cos(omega), torch.sin(omega)
    start = dims.start
    for k in range(n_freq):
        a, b = start + 2 * k, start + 2 * k + 1
        # key: (cos w i, sin w i) / amp; query: the same rotated back by w.
        W_K[:, a] = cos_dirs[k] / amp
        W_K[:, b] = sin_dirs[k] / amp
        W_Q[:, a] = beta * (c[k] * cos_dirs[k] + sn[k] * sin_dirs[k]) / amp
        W_Q[:, b] = beta * (-sn[k] * cos_dirs[k] + c[k] * sin_dirs[k]) / amp


def plant_decaying(build: StandinBuild, layer: int, head: int, tau: float) -> None:
    """Constant query against the positional ramp: attention ~ exp(-(n - i) / tau)."""
    dims = build.layout.head_dims(layer, head, "qk", 1)
    _zero_head_qk(build, layer, head, dims)
    ramp_dir = build.layout.direction("pos.ramp", 1)[0]
    n_ctx, d_head = build.cfg["n_ctx"], build.cfg["d_head"]
    # ramp(i) = ramp_amp * (i - n_ctx/2) / (n_ctx/2); after LN it is times s.
    slope_per_unit = build.typical_ln_scale() * build.cfg["_pos_ramp_amp"] / (n_ctx / 2)
    strength = math.sqrt(d_head) / (tau * slope_per_unit)  # b_Q * W_K
    build.w(f"blocks.{layer}.attn.W_K")[head][:, dims.start] = ramp_dir
    build.w(f"blocks.{layer}.attn.b_Q")[head][dims.start] = strength


def plant_uniform(build: StandinBuild, layer: int, head: int) -> None:
    """Queries and keys ten times smaller than the base noise: near-uniform attention."""
    for name in ("W_Q", "W_K"):
        build.w(f"blocks.{layer}.attn.{name}")[head] *= 0.1


@register_plant(
    "positional",
    models=("gpt2-small",),
    default_placement=DEFAULT_PLACEMENT,
    description="layer-0 previous-token, exponentially decaying and uniform positional patterns",
    order=10,
    layer0="planted",
)
def plant_positional_heads(build: StandinBuild, where: dict) -> None:
    layer = where["layer"]
    groups = [where["previous_token"], where["decaying"], where["uniform"]]
    flat = [h for g in groups for h in g]
    if len(flat) != len(set(flat)):
        raise ValueError(f"a head is in two positional groups: {groups}")
    for head in where["previous_token"]:
        plant_previous_token(build, layer, head, where["previous_token_gap"])
    for head in where["decaying"]:
        plant_decaying(build, layer, head, where["decay_tokens"])
    for head in where["uniform"]:
        plant_uniform(build, layer, head)
