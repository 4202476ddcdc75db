"""The duality circuit: GPT-2 small completing a word's opposite.

Following "Exploring Duality", a research-sprint write-up for the SERI MATS
2023 summer application (2023; our copy does not name its author):
GPT-2 small completes ``"I have two hands, my right hand and my"`` with
``" left"``, and does the same for other *dual pairs* (up/down, me/you, ...).
This module holds the chapter's prompt set, its metric (the logit difference
between the clean answer and the corrupted answer), the logit lens of that
difference, its direct logit attribution (DLA) per component, the attention of
a head to the earlier dual word, the single-site patching of the exercises,
and the figures and explorer of the chapter. Batched activation patching and
path patching live in :mod:`exercises_lib.patching` (shared with chapter 5);
the dual pairs in :mod:`exercises_lib.vocab` (shared with the stand-in's plant).

Conventions
-----------
* A prompt's *dual word* is the one earlier word of a dual pair in it
  (``" right"`` above). The clean prompt's answer (``correct``) is its
  opposite; the *corrupted* prompt swaps the dual word for its opposite
  (``"... my left hand and my"``), so its answer is the clean dual word
  (``incorrect``). Clean and corrupted tokens differ at one position only.
* The logit difference at the final position is
  ``logit[correct] - logit[incorrect]``: positive when the model prefers the
  clean answer.
* GPT-2 ties its unembedding to its embedding (``W_E.T``); after loading, the
  final LayerNorm's weight ``w`` is folded in and the result centred, so
  ``model.W_U`` is ``diag(w) W_E.T`` with each column's mean removed. The
  logit difference direction is ``W_U[:, correct] - W_U[:, incorrect]``.
* "With the final LayerNorm's scale" means: centre, then divide by the cached
  ``ln_final.hook_scale`` (the divisor) of the final position, as
  ``ActivationCache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)`` does.
  The result is linear in the residual stream, so the contributions of all
  components add up exactly to the final logit difference.

Nothing here knows where a stand-in's mechanism was planted: heads are found
from data (argmax of an attribution or a patching score).

Taught in: chapter 4 (the duality circuit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from exercises_lib.patching import normalise
from exercises_lib.vocab import DUAL_PAIRS, OPPOSITE, single_token_id

__all__ = [
    "DUAL_PAIRS",
    "OPPOSITE",
    "LEFT_RIGHT_TEMPLATES",
    "PAIR_TEMPLATES",
    "PromptSet",
    "build_prompt_set",
    "left_right_prompts",
    "pair_prompts",
    "logit_diff",
    "logit_diff_metric",
    "logit_diff_directions",
    "resid_labels",
    "logit_lens_logit_diff",
    "head_logit_attribution",
    "logit_diff_decomposition",
    "dual_word_attention",
    "normalise",
    "patch_resid_pre",
    "patch_resid_mid",
    "patch_rows",
    "patch_head_z",
    "head_output_delta",
    "top_heads",
    "top_predictions",
    "plot_logit_lens",
    "plot_head_attribution",
    "plot_patching",
    "plot_pair_generalisation",
    "duality_explorer",
]

#: Left/right templates; ``{}`` is the dual word (without its leading space).
#: All have the same token positions: BOS, 6 tokens, the dual word (position
#: 7), 3 tokens; the last token is the one whose next token is predicted.
LEFT_RIGHT_TEMPLATES: tuple[str, ...] = (
    "I have two hands, my {} hand and my",
    "I have two feet, my {} foot and my",
    "I have two eyes, my {} eye and my",
    "I have two ears, my {} ear and my",
    "I have two arms, my {} arm and my",
    "I have two legs, my {} leg and my",
    "She has two hands, her {} hand and her",
    "He has two feet, his {} foot and his",
)

#: Templates for the other dual pairs (same convention).
PAIR_TEMPLATES: tuple[str, ...] = (
    "The difference between {} and",
    "Both {} and",
)


@dataclass(frozen=True)
class PromptSet:
    """Clean and corrupted prompts of one shape, with their answers.

    ``clean_tokens`` and ``corrupt_tokens`` ([batch, seq], BOS first) differ
    only at ``dual_pos``; ``correct`` is the clean answer (the opposite of the
    clean dual word), ``incorrect`` the corrupted answer (the clean dual word).
    ``labels`` name each prompt (e.g. ``"right->left | hands"``), ``pairs``
    give its (dual word, answer).
    """

    clean_text: list[str]
    corrupt_text: list[str]
    clean_tokens: Int[Tensor, "batch seq"]
    corrupt_tokens: Int[Tensor, "batch seq"]
    correct: Int[Tensor, "batch"]
    incorrect: Int[Tensor, "batch"]
    dual_pos: int
    pairs: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clean_text)

    @property
    def seq_len(self) -> int:
        return int(self.clean_tokens.shape[1])

    def subset(self, index: Sequence[int] | Tensor) -> "PromptSet":
        """The prompts at ``index`` (a list of ints or a boolean mask)."""
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        ids = [int(i) for i in idx]
        return PromptSet(
            [self.clean_text[i] for i in ids],
            [self.corrupt_text[i] for i in ids],
            self.clean_tokens[ids],
            self.corrupt_tokens[ids],
            self.correct[ids],
            self.incorrect[ids],
            self.dual_pos,
            [self.pairs[i] for i in ids],
            [self.labels[i] for i in ids],
        )

    def where_answer(self, word: str) -> "PromptSet":
        """The prompts whose clean answer is ``word`` (e.g. ``" left"``)."""
        return self.subset([i for i, (_, ans) in enumerate(self.pairs) if ans == word])


def _single_token(model, word: str) -> int:
    token = single_token_id(model.tokenizer, word)
    if token is None:
        raise ValueError(f"{word!r} is not a single GPT-2 token: {model.to_str_tokens(word, prepend_bos=False)}")
    return token


def build_prompt_set(
    model,
    templates: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    *,
    orientations: Sequence[str] = ("forward", "backward"),
) -> PromptSet:
    """Every (template, pair, orientation) as a clean/corrupted prompt.

    ``"forward"`` puts the pair's first word in the clean prompt (answer: the
    second), ``"backward"`` the other way round. Checks that every dual word
    and answer is a single token, that all prompts have the same length, that
    clean and corrupted tokens differ at exactly one position (the same for
    all prompts), and that no other dual word appears in a prompt.
    """
    dual_words = set(OPPOSITE) | {w for p in pairs for w in p}
    dual_ids = {_single_token(model, w) for w in dual_words}
    clean_text, corrupt_text, used_pairs, labels = [], [], [], []
    correct, incorrect = [], []
    for template in templates:
        for a, b in pairs:
            for orientation in orientations:
                if orientation not in ("forward", "backward"):
                    raise ValueError(f"orientation must be 'forward' or 'backward', not {orientation!r}")
                word, answer = (a, b) if orientation == "forward" else (b, a)
                clean_text.append(template.format(word.strip()))
                corrupt_text.append(template.format(answer.strip()))
                correct.append(_single_token(model, answer))
                incorrect.append(_single_token(model, word))
                used_pairs.append((word, answer))
                short = template.replace("{}", "_")
                labels.append(f"{word.strip()}->{answer.strip()} | {short}")
    clean = [model.to_tokens(t)[0] for t in clean_text]
    corrupt = [model.to_tokens(t)[0] for t in corrupt_text]
    lengths = {len(t) for t in clean + corrupt}
    if len(lengths) != 1:
        raise ValueError(f"prompts of different token lengths {sorted(lengths)}: use templates of one shape per set")
    clean_tokens, corrupt_tokens = torch.stack(clean), torch.stack(corrupt)
    differ = clean_tokens != corrupt_tokens
    if not (differ.sum(1) == 1).all():
        raise ValueError("each clean/corrupted pair must differ at exactly one token")
    positions = differ.float().argmax(1)
    if not (positions == positions[0]).all():
        raise ValueError("the dual word must be at the same position in every prompt of a set")
    dual_pos = int(positions[0])
    for i, toks in enumerate(clean_tokens):
        others = [p for p, t in enumerate(toks.tolist()) if t in dual_ids and p != dual_pos]
        if others:
            raise ValueError(f"prompt {clean_text[i]!r} has another dual word at positions {others}")
    device = clean_tokens.device
    return PromptSet(
        clean_text, corrupt_text, clean_tokens, corrupt_tokens,
        torch.tensor(correct, device=device), torch.tensor(incorrect, device=device),
        dual_pos, used_pairs, labels,
    )


def left_right_prompts(model, answer: str | None = None) -> PromptSet:
    """The left/right prompts: all templates, ``" left"``- and ``" right"``-correct.

    ``answer=" left"`` keeps the left-correct prompts only (their clean dual
    word is ``" right"``), as the write-up does for most of its analysis.
    """
    ps = build_prompt_set(model, LEFT_RIGHT_TEMPLATES, [(" right", " left")])
    return ps if answer is None else ps.where_answer(answer)


def pair_prompts(model, template: str = PAIR_TEMPLATES[0], pairs: Sequence[tuple[str, str]] = DUAL_PAIRS) -> PromptSet:
    """One template filled with every dual pair, in both orientations."""
    return build_prompt_set(model, [template], pairs)


# ---------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------


def logit_diff(
    logits: Float[Tensor, "batch seq vocab"],
    correct: Int[Tensor, "batch"],
    incorrect: Int[Tensor, "batch"],
) -> Float[Tensor, "batch"]:
    """``logits[b, -1, correct[b]] - logits[b, -1, incorrect[b]]`` for every prompt ``b``."""
    # SOLUTION: index the last position's logits at correct and incorrect, row by row
    final = logits[:, -1]
    rows = torch.arange(final.shape[0], device=final.device)
    return final[rows, correct] - final[rows, incorrect]
    # END SOLUTION


def logit_diff_metric(prompts: PromptSet, *, per_prompt: bool = False):
    """A patching metric for ``prompts``: ``logits -> mean logit difference``.

    The returned callable takes logits ``[batch, seq, vocab]`` of the prompts
    in their order (``seq`` may be 1: only the last position is used) and
    returns the mean over prompts (a scalar), or one value per prompt with
    ``per_prompt=True``.
    """
    correct, incorrect = prompts.correct, prompts.incorrect

    def metric(logits: Float[Tensor, "batch seq vocab"]) -> Tensor:
        values = logit_diff(logits, correct.to(logits.device), incorrect.to(logits.device))
        return values if per_prompt else values.mean()

    return metric


def logit_diff_directions(
    model, correct: Int[Tensor, "batch"], incorrect: Int[Tensor, "batch"]
) -> Float[Tensor, "batch d_model"]:
    """``W_U[:, correct] - W_U[:, incorrect]``, one residual direction per prompt."""
    # SOLUTION: index the columns of model.W_U, subtract, transpose
    return (model.W_U[:, correct] - model.W_U[:, incorrect]).T
    # END SOLUTION


# ---------------------------------------------------------------------------
# Logit lens and direct logit attribution
# ---------------------------------------------------------------------------


def resid_labels(n_layers: int) -> list[str]:
    """Labels of the accumulated residual stream with ``incl_mid=True``:
    ``0_pre, 0_mid, 1_pre, ..., {n-1}_mid, final_post``."""
    labels = []
    for layer in range(n_layers):
        labels += [f"{layer}_pre", f"{layer}_mid"]
    return labels + ["final_post"]


def _final_ln(cache, stack: Float[Tensor, "comp batch d_model"]) -> Float[Tensor, "comp batch d_model"]:
    """Centre, then divide by the final LayerNorm's cached scale at the last position."""
    scale = cache["ln_final.hook_scale"][:, -1, :]  # [batch, 1]
    return (stack - stack.mean(-1, keepdim=True)) / scale


