"""Chapter 3: a polysemantic attention head (head 1.4 of attn-only-4l).

Jett, cmathw and StefanHex, "Polysemantic Attention Head in a 4-Layer
Transformer" (LessWrong, 2023) showed that one head of TransformerLens's
``attn-only-4l`` attends in several unrelated ways depending on the
destination token, and that each of these behaviours matters for the model's
predictions. This module has the chapter's tools:

* **labelling behaviour**: :func:`indentation_depths` (newline+indent tokens
  and their depth, for any tokenizer), :func:`induction_mask`,
  :func:`behaviour_masses` (attention mass on BOS, the previous token,
  induction sources and deeper-indented tokens) and :func:`classify_behaviour`
  (the visible rules that turn masses into a label); :func:`label_positions`
  runs them over a dataset and :func:`behaviour_table` summarises them
  overall and per destination token;
* **prompt templates** (:func:`make_prompt_sets`): induction, bigger
  indentation and previous token, each prompt with its correct next token,
  built with the model's own tokenizer;
* **BOS-ablation**: :func:`bos_ablation_hook` makes a head attend only to BOS
  at chosen destination positions; :func:`clean_vs_ablated` gives the table of
  top-1 accuracy and mean probability; :func:`ablation_sweep` ablates each
  position in turn, all positions in a few batched forward passes;
* figures and the explorer widget (:func:`head_explorer`).

Taught in: chapter 3 (a polysemantic attention head).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "BEHAVIOURS",
    "WRITEUP_ABLATION",
    "WRITEUP_KEY_POSITION_DROP",
    "indentation_depths",
    "induction_mask",
    "behaviour_masses",
    "classify_behaviour",
    "head_patterns",
    "label_positions",
    "behaviour_table",
    "token_groups",
    "head_behaviour_profile",
    "polysemanticity",
    "PromptSet",
    "prompt_and_answer",
    "induction_texts",
    "indentation_texts",
    "previous_texts",
    "make_prompt_sets",
    "destination_labels",
    "code_tokens",
    "show_token",
    "explain_position",
    "position_figure",
    "logits_at",
    "bos_ablation_hook",
    "clean_vs_ablated",
    "ablation_sweep",
    "ablation_by_head",
    "ablation_table",
    "plot_behaviour_distribution",
    "plot_head_profile",
    "plot_sweep",
    "head_explorer",
]

#: The labels, in the order of :func:`behaviour_table`'s columns.
BEHAVIOURS = ("previous", "induction", "bigger-indentation", "inactive", "unknown")

#: BOS-ablation of head 1.4 in attn-only-4l, measured by the write-up's authors
#: on the real model with their own prompts (top-1 accuracy, mean probability
#: of the correct token), clean and ablated.
WRITEUP_ABLATION = {
    "induction": {"clean_accuracy": 0.93, "ablated_accuracy": 0.25, "clean_prob": 0.28, "ablated_prob": 0.09},
    "indentation": {"clean_accuracy": 1.00, "ablated_accuracy": 0.04, "clean_prob": 0.55, "ablated_prob": 0.11},
    "previous": {"clean_accuracy": 1.00, "ablated_accuracy": 0.80, "clean_prob": 0.87, "ablated_prob": 0.40},
}

#: Drop of the correct token's probability when 1.4 is BOS-ablated at the key
#: (orange) position only, read from the write-up's line plots (real model).
WRITEUP_KEY_POSITION_DROP = {"induction": 0.20, "indentation": 0.40, "previous": 0.45}


# ---------------------------------------------------------------------------
# Labelling behaviour
# ---------------------------------------------------------------------------


def _width(whitespace: str) -> int:
    return whitespace.count(" ") + 4 * whitespace.count("\t")


def indentation_depths(str_tokens: Sequence[str]) -> list[int]:
    """Depth of every newline+indent token, -1 for every other token.

    A token is a *newline+indent token* when it is whitespace only and either
    contains a newline or follows one with only whitespace tokens in between.
    Its depth is the indentation written so far on the new line: the spaces
    after the last newline, up to and including this token (a tab counts 4).

    One tokenizer writes ``"\\n" + 7 spaces`` as one token (depth 7), GPT-2's
    as ``"\\n"`` (depth 0) then seven ``" "`` tokens (depths 1, ..., 7).
    """
    depths = []
    at_line_start = False
    depth = 0
    for s in str_tokens:
        if s and s.strip(" \t\r\n") == "":
            if "\n" in s:
                depth = _width(s.rsplit("\n", 1)[1])
                at_line_start = True
                depths.append(depth)
            elif at_line_start:
                depth += _width(s)
                depths.append(depth)
            else:
                depths.append(-1)
        else:
            at_line_start = False
            depths.append(-1)
    return depths


def induction_mask(tokens: Int[Tensor, "seq"]) -> Bool[Tensor, "dest src"]:
    """``mask[d, s]``: source ``s`` comes right after an earlier copy of token ``d``.

    True when ``1 <= s < d`` and ``tokens[s - 1] == tokens[d]``: an induction
    head at ``d`` attends to ``s`` and predicts ``tokens[s]``.
    """
    n = tokens.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool, device=tokens.device)
    mask[:, 1:] = tokens[None, :-1] == tokens[:, None]
    idx = torch.arange(n, device=tokens.device)
    return mask & (idx[None, :] < idx[:, None])


def behaviour_masses(
    pattern: Float[Tensor, "... dest src"],
    tokens: Int[Tensor, "seq"],
    depths: Int[Tensor, "seq"],
) -> Float[Tensor, "... dest 4"]:
    """Attention mass of each destination on four kinds of source.

    Columns: ``[bos, previous, induction, bigger_indentation]``:

    * bos: ``pattern[d, 0]``;
    * previous: ``pattern[d, d - 1]`` for ``d >= 2`` (for ``d = 1`` the
      previous token is BOS, counted as bos);
    * induction: the sum over sources of :func:`induction_mask`, without BOS
      and without ``d - 1``;
    * bigger indentation: when ``d`` is a newline+indent token
      (``depths[d] >= 0``), the sum over earlier sources with
      ``depths[s] > depths[d]``, without BOS, ``d - 1`` and induction sources.

    A source counts once, in the first kind it belongs to.
    """
    masks = _source_masks(tokens[None], depths[None])[0].to(pattern.device)  # [3, dest, src]
    pattern = pattern.float()
    kinds = [(pattern * masks[k]).sum(-1) for k in range(3)]
    return torch.stack([pattern[..., :, 0]] + kinds, dim=-1)


def _source_masks(tokens: Int[Tensor, "batch seq"], depths: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch 3 dest src"]:
    """Float masks of previous, induction and deeper-indentation sources (see :func:`behaviour_masses`)."""
    n = tokens.shape[1]
    idx = torch.arange(n, device=tokens.device)
    s, d = idx[None, None, :], idx[None, :, None]
    earlier = s < d
    not_bos = s >= 1
    is_prev = (s == d - 1) & not_bos
    same = torch.zeros(tokens.shape[0], n, n, dtype=torch.bool, device=tokens.device)
    same[:, :, 1:] = tokens[:, None, :-1] == tokens[:, :, None]
    ind = same & earlier & not_bos & ~is_prev
    dep = depths.to(tokens.device)
    deeper = (dep[:, :, None] >= 0) & (dep[:, None, :] > dep[:, :, None]) & earlier & not_bos & ~is_prev & ~ind
    return torch.stack([is_prev.expand_as(ind), ind, deeper], dim=1).float()


def _batched_masses(pattern: Float[Tensor, "batch ... dest src"], tokens, depths) -> Float[Tensor, "batch ... dest 4"]:
    """:func:`behaviour_masses` for a batch of sequences (``tokens``, ``depths``: [batch, seq])."""
    masks = _source_masks(tokens, depths).to(pattern.device)  # batch 3 dest src
    extra = pattern.ndim - 3
    masks = masks.reshape(masks.shape[:2] + (1,) * extra + masks.shape[2:])
    pattern = pattern.float()
    kinds = [(pattern * masks[:, k]).sum(-1) for k in range(3)]
    return torch.stack([pattern[..., :, 0]] + kinds, dim=-1)


def classify_behaviour(
    masses: Float[Tensor, "... 4"], bos_threshold: float = 0.5, min_mass: float = 0.3
) -> list:
    """Labels from :func:`behaviour_masses` rows, by visible rules.

    1. ``inactive`` if the mass on BOS is at least ``bos_threshold``;
    2. otherwise the largest of previous, induction, bigger-indentation, if
       that mass is at least ``min_mass``;
    3. otherwise ``unknown``.

    Returns a (nested) list of strings with the batch shape of ``masses``.
    """
    names = ("previous", "induction", "bigger-indentation")
    best_mass, best = masses[..., 1:].max(-1)
    flat_bos = masses[..., 0].reshape(-1).tolist()
    flat_mass = best_mass.reshape(-1).tolist()
    flat_best = best.reshape(-1).tolist()
    labels = [
        "inactive" if b >= bos_threshold else (names[k] if m >= min_mass else "unknown")
        for b, m, k in zip(flat_bos, flat_mass, flat_best)
    ]
    shape = masses.shape[:-1]
    for size in reversed(shape[1:]):
        labels = [labels[i : i + size] for i in range(0, len(labels), size)]
    return labels if shape else labels[0]


def _label_index(masses: Tensor, bos_threshold: float = 0.5, min_mass: float = 0.3) -> Tensor:
    """The rules of :func:`classify_behaviour` as indices into :data:`BEHAVIOURS`."""
    best_mass, best = masses[..., 1:].max(-1)
    label = torch.where(best_mass >= min_mass, best, torch.full_like(best, BEHAVIOURS.index("unknown")))
    return torch.where(masses[..., 0] >= bos_threshold, torch.full_like(best, BEHAVIOURS.index("inactive")), label)


def _without_unembedding(model) -> list:
    """A hook giving the unembedding only the last position (the patterns are what we want)."""
    return [("unembed.hook_in", lambda x, hook: x[:, -1:])]


def head_patterns(
    model, tokens: Int[Tensor, "batch seq"], layers: Sequence[int]
) -> dict[int, Float[Tensor, "batch head dest src"]]:
    """Attention patterns of the given layers, running the model no further than needed."""
    last = max(layers)
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in layers}
    with torch.no_grad():
        if last + 1 < model.cfg.n_layers:
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=last + 1)
        else:
            with model.hooks(fwd_hooks=_without_unembedding(model)):
                _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {layer: cache[f"blocks.{layer}.attn.hook_pattern"] for layer in layers}


def code_tokens(model, texts: Sequence[str], n_tokens: int = 256) -> Int[Tensor, "batch seq"]:
    """The first ``n_tokens`` tokens (BOS first) of each text that has that many."""
    rows = []
    for text in texts:
        toks = model.to_tokens(text)[0]
        if toks.shape[0] >= n_tokens:
            rows.append(toks[:n_tokens])
    if not rows:
        raise ValueError(f"no text has {n_tokens} tokens")
    return torch.stack(rows)


def _depths(model, tokens: Int[Tensor, "batch seq"]) -> Int[Tensor, "batch seq"]:
    return torch.tensor([indentation_depths(model.to_str_tokens(row)) for row in tokens])


def label_positions(model, tokens: Int[Tensor, "batch seq"], layer: int, head: int, **rules) -> dict:
    """Label every destination position (from 1) of head ``layer.head`` on ``tokens``.

    Returns ``{"labels": [str], "dest_tokens": [str], "masses": [N, 4],
    "where": [(row, dest)]}``; ``rules`` go to :func:`classify_behaviour`.
    """
    pattern = head_patterns(model, tokens, [layer])[layer][:, head]  # batch dest src
    masses = _batched_masses(pattern, tokens, _depths(model, tokens))[:, 1:]  # skip dest 0 (BOS)
    index = _label_index(masses, **rules).reshape(-1).tolist()
    dest_tokens = [t for row in tokens for t in model.to_str_tokens(row[1:])]
    where = [(row, d) for row in range(tokens.shape[0]) for d in range(1, tokens.shape[1])]
    return {"labels": [BEHAVIOURS[i] for i in index], "dest_tokens": dest_tokens, "masses": masses.reshape(-1, 4), "where": where}


def behaviour_table(
    labels: Sequence[str], dest_tokens: Sequence[str], groups: Sequence[str | None]
) -> Float[Tensor, "group behaviour"]:
    """Fraction of positions with each label (columns in :data:`BEHAVIOURS` order).

    Row ``g`` counts the positions whose destination token is ``groups[g]``
    (``None``: all positions); each row sums to 1 (a group that never occurs
    gets a row of zeros).
    """
    table = torch.zeros(len(groups), len(BEHAVIOURS))
    col = {b: i for i, b in enumerate(BEHAVIOURS)}
    for g, group in enumerate(groups):
        for label, tok in zip(labels, dest_tokens):
            if group is None or tok == group:
                table[g, col[label]] += 1
    return table / table.sum(-1, keepdim=True).clamp_min(1)


def token_groups(
    dest_tokens: Sequence[str], wanted: Sequence[str] = (), n_indent: int = 3, n_other: int = 3, min_count: int = 10
) -> list[str]:
    """Destination tokens worth a row of the distribution figure.

    The ``n_indent`` most frequent newline+indent tokens, the tokens of
    ``wanted`` that occur at least ``min_count`` times, and the ``n_other``
    most frequent other tokens (at least ``min_count`` times).
    """
    from collections import Counter

    counts = Counter(dest_tokens)
    indent = [t for t, _ in counts.most_common() if t.strip(" \t\r\n") == "" and ("\n" in t or " " in t)]
    chosen = indent[:n_indent]
    chosen += [t for t in wanted if counts[t] >= min_count and t not in chosen]
    others = [t for t, c in counts.most_common() if c >= min_count and t not in chosen and t not in indent]
    return chosen + others[:n_other]


def head_behaviour_profile(
    model, tokens: Int[Tensor, "batch seq"], **rules
) -> Float[Tensor, "layer head behaviour"]:
    """Fraction of destination positions (from 1) with each label, for every head."""
    L = model.cfg.n_layers
    patterns = head_patterns(model, tokens, list(range(L)))
    stacked = torch.stack([patterns[layer] for layer in range(L)], dim=1)  # batch layer head dest src
    masses = _batched_masses(stacked, tokens, _depths(model, tokens))[..., 1:, :]
    index = _label_index(masses, **rules)  # batch layer head dest
    counts = torch.nn.functional.one_hot(index, len(BEHAVIOURS)).sum((0, 3)).float()
    return (counts / counts.sum(-1, keepdim=True)).cpu()


def polysemanticity(profile: Float[Tensor, "... behaviour"], share: float = 0.1) -> Int[Tensor, "..."]:
    """Number of *active* behaviours (previous, induction, bigger-indentation)
    that each label at least ``share`` of a head's positions."""
    return (profile[..., :3] >= share).sum(-1)


