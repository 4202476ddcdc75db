"""Stand-in models: offline models with the real models' shapes and planted mechanisms.

No weights can be downloaded where the course is built and tested, so each real
model has a stand-in built here, deterministically, in seconds on a CPU. A
stand-in is not random noise: every chapter *plants* the mechanism it studies
at the heads and neurons where the real model has it, through a small registry
of plants. Everything else in a stand-in is small, quiet random weights.

How a stand-in is built
-----------------------
1. :func:`base_weights` makes weights in TransformerLens's ``HookedTransformer``
   naming (``embed.W_E``, ``blocks.0.attn.W_Q`` [head, d_model, d_head], ...):
   token embeddings of realistic norm, a realistic positional embedding
   (sinusoids, a linear ramp and a large first-token component, norm about
   3.35 past position 100), LayerNorm weights 1 and biases 0, and small random
   attention and MLP weights.
2. Each selected plant (:data:`PLANTS`) writes its mechanism into those weights
   at the locations given by its *placement* (its default = where the real
   model has it; the ``placement`` argument moves it, so tests can check that
   the chapter's analysis finds a mechanism wherever it is planted).
3. :mod:`exercises_lib.models` converts the weights into a TransformerBridge.

The residual stream is shared between plants through a :class:`Layout`, which
hands out orthonormal directions (all orthogonal to the all-ones vector, so
LayerNorm's centring leaves them alone) and, per head, free head dimensions of
the QK and OV circuits. Plants therefore compose without overwriting each other.

Analysis code must never read where things were planted: the placement is kept
on the model (``model.standin_placement``) for tests only.

Taught in: chapter 0 (setup), with one plant per chapter.
"""

from __future__ import annotations

import functools
import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

from exercises_lib.vocab import single_token_id

__all__ = [
    "STANDIN_CONFIGS",
    "PLANTS",
    "Plant",
    "Layout",
    "StandinBuild",
    "register_plant",
    "base_weights",
    "build_standin_weights",
    "plants_for",
    "typical_ln_scale",
]

#: Configurations of the stand-ins: the real models' shapes.
STANDIN_CONFIGS: dict[str, dict] = {
    "gpt2-small": dict(
        n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, n_ctx=1024,
        d_vocab=50257, attn_only=False, act_fn="gelu_new", tied_embeddings=True,
    ),
    "attn-only-4l": dict(
        # The real model has d_vocab 48262 (its own tokenizer); the stand-in
        # uses the course's code tokenizer of the same size by default
        # (``exercises_lib.tokenizer.default_tokenizer``).
        n_layers=4, n_heads=8, d_model=512, d_head=64, d_mlp=2048, n_ctx=2048,
        d_vocab=48262, attn_only=True, act_fn="gelu", tied_embeddings=False,
    ),
}
STANDIN_CONFIGS["gpt2-noLN"] = dict(STANDIN_CONFIGS["gpt2-small"])

#: Dimensions of the residual stream reserved for position and for tokens.
N_FREQUENCIES = 30  # sinusoid pairs in the positional embedding
POS_NORM = 3.35  # |W_pos[i]| for i > 100, as in GPT-2 small
TOKEN_NORM = 3.6  # mean |W_E[t]|
TOKEN_NORM_SPREAD = 0.10  # relative spread of |W_E[t]|


def typical_ln_scale(d_model: int, token_norm: float | Tensor = TOKEN_NORM) -> float | Tensor:
    """The LN scale (the multiplier) ``s = sqrt(d_model) / |E[t] + P[i]|`` of a layer-0 input past
    position ~100, for tokens of norm ``token_norm`` (a float, or a tensor of norms), with ``E``
    and ``P`` orthogonal and ``|P[i]| = POS_NORM``."""
    if isinstance(token_norm, Tensor):
        return d_model**0.5 / torch.sqrt(token_norm**2 + POS_NORM**2)
    return math.sqrt(d_model) / math.sqrt(token_norm**2 + POS_NORM**2)


