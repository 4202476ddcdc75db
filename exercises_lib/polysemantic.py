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
* **prompt templates** live in :mod:`exercises_lib.code_prompts`
  (:func:`~exercises_lib.code_prompts.make_prompt_sets`: induction, bigger
  indentation and previous token, each prompt with its correct next token);
  :func:`destination_labels` labels the head at their destinations;
* **BOS-ablation**: :func:`bos_ablation_hook` makes a head attend only to BOS
  at chosen destination positions; :func:`clean_vs_ablated` gives the table of
  top-1 accuracy and mean probability; :func:`ablation_sweep` ablates each
  position in turn, all positions in a few batched forward passes;
* :func:`ablation_pattern` and :func:`sweep_summary` state what a table or a
  sweep shows (the destination found by measurement, not assumed), and
  :func:`summary_rows` the chapter's summary table;
* figures and the explorer widget: :mod:`exercises_lib.polysemantic_plots`.

Taught in: chapter 3 (a polysemantic attention head).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

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
    "TemplatePrompts",
    "prompt_and_answer",
    "destination_labels",
    "code_tokens",
    "logits_at",
    "bos_ablation_hook",
    "clean_vs_ablated",
    "ablation_sweep",
    "ablation_by_head",
    "ablation_table",
    "ablation_pattern",
    "sweep_summary",
    "summary_rows",
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


def indentation_depths(str_tokens: Sequence[str]) -> list[int]:
    """Depth of every newline+indent token, -1 for every other token.

    A token is a *newline+indent token* when it is whitespace only and either
    contains a newline or follows one with only whitespace tokens in between.
    Its depth is the indentation written so far on the new line: the spaces
    after the last newline, up to and including this token (a tab counts 4).

    One tokenizer writes ``"\\n" + 7 spaces`` as one token (depth 7), GPT-2's
    as ``"\\n"`` (depth 0) then seven ``" "`` tokens (depths 1, ..., 7).
    """
    # SOLUTION: track whether we are still in a line's leading whitespace
    depths = []
    at_line_start, depth = False, 0
    for s in str_tokens:
        if s and s.strip(" \t\r\n") == "":
            if "\n" in s:
                tail = s.rsplit("\n", 1)[1]
                depth = tail.count(" ") + 4 * tail.count("\t")
                at_line_start = True
                depths.append(depth)
            elif at_line_start:
                depth += s.count(" ") + 4 * s.count("\t")
                depths.append(depth)
            else:
                depths.append(-1)
        else:
            at_line_start = False
            depths.append(-1)
    return depths
    # END SOLUTION


def induction_mask(tokens: Int[Tensor, "seq"]) -> Bool[Tensor, "dest src"]:
    """``mask[d, s]``: source ``s`` comes right after an earlier copy of token ``d``.

    True when ``1 <= s < d`` and ``tokens[s - 1] == tokens[d]``: an induction
    head at ``d`` attends to ``s`` and predicts ``tokens[s]``.
    """
    # SOLUTION: compare tokens[s - 1] with tokens[d], then keep s < d
    n = tokens.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool, device=tokens.device)
    mask[:, 1:] = tokens[None, :-1] == tokens[:, None]
    idx = torch.arange(n, device=tokens.device)
    return mask & (idx[None, :] < idx[:, None])
    # END SOLUTION


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
    # SOLUTION: four [dest, src] masks, each source in the first kind it belongs to
    n = tokens.shape[0]
    dev = pattern.device
    s = torch.arange(n, device=dev)[None, :]
    d = torch.arange(n, device=dev)[:, None]
    is_prev = (s == d - 1) & (s >= 1)
    ind = induction_mask(tokens.to(dev)) & ~is_prev & (s >= 1)
    dep = depths.to(dev)
    deeper = (dep[:, None] >= 0) & (dep[None, :] > dep[:, None]) & (s < d) & (s >= 1) & ~is_prev & ~ind
    pattern = pattern.float()
    masses = [pattern[..., :, 0]] + [(pattern * m.float()).sum(-1) for m in (is_prev, ind, deeper)]
    return torch.stack(masses, dim=-1)
    # END SOLUTION


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
    # SOLUTION: inactive first, then the largest behaviour above min_mass
    names = ("previous", "induction", "bigger-indentation")
    best_mass, best = masses[..., 1:].max(-1)
    flat = zip(masses[..., 0].reshape(-1).tolist(), best_mass.reshape(-1).tolist(), best.reshape(-1).tolist())
    labels = ["inactive" if b >= bos_threshold else (names[k] if m >= min_mass else "unknown") for b, m, k in flat]
    shape = masses.shape[:-1]
    for size in reversed(shape[1:]):
        labels = [labels[i : i + size] for i in range(0, len(labels), size)]
    return labels if shape else labels[0]
    # END SOLUTION


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
    # SOLUTION: count labels per group, then normalise each row
    table = torch.zeros(len(groups), len(BEHAVIOURS))
    col = {b: i for i, b in enumerate(BEHAVIOURS)}
    for g, group in enumerate(groups):
        for label, tok in zip(labels, dest_tokens):
            if group is None or tok == group:
                table[g, col[label]] += 1
    return table / table.sum(-1, keepdim=True).clamp_min(1)
    # END SOLUTION


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
# Prompts with answers (the templates themselves: exercises_lib.code_prompts)
# ---------------------------------------------------------------------------


