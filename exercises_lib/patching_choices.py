"""The choices behind activation patching: which direction, and which corrupted tokens.

Chapter 5's patching half, after Heimersheim's answers in write-up 002
(Heimersheim, comments on patching direction and corrupted tokens, 2023-2024).
The sweeps themselves are :mod:`exercises_lib.patching`'s.

Direction
---------
:func:`patching_effect` puts a patched value on one scale for both directions
(denoising, clean -> corrupt, finds what is *sufficient*; noising, corrupt ->
clean, what is *necessary*); :func:`direction_effects` patches every site both
ways; :func:`attention_effects_by_direction` goes from attention layers to
heads; :func:`gate_like_sites` names the sites only one direction sees (inputs
of an AND or an OR). The worked example, :func:`and_or_task`, runs on the
GPT-2-small stand-in's ``and_or`` plant (its words: :mod:`exercises_lib.vocab`);
:func:`direction_explorer` shows the head maps side by side.

Corrupted tokens
----------------
A corruption that is not equivalent changes where a head looks, not only what
it sees: :func:`attention_shift` and :func:`attention_shifts` measure that,
:func:`token_class` and :func:`matched_corruptions` pick corruptions that do
not.

Nothing here knows where a stand-in's mechanism was planted.

Taught in: chapter 5 (LayerNorm and patching).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from exercises_lib.patching import patch_sweep, resid_hook_names
from exercises_lib.vocab import ANIMALS, COLOURS, GATE_ANSWERS, TRIGGERS

__all__ = [
    "patching_effect", "direction_effects", "attention_effects_by_direction", "gate_like_sites",
    "AND_OR_TEMPLATES", "and_or_task", "attention_shift", "attention_shifts", "token_class",
    "matched_corruptions", "direction_explorer",
]

# ---------------------------------------------------------------------------
# Patching in both directions
# ---------------------------------------------------------------------------


def patching_effect(
    values: Tensor, clean_value: Tensor | float, corrupt_value: Tensor | float, direction: str
) -> Tensor:
    """How much a patched site matters, on one scale for both directions.

    ``denoise`` (clean activations into the corrupted run): the fraction of the
    clean behaviour the site restores on its own, ``(v - corrupt) / (clean - corrupt)``.
    ``noise`` (corrupted activations into the clean run): the fraction of the
    clean behaviour lost when the site alone is corrupted,
    ``(clean - v) / (clean - corrupt)``. 0: the site does nothing; 1: all of it.
    """
    # SOLUTION: same denominator, numerator measured from where the patched run starts
    clean = torch.as_tensor(clean_value, dtype=values.dtype, device=values.device)
    corrupt = torch.as_tensor(corrupt_value, dtype=values.dtype, device=values.device)
    if direction == "denoise":
        return (values - corrupt) / (clean - corrupt)
    if direction == "noise":
        return (clean - values) / (clean - corrupt)
    raise ValueError(f"direction must be 'denoise' or 'noise', not {direction!r}")
    # END SOLUTION


@torch.no_grad()
def direction_effects(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    hook_names: Sequence[str],
    metric: Callable[[Tensor], Tensor],
    **sweep_kwargs,
) -> dict[str, Tensor]:
    """Patch every site both ways; return the :func:`patching_effect` of each.

    ``sweep_kwargs`` go to :func:`exercises_lib.patching.patch_sweep` (e.g.
    ``heads=True``, ``positions="all"``). Returns ``{"denoise": ..., "noise": ...,
    "clean": clean metric, "corrupt": corrupted metric}``.
    """
    clean_value = torch.as_tensor(metric(model(clean_tokens))).float()
    corrupt_value = torch.as_tensor(metric(model(corrupt_tokens))).float()
    out = {"clean": clean_value, "corrupt": corrupt_value}
    for direction in ("denoise", "noise"):
        values = patch_sweep(model, clean_tokens, corrupt_tokens, hook_names, metric, direction=direction, **sweep_kwargs)
        out[direction] = patching_effect(values, clean_value, corrupt_value, direction)
    return out


@torch.no_grad()
def attention_effects_by_direction(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    threshold: float = 0.5,
) -> dict:
    """Coarse to fine, in both directions: attention layers first, then the heads of the layers that matter.

    Stage 1 patches each attention layer's output (all positions at once);
    stage 2 patches each head (``attn.hook_z``, all positions) of every layer
    whose effect reaches ``threshold`` in either direction for any component of
    the metric. Head effects of the layers not patched are NaN. Returns
    ``{"layers": {"denoise", "noise"} [layer, *metric],
    "heads": {"denoise", "noise"} [layer, head, *metric], "flagged": [layers],
    "clean", "corrupt"}``.
    """
    kw = dict(last_position_only=True, progress=False)
    layers = direction_effects(model, clean_tokens, corrupt_tokens, resid_hook_names(model, "attn_out"), metric,
                               positions="all", **kw)
    big = (layers["denoise"] >= threshold) | (layers["noise"] >= threshold)
    flagged = [int(l) for l in big.reshape(big.shape[0], -1).any(-1).nonzero().flatten()]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    shape = (L, H, *layers["clean"].shape)
    heads = {d: torch.full(shape, float("nan")) for d in ("denoise", "noise")}
    if flagged:
        names = [f"blocks.{l}.attn.hook_z" for l in flagged]
        found = direction_effects(model, clean_tokens, corrupt_tokens, names, metric, heads=True, **kw)
        for d in ("denoise", "noise"):
            heads[d][flagged] = found[d].to(heads[d].dtype)
    return {
        "layers": {d: layers[d] for d in ("denoise", "noise")},
        "heads": heads,
        "flagged": flagged,
        "clean": layers["clean"],
        "corrupt": layers["corrupt"],
    }


def gate_like_sites(
    denoise: Tensor, noise: Tensor, threshold: float = 0.5
) -> dict[str, list[tuple[int, ...]]]:
    """Sites found by one direction only, or by both (effects above ``threshold``).

    ``"denoise_only"``: sufficient alone but not necessary (OR-like inputs);
    ``"noise_only"``: necessary but not sufficient alone (AND-like inputs);
    ``"both"``: a site that carries the whole effect by itself.
    """
    d, n = denoise >= threshold, noise >= threshold  # NaN (not patched) is neither

    def where(mask):
        return [tuple(int(i) for i in idx) for idx in mask.nonzero()]

    return {"denoise_only": where(d & ~n), "noise_only": where(n & ~d), "both": where(d & n)}


#: The AND/OR example's prompts: ``{c}`` a colour, ``{a}`` an animal (single tokens).
AND_OR_TEMPLATES: tuple[str, ...] = (
    "The {c} hat sat on the {a}, so the answer is",
    "A {c} ball hit the {a}, so then the answer is",
    "My {c} car and your {a} met, so the answer is",
    "One {c} box and one {a}, and so the answer is",
)


def and_or_task(model, n_templates: int = 2, n_corruptions: int = 1):
    """The worked example's prompts and metric, for a model with the ``and_or`` plant.

    Clean prompts (``n_corruptions`` per template, for the first
    ``n_templates`` of :data:`AND_OR_TEMPLATES`) contain the two trigger
    words (``' red'`` and ``' dog'``); each corrupted prompt swaps both for
    class-mates (another colour, another animal, different ones across
    prompts), so every planted attention pattern stays where it was. Returns
    ``(clean_tokens, corrupt_tokens, metric)`` where ``metric(logits)`` is the
    mean over prompts of ``[logit(' both') - logit(' none'),
    logit(' either') - logit(' neither')]`` at the last position: the AND
    gate's and the OR gate's output.
    """
    colour, animal = TRIGGERS
    mates_c = [c for c in COLOURS if c != colour]
    mates_a = [a for a in ANIMALS if a != animal]
    clean_text, corrupt_text = [], []
    for k, template in enumerate(AND_OR_TEMPLATES[:n_templates]):
        for j in range(n_corruptions):
            i = (k + j * len(AND_OR_TEMPLATES)) % len(mates_c)
            clean_text.append(template.format(c=colour.strip(), a=animal.strip()))
            corrupt_text.append(template.format(c=mates_c[i].strip(), a=mates_a[i].strip()))
    clean, corrupt = model.to_tokens(clean_text), model.to_tokens(corrupt_text)
    if clean.shape != corrupt.shape or (clean == model.tokenizer.pad_token_id)[:, 1:].any():
        raise ValueError("the AND/OR prompts must all have the same length")
    ids = {w: model.to_single_token(w) for pair in GATE_ANSWERS.values() for w in pair}
    pairs = [tuple(ids[w] for w in GATE_ANSWERS[k]) for k in ("and", "or")]

    def metric(logits: Tensor) -> Tensor:
        last = logits[:, -1]
        return torch.stack([(last[:, g] - last[:, b]).mean() for g, b in pairs])

    return clean, corrupt, metric


# ---------------------------------------------------------------------------
# Choosing corrupted tokens
# ---------------------------------------------------------------------------


@torch.no_grad()
def attention_shifts(
    model, tokens: Int[Tensor, "1 pos"], position: int, candidates: Sequence[int] | Tensor
) -> Float[Tensor, "candidate layer head"]:
    """For each candidate token put at ``position``: the largest change of each head's pattern.

    ``max_{dest, src} |pattern_new - pattern_orig|`` per layer and head.
    """
    tokens = tokens[:1]
    cands = torch.as_tensor(list(candidates) if not isinstance(candidates, Tensor) else candidates)
    batch = tokens.repeat(len(cands) + 1, 1)
    batch[1:, position] = cands.to(batch.device)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    wanted = set(names)
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n in wanted)
    pats = torch.stack([cache[n] for n in names], 1)  # [batch, layer, head, dest, src]
    return (pats[1:] - pats[:1]).abs().amax(dim=(-2, -1))


@torch.no_grad()
def attention_shift(
    model,
    tokens: Int[Tensor, "1 pos"],
    position: int,
    candidates: Sequence[int] | Tensor,
    layer: int,
    head: int,
) -> Float[Tensor, "candidate"]:
    """``max_{dest, src} |A' - A|`` of head ``layer.head`` when ``tokens[0, position]``
    is replaced by each candidate (``A``: the original pattern, ``A'``: the new one)."""
    # SOLUTION: one batch with the original first, the pattern of one head, largest absolute change
    tokens = tokens[:1]
    cands = torch.as_tensor(list(candidates) if not isinstance(candidates, Tensor) else candidates)
    batch = tokens.repeat(len(cands) + 1, 1)
    batch[1:, position] = cands.to(batch.device)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n == name)
    pattern = cache[name][:, head]  # [batch, dest, src]
    return (pattern[1:] - pattern[:1]).abs().amax(dim=(-2, -1))
    # END SOLUTION