def logit_lens_logit_diff(
    cache, directions: Float[Tensor, "batch d_model"]
) -> Float[Tensor, "component batch"]:
    """Logit difference read off the accumulated residual stream at the last position.

    For each ``resid_pre`` and ``resid_mid`` of every layer and the final
    residual: ``LN_final(x) . direction`` with the final LayerNorm's cached
    scale (see the module docstring). Rows follow :func:`resid_labels`; the
    last row equals the model's logit difference (up to ``b_U``).
    """
    # SOLUTION: accumulated_resid(incl_mid=True), apply_ln_to_stack with the final layer, dot with directions
    stack = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)  # [component, batch, d_model]
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    return (scaled * directions[None]).sum(-1)
    # END SOLUTION


def head_logit_attribution(
    cache, directions: Float[Tensor, "batch d_model"]
) -> Float[Tensor, "layer head batch"]:
    """Direct logit attribution of every head to the logit difference (last position).

    Head ``(l, h)``'s output ``z[l, h] W_O[l, h]`` at the last position, scaled
    by the final LayerNorm's cached scale, dotted with each prompt's direction.
    """
    # SOLUTION: stack_head_results at the last position, final LN scale, dot, reshape
    results = cache.stack_head_results(layer=-1, pos_slice=-1)  # [layer*head, batch, d_model]
    scaled = cache.apply_ln_to_stack(results, layer=-1, pos_slice=-1)
    dla = (scaled * directions[None]).sum(-1)
    return dla.reshape(cache.model.cfg.n_layers, cache.model.cfg.n_heads, -1)
    # END SOLUTION