# ---------------------------------------------------------------------------
# Prompt templates
# ---------------------------------------------------------------------------


@dataclass
class PromptSet:
    """Prompts of one template, all of the same length, each with its correct next token.

    ``tokens[i, -1]`` is the destination (orange) position; ``answers[i]`` the
    correct next token; ``texts[i]`` the prompt followed by its answer.
    """

    name: str
    tokens: Tensor
    answers: Tensor
    texts: list
    description: str

    def __len__(self) -> int:
        return self.tokens.shape[0]


def prompt_and_answer(
    model, texts: Sequence[str]
) -> tuple[Int[Tensor, "n seq"], Int[Tensor, "n"]]:
    """Split texts that end with their answer into prompt tokens and answer tokens.

    Each text is tokenized with BOS prepended (``model.to_tokens``); its last
    token is the answer, the tokens before it the prompt. All texts must have
    the same number of tokens (raise ``ValueError`` otherwise).
    """
    rows = [model.to_tokens(t)[0] for t in texts]
    if len({r.shape[0] for r in rows}) != 1:
        raise ValueError("the texts have different numbers of tokens")
    tokens = torch.stack(rows)
    return tokens[:, :-1], tokens[:, -1]


#: Identifier words for the blue (random) tokens of the templates.
NAMES = (
    "data value name size count items result key path node index total config buffer parent "
    "child width height text line token model state cache offset limit source target handle "
    "query record entry frame event stream label score level mode field table user client "
    "server message request response options prefix suffix number length weight color shape "
    "point start end block output input queue stack flag rate step scale"
).split()
#: The two halves of the class names of the induction and previous-token templates.
CLASS_HEADS = "Data File Node Task User Event Stream Token Query Image Block Table Graph Field Socket Packet Order".split()
CLASS_TAILS = "Manager Handler Builder Parser Loader Writer Reader Client Factory Helper Router Filter Adapter Monitor Visitor".split()