def token_class(token: str) -> tuple[bool, str, str]:
    """A coarse class of a token string: (leading space, case, kind).

    case: ``"lower"``, ``"title"``, ``"upper"`` or ``"none"``; kind:
    ``"alpha"``, ``"digit"``, ``"punct"`` or ``"mixed"``. Two tokens of the same
    class look alike on the surface (e.g. ``' red'`` and ``' big'``); that is not
    enough to make them equivalent for a given head.
    """
    space = token.startswith(" ")
    core = token.strip()
    if core.isalpha():
        kind = "alpha"
    elif core.isdigit():
        kind = "digit"
    elif core and all(not ch.isalnum() for ch in core):
        kind = "punct"
    else:
        kind = "mixed"
    if not any(ch.isalpha() for ch in core):
        case = "none"
    elif core.islower():
        case = "lower"
    elif core.isupper() and len(core) > 1:
        case = "upper"
    elif core[:1].isupper() and core[1:].islower():
        case = "title"
    else:
        case = "mixed"
    return space, case, kind


@torch.no_grad()
def matched_corruptions(
    model,
    tokens: Int[Tensor, "1 pos"],
    position: int,
    candidates: Iterable[str | int],
    *,
    heads: Sequence[tuple[int, int]] | str | None = "all",
    tol: float = 0.05,
    same_class: bool = True,
) -> list[int]:
    """Corruption tokens for ``tokens[0, position]`` that change nothing but the token.

    Keeps the candidates (strings or ids, single tokens) that
    * have the same :func:`token_class` as the original token (``same_class``), and
    * change the attention pattern of every head in ``heads`` by at most ``tol``
      (:func:`attention_shifts`; ``"all"``: every head of the model, ``None``:
      attention is not checked).
    Returns their ids, in the order given.
    """
    ids = [c if isinstance(c, int) else model.to_single_token(c) for c in candidates]
    original = model.to_string(tokens[0, position : position + 1])
    ids = [i for i in ids if i != int(tokens[0, position])]
    if same_class:
        want = token_class(original)
        ids = [i for i in ids if token_class(model.to_string(torch.tensor([i]))) == want]
    if not ids or heads is None:
        return ids
    shifts = attention_shifts(model, tokens, position, ids)  # [cand, layer, head]
    if heads == "all":
        worst = shifts.flatten(1).amax(-1)
    else:
        worst = torch.stack([shifts[:, layer, head] for layer, head in heads], -1).amax(-1)
    return [i for i, w in zip(ids, worst) if float(w) <= tol]