def logit_diff_decomposition(
    model, cache, correct: Int[Tensor, "batch"], incorrect: Int[Tensor, "batch"]
) -> tuple[Float[Tensor, "component batch"], list[str]]:
    """Every component's direct contribution to the logit difference (last position).

    Components: token embedding, positional embedding, each head ``L{l}H{h}``,
    each layer's attention bias ``b_O``, each MLP, and the unembedding bias.
    With the final LayerNorm's cached scale they add up exactly to the logit
    difference of the logits.
    """
    directions = logit_diff_directions(model, correct, incorrect)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    parts = [cache["hook_embed"][:, -1], cache["hook_pos_embed"][:, -1]]
    labels = ["embed", "pos_embed"]
    heads = cache.stack_head_results(layer=-1, pos_slice=-1)  # [L*H, batch, d_model]
    parts += list(heads)
    labels += [f"L{l}H{h}" for l in range(L) for h in range(H)]
    for layer in range(L):
        parts.append(model.b_O[layer].expand_as(parts[0]))
        labels.append(f"b_O {layer}")
    for layer in range(L):
        parts.append(cache[f"blocks.{layer}.hook_mlp_out"][:, -1])
        labels.append(f"MLP {layer}")
    stack = _final_ln(cache, torch.stack(parts))
    values = (stack * directions[None]).sum(-1)
    b_U = getattr(model, "b_U", None)
    bias = (b_U[correct] - b_U[incorrect]) if b_U is not None else torch.zeros_like(values[0])
    values = torch.cat([values, bias[None]])
    labels.append("b_U")
    return values, labels