def _one_token(model, text: str) -> bool:
    return len(model.tokenizer.encode(text, add_special_tokens=False)) == 1


MODULES = "os sys re json math time random copy string types".split()


def _preamble(modules: list[str], rng: random.Random) -> str:
    """Two import lines, so the template's code does not start at the first positions."""
    a, b = rng.sample(modules, 2)
    return f"import {a}\nimport {b}\n\n\n"


def _vocabulary(model) -> tuple[list[str], list[str]]:
    """Names that are one token with and without a leading space; one-token module names."""
    names = [w for w in NAMES if _one_token(model, w) and _one_token(model, " " + w)]
    modules = [m for m in MODULES if _one_token(model, " " + m)]
    return names, modules


def _class_names(model, rng: random.Random) -> list[tuple[str, str]]:
    """(head, tail) pairs whose name ``" " + head + tail`` is exactly the tokens ``" " + head``, ``tail``."""
    pairs = []
    for a in CLASS_HEADS:
        for b in CLASS_TAILS:
            enc = model.tokenizer.encode(" " + a + b, add_special_tokens=False)
            if len(enc) == 2 and _one_token(model, " " + a) and _one_token(model, b):
                if enc == model.tokenizer.encode(" " + a, add_special_tokens=False) + model.tokenizer.encode(b, add_special_tokens=False):
                    pairs.append((a, b))
    rng.shuffle(pairs)
    return pairs