@dataclass
class Layout:
    """Hands out residual directions and head dimensions so plants never collide.

    ``direction(name, k)`` returns ``k`` orthonormal vectors [k, d_model] not
    given to anyone else (the same name returns the same vectors). Head
    dimensions are handed out per (layer, head) and per circuit ("qk" or "ov").
    """

    d_model: int
    d_head: int
    generator: torch.Generator
    _basis: Tensor = field(init=False, repr=False)
    _next: int = field(init=False, default=0)
    _named: dict = field(init=False, default_factory=dict)
    _head_next: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Random orthonormal basis of the centred subspace (orthogonal to ones).
        g = torch.randn(self.d_model, self.d_model - 1, generator=self.generator)
        g = g - g.mean(0, keepdim=True)
        q, _ = torch.linalg.qr(g)
        self._basis = q.T.contiguous()  # [d_model - 1, d_model]

    @property
    def n_free(self) -> int:
        return self._basis.shape[0] - self._next

    def direction(self, name: str, k: int = 1) -> Tensor:
        if name in self._named:
            vecs = self._named[name]
            if vecs.shape[0] != k:
                raise ValueError(f"direction {name!r} was taken with k={vecs.shape[0]}, not {k}")
            return vecs
        if k > self.n_free:
            raise ValueError(f"no room for {k} more directions ({self.n_free} left) for {name!r}")
        vecs = self._basis[self._next : self._next + k]
        self._next += k
        self._named[name] = vecs
        return vecs

    def head_dims(self, layer: int, head: int, circuit: str, k: int) -> slice:
        """The next ``k`` free dimensions of head ``layer.head`` in circuit "qk" or "ov"."""
        if circuit not in ("qk", "ov"):
            raise ValueError("circuit must be 'qk' or 'ov'")
        key = (layer, head, circuit)
        start = self._head_next.get(key, 0)
        if start + k > self.d_head:
            raise ValueError(
                f"head {layer}.{head} has no {k} free {circuit} dimensions left "
                f"({self.d_head - start} free): two plants ask too much of one head"
            )
        self._head_next[key] = start + k
        return slice(start, start + k)


@dataclass
class StandinBuild:
    """Everything a plant may read or write while a stand-in is being built."""

    model_name: str
    cfg: dict
    weights: dict[str, Tensor]
    layout: Layout
    generator: torch.Generator
    tokenizer: object
    placement: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator)

    def w(self, key: str) -> Tensor:
        return self.weights[key]

    def token_ids(self, words: Iterable[str]) -> list[int]:
        """Single-token ids of ``words`` (each must be one GPT-2 token)."""
        ids = []
        for word in words:
            token = single_token_id(self.tokenizer, word)
            if token is None:
                raise ValueError(f"{word!r} is not a single token: {self.tokenizer.encode(word)}")
            ids.append(token)
        return ids

    def typical_ln_scale(self) -> float:
        """The LN scale (the multiplier) of a typical layer-0 input: :func:`typical_ln_scale` at ``TOKEN_NORM``."""
        return typical_ln_scale(self.cfg["d_model"])


@dataclass(frozen=True)
class Plant:
    """A mechanism that can be written into a stand-in.

    ``apply(build, placement)`` writes it; ``default_placement`` is where the
    real model has it; ``models`` lists the stand-ins it belongs to.
    """

    name: str
    models: tuple[str, ...]
    default_placement: Mapping
    apply: Callable[[StandinBuild, dict], None]
    description: str
    order: int = 100


#: The registry of plants, filled by the modules of this package.
PLANTS: dict[str, Plant] = {}


def register_plant(
    name: str,
    *,
    models: tuple[str, ...],
    default_placement: Mapping,
    description: str,
    order: int = 100,
) -> Callable:
    """Decorator registering ``apply(build, placement)`` as a plant."""

    def decorator(fn: Callable[[StandinBuild, dict], None]) -> Callable:
        if name in PLANTS:
            raise ValueError(f"plant {name!r} registered twice")
        PLANTS[name] = Plant(name, tuple(models), dict(default_placement), fn, description, order)
        return fn

    return decorator


def _load_plant_modules() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


#: Stand-ins that take the plants of another (the LayerNorm-free GPT-2 is
#: built from the GPT-2 small stand-in).
PLANT_FAMILY = {"gpt2-noLN": "gpt2-small"}


