"""Stand-in models: offline models with the real models' shapes and planted mechanisms.

No weights can be downloaded where the course is built and tested, so each real
model has a stand-in built here, deterministically, in seconds on a CPU. A
stand-in is not random noise: every chapter *plants* the mechanism it studies
at the heads and neurons where the real model has it, through a small registry
of plants. Everything else in a stand-in is small, quiet random weights.

GPT-2 small's real layer 0
--------------------------
Part of the real GPT-2 small ships with the course
(:mod:`exercises_lib.standin.real_layer0`): the positional embedding ``W_pos``
and all of layer 0 except the MLP's weight matrices. The GPT-2 small stand-in
takes them unchanged (``layer0="real"``, the default): its layer-0 attention,
both layer-0 LayerNorms, MLP-0's biases and ``W_pos`` are OpenAI's. Only what is
missing is built: the token embeddings (a surrogate with GPT-2-like statistics,
:mod:`exercises_lib.standin.embeddings`), MLP-0's ``W_in`` and ``W_out`` and
layers 1-11. The plants of this mode read the real weights to decide what to
write (e.g. the duplicate-token neuron's input is solved from the real head
0.5's positional output) but never change a real weight (the builder checks).
Chapters 4 and 5 plant in layers 9-11 of the same stand-in.

``layer0="planted"`` builds the fully planted layer 0 instead (every weight
made by the course, the layer-0 mechanisms planted by the ``positional``,
``duplicate_tokens`` and ``contextual`` plants). It exists so that tests can
plant the layer-0 mechanisms at other heads and neurons and check that the
chapters' analysis finds them there. Choosing one of those plants selects it.

How a stand-in is built
-----------------------
1. :func:`base_weights` makes weights in TransformerLens's ``HookedTransformer``
   naming (``embed.W_E``, ``blocks.0.attn.W_Q`` [head, d_model, d_head], ...):
   token embeddings of realistic norm, the positional embedding (GPT-2's real
   one, or in planted mode a GPT-2-like one: sinusoids, a linear ramp and a
   large first-token component, norm about 3.35 past position 100), layer 0
   (real, or quiet random weights), LayerNorm weights 1 and biases 0
   elsewhere, and small random attention and MLP weights.
2. Each selected plant (:data:`PLANTS`) writes its mechanism into those weights
   at the locations given by its *placement* (its default = where the real
   model has it; the ``placement`` argument moves it, so tests can check that
   the chapter's analysis finds a mechanism wherever it is planted).
3. :mod:`exercises_lib.models` converts the weights into a TransformerBridge.

The residual stream is shared between plants through a :class:`Layout`, which
hands out orthonormal directions (all orthogonal to the all-ones vector, so
LayerNorm's centring leaves them alone, and in real mode to the constant part
of the real layer 0's output) and, per head, free head dimensions of the QK and
OV circuits. Plants therefore compose without overwriting each other.

Every build records what it stands on: :meth:`StandinBuild.weight_sources`
says, weight by weight, whether it is real, stand-in, or stand-in with plants
written into it; ``build.provenance`` says it in one sentence and
``build.display_name`` in a few words (``model.provenance`` etc. on the model).

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
    "REAL_LAYER0_MODELS",
    "PLANTS",
    "Plant",
    "Layout",
    "StandinBuild",
    "register_plant",
    "base_weights",
    "build_standin_weights",
    "plants_for",
    "typical_ln_scale",
    "processed_weight_sources",
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

#: Stand-ins built on GPT-2 small's real layer 0 by default (``layer0="real"``).
REAL_LAYER0_MODELS = ("gpt2-small",)

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
    avoid: Tensor | None = None  # [k, d_model] directions every handed-out direction is orthogonal to
    _basis: Tensor = field(init=False, repr=False)
    _next: int = field(init=False, default=0)
    _named: dict = field(init=False, default_factory=dict)
    _head_next: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.avoid is None:
            # Random orthonormal basis of the centred subspace (orthogonal to ones).
            g = torch.randn(self.d_model, self.d_model - 1, generator=self.generator)
            g = g - g.mean(0, keepdim=True)
            q, _ = torch.linalg.qr(g)
            self._basis = q.T.contiguous()  # [d_model - 1, d_model]
            return
        # ... and also orthogonal to the directions in ``avoid``.
        ones = torch.ones(1, self.d_model) / math.sqrt(self.d_model)
        taken, _ = torch.linalg.qr(torch.cat([ones, self.avoid.to(torch.float32)]).T)  # [d, 1 + k]
        k = taken.shape[1]
        g = torch.randn(self.d_model, self.d_model - k, generator=self.generator)
        g = g - taken @ (taken.T @ g)
        q, _ = torch.linalg.qr(g)
        q = q - taken @ (taken.T @ q)  # remove the rounding left over by QR
        q, _ = torch.linalg.qr(q)
        self._basis = q.T.contiguous()  # [d_model - 1 - k, d_model]

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


class _TrackedWeights(dict):
    """The weights of a build; records which keys the running plant takes for writing."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: set[str] | None = None  # keys taken by the plant being applied (None: not tracking)

    def __getitem__(self, key: str) -> Tensor:
        if self.taken is not None:
            self.taken.add(key)
        return super().__getitem__(key)

    def __setitem__(self, key: str, value: Tensor) -> None:
        if self.taken is not None:
            self.taken.add(key)
        super().__setitem__(key, value)