def _equal_length(model, texts: list[str], n: int, check: Callable[[list[str]], bool]) -> list[str]:
    """The first ``n`` texts of the most common token length whose tokens pass ``check``."""
    from collections import Counter

    str_toks = [model.to_str_tokens(t) for t in texts]
    good = [(t, s) for t, s in zip(texts, str_toks) if check(s)]
    if not good:
        raise ValueError("no text passed the template's checks with this tokenizer")
    length = Counter(len(s) for _, s in good).most_common(1)[0][0]
    kept = [t for t, s in good if len(s) == length]
    if len(kept) < n:
        raise ValueError(f"only {len(kept)} prompts of equal length; asked for {n}")
    return kept[:n]


def induction_texts(model, n: int = 120, n_pairs: int = 3, seed: int = 0) -> list[str]:
    """Induction prompts: a two-token class name, used again at the end.

    ``class {A}{B}:`` is defined with a method, then a later line starts
    ``{x} = {A}``: the destination is ``{A}`` and the answer ``{B}``, the
    token after the earlier copy of ``{A}``. ``n_pairs`` class names; the
    method, attribute and variable names vary. (The indentation does not:
    with GPT-2's tokenizer each space is a token, and the prompts of a set
    must have the same length.)
    """
    rng = random.Random(seed)
    names, modules = _vocabulary(model)
    pairs = _class_names(model, rng)[:n_pairs]
    texts = []
    for _ in range(6 * n):
        a, b = rng.choice(pairs)
        method = rng.choice(names)
        attr, var = rng.sample(names, 2)
        ind = "    "
        texts.append(
            _preamble(modules, rng)
            + f"class {a}{b}:\n{ind}def {method}(self):\n{ind}{ind}return self.{attr}\n\n\n{var} = {a}{b}"
        )

    def check(s: list[str]) -> bool:  # answer = token after the earlier copy of the destination
        dest = s[-2]
        copies = [i for i in range(1, len(s) - 2) if s[i] == dest]
        return len(copies) == 1 and s[copies[0] + 1] == s[-1]

    return _equal_length(model, texts, n, check)