def dual_word_attention(
    pattern: Float[Tensor, "batch head dest src"], head: int, dual_pos: int
) -> Float[Tensor, "batch"]:
    """Attention of ``head`` from the final position to the dual word, per prompt."""
    # SOLUTION: destination = last position, source = dual_pos
    return pattern[:, head, -1, dual_pos]
    # END SOLUTION


# ---------------------------------------------------------------------------
# Patching one site (the exercises; exercises_lib.patching batches them)
# ---------------------------------------------------------------------------


def patch_resid_pre(model, target_tokens: Int[Tensor, "batch seq"], source_cache, layer: int, pos: int, metric) -> Tensor:
    """``metric`` of the target run with ``resid_pre[layer][:, pos]`` taken from the source run's cache."""
    # SOLUTION: a hook on blocks.{layer}.hook_resid_pre that copies the source value at pos
    name = f"blocks.{layer}.hook_resid_pre"
    source = source_cache[name]

    def hook(act, hook):
        act = act.clone()
        act[:, pos] = source[:, pos]
        return act

    return metric(model.run_with_hooks(target_tokens, fwd_hooks=[(name, hook)]))
    # END SOLUTION


def patch_resid_mid(model, target_tokens: Int[Tensor, "batch seq"], source_cache, layer: int, pos: int, metric) -> Tensor:
    """``metric`` of the target run with the residual stream after attention layer ``layer``
    (``resid_mid``) at ``pos`` taken from the source run's cache.

    The bridge's ``blocks.{layer}.hook_resid_mid`` is only the MLP's input, so
    the value is written as ``hook_attn_out = source resid_mid - resid_pre``.
    """
    # SOLUTION: capture resid_pre, then write source resid_mid - resid_pre into hook_attn_out at pos
    source = source_cache[f"blocks.{layer}.hook_resid_mid"]
    stored = {}

    def capture(act, hook):
        stored["pre"] = act
        return act

    def write(act, hook):
        act = act.clone()
        act[:, pos] = source[:, pos] - stored["pre"][:, pos]
        return act

    hooks = [(f"blocks.{layer}.hook_resid_pre", capture), (f"blocks.{layer}.hook_attn_out", write)]
    return metric(model.run_with_hooks(target_tokens, fwd_hooks=hooks))
    # END SOLUTION


def patch_rows(
    act: Float[Tensor, "row pos d"],
    source: Float[Tensor, "prompt pos d"],
    prompt_of_row: Int[Tensor, "row"],
    position_of_row: Int[Tensor, "row"],
) -> Float[Tensor, "row pos d"]:
    """A copy of ``act`` with ``act[r, position_of_row[r]] = source[prompt_of_row[r], position_of_row[r]]``."""
    # SOLUTION: clone, then one advanced-indexing assignment
    out = act.clone()
    rows = torch.arange(act.shape[0], device=act.device)
    out[rows, position_of_row] = source[prompt_of_row, position_of_row]
    return out
    # END SOLUTION


def patch_head_z(
    z: Float[Tensor, "batch pos head d_head"], source_z: Float[Tensor, "batch pos head d_head"], head: int
) -> Float[Tensor, "batch pos head d_head"]:
    """A copy of ``z`` whose head ``head`` is ``source_z``'s, at every position."""
    # SOLUTION: clone and replace the head's slice
    out = z.clone()
    out[:, :, head] = source_z[:, :, head]
    return out
    # END SOLUTION