@dataclass
class StandinBuild:
    """Everything a plant may read or write while a stand-in is being built.

    Plants take a weight to write it with :meth:`w` (or ``build.weights[key]``)
    and read one without writing with :meth:`read`: the build records which
    plant wrote which weight (:meth:`weight_sources`). Real weights (``layer0="real"``)
    may be read, never written: the builder checks at the end.
    """

    model_name: str
    cfg: dict
    weights: dict[str, Tensor]
    layout: Layout
    generator: torch.Generator
    tokenizer: object
    placement: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layer0: str = "planted"  # "real": GPT-2 small's real W_pos and layer 0; "planted": all built here
    real_keys: tuple[str, ...] = ()  # weights holding real values (unprocessed names)
    written: dict[str, list[str]] = field(default_factory=dict)  # weight -> plants that wrote into it
    plant_descriptions: dict[str, str] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator)

    def w(self, key: str) -> Tensor:
        """The weight ``key``, taken for writing (recorded as written by the running plant)."""
        return self.weights[key]

    def read(self, key: str) -> Tensor:
        """The weight ``key`` for reading only (not recorded; do not write into it)."""
        return dict.__getitem__(self.weights, key)

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

    def layer0_output_norm(self, position0: bool = False) -> float:
        """Typical norm of the centred residual stream after layer 0 (an ordinary token past position 100,
        or with ``position0`` the first token ``<|endoftext|>`` at position 0).

        Planted mode: ``sqrt(TOKEN_NORM^2 + POS_NORM^2)`` (the quiet layer 0 adds
        little; position 0 is not estimated there). Real mode: measured once by
        running the real layer 0 (with the embeddings as they are when first
        asked) on random tokens, because GPT-2's layer-0 attention adds a large,
        nearly constant vector. Later-layer plants size their LayerNorm-scale
        estimates with it.
        """
        if self.layer0 != "real":
            if position0:
                raise ValueError("position 0's norm is only measured with the real layer 0")
            return math.sqrt(TOKEN_NORM**2 + POS_NORM**2)
        if "layer0_norms" not in self._cache:
            from exercises_lib.standin.layer0 import layer0_forward

            g = torch.Generator().manual_seed(1234)
            tokens = torch.randint(1000, 40000, (2, 256), generator=g)
            tokens[:, 0] = 50256
            mid = layer0_forward(self.weights, tokens, self.cfg["n_heads"], mlp=False)["resid_mid"]
            norms = (mid - mid.mean(-1, keepdim=True)).norm(dim=-1)
            self._cache["layer0_norms"] = (float(norms[:, 100:].median()), float(norms[:, 0].mean()))
        return self._cache["layer0_norms"][1 if position0 else 0]

    # -- provenance ---------------------------------------------------------

    def weight_sources(self) -> dict[str, dict]:
        """Where every weight of the build comes from (unprocessed TransformerLens names).

        ``{key: {"source": "real" | "stand-in" | "planted", "plants": [...]}}``:
        ``"real"`` holds the real model's values unchanged; ``"planted"`` is a
        stand-in weight into which the listed plants wrote (some of its entries
        carry a planted mechanism); ``"stand-in"`` is built here with nothing
        planted. See :func:`processed_weight_sources` for the loaded model's names.
        """
        out = {}
        for key in self.weights:
            if key in self.real_keys:
                out[key] = {"source": "real", "plants": []}
            elif self.written.get(key):
                out[key] = {"source": "planted", "plants": sorted(set(self.written[key]))}
            else:
                out[key] = {"source": "stand-in", "plants": []}
        return out

    @property
    def display_name(self) -> str:
        """A short name for figure titles, e.g. ``"GPT-2 small (stand-in, real layer 0)"``."""
        base = {"gpt2-small": "GPT-2 small", "gpt2-noLN": "GPT-2 small without LayerNorm",
                "attn-only-4l": "attn-only-4l"}.get(self.model_name, self.model_name)
        return f"{base} (stand-in, real layer 0)" if self.layer0 == "real" else f"{base} (stand-in)"

    @property
    def provenance(self) -> str:
        """One sentence: which weights are real, which are stand-in, what is planted."""
        base = self.display_name.split(" (")[0]
        planted = "; ".join(self.plant_descriptions.values()) or "nothing"
        if self.layer0 == "real":
            from exercises_lib.standin.real_layer0 import SOURCE

            return (
                f"{base} stand-in: real W_pos, layer-0 attention (W_Q, W_K, W_V, W_O and biases), both "
                f"layer-0 LayerNorms and MLP-0's biases ({SOURCE}); stand-in token embeddings (a random "
                f"surrogate with GPT-2-like norms), MLP-0 weight matrices and layers 1-{self.cfg['n_layers'] - 1}; "
                f"planted: {planted}."
            )
        return f"{base} stand-in: every weight built by the course (no real weights); planted: {planted}."