def indentation_texts(model, n: int = 50, seed: int = 0) -> list[str]:
    """Bigger-indentation prompts: a call whose arguments are on deeper lines.

    ``{r} = {g}(`` then two argument lines, indented one level deeper, then
    the line that closes the call: the destination is the newline+indent
    token of that line, the answer its ``)``.
    """
    rng = random.Random(seed)
    names, modules = _vocabulary(model)
    texts = []
    for _ in range(4 * n):
        f = rng.choice(names)
        a, b, r, g = rng.sample(names, 4)
        texts.append(_preamble(modules, rng) + f"def {f}({a}, {b}):\n    {r} = {g}(\n        {a},\n        {b},\n    )")

    def check(s: list[str]) -> bool:
        return s[-1].strip() == ")" and indentation_depths(s)[-2] >= 0

    return _equal_length(model, texts, n, check)


def previous_texts(model, n: int = 50, seed: int = 0) -> list[str]:
    """Previous-token prompts: the bracket of ``def __init__(``, answer ``self``.

    A class ``{A}{B}`` with one class attribute ``{attr} = {val}``, then
    ``def __init__(``: the destination is ``(``, whose previous token says
    which function is being defined; the answer is ``self``. The class line
    has no brackets, so ``(`` has no earlier copy (no induction).
    """
    rng = random.Random(seed)
    names, modules = _vocabulary(model)
    pairs = _class_names(model, rng)
    texts = []
    for _ in range(4 * n):
        a, b = rng.choice(pairs)
        attr = rng.choice(names)
        val = rng.choice(names)
        texts.append(_preamble(modules, rng) + f"class {a}{b}:\n    {attr} = {val}\n\n    def __init__(self")

    def check(s: list[str]) -> bool:
        return s[-1].strip() == "self" and s[-2].strip() == "(" and s.count(s[-2]) == 1

    return _equal_length(model, texts, n, check)