# ---------------------------------------------------------------------------
# Explorer
# ---------------------------------------------------------------------------


def direction_explorer(experiments: dict[str, dict[str, Tensor]], model):
    """Widget: pick an experiment and a view; see its head effects as a layer x head map.

    ``experiments``: ``{name: {"denoise": [layer, head], "noise": [layer, head]}}``
    (effects as returned by :func:`attention_effects_by_direction`, one metric
    component each; NaN = not patched). Views: either direction, or their
    difference ``denoise - noise`` (about +1 for an OR input, -1 for an AND
    input, 0 for a site that carries the effect alone or does nothing). Drawn
    once before it is returned, so it renders statically too. The box has
    ``box.update(experiment, view)`` (what a change of either control runs; the
    controls' values: an experiment's name, a view's label).
    """
    import ipywidgets as widgets

    from exercises_lib.plotting import imshow

    names = list(experiments)
    exp_w = widgets.Dropdown(options=names, value=names[0], description="experiment")
    views = ["denoise (clean → corrupt)", "noise (corrupt → clean)", "denoise − noise"]
    view_w = widgets.ToggleButtons(options=views, description="view")
    out = widgets.Output()

    def update(experiment: str, view: str) -> None:
        e = experiments[experiment]
        if view == views[0]:
            values = e["denoise"]
        elif view == views[1]:
            values = e["noise"]
        else:
            values = e["denoise"] - e["noise"]
        out.clear_output(wait=True)
        with out:
            imshow(values, model=model, zmin=-1, zmax=1, height=380,
                   title=f"{experiment}: {view} (blank rows: layers not patched)",
                   labels={"x": "head", "y": "layer", "color": "effect"})

    def on_change(_) -> None:
        update(exp_w.value, view_w.value)

    exp_w.observe(on_change, names="value")
    view_w.observe(on_change, names="value")
    on_change(None)
    box = widgets.VBox([exp_w, view_w, out])
    box.update = update
    return box