@dataclass
class TemplatePrompts:
    """Prompts of one template, all of the same length, each with its correct next token.

    ``tokens[i, -1]`` is the destination (orange) position; ``answers[i]`` the
    correct next token; ``texts[i]`` the prompt followed by its answer.
    (Chapter 4's clean/corrupted prompt pairs are :class:`exercises_lib.duality.PromptSet`.)
    """

    name: str
    tokens: Tensor
    answers: Tensor
    texts: list
    description: str

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def first(self, n: int) -> "TemplatePrompts":
        """The first ``n`` prompts."""
        return TemplatePrompts(self.name, self.tokens[:n], self.answers[:n], self.texts[:n], self.description)


def prompt_and_answer(
    model, texts: Sequence[str]
) -> tuple[Int[Tensor, "n seq"], Int[Tensor, "n"]]:
    """Split texts that end with their answer into prompt tokens and answer tokens.

    Each text is tokenized with BOS prepended (``model.to_tokens``); its last
    token is the answer, the tokens before it the prompt. All texts must have
    the same number of tokens (raise ``ValueError`` otherwise).
    """
    # SOLUTION: tokenize each text with BOS, split off the last token
    rows = [model.to_tokens(t)[0] for t in texts]
    if len({r.shape[0] for r in rows}) != 1:
        raise ValueError("the texts have different numbers of tokens")
    tokens = torch.stack(rows)
    return tokens[:, :-1], tokens[:, -1]
    # END SOLUTION


def destination_labels(model, prompts: TemplatePrompts, layer: int, head: int, **rules) -> dict[str, float]:
    """Share of prompts with each label of ``layer.head`` at the destination (last) position."""
    pattern = head_patterns(model, prompts.tokens, [layer])[layer][:, head]  # prompt dest src
    masses = _batched_masses(pattern, prompts.tokens, _depths(model, prompts.tokens))[:, -1]
    labels = [BEHAVIOURS[i] for i in _label_index(masses, **rules).tolist()]
    return {b: labels.count(b) / len(labels) for b in BEHAVIOURS if labels.count(b)}


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
    # SOLUTION: replace row dest_positions[b] of head `head` by one-hot on BOS
    batch = pattern.shape[0]
    pos = torch.as_tensor(dest_positions, device=pattern.device).expand(batch)
    rows = torch.arange(batch, device=pattern.device)
    one_hot = torch.zeros_like(pattern[0, 0, 0])
    one_hot[0] = 1.0
    pattern[rows, head, pos] = one_hot
    return pattern
    # END SOLUTION


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
    The prediction is read at the last position (:func:`logits_at`); ablated =
    head ``layer.head`` attends only to BOS at that (destination) position.
    """
    # SOLUTION: logits at the last position without and with the hook
    dest = tokens.shape[1] - 1
    hook = functools.partial(bos_ablation_hook, head=head, dest_positions=dest)
    out = torch.zeros(2, 2)
    for i, hooks in enumerate([[], [(f"blocks.{layer}.attn.hook_pattern", hook)]]):
        logits = logits_at(model, tokens, dest, hooks)
        p = logits.float().softmax(-1)[torch.arange(len(answers)), answers.to(logits.device)]
        out[i, 0] = (logits.argmax(-1) == answers.to(logits.device)).float().mean()
        out[i, 1] = p.mean()
    return out
    # END SOLUTION


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
    sweep takes a few forward passes of ``batch_size`` rows.
    """
    # SOLUTION: one copy of each prompt per position, each ablated at its own position
    n, seq = tokens.shape
    rows = torch.arange(n)
    p_clean = logits_at(model, tokens, seq - 1).float().softmax(-1)[rows, answers.to(tokens.device)]
    big = tokens.repeat_interleave(seq, dim=0)  # row i * seq + j: prompt i, ablated at j
    where = torch.arange(seq, device=tokens.device).repeat(n)
    answers_big = answers.repeat_interleave(seq).to(tokens.device)
    p_abl = []
    for start in range(0, n * seq, batch_size):
        sl = slice(start, start + batch_size)
        hook = functools.partial(bos_ablation_hook, head=head, dest_positions=where[sl])
        logits = logits_at(model, big[sl], seq - 1, [(f"blocks.{layer}.attn.hook_pattern", hook)])
        p_abl.append(logits.float().softmax(-1)[torch.arange(logits.shape[0]), answers_big[sl]])
    p_abl = torch.cat(p_abl).reshape(n, seq)
    return (p_clean[:, None] - p_abl).mean(0).cpu()
    # END SOLUTION