def destination_labels(model, prompts: "PromptSet", layer: int, head: int, **rules) -> dict[str, float]:
    """Share of prompts with each label of ``layer.head`` at the destination (last) position."""
    pattern = head_patterns(model, prompts.tokens, [layer])[layer][:, head]  # prompt dest src
    masses = _batched_masses(pattern, prompts.tokens, _depths(model, prompts.tokens))[:, -1]
    labels = [BEHAVIOURS[i] for i in _label_index(masses, **rules).tolist()]
    return {b: labels.count(b) / len(labels) for b in BEHAVIOURS if labels.count(b)}


def make_prompt_sets(model, sizes: dict | None = None, seed: int = 0) -> dict[str, PromptSet]:
    """The three templates (sizes as in the write-up: 120, 50, 50)."""
    sizes = {"induction": 120, "indentation": 50, "previous": 50, **(sizes or {})}
    makers = {
        "induction": (induction_texts, "token after an earlier copy of the destination token"),
        "indentation": (indentation_texts, "newline+indent token closing a call whose arguments are indented deeper"),
        "previous": (previous_texts, "bracket after __init__, answer self"),
    }
    sets = {}
    for name, (make, description) in makers.items():
        texts = make(model, n=sizes[name], seed=seed)
        tokens, answers = prompt_and_answer(model, texts)
        sets[name] = PromptSet(name, tokens, answers, texts, description)
    return sets


# ---------------------------------------------------------------------------
# BOS-ablation
# ---------------------------------------------------------------------------


def logits_at(
    model, tokens: Int[Tensor, "batch seq"], positions: Int[Tensor, "batch"] | int = -1, fwd_hooks: Sequence = ()
) -> Float[Tensor, "batch vocab"]:
    """Logits at one position per sequence (``positions[i]`` of row ``i``).

    A hook hands the unembedding only those positions: the model runs as
    usual, but the (large) unembedding is applied to one row per sequence.
    """
    batch, seq = tokens.shape
    pos = torch.as_tensor(positions, device=tokens.device).expand(batch) % seq
    rows = torch.arange(batch, device=tokens.device)

    def gather(x, hook):
        return x[rows, pos.to(x.device)][:, None]

    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + [("unembed.hook_in", gather)])
    return out[:, 0]


def bos_ablation_hook(
    pattern: Float[Tensor, "batch head dest src"],
    hook,
    head: int,
    dest_positions: Int[Tensor, "batch"] | int,
) -> Float[Tensor, "batch head dest src"]:
    """Make head ``head`` attend only to BOS at ``dest_positions`` (one per sequence).

    For each batch element ``b``, the row ``pattern[b, head, dest_positions[b]]``
    becomes one-hot on source 0; every other row, and every other head, is
    left alone. (An int applies to all sequences.)
    """
    batch = pattern.shape[0]
    pos = torch.as_tensor(dest_positions, device=pattern.device).expand(batch)
    rows = torch.arange(batch, device=pattern.device)
    one_hot = torch.zeros_like(pattern[0, 0, 0])
    one_hot[0] = 1.0
    pattern[rows, head, pos] = one_hot
    return pattern


def _ablated_hooks(layer: int, head: int, dest_positions) -> list:
    return [(f"blocks.{layer}.attn.hook_pattern", lambda p, hook: bos_ablation_hook(p, hook, head, dest_positions))]


def _answer_probs(logits: Tensor, answers: Tensor) -> tuple[Tensor, Tensor]:
    probs = logits.float().softmax(-1)
    p = probs[torch.arange(len(answers)), answers.to(probs.device)]
    correct = logits.argmax(-1) == answers.to(logits.device)
    return correct.float(), p


def clean_vs_ablated(
    model, tokens: Int[Tensor, "n seq"], answers: Int[Tensor, "n"], layer: int, head: int
) -> Float[Tensor, "2 2"]:
    """Top-1 accuracy and mean probability of the answer, clean and BOS-ablated.

    Rows: ``[clean, ablated]``; columns: ``[accuracy, mean probability]``.
    The prediction is read at the last position; ablated = head ``layer.head``
    attends only to BOS at that (destination) position.
    """
    dest = tokens.shape[1] - 1
    out = torch.zeros(2, 2)
    for i, hooks in enumerate([[], _ablated_hooks(layer, head, dest)]):
        correct, p = _answer_probs(logits_at(model, tokens, dest, hooks), answers)
        out[i, 0], out[i, 1] = correct.mean(), p.mean()
    return out