@dataclass(frozen=True)
class Plant:
    """A mechanism that can be written into a stand-in.

    ``apply(build, placement)`` writes it; ``default_placement`` is where the
    real model has it; ``models`` lists the stand-ins it belongs to; ``layer0``
    says which kind of layer 0 it needs: ``"real"`` (it reads GPT-2's real
    layer 0), ``"planted"`` (it plants a whole layer-0 mechanism) or ``"any"``.
    """

    name: str
    models: tuple[str, ...]
    default_placement: Mapping
    apply: Callable[[StandinBuild, dict], None]
    description: str
    order: int = 100
    layer0: str = "any"


#: The registry of plants, filled by the modules of this package.
PLANTS: dict[str, Plant] = {}


def register_plant(
    name: str,
    *,
    models: tuple[str, ...],
    default_placement: Mapping,
    description: str,
    order: int = 100,
    layer0: str = "any",
) -> Callable:
    """Decorator registering ``apply(build, placement)`` as a plant."""
    if layer0 not in ("any", "real", "planted"):
        raise ValueError(f"layer0 must be 'any', 'real' or 'planted', not {layer0!r}")

    def decorator(fn: Callable[[StandinBuild, dict], None]) -> Callable:
        if name in PLANTS:
            raise ValueError(f"plant {name!r} registered twice")
        PLANTS[name] = Plant(name, tuple(models), dict(default_placement), fn, description, order, layer0)
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