def plants_for(model_name: str) -> list[Plant]:
    """The registered plants of a stand-in, in the order they are applied."""
    _load_plant_modules()
    family = PLANT_FAMILY.get(model_name, model_name)
    found = [p for p in PLANTS.values() if family in p.models or model_name in p.models]
    return sorted(found, key=lambda p: (p.order, p.name))


# ---------------------------------------------------------------------------
# Base weights
# ---------------------------------------------------------------------------


def _positional_embedding(build: StandinBuild) -> Tensor:
    """A GPT-2-like positional embedding.

    Components (each along its own direction of the layout):
    * ``N_FREQUENCIES`` sinusoid pairs ``(cos w_k i, sin w_k i)`` with periods
      spread geometrically from 3 to 2000 positions: relative position can be
      read from them by rotating the query (previous-token heads do this);
    * a linear ramp ``(i - n_ctx/2) / (n_ctx/2)``: attention scores linear in
      the source position give exponentially decaying patterns;
    * a component decaying over the first ~20 positions, so early positions
      have a larger norm, as in GPT-2.
    The norm is about ``POS_NORM`` past position 100.
    """
    n_ctx = build.cfg["n_ctx"]
    i = torch.arange(n_ctx, dtype=torch.float32)
    periods = torch.logspace(math.log10(3.0), math.log10(2000.0), N_FREQUENCIES)
    omega = 2 * math.pi / periods
    sin_dirs = build.layout.direction("pos.sin", N_FREQUENCIES)
    cos_dirs = build.layout.direction("pos.cos", N_FREQUENCIES)
    ramp_dir = build.layout.direction("pos.ramp", 1)[0]
    early_dir = build.layout.direction("pos.early", 1)[0]
    ramp_amp = 1.2
    wave_amp = math.sqrt((POS_NORM**2 - ramp_amp**2 / 3) / N_FREQUENCIES)
    phase = omega[None, :] * i[:, None]  # [pos, freq]
    pos = wave_amp * (torch.cos(phase) @ cos_dirs + torch.sin(phase) @ sin_dirs)
    ramp = (i - n_ctx / 2) / (n_ctx / 2)
    pos = pos + ramp_amp * ramp[:, None] * ramp_dir
    pos = pos + 6.0 * torch.exp(-i / 8.0)[:, None] * early_dir
    build.notes.append(f"positional embedding: {N_FREQUENCIES} sinusoid pairs, ramp, early component")
    build.cfg["_pos_omega"] = omega  # for plants that rotate queries
    build.cfg["_pos_wave_amp"] = wave_amp
    build.cfg["_pos_ramp_amp"] = ramp_amp
    return pos


def _token_embedding(build: StandinBuild, n_token_dims: int) -> Tensor:
    """Random token embeddings in their own subspace, norms ~ TOKEN_NORM."""
    v = build.cfg["d_vocab"]
    dirs = build.layout.direction("tok", n_token_dims)
    raw = build.randn(v, n_token_dims)
    raw = raw / raw.norm(dim=-1, keepdim=True)
    norms = TOKEN_NORM * (1 + TOKEN_NORM_SPREAD * build.randn(v).clamp(-2.5, 2.5))
    return (raw * norms[:, None]) @ dirs


