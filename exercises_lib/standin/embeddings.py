"""Plant: surrogate token embeddings with GPT-2-like statistics (GPT-2 small stand-in, real layer 0).

GPT-2 small's token embedding ``W_E`` (= ``W_U``) is not available offline, so the
stand-in built on the real layer 0 uses a surrogate: random directions with
GPT-2-like row norms (spread over about 2.5-4.5) plus one shared mean direction,
as GPT-2's embeddings have (its rows share a common component, so two random
tokens have a positive cosine). The surrogate carries no knowledge of GPT-2's
vocabulary: the structure the chapters' content-dependent claims need
(stopwords, the first token, topics) is planted on top of it by the plants of
:mod:`exercises_lib.standin.contextual`, and reported as planted.

The chapters' claims that depend only on the real weights are tested with many
surrogates (norms 2.5, 3.5 and 4.5, with and without the mean direction, several
seeds; ``tests/test_real_layer0.py``): :func:`surrogate_rows` makes them.

Placement keys (statistics, not locations): ``norm_mean``, ``norm_std``,
``norm_min``, ``norm_max`` (row norms ``clip(N(norm_mean, norm_std))``, the
mean direction included) and ``mean_norm`` (size of the shared direction).
These are choices, not GPT-2's measured values (its ``W_E`` is not at hand):
norms as the course's brief describes GPT-2's, a mean direction giving two
random tokens a cosine of about ``mean_norm^2 / norm^2`` (0.08 by default).

Taught in: chapter 0 (setup); used by chapters 1 and 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from exercises_lib.standin import StandinBuild, register_plant

__all__ = ["DEFAULT_PLACEMENT", "surrogate_rows"]

DEFAULT_PLACEMENT = {
    "norm_mean": 3.5,
    "norm_std": 0.5,
    "norm_min": 2.5,
    "norm_max": 4.5,
    "mean_norm": 1.0,
}


def surrogate_rows(
    n_rows: int,
    basis: Tensor,
    generator: torch.Generator,
    *,
    norm_mean: float = 3.5,
    norm_std: float = 0.5,
    norm_min: float = 2.5,
    norm_max: float = 4.5,
    mean_dir: Tensor | None = None,
    mean_norm: float = 0.0,
) -> Tensor:
    """``n_rows`` surrogate embeddings: random directions in the span of ``basis`` [k, d] (orthonormal rows)
    plus ``mean_norm * mean_dir``, with total row norms ``clip(N(norm_mean, norm_std), norm_min, norm_max)``.

    ``mean_dir`` must be a unit vector orthogonal to ``basis``.
    """
    if mean_norm >= norm_min:
        raise ValueError(f"mean_norm ({mean_norm}) must be below norm_min ({norm_min})")
    raw = torch.randn(n_rows, basis.shape[0], generator=generator)
    raw = raw / raw.norm(dim=-1, keepdim=True)
    norms = (norm_mean + norm_std * torch.randn(n_rows, generator=generator)).clamp(norm_min, norm_max)
    rest = (norms**2 - mean_norm**2).sqrt()
    rows = (raw * rest[:, None]) @ basis
    if mean_norm:
        if mean_dir is None:
            raise ValueError("mean_norm > 0 needs mean_dir")
        rows = rows + mean_norm * mean_dir
    return rows


@register_plant(
    "surrogate_embeddings",
    models=("gpt2-small",),
    default_placement=DEFAULT_PLACEMENT,
    description="surrogate token embeddings (random directions, GPT-2-like norms, a shared mean direction)",
    order=1,
    layer0="real",
)
def plant_surrogate_embeddings(build: StandinBuild, where: dict) -> None:
    E = build.w("embed.W_E")
    tok = build.layout._named["tok"]  # the base token subspace [k, d_model]
    mean_dir = build.layout.direction("tok.mean", 1)[0]
    E[:] = surrogate_rows(
        E.shape[0], tok, build.generator, norm_mean=where["norm_mean"], norm_std=where["norm_std"],
        norm_min=where["norm_min"], norm_max=where["norm_max"], mean_dir=mean_dir, mean_norm=where["mean_norm"],
    )
    build.notes.append(
        f"surrogate token embeddings: norms N({where['norm_mean']}, {where['norm_std']}) clipped to "
        f"[{where['norm_min']}, {where['norm_max']}], shared direction of norm {where['mean_norm']}"
    )