def base_weights(build: StandinBuild, real: Mapping[str, Tensor] | None = None) -> None:
    """Fill ``build.weights`` with the quiet base model (no mechanism yet).

    ``real``: GPT-2 small's real weights (:func:`exercises_lib.standin.real_layer0.real_layer0_weights`),
    taken unchanged for ``W_pos`` and layer 0 (attention, LayerNorms, MLP biases).
    """
    cfg = build.cfg
    L, H, d, dh, m = cfg["n_layers"], cfg["n_heads"], cfg["d_model"], cfg["d_head"], cfg["d_mlp"]
    w = build.weights
    # Position first (its directions), then tokens over about 2/3 of the rest.
    if real is not None:
        w["pos_embed.W_pos"] = real["pos_embed.W_pos"].clone()
    else:
        w["pos_embed.W_pos"] = _positional_embedding(build)
    n_token_dims = int(0.66 * build.layout.n_free)
    w["embed.W_E"] = _token_embedding(build, n_token_dims)
    init = 0.02  # GPT-2's initialiser scale: small next to the planted terms
    for layer in range(L):
        p = f"blocks.{layer}"
        if real is not None and layer == 0:
            for key in ("ln1.w", "ln1.b", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O",
                        "attn.b_Q", "attn.b_K", "attn.b_V", "attn.b_O"):
                w[f"{p}.{key}"] = real[f"{p}.{key}"].clone()
        else:
            w[f"{p}.ln1.w"] = torch.ones(d)
            w[f"{p}.ln1.b"] = torch.zeros(d)
            for name in ("W_Q", "W_K", "W_V"):
                w[f"{p}.attn.{name}"] = init * build.randn(H, d, dh)
            w[f"{p}.attn.W_O"] = init / math.sqrt(2 * L) * build.randn(H, dh, d)
            for name in ("b_Q", "b_K", "b_V"):
                w[f"{p}.attn.{name}"] = torch.zeros(H, dh)
            w[f"{p}.attn.b_O"] = torch.zeros(d)
        if not cfg["attn_only"]:
            w[f"{p}.mlp.W_in"] = init * build.randn(d, m)
            w[f"{p}.mlp.W_out"] = init / math.sqrt(2 * L) * build.randn(m, d)
            if real is not None and layer == 0:
                for key in ("ln2.w", "ln2.b", "mlp.b_in", "mlp.b_out"):
                    w[f"{p}.{key}"] = real[f"{p}.{key}"].clone()
            else:
                w[f"{p}.ln2.w"] = torch.ones(d)
                w[f"{p}.ln2.b"] = torch.zeros(d)
                w[f"{p}.mlp.b_in"] = torch.zeros(m)
                w[f"{p}.mlp.b_out"] = torch.zeros(d)
    w["ln_final.w"] = torch.ones(d)
    w["ln_final.b"] = torch.zeros(d)
    if cfg["tied_embeddings"]:
        w["unembed.W_U"] = w["embed.W_E"].T
    else:
        w["unembed.W_U"] = w["embed.W_E"].T.clone()
    w["unembed.b_U"] = torch.zeros(cfg["d_vocab"])


def _constant_layer0_output(real: Mapping[str, Tensor]) -> Tensor:
    """Constant parts of the real layer 0's residual stream: the attention's ``b_O + sum_h b_V^h W_O^h``,
    the mean of ``W_pos`` and MLP-0's ``b_out``. Plants' directions are kept orthogonal to them."""
    b_out = real["blocks.0.attn.b_O"] + torch.einsum("he,hed->d", real["blocks.0.attn.b_V"], real["blocks.0.attn.W_O"])
    return torch.stack([b_out, real["pos_embed.W_pos"].mean(0), real["blocks.0.mlp.b_out"]])


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