def head_output_delta(model, source_cache, target_cache, layer: int, head: int) -> Float[Tensor, "batch pos d_model"]:
    """The change of head ``layer.head``'s output between two runs,
    ``(z_source - z_target)[:, :, head] @ W_O[layer, head]`` (path patching's sender)."""
    # SOLUTION: difference of the head's z in the two caches, times its W_O
    name = f"blocks.{layer}.attn.hook_z"
    dz = source_cache[name][:, :, head] - target_cache[name][:, :, head]
    return dz @ model.W_O[layer, head]
    # END SOLUTION


def top_heads(scores: Float[Tensor, "layer head"], k: int = 3) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the largest scores, as ``(layer, head, score)``."""
    n_heads = scores.shape[1]
    values, idx = scores.flatten().topk(k)
    return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, idx)]


def top_predictions(model, text: str, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``text`` with their probabilities."""
    with torch.no_grad():
        logits = model(model.to_tokens(text))[0, -1]
    probs = logits.softmax(-1)
    values, idx = probs.topk(k)
    return [(model.to_string(int(i)), float(v)) for v, i in zip(values, idx)]


# ---------------------------------------------------------------------------
# Figures and the explorer
# ---------------------------------------------------------------------------


def plot_logit_lens(
    lens: Float[Tensor, "component batch"],
    prompts: PromptSet,
    *,
    model,
    per_prompt: bool = False,
    title: str = "",
    show: bool = True,
):
    """Logit lens of the logit difference: the mean over prompts of each clean
    answer (``" left"``-correct, ``" right"``-correct...), or one line per prompt."""
    from exercises_lib.plotting import line

    labels = resid_labels((lens.shape[0] - 1) // 2)
    if per_prompt:
        rows, names = lens.T, list(prompts.labels)
        title = title or "Logit lens of the logit difference, per prompt"
    else:
        answers = sorted({ans for _, ans in prompts.pairs})
        rows = torch.stack([lens[:, [i for i, (_, a) in enumerate(prompts.pairs) if a == ans]].mean(1) for ans in answers])
        names = [f"{ans.strip()}-correct (mean of {sum(a == ans for _, a in prompts.pairs)})" for ans in answers]
        title = title or "Logit lens of the logit difference, mean over prompts"
    return line(rows, model=model, x=labels, names=names, title=title,
                labels={"x": "residual stream (accumulated)", "y": "logit difference"}, show=show)


def plot_head_attribution(
    dla: Float[Tensor, "layer head"], *, model, title: str = "", show: bool = True
):
    """Heatmap of the direct logit attribution of every head (layer x head)."""
    from exercises_lib.plotting import imshow

    return imshow(dla, model=model, title=title or "Direct logit attribution of each head to the logit difference",
                  labels={"x": "head", "y": "layer", "color": "logit diff"}, show=show)


def plot_patching(
    values: Float[Tensor, "panel row col"],
    *,
    model,
    panel_labels: Sequence[str],
    x: Sequence[str] | None = None,
    y_label: str = "layer",
    x_label: str = "position",
    title: str = "",
    show: bool = True,
):
    """Side-by-side heatmaps of normalised patching results (0 = corrupted, 1 = clean)."""
    from exercises_lib.plotting import imshow

    vals = values if values.ndim == 3 else values[None]
    xs = [f"{i}: {t}" for i, t in enumerate(x)] if x is not None else None
    return imshow(vals, model=model, facet_col=0, facet_labels=list(panel_labels), x=xs, title=title,
                  labels={"x": x_label, "y": y_label, "color": "normalised"},
                  zmin=-1, zmax=1, show=show)


def plot_pair_generalisation(
    shares: Float[Tensor, "pair head"],
    pair_names: Sequence[str],
    head_names: Sequence[str],
    *,
    model,
    title: str = "",
    show: bool = True,
):
    """For each dual pair, each head's direct logit attribution as a share of the pair's logit difference."""
    from exercises_lib.plotting import imshow

    return imshow(shares, model=model, x=list(head_names), y=list(pair_names),
                  title=title or "Share of each pair's logit difference written directly by each head",
                  labels={"x": "head", "y": "dual pair", "color": "share"}, show=show)


@torch.no_grad()
def _prompt_analyses(model, texts: Sequence[str], correct: Sequence[int], incorrect: Sequence[int]
                     ) -> tuple[Float[Tensor, "component prompt"], Float[Tensor, "layer head prompt"], Float[Tensor, "prompt"]]:
    """Logit lens, per-head DLA and logit difference of each prompt, for prompts of one length in tokens
    (one batched forward pass)."""
    tokens = model.to_tokens(list(texts))
    logits, cache = model.run_with_cache(tokens)
    c, i = torch.tensor(list(correct)), torch.tensor(list(incorrect))
    directions = logit_diff_directions(model, c, i)
    return logit_lens_logit_diff(cache, directions), head_logit_attribution(cache, directions), logit_diff(logits, c, i)


def duality_explorer(model, templates: Sequence[str] | None = None, pairs: Sequence[tuple[str, str]] = DUAL_PAIRS):
    """Widget: choose a template, a dual pair and which word comes first; see the
    logit lens and the per-head DLA of that prompt's logit difference.

    Every prompt the controls can make (template x pair x word order) is run
    through the model here, once: one batched forward pass per prompt length
    (a few seconds in all on a CPU, with a progress bar), and its logit lens,
    DLA and logit difference are kept, so a change only draws two figures.
    The figures are drawn once before the widget is returned (display it as a
    cell's last value), so it renders statically too. The box has
    ``box.update(pair, template, first)`` (what a change of any control runs;
    the controls' values: the pair's index, the template, ``"first word"`` or
    ``"second word"``) and ``box.analyses``: ``{(pair, template, first): (lens,
    dla, logit difference)}``.
    """
    import ipywidgets as widgets

    from exercises_lib.plotting import imshow, line
    from exercises_lib.progress import progress

    templates = list(templates or (LEFT_RIGHT_TEMPLATES[:2] + PAIR_TEMPLATES))
    pair_w = widgets.Dropdown(options=[(f"{a.strip()} / {b.strip()}", k) for k, (a, b) in enumerate(pairs)],
                              value=0, description="pair")
    template_w = widgets.Dropdown(options=[(t.replace("{}", "_"), t) for t in templates], description="template")
    first_w = widgets.ToggleButtons(options=["first word", "second word"], description="prompt has")
    out = widgets.Output()
    labels = resid_labels(model.cfg.n_layers)

    def prompt(pair: int, template: str, first: str) -> tuple[str, str, str]:
        """``(text, word, answer)`` of the prompt the controls make."""
        a, b = pairs[pair]
        word, answer = (a, b) if first == "first word" else (b, a)
        return template.format(word.strip()), word, answer

    prompts = {(k, t, f): prompt(k, t, f) for t in templates for k in range(len(pairs)) for f in first_w.options}
    by_length: dict[int, list] = {}
    for key, (text, _, _) in prompts.items():
        by_length.setdefault(model.to_tokens(text).shape[1], []).append(key)
    analyses = {}
    for keys in progress(list(by_length.values()), "the explorer's prompts through the model", unit="length"):
        lens, dla, ld = _prompt_analyses(
            model, [prompts[k][0] for k in keys], [_single_token(model, prompts[k][2]) for k in keys],
            [_single_token(model, prompts[k][1]) for k in keys])
        for j, key in enumerate(keys):
            analyses[key] = (lens[:, j], dla[..., j], float(ld[j]))

    def update(pair: int, template: str, first: str) -> None:
        text, word, answer = prompts[pair, template, first]
        lens, dla, ld = analyses[pair, template, first]
        out.clear_output(wait=True)
        with out:
            heading = f"'{text}' -> '{answer.strip()}' vs '{word.strip()}': logit difference {ld:.2f}"
            line(lens, model=model, x=labels, title=f"Logit lens: {heading}",
                 labels={"x": "residual stream", "y": "logit difference"}, height=330)
            imshow(dla, model=model, title="Direct logit attribution per head",
                   labels={"x": "head", "y": "layer", "color": "logit diff"}, height=330)

    def on_change(_) -> None:
        update(pair_w.value, template_w.value, first_w.value)

    for w in (pair_w, template_w, first_w):
        w.observe(on_change, names="value")
    on_change(None)
    box = widgets.VBox([widgets.HBox([pair_w, template_w]), first_w, out])
    box.update = update
    box.analyses = analyses
    return box


# ---------------------------------------------------------------------------
# Finding the circuit from behaviour (the write-up's analysis, as functions)
# ---------------------------------------------------------------------------


def _sweep_values(model, prompts: PromptSet):
    metric = logit_diff_metric(prompts)
    with torch.no_grad():
        clean, corrupt = metric(model(prompts.clean_tokens)), metric(model(prompts.corrupt_tokens))
    return metric, clean, corrupt


def resid_patching(model, prompts: PromptSet, *, direction: str = "denoise", progress: bool = False
                   ) -> Float[Tensor, "kind layer pos"]:
    """Normalised patching of ``resid_pre`` (row 0) and ``resid_mid`` (row 1) of every layer at every position."""
    from exercises_lib import patching as P

    metric, clean, corrupt = _sweep_values(model, prompts)
    hooks = P.resid_hook_names(model, "resid_pre") + P.resid_hook_names(model, "resid_mid")
    raw = P.patch_sweep(model, prompts.clean_tokens, prompts.corrupt_tokens, hooks, metric, direction=direction,
                        last_position_only=True, progress=progress)
    return P.normalise(raw, clean, corrupt).reshape(2, model.cfg.n_layers, -1)


def mover_layer(resid: Float[Tensor, "kind layer pos"], *, margin: float = 0.1) -> int | None:
    """The first attention layer after which the final position recovers more than before it
    (denoising ``resid_mid`` minus ``resid_pre`` at the last position above ``margin``): where
    information is first moved to the final position. None if no layer does."""
    gain = resid[1, :, -1] - resid[0, :, -1]
    found = (gain > margin).nonzero()
    return int(found[0]) if len(found) else None


@torch.no_grad()
def patched_logit_lens(model, prompts: PromptSet, layer: int, pos: int, *, kind: str = "resid_mid"
                       ) -> tuple[Float[Tensor, "component"], Float[Tensor, "component"]]:
    """Logit lens (mean over prompts) of the corrupted run with ``kind`` (``resid_pre`` or ``resid_mid``) of
    ``layer`` at ``pos`` denoised (taken from the clean run), and of the plain corrupted run."""
    dirs = logit_diff_directions(model, prompts.correct, prompts.incorrect)
    _, clean_cache = model.run_with_cache(prompts.clean_tokens)
    _, corrupt_cache = model.run_with_cache(prompts.corrupt_tokens)
    if kind not in ("resid_pre", "resid_mid"):
        raise ValueError(f"kind must be 'resid_pre' or 'resid_mid', not {kind!r}")
    from exercises_lib import patching as P

    hooks = P.patch_hooks(f"blocks.{layer}.hook_{kind}", clean_cache, pos=pos)
    with model.hooks(fwd_hooks=hooks):
        _, patched_cache = model.run_with_cache(prompts.corrupt_tokens)
    return (logit_lens_logit_diff(patched_cache, dirs).mean(1), logit_lens_logit_diff(corrupt_cache, dirs).mean(1))


def visible_from(patched: Float[Tensor, "component"], corrupt: Float[Tensor, "component"], *, share: float = 0.5) -> str:
    """The first point of the residual stream (a :func:`resid_labels` label) where the patched run's logit
    difference has moved ``share`` of its final change away from the corrupted run's."""
    delta = patched - corrupt
    above = (delta * torch.sign(delta[-1]) >= share * delta[-1].abs()).nonzero()
    return resid_labels((len(delta) - 1) // 2)[int(above[0])]


def head_patching(model, prompts: PromptSet, *, direction: str = "denoise", progress: bool = False
                  ) -> Float[Tensor, "layer head"]:
    """Normalised patching of every head's output (``hook_z``, all positions)."""
    from exercises_lib import patching as P

    metric, clean, corrupt = _sweep_values(model, prompts)
    hooks = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    raw = P.patch_sweep(model, prompts.clean_tokens, prompts.corrupt_tokens, hooks, metric, heads=True,
                        direction=direction, last_position_only=True, progress=progress)
    return P.normalise(raw, clean, corrupt)


def mlp_patching(model, prompts: PromptSet, *, direction: str = "noise") -> Float[Tensor, "layer"]:
    """Normalised patching of every MLP's output (all positions at once)."""
    from exercises_lib import patching as P

    metric, clean, corrupt = _sweep_values(model, prompts)
    raw = P.patch_sweep(model, prompts.clean_tokens, prompts.corrupt_tokens, P.resid_hook_names(model, "mlp_out"),
                        metric, direction=direction, positions="all", last_position_only=True, progress=False)
    return P.normalise(raw, clean, corrupt).flatten()


def circuit_heads(denoise: Float[Tensor, "layer head"], noise: Float[Tensor, "layer head"], *,
                  threshold: float = 0.03) -> list[tuple[int, int]]:
    """Heads that matter: denoising one recovers, or noising one loses, more than ``threshold``."""
    matters = (denoise > threshold) | ((1 - noise) > threshold)
    return [(int(l), int(h)) for l, h in matters.nonzero()]


def final_attention_to(cache, prompts: PromptSet, heads: Sequence[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Mean attention of each head from the final position to the dual word."""
    return {(l, h): float(cache[f"blocks.{l}.attn.hook_pattern"][:, h, -1, prompts.dual_pos].mean()) for l, h in heads}


@torch.no_grad()
def mlp_direct_attribution(model, cache, prompts: PromptSet) -> Float[Tensor, "layer"]:
    """Each MLP's direct contribution to the logit difference (mean over prompts)."""
    values, labels = logit_diff_decomposition(model, cache, prompts.correct, prompts.incorrect)
    return torch.stack([values[labels.index(f"MLP {l}")].mean() for l in range(model.cfg.n_layers)])


@torch.no_grad()
def reader_paths(model, prompts: PromptSet, senders: Sequence[tuple[int, int]]) -> Float[Tensor, "layer"]:
    """Path patching (noising) from ``senders`` to each MLP's input at the final position: the share of the
    logit difference lost through MLP ``l``, summed over the senders (0 for MLPs before a sender)."""
    from exercises_lib import patching as P

    metric, clean, corrupt = _sweep_values(model, prompts)
    out = torch.zeros(model.cfg.n_layers)
    for layer, head in senders:
        for l in range(layer, model.cfg.n_layers):
            value = P.path_patch(model, prompts.clean_tokens, prompts.corrupt_tokens, (layer, head),
                                 f"blocks.{l}.ln2.hook_in", metric, receiver_positions=[prompts.seq_len - 1])
            out[l] += float(1 - P.normalise(value, clean, corrupt))
    return out


@torch.no_grad()
def find_circuit(model, prompts: PromptSet, *, progress: bool = False) -> dict:
    """The write-up's analysis on ``prompts`` (left-correct, say), from behaviour only.

    Returns a dict: ``resid`` (denoising ``resid_pre``/``resid_mid`` [2, layer, pos]); ``mover_layer``;
    ``visible_from`` (where the moved information reaches the logit lens when ``resid_mid`` of the mover
    layer at the final position is denoised) and ``visible_mlp`` (the MLP just before it, if a ``_pre``
    label); ``heads`` (denoise and noise scores); ``circuit_heads``; ``writer`` (top-DLA head);
    ``movers`` (circuit heads of the mover layer); ``readers`` (the other circuit heads that attend from the
    final position to the dual word, with little direct effect); ``mlp_lost`` (noising each MLP);
    ``mlp_dla``; ``reader_paths`` and ``writer_mlp`` (the MLP through which the readers' output acts most,
    :func:`reader_paths`); ``dla`` (per head).
    """
    dirs = logit_diff_directions(model, prompts.correct, prompts.incorrect)
    _, cache = model.run_with_cache(prompts.clean_tokens)
    dla = head_logit_attribution(cache, dirs).mean(-1)
    resid = resid_patching(model, prompts, progress=progress)
    mover = mover_layer(resid)
    found = dict(resid=resid, mover_layer=mover, dla=dla)
    if mover is not None:
        patched, corrupt = patched_logit_lens(model, prompts, mover, prompts.seq_len - 1)
        label = visible_from(patched, corrupt)
        found.update(patched_lens=patched, corrupt_lens=corrupt, visible_from=label)
        layer, kind = label.split("_") if label != "final_post" else (str(model.cfg.n_layers), "pre")
        found["visible_mlp"] = int(layer) - 1 if kind == "pre" else None
    else:
        found.update(visible_from=None, visible_mlp=None)
    den, noi = head_patching(model, prompts, direction="denoise"), head_patching(model, prompts, direction="noise")
    heads = circuit_heads(den, noi)
    writer = top_heads(dla, 1)[0][:2]
    attention = final_attention_to(cache, prompts, heads)
    total = float(logit_diff(model(prompts.clean_tokens), prompts.correct, prompts.incorrect).mean())
    movers = [h for h in heads if h[0] == mover]
    readers = [h for h in heads if h != writer and h not in movers and attention[h] > 0.5
               and abs(float(dla[h])) < 0.1 * abs(total)]
    mlp_lost = 1 - mlp_patching(model, prompts, direction="noise")
    mlp_dla = mlp_direct_attribution(model, cache, prompts)
    via = reader_paths(model, prompts, readers)
    writer_mlp = int(via.argmax()) if readers and float(via.max()) > 0.05 else None
    found.update(heads={"denoise": den, "noise": noi}, circuit_heads=heads, writer=writer, movers=movers,
                 readers=readers, attention=attention, mlp_lost=mlp_lost, mlp_dla=mlp_dla, reader_paths=via, writer_mlp=writer_mlp,
                 logit_diff=total)
    return found