def ablation_by_head(model, prompts: TemplatePrompts, layers: Sequence[int] | None = None) -> Float[Tensor, "layer head"]:
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

    from exercises_lib.progress import progress

    drops = torch.zeros(model.cfg.n_layers, H)
    for layer in progress(layers, "ablating heads", unit="layer", show=len(layers) > 1):
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



def ablation_pattern(table: Float[Tensor, "2 2"]) -> dict[str, bool]:
    """What the write-up's tables show, tested on one ``[clean, ablated] x [accuracy, p]`` table.

    * ``clean_accurate``: the clean model gets at least 80% right (write-up: 93%, 100%, 100%);
    * ``costly``: BOS-ablation costs at least 0.15 of the mean probability of the correct
      token and at least 40% of it (write-up: 0.28 to 0.09, 0.55 to 0.11, 0.87 to 0.40);
    * ``no_gain``: the ablated accuracy is not higher than the clean one.
    """
    (acc, p), (acc_abl, p_abl) = table.tolist()
    return {"clean_accurate": acc >= 0.8, "costly": p - p_abl >= 0.15 and p_abl <= 0.6 * p, "no_gain": acc_abl <= acc}


def sweep_summary(drops: Float[Tensor, "seq"]) -> dict:
    """Where an :func:`ablation_sweep` drops most, found from the drops alone.

    ``position``: the position with the largest drop; ``drop``: that drop;
    ``largest_elsewhere``: the largest ``|drop|`` at any other position.
    """
    k = int(drops.argmax())
    others = torch.cat([drops[:k], drops[k + 1 :]])
    return {"position": k, "drop": float(drops[k]), "largest_elsewhere": float(others.abs().max()) if len(others) else 0.0}


def summary_rows(model, overall: dict, template_labels: dict, ablation: dict, sweeps: dict) -> list[tuple]:
    """Rows of chapter 3's summary table: (what, write-up, ours, how we know).

    ``how`` is ``"real"`` on the real model. On the stand-in, rows saying
    *which* behaviour 1.4 shows are ``"planted"`` (each behaviour was built
    in), rows of accuracies, probabilities and drops ``"stand-in"`` (their
    sizes are measured, not aimed at the write-up's).
    """
    how = "planted" if model.is_standin else "real"
    measured = "stand-in" if model.is_standin else "real"
    active = ", ".join(f"{b} {overall[b]:.0%}" for b in BEHAVIOURS if b != "unknown" and overall.get(b, 0) >= 0.10)
    rows = [("behaviours of 1.4 over code (>= 10% of positions)", "several (Figure 1, no numbers)", active or "none", how)]
    expected = {"induction": "induction", "indentation": "bigger-indentation", "previous": "previous"}
    for name, table in ablation.items():
        w = WRITEUP_ABLATION[name]
        (acc, p), (acc_abl, p_abl) = table.tolist()
        share = template_labels[name].get(expected[name], 0.0)
        rows.append((f"{name} template: 1.4 labelled {expected[name]}", "yes (attention figure)", f"{share:.0%} of prompts", how))
        rows.append((
            f"{name}: clean -> ablated accuracy, p(correct)",
            f"{w['clean_accuracy']:.0%} -> {w['ablated_accuracy']:.0%}, {w['clean_prob']:.2f} -> {w['ablated_prob']:.2f}",
            f"{acc:.0%} -> {acc_abl:.0%}, {p:.2f} -> {p_abl:.2f}",
            measured,
        ))
        if name in sweeps:
            sw = sweep_summary(sweeps[name])
            at_dest = sw["position"] == len(sweeps[name]) - 1
            rows.append((
                f"{name}: drop at the destination; elsewhere",
                f"~{WRITEUP_KEY_POSITION_DROP[name]:.2f}; < 0.05",
                f"{sw['drop']:.2f} ({'at' if at_dest else 'NOT at'} the destination); {sw['largest_elsewhere']:.3f}",
                measured,
            ))
    return rows