def base_weights(build: StandinBuild) -> None:
    """Fill ``build.weights`` with the quiet base model (no mechanism yet)."""
    cfg = build.cfg
    L, H, d, dh, m = cfg["n_layers"], cfg["n_heads"], cfg["d_model"], cfg["d_head"], cfg["d_mlp"]
    w = build.weights
    # Position first (its directions), then tokens over about 2/3 of the rest.
    w["pos_embed.W_pos"] = _positional_embedding(build)
    n_token_dims = int(0.66 * build.layout.n_free)
    w["embed.W_E"] = _token_embedding(build, n_token_dims)
    init = 0.02  # GPT-2's initialiser scale: small next to the planted terms
    for layer in range(L):
        p = f"blocks.{layer}"
        w[f"{p}.ln1.w"] = torch.ones(d)
        w[f"{p}.ln1.b"] = torch.zeros(d)
        for name in ("W_Q", "W_K", "W_V"):
            w[f"{p}.attn.{name}"] = init * build.randn(H, d, dh)
        w[f"{p}.attn.W_O"] = init / math.sqrt(2 * L) * build.randn(H, dh, d)
        for name in ("b_Q", "b_K", "b_V"):
            w[f"{p}.attn.{name}"] = torch.zeros(H, dh)
        w[f"{p}.attn.b_O"] = torch.zeros(d)
        if not cfg["attn_only"]:
            w[f"{p}.ln2.w"] = torch.ones(d)
            w[f"{p}.ln2.b"] = torch.zeros(d)
            w[f"{p}.mlp.W_in"] = init * build.randn(d, m)
            w[f"{p}.mlp.b_in"] = torch.zeros(m)
            w[f"{p}.mlp.W_out"] = init / math.sqrt(2 * L) * build.randn(m, d)
            w[f"{p}.mlp.b_out"] = torch.zeros(d)
    w["ln_final.w"] = torch.ones(d)
    w["ln_final.b"] = torch.zeros(d)
    if cfg["tied_embeddings"]:
        w["unembed.W_U"] = w["embed.W_E"].T
    else:
        w["unembed.W_U"] = w["embed.W_E"].T.clone()
    w["unembed.b_U"] = torch.zeros(cfg["d_vocab"])


def _merge_placement(plant: Plant, override: Mapping | None) -> dict:
    placement = dict(plant.default_placement)
    if override:
        unknown = set(override) - set(placement)
        if unknown:
            raise ValueError(
                f"plant {plant.name!r} has no placement keys {sorted(unknown)}; "
                f"its keys are {sorted(placement)}"
            )
        placement.update(override)
    return placement


def _on_one_thread(build: Callable) -> Callable:
    """Run the build on one CPU thread: the same weights, bit for bit, on any number of cores.

    Some of the build's reductions are split across threads, and the split
    changes the last bits: with two threads instead of one, about two thirds of
    GPT-2's stand-in weights differ, by up to 1.3e-6. Rounding cannot undo
    that (a value near a rounding boundary still flips), so the build runs on
    one thread. Forward passes need no such care: on the CPU they give the
    same bits with one thread or several (``tests/test_determinism.py``).
    """

    @functools.wraps(build)
    def on_one_thread(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return build(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return on_one_thread


@_on_one_thread
def build_standin_weights(
    model_name: str,
    *,
    plants: Iterable[str] | None = None,
    placement: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    tokenizer=None,
) -> StandinBuild:
    """Build the weights of a stand-in, with its plants written in.

    Args:
        model_name: a key of :data:`STANDIN_CONFIGS`.
        plants: names of the plants to write (default: every plant of the model).
        placement: ``{plant_name: {key: value}}`` overriding default placements.
        seed: the seed of every random draw (the build is deterministic).
        tokenizer: the stand-in's tokenizer (default:
            :func:`exercises_lib.tokenizer.default_tokenizer`); ``d_vocab`` is its size.
    """
    if model_name not in STANDIN_CONFIGS:
        raise ValueError(f"no stand-in for {model_name!r}; known: {sorted(STANDIN_CONFIGS)}")
    if tokenizer is None:
        from exercises_lib.tokenizer import default_tokenizer

        tokenizer = default_tokenizer(model_name)
    cfg = dict(STANDIN_CONFIGS[model_name])
    cfg["d_vocab"] = len(tokenizer)  # the stand-in's vocabulary is its tokenizer's
    gen = torch.Generator().manual_seed(seed)
    layout = Layout(cfg["d_model"], cfg["d_head"], gen)
    build = StandinBuild(model_name, cfg, {}, layout, gen, tokenizer)
    base_weights(build)

    available = {p.name: p for p in plants_for(model_name)}
    chosen = list(available) if plants is None else list(plants)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ValueError(
            f"unknown plants {unknown} for {model_name!r}; available: {sorted(available)}"
        )
    placement = dict(placement or {})
    stray = set(placement) - set(chosen)
    if stray:
        raise ValueError(f"placement given for plants that are not planted: {sorted(stray)}")
    for plant in sorted((available[n] for n in chosen), key=lambda p: (p.order, p.name)):
        where = _merge_placement(plant, placement.get(plant.name))
        plant.apply(build, where)
        build.placement[plant.name] = where
    return build