def _choose_layer0(model_name: str, chosen: list[Plant], layer0: str | None) -> str:
    """``"real"`` or ``"planted"``: as asked, else planted when a chosen plant needs it, else real where available."""
    family = PLANT_FAMILY.get(model_name, model_name)
    available = "real" if family in REAL_LAYER0_MODELS else "planted"
    needs = {p.layer0 for p in chosen} - {"any"}
    if layer0 is None:
        if len(needs) > 1:
            names = {mode: sorted(p.name for p in chosen if p.layer0 == mode) for mode in needs}
            raise ValueError(
                f"plants {names['planted']} plant a whole layer 0 and plants {names['real']} read GPT-2's real "
                "layer 0: they cannot be built together"
            )
        layer0 = needs.pop() if needs else available
    if layer0 not in ("real", "planted"):
        raise ValueError(f"layer0 must be 'real' or 'planted', not {layer0!r}")
    if layer0 == "real" and available != "real":
        raise ValueError(f"the {model_name!r} stand-in has no real layer 0; use layer0='planted'")
    wrong = sorted(p.name for p in chosen if p.layer0 not in ("any", layer0))
    if wrong:
        raise ValueError(
            f"plants {wrong} need layer0={'planted' if layer0 == 'real' else 'real'!r}, "
            f"but the build has layer0={layer0!r}"
        )
    return layer0


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
    layer0: str | None = None,
) -> StandinBuild:
    """Build the weights of a stand-in, with its plants written in.

    Args:
        model_name: a key of :data:`STANDIN_CONFIGS`.
        plants: names of the plants to write (default: every plant of the model
            that fits its layer 0).
        placement: ``{plant_name: {key: value}}`` overriding default placements.
        seed: the seed of every random draw (the build is deterministic).
        tokenizer: the stand-in's tokenizer (default:
            :func:`exercises_lib.tokenizer.default_tokenizer`); ``d_vocab`` is its size.
        layer0: ``"real"`` (GPT-2 small's real layer 0 and ``W_pos``; the default
            for :data:`REAL_LAYER0_MODELS`) or ``"planted"`` (the default when a
            chosen plant plants a whole layer 0, and for other models).
    """
    if model_name not in STANDIN_CONFIGS:
        raise ValueError(f"no stand-in for {model_name!r}; known: {sorted(STANDIN_CONFIGS)}")
    if tokenizer is None:
        from exercises_lib.tokenizer import default_tokenizer

        tokenizer = default_tokenizer(model_name)
    available = {p.name: p for p in plants_for(model_name)}
    if plants is not None:
        chosen = list(plants)
        unknown = [n for n in chosen if n not in available]
        if unknown:
            raise ValueError(
                f"unknown plants {unknown} for {model_name!r}; available: {sorted(available)}"
            )
        layer0 = _choose_layer0(model_name, [available[n] for n in chosen], layer0)
    else:
        family = PLANT_FAMILY.get(model_name, model_name)
        layer0 = layer0 or ("real" if family in REAL_LAYER0_MODELS else "planted")
        chosen = [n for n, p in available.items() if p.layer0 in ("any", layer0)]
        _choose_layer0(model_name, [available[n] for n in chosen], layer0)

    cfg = dict(STANDIN_CONFIGS[model_name])
    cfg["d_vocab"] = len(tokenizer)  # the stand-in's vocabulary is its tokenizer's
    gen = torch.Generator().manual_seed(seed)
    real = None
    if layer0 == "real":
        from exercises_lib.standin.real_layer0 import REAL_LAYER0_KEYS, real_layer0_weights

        real = real_layer0_weights(n_heads=cfg["n_heads"])
        layout = Layout(cfg["d_model"], cfg["d_head"], gen, avoid=_constant_layer0_output(real))
    else:
        layout = Layout(cfg["d_model"], cfg["d_head"], gen)
    build = StandinBuild(model_name, cfg, _TrackedWeights(), layout, gen, tokenizer, layer0=layer0)
    base_weights(build, real)
    if real is not None:
        build.real_keys = tuple(REAL_LAYER0_KEYS)

    placement = dict(placement or {})
    stray = set(placement) - set(chosen)
    if stray:
        raise ValueError(f"placement given for plants that are not planted: {sorted(stray)}")
    for plant in sorted((available[n] for n in chosen), key=lambda p: (p.order, p.name)):
        where = _merge_placement(plant, placement.get(plant.name))
        build.weights.taken = set()
        try:
            plant.apply(build, where)
        finally:
            taken, build.weights.taken = build.weights.taken, None
        for key in taken:
            build.written.setdefault(key, []).append(plant.name)
        build.placement[plant.name] = where
        build.plant_descriptions[plant.name] = plant.description
    if real is not None:
        changed = [k for k in build.real_keys if not torch.equal(dict.__getitem__(build.weights, k), real[k])]
        if changed:
            raise RuntimeError(f"a plant changed real weights {changed} (plants may read real weights, never write them)")
        for key in build.real_keys:
            build.written.pop(key, None)
    return build