def ablation_sweep(
    model,
    tokens: Int[Tensor, "n seq"],
    answers: Int[Tensor, "n"],
    layer: int,
    head: int,
    batch_size: int = 512,
) -> Float[Tensor, "seq"]:
    """Mean drop of the answer's probability when ``layer.head`` is BOS-ablated at one position.

    ``drop[j] = mean_i (p_clean_i - p_ablated_at_j_i)``, the probability read
    at the last position. Batched: the prompts are repeated once per position
    and copy ``(i, j)`` is ablated at its own position ``j``, so the whole
    sweep takes a few forward passes.
    """
    n, seq = tokens.shape
    _, p_clean = _answer_probs(logits_at(model, tokens, seq - 1), answers)
    big = tokens.repeat_interleave(seq, dim=0)  # row i * seq + j: prompt i, ablated at j
    where = torch.arange(seq, device=tokens.device).repeat(n)
    answers_big = answers.repeat_interleave(seq)
    p_abl = []
    for start in range(0, big.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        logits = logits_at(model, big[sl], seq - 1, _ablated_hooks(layer, head, where[sl]))
        p_abl.append(_answer_probs(logits, answers_big[sl])[1])
    p_abl = torch.cat(p_abl).reshape(n, seq)
    return (p_clean[:, None].cpu() - p_abl.cpu()).mean(0)


def ablation_by_head(model, prompts: PromptSet, layers: Sequence[int] | None = None) -> Float[Tensor, "layer head"]:
    """Drop of the mean answer probability when each head is BOS-ablated at the destination.

    One forward pass per layer: the prompts are repeated once per head, and
    copy ``k`` has head ``k`` ablated.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    H = model.cfg.n_heads
    n, seq = prompts.tokens.shape
    dest = seq - 1
    _, p = _answer_probs(logits_at(model, prompts.tokens, dest), prompts.answers)
    big, answers = prompts.tokens.repeat(H, 1), prompts.answers.repeat(H)
    rows = torch.arange(H * n, device=big.device)
    heads = rows // n

    def hook(pattern, hook):
        one_hot = torch.zeros_like(pattern[0, 0, 0])
        one_hot[0] = 1.0
        pattern[rows, heads, dest] = one_hot
        return pattern

    drops = torch.zeros(model.cfg.n_layers, H)
    for layer in layers:
        logits = logits_at(model, big, dest, [(f"blocks.{layer}.attn.hook_pattern", hook)])
        p_abl = _answer_probs(logits, answers)[1].reshape(H, n).mean(-1).cpu()
        drops[layer] = p.mean().cpu() - p_abl
    return drops


def ablation_table(ours: dict[str, Tensor], model) -> str:
    """Text table of clean vs ablated results, the write-up's (real model) beside ours."""
    lines = [
        f"{'':<21} {'top-1 accuracy':^26} {'mean p(correct)':^26}",
        f"{'template':<12} {'run':<8} {'ours':>12} {'write-up':>13} {'ours':>12} {'write-up':>13}",
    ]
    for name, table in ours.items():
        w = WRITEUP_ABLATION.get(name, {})
        for i, run in enumerate(("clean", "ablated")):
            wa, wp = w.get(f"{run}_accuracy"), w.get(f"{run}_prob")
            lines.append(
                f"{name if i == 0 else '':<12} {run:<8} {float(table[i, 0]):>12.0%} "
                f"{'' if wa is None else f'{wa:.0%}':>13} {float(table[i, 1]):>12.2f} {'' if wp is None else f'{wp:.2f}':>13}"
            )
    lines.append(f"ours: {model.display_name}; write-up: attn-only-4l (real), measured by its authors on their own prompts.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Figures and the explorer
# ---------------------------------------------------------------------------

_COLOURS = {
    "previous": "#1f77b4",
    "induction": "#d62728",
    "bigger-indentation": "#2ca02c",
    "inactive": "#7f7f7f",
    "unknown": "#ff7f0e",
}


def show_token(tok: str) -> str:
    """A readable name for a token: newlines as ⏎, spaces as ·."""
    return "'" + tok.replace("\n", "⏎").replace(" ", "·").replace("\t", "⇥") + "'"


def plot_behaviour_distribution(table: Tensor, groups: Sequence[str | None], model, counts: Sequence[int] | None = None, title: str = "", show: bool = True):
    """Stacked bars: the share of each behaviour, overall and per destination token."""
    import plotly.graph_objects as go

    from exercises_lib.plotting import figure_title, to_numpy

    names = ["all" if g is None else show_token(g) for g in groups]
    if counts is not None:
        names = [f"{n} ({c})" for n, c in zip(names, counts)]
    arr = to_numpy(table)
    fig = go.Figure()
    for k, b in enumerate(BEHAVIOURS):
        fig.add_trace(go.Bar(name=b, x=names, y=arr[:, k], marker_color=_COLOURS[b]))
    fig.update_layout(
        barmode="stack", yaxis_title="share of destination positions", xaxis_title="destination token (count)",
        title=figure_title(title or "Behaviour of the head, overall and per destination token", model), margin=dict(t=60),
    )
    if show:
        fig.show()
        return None
    return fig


def plot_head_profile(profile: Tensor, model, title: str = "", show: bool = True):
    """Heatmaps (one per behaviour) of the share of positions each head spends in it."""
    from exercises_lib.plotting import imshow

    return imshow(
        profile.permute(2, 0, 1), model=model, facet_col=0, facet_labels=list(BEHAVIOURS), centred=False,
        color_continuous_scale="Blues", zmin=0, zmax=1, labels={"x": "head", "y": "layer", "color": "share"},
        title=title or "Share of positions with each behaviour, per head", show=show,
    )


def plot_sweep(drops: Tensor, str_tokens: Sequence[str], model, template: str, show: bool = True):
    """The per-position ablation sweep of one template, over the tokens of its first prompt."""
    from exercises_lib.plotting import line

    xs = [f"{i}: {show_token(t)}" for i, t in enumerate(str_tokens)]
    return line(
        drops, x=xs, model=model, labels={"x": "position BOS-ablated (tokens of the first prompt)", "y": "drop of p(correct)"},
        title=f"{template}: drop of the correct token's probability, ablating one position at a time", show=show,
    )


DEFAULT_CODE = '''class DataLoader:
    def __init__(self, path, size):
        self.path = path
        self.size = size

    def read(self):
        with open(self.path) as f:
            return f.read(self.size)

loader = DataLoader'''


def explain_position(model, code: str, position: int, layer: int, head: int, **rules) -> dict:
    """Attention of ``layer.head`` from one position of ``code``, with its masses and label."""
    tokens = model.to_tokens(code)[0]
    position = max(1, min(position, tokens.shape[0] - 1))
    pattern = head_patterns(model, tokens[None], [layer])[layer][0, head]
    str_toks = model.to_str_tokens(tokens)
    depths = torch.tensor(indentation_depths(str_toks))
    masses = behaviour_masses(pattern, tokens, depths)[position]
    return {
        "str_tokens": str_toks, "position": position, "row": pattern[position, : position + 1],
        "masses": masses, "label": classify_behaviour(masses, **rules),
    }


def position_figure(model, code: str, position: int, layer: int, head: int):
    """Bar chart of ``layer.head``'s attention from one position of ``code``, titled with its label."""
    import plotly.graph_objects as go

    from exercises_lib.plotting import figure_title

    info = explain_position(model, code, position, layer, head)
    p, toks = info["position"], info["str_tokens"]
    m = info["masses"].tolist()
    fig = go.Figure(go.Bar(x=[f"{i}: {show_token(t)}" for i, t in enumerate(toks[: p + 1])], y=info["row"].tolist()))
    fig.update_layout(
        title=figure_title(
            f"{layer}.{head} from position {p} {show_token(toks[p])}: <b>{info['label']}</b> "
            f"(BOS {m[0]:.2f}, previous {m[1]:.2f}, induction {m[2]:.2f}, deeper indent {m[3]:.2f})", model,
        ),
        yaxis_title="attention", yaxis_range=[0, 1], xaxis_title="source token", height=400, margin=dict(t=60),
    )
    return fig


def head_explorer(model, layer: int, head: int, code: str = DEFAULT_CODE, position: int | None = None):
    """Widget: type code, pick a destination position, see the head's attention and its label.

    Returns the ipywidgets box; its figure is drawn once before it is
    returned, so it renders statically too (``box.figure(code, position)``
    gives the figure without widgets).
    """
    import ipywidgets as widgets
    from IPython.display import display

    n0 = model.to_tokens(code).shape[1]
    text = widgets.Textarea(value=code, layout=widgets.Layout(width="95%", height="170px"), description="code")
    pos = widgets.IntSlider(value=n0 - 1 if position is None else position, min=1, max=max(1, n0 - 1), description="position")
    out = widgets.Output()

    def figure(code: str, position: int):
        return position_figure(model, code, position, layer, head)

    def update(code: str, position: int) -> None:
        pos.max = max(1, model.to_tokens(code).shape[1] - 1)
        out.clear_output(wait=True)
        with out:
            display(figure(code, min(position, pos.max)))

    box = widgets.VBox([text, pos, out])
    box.figure = figure
    widgets.interactive_output(update, {"code": text, "position": pos})
    update(text.value, pos.value)
    return box