#: How TransformerLens's weight processing (LayerNorm folding, centring, value-bias folding)
#: makes each weight of the loaded model from the unprocessed ones.
_PROCESSED_FROM = {
    "embed.W_E": ["embed.W_E"],
    "pos_embed.W_pos": ["pos_embed.W_pos"],
    "unembed.W_U": ["embed.W_E", "unembed.W_U", "ln_final.w"],
    "unembed.b_U": ["unembed.b_U", "ln_final.b", "unembed.W_U"],
}
for _n in ("Q", "K", "V"):
    _PROCESSED_FROM[f"attn.W_{_n}"] = [f"attn.W_{_n}", "ln1.w"]
    _PROCESSED_FROM[f"attn.b_{_n}"] = [f"attn.b_{_n}", "ln1.b", f"attn.W_{_n}"]
_PROCESSED_FROM["attn.W_O"] = ["attn.W_O"]
_PROCESSED_FROM["attn.b_O"] = ["attn.b_O", "attn.b_V", "attn.W_O"]
_PROCESSED_FROM["mlp.W_in"] = ["mlp.W_in", "ln2.w"]
_PROCESSED_FROM["mlp.b_in"] = ["mlp.b_in", "ln2.b", "mlp.W_in"]
_PROCESSED_FROM["mlp.W_out"] = ["mlp.W_out"]
_PROCESSED_FROM["mlp.b_out"] = ["mlp.b_out"]


def processed_weight_sources(sources: Mapping[str, Mapping], n_layers: int, attn_only: bool = False) -> dict[str, dict]:
    """:meth:`StandinBuild.weight_sources` restated for the loaded model's weights (LayerNorm folded).

    A processed weight is ``"real"`` when every weight it is made from is real,
    ``"planted"`` when one of them has a plant written into it, else ``"stand-in"``.
    E.g. layer 0's ``b_in`` of the loaded model is the real ``b_in`` plus the real LN-2
    bias through the stand-in ``W_in``: ``"stand-in"`` (or ``"planted"``).
    Keys: ``"W_E"``, ``"W_pos"``, ``"W_U"``, ``"b_U"``, ``"blocks.{l}.attn.W_Q"``, ...
    """
    def combine(parts: list[str]) -> dict:
        found = [sources[p] for p in parts if p in sources]
        plants = sorted({q for f in found for q in f["plants"]})
        if found and all(f["source"] == "real" for f in found):
            kind = "real"
        elif plants:
            kind = "planted"
        else:
            kind = "stand-in"
        return {"source": kind, "plants": plants, "from": [p for p in parts if p in sources]}

    out = {}
    for key in ("embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U"):
        out[key.split(".")[1]] = combine(_PROCESSED_FROM[key])
    for layer in range(n_layers):
        for local, parts in _PROCESSED_FROM.items():
            if "." not in local or local.split(".")[0] not in ("attn", "mlp"):
                continue
            if attn_only and local.startswith("mlp"):
                continue
            out[f"blocks.{layer}.{local}"] = combine([f"blocks.{layer}.{p}" for p in parts])
    return out
