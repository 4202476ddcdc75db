"""Checks of chapter 4 (the duality circuit).

Each check runs the student's function on the notebook's example and on
hidden inputs (other prompts, other shapes, the other patching direction),
compares with the reference, and names typical mistakes (the metric's sign
flipped, the LayerNorm scale forgotten, normalising against the wrong
baseline, patching the wrong position or only the MLP's input...).

Taught in: chapter 4 (the duality circuit).
"""

from __future__ import annotations

import torch

from exercises_lib import duality as D
from exercises_lib.checks import random_pattern, register_check
from exercises_lib.checks import run_with_cache_once as _run

MODEL = "gpt2-small"


# ---------------------------------------------------------------------------
# Inputs shared by the checks
# ---------------------------------------------------------------------------


def _left_right(model):
    return D.left_right_prompts(model)


def _pairs(model, n: int = 6):
    ps = D.pair_prompts(model, D.PAIR_TEMPLATES[1])
    return ps.subset(list(range(0, 2 * n, 2))[: n])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# 4.1 logit difference
# ---------------------------------------------------------------------------


def _cases_logit_diff(model):
    ps = _left_right(model)
    logits, _ = _run(model, ps.clean_tokens)
    g = _generator(1)
    return [
        dict(logits=logits, correct=ps.correct, incorrect=ps.incorrect),
        dict(logits=torch.randn(3, 5, 50, generator=g), correct=torch.tensor([1, 7, 3]), incorrect=torch.tensor([2, 0, 3])),
        dict(logits=torch.randn(1, 9, 20, generator=g), correct=torch.tensor([19]), incorrect=torch.tensor([4])),
    ]


def _mistake_first_position(logits, correct, incorrect):
    rows = torch.arange(logits.shape[0])
    return logits[rows, 0, correct] - logits[rows, 0, incorrect]


def _mistake_probability_diff(logits, correct, incorrect):
    probs = logits[:, -1].softmax(-1)
    rows = torch.arange(logits.shape[0])
    return probs[rows, correct] - probs[rows, incorrect]


register_check(
    "duality.logit_diff",
    reference=D.logit_diff,
    cases=_cases_logit_diff,
    hint=(
        "Only the last position predicts the answer. For each prompt, read that prompt's own correct and "
        'incorrect token (one pair per row, not every pair with every row).'
    ),
    mistakes={
        "the sign is flipped (incorrect - correct)": lambda logits, correct, incorrect: -D.logit_diff(logits, correct, incorrect),
        "the logits of the first position instead of the last": _mistake_first_position,
        "a difference of probabilities, not of logits": _mistake_probability_diff,
    },
    needs=("model",),
    model=MODEL,
)


# ---------------------------------------------------------------------------
# 4.2 logit-difference directions
# ---------------------------------------------------------------------------


def _cases_directions(model):
    ps = _left_right(model)
    pp = _pairs(model)
    return [
        dict(model=model, correct=ps.correct, incorrect=ps.incorrect),
        dict(model=model, correct=pp.correct, incorrect=pp.incorrect),
        dict(model=model, correct=torch.tensor([11, 500, 50000]), incorrect=torch.tensor([12, 7, 50000])),
    ]


register_check(
    "duality.logit_diff_directions",
    reference=D.logit_diff_directions,
    cases=_cases_directions,
    hint=(
        "The unembedding's columns are the tokens' output directions. One direction per prompt: correct minus "
        'incorrect. Check which axis of your result is the batch.'
    ),
    mistakes={
        "the sign is flipped (incorrect - correct)": lambda model, correct, incorrect: -D.logit_diff_directions(model, correct, incorrect),
        "the directions are normalised to unit length": lambda model, correct, incorrect: torch.nn.functional.normalize(
            D.logit_diff_directions(model, correct, incorrect), dim=-1
        ),
    },
    needs=("model",),
    model=MODEL,
)


# ---------------------------------------------------------------------------
# 4.3 logit lens
# ---------------------------------------------------------------------------


def _cases_with_cache(model):
    ps = _left_right(model)
    pp = _pairs(model, 5)
    _, cache = _run(model, ps.clean_tokens)
    _, cache2 = _run(model, pp.clean_tokens)
    return [
        dict(cache=cache, directions=D.logit_diff_directions(model, ps.correct, ps.incorrect)),
        dict(cache=cache2, directions=D.logit_diff_directions(model, pp.correct, pp.incorrect)),
    ]


def _lens_without_ln(cache, directions):
    stack = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    return (stack * directions[None]).sum(-1)


def _lens_recomputed_ln(cache, directions):
    stack = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, apply_ln=True)
    return (stack * directions[None]).sum(-1)


register_check(
    "duality.logit_lens_logit_diff",
    reference=D.logit_lens_logit_diff,
    cases=_cases_with_cache,
    hint=(
        'The cache gives the residual stream after each component (ask for the mid-layer points too), at the '
        "last position, and can apply the final LayerNorm's cached scale to that stack. Then project each "
        "prompt's residual on its own direction."
    ),
    mistakes={
        "the final LayerNorm's scale is not applied": _lens_without_ln,
        "every layer's residual is re-normalised on its own (apply_ln=True): the exercise asks for "
        "the final LayerNorm's cached scale, which keeps the lens linear": _lens_recomputed_ln,
    },
    atol=1e-3,
    needs=("model",),
    model=MODEL,
)


# ---------------------------------------------------------------------------
# 4.4 direct logit attribution per head
# ---------------------------------------------------------------------------


def _dla_without_ln(cache, directions):
    results = cache.stack_head_results(layer=-1, pos_slice=-1)
    dla = (results * directions[None]).sum(-1)
    return dla.reshape(cache.model.cfg.n_layers, -1, dla.shape[-1])


def _dla_first_position(cache, directions):
    results = cache.stack_head_results(layer=-1, pos_slice=0)
    scale = cache["ln_final.hook_scale"][:, 0, :]
    results = (results - results.mean(-1, keepdim=True)) / scale
    dla = (results * directions[None]).sum(-1)
    return dla.reshape(cache.model.cfg.n_layers, -1, dla.shape[-1])


register_check(
    "duality.head_logit_attribution",
    reference=D.head_logit_attribution,
    cases=_cases_with_cache,
    hint=(
        "The cache can stack every head's output at one position for you, and apply the final LayerNorm's "
        "cached scale to such a stack; then project each prompt's head outputs on that prompt's direction and "
        'arrange the result by layer and head.'
    ),
    mistakes={
        "the final LayerNorm's scale is not applied": _dla_without_ln,
        "the heads' outputs at the first position instead of the last": _dla_first_position,
        "the sign is flipped": lambda cache, directions: -D.head_logit_attribution(cache, directions),
    },
    atol=1e-3,
    needs=("model",),
    model=MODEL,
)


# ---------------------------------------------------------------------------
# 4.5 attention to the dual word
# ---------------------------------------------------------------------------


def _cases_attention(model):
    ps = _left_right(model)
    _, cache = _run(model, ps.clean_tokens)
    return [
        dict(pattern=cache["blocks.6.attn.hook_pattern"], head=1, dual_pos=ps.dual_pos),
        dict(pattern=random_pattern(3, 4, 9, seed=2), head=2, dual_pos=4),
        dict(pattern=random_pattern(2, 12, 6, seed=3), head=11, dual_pos=1),
    ]


register_check(
    "duality.dual_word_attention",
    reference=D.dual_word_attention,
    cases=_cases_attention,
    hint=(
        "The pattern's axes are batch, head, destination, source. Which position is the destination here "
        '(where the answer is predicted) and which the source (the dual word)?'
    ),
    mistakes={
        "destination and source are swapped": lambda pattern, head, dual_pos: pattern[:, head, dual_pos, -1],
        "the attention of the dual word's own position, not of the last one": lambda pattern, head, dual_pos: pattern[:, head, dual_pos, dual_pos],
        "the attention of every head, averaged": lambda pattern, head, dual_pos: pattern[:, :, -1, dual_pos].mean(1),
    },
    needs=("model",),
    model=MODEL,
)


# ---------------------------------------------------------------------------
# 4.6 normalisation
# ---------------------------------------------------------------------------


def _cases_normalise(**_):
    g = _generator(4)
    return [
        dict(metric_values=torch.tensor([[-3.0, 0.5, 4.0], [-3.0, -3.0, 1.0]]), clean_value=torch.tensor(4.0), corrupt_value=torch.tensor(-3.0)),
        dict(metric_values=torch.randn(4, 7, generator=g), clean_value=torch.tensor(2.5), corrupt_value=torch.tensor(0.7)),
        dict(metric_values=torch.randn(5, generator=g), clean_value=torch.tensor(-1.0), corrupt_value=torch.tensor(1.5)),
    ]


register_check(
    "duality.normalise",
    reference=D.normalise,
    cases=_cases_normalise,
    hint=(
        'The corrupted run should map to 0 and the clean run to 1, with everything in between on a straight '
        'line: measure from the corrupted value, in units of the gap between the two runs.'
    ),
    mistakes={
        "normalised against the wrong baseline: (metric - clean) / (corrupt - clean) maps the clean run to 0":
            lambda metric_values, clean_value, corrupt_value: (metric_values - clean_value) / (corrupt_value - clean_value),
        "divided by the clean value only (metric / clean)":
            lambda metric_values, clean_value, corrupt_value: metric_values / clean_value,
        "the corrupted value is not subtracted from the metric ((metric) / (clean - corrupt))":
            lambda metric_values, clean_value, corrupt_value: metric_values / (clean_value - corrupt_value),
    },
)


# ---------------------------------------------------------------------------
# 4.7 / 4.8 patching one residual site
# ---------------------------------------------------------------------------


def _patch_cases(model, specs):
    cases = []
    for prompts, direction, layer, pos in specs:
        clean_logits, clean_cache = _run(model, prompts.clean_tokens)
        corrupt_logits, corrupt_cache = _run(model, prompts.corrupt_tokens)
        if direction == "denoise":
            target, source_cache = prompts.corrupt_tokens, clean_cache
        else:
            target, source_cache = prompts.clean_tokens, corrupt_cache
        cases.append(dict(model=model, target_tokens=target, source_cache=source_cache, layer=layer,
                          pos=pos, metric=D.logit_diff_metric(prompts)))
    return cases


def _cases_resid_pre(model):
    lr = _left_right(model).where_answer(" left").subset([0, 1])
    pp = _pairs(model, 2)
    return _patch_cases(model, [
        (lr, "denoise", 3, lr.dual_pos),
        (lr, "denoise", 11, lr.seq_len - 1),
        (pp, "noise", 5, pp.dual_pos),
    ])


def _cases_resid_mid(model):
    lr = _left_right(model).where_answer(" left").subset([0, 1])
    pp = _pairs(model, 2)
    return _patch_cases(model, [
        (lr, "denoise", 10, lr.seq_len - 1),
        (lr, "denoise", 4, lr.dual_pos),
        (pp, "noise", 2, pp.dual_pos),
    ])


@torch.no_grad()
def _patch_every_position(model, target_tokens, source_cache, layer, pos, metric):
    name = f"blocks.{layer}.hook_resid_pre"
    logits = model.run_with_hooks(target_tokens, fwd_hooks=[(name, lambda act, hook: source_cache[name])])
    return metric(logits)


def _patch_other_position(model, target_tokens, source_cache, layer, pos, metric):
    other = (pos - 1) % target_tokens.shape[1]
    return D.patch_resid_pre(model, target_tokens, source_cache, layer, other, metric)


def _patched_at(name_format: str):
    """A mistake: the exercise's patch of position ``pos``, written to another hook (``name_format``)."""

    @torch.no_grad()
    def wrong(model, target_tokens, source_cache, layer, pos, metric):
        name = name_format.format(layer=layer)
        at_pos = torch.arange(target_tokens.shape[1], device=target_tokens.device)[None, :, None] == pos
        hook = lambda act, hook: torch.where(at_pos, source_cache[name], act)  # noqa: E731
        return metric(model.run_with_hooks(target_tokens, fwd_hooks=[(name, hook)]))

    return wrong


_patch_resid_post = _patched_at("blocks.{layer}.hook_resid_post")
_write_ln2_input = _patched_at("blocks.{layer}.hook_resid_mid")


register_check(
    "duality.patch_resid_pre",
    reference=D.patch_resid_pre,
    cases=_cases_resid_pre,
    hint=(
        'Hook the residual stream at the start of the layer; in the hook, work on a copy of the activation, '
        "put the source run's value at the given position, and return it. Run the target tokens with that "
        'hook (TransformerLens can attach it for one run only) and apply the metric to the logits.'
    ),
    mistakes={
        "every position was patched, not only `pos`": _patch_every_position,
        "the wrong position was patched": _patch_other_position,
        "resid_post was patched instead of resid_pre": _patch_resid_post,
    },
    atol=1e-3,
    needs=("model",),
    model=MODEL,
)

register_check(
    "duality.patch_resid_mid",
    reference=D.patch_resid_mid,
    cases=_cases_resid_mid,
    hint=(
        'In the bridge, the mid-layer residual hook only feeds the MLP; to change what the rest of the model '
        "sees, change the attention output instead: it must carry the source's mid-layer residual minus this "
        "run's residual at the start of the layer, which you capture with a second hook."
    ),
    mistakes={
        "the value was written to hook_resid_mid, which in the bridge is only the MLP's input "
        "(ln2.hook_in): the residual stream that flows on is unchanged": _write_ln2_input,
        "resid_pre was patched instead of resid_mid": D.patch_resid_pre,
    },
    atol=1e-3,
    needs=("model",),
    model=MODEL,
)


# ---------------------------------------------------------------------------
# 4.9 batched patching: each row at its own site
# ---------------------------------------------------------------------------


def _cases_patch_rows(**_):
    g = _generator(5)
    cases = []
    for n_prompts, n_sites, seq, d in ((2, 3, 5, 4), (3, 4, 7, 6), (1, 5, 5, 3)):
        source = torch.randn(n_prompts, seq, d, generator=g)
        act = torch.randn(n_prompts * n_sites, seq, d, generator=g)
        prompt_of_row = torch.arange(n_prompts).repeat(n_sites)
        position_of_row = torch.arange(n_sites).repeat_interleave(n_prompts) % seq
        if n_sites > 3:
            position_of_row = position_of_row.flip(0)
        cases.append(dict(act=act, source=source, prompt_of_row=prompt_of_row, position_of_row=position_of_row))
    return cases


def _rows_all_positions(act, source, prompt_of_row, position_of_row):
    return source[prompt_of_row].clone()


def _rows_first_position(act, source, prompt_of_row, position_of_row):
    return D.patch_rows(act, source, prompt_of_row, torch.full_like(position_of_row, int(position_of_row[0])))


def _rows_wrong_prompt(act, source, prompt_of_row, position_of_row):
    return D.patch_rows(act, source, torch.zeros_like(prompt_of_row), position_of_row)


register_check(
    "duality.patch_rows",
    reference=D.patch_rows,
    cases=_cases_patch_rows,
    hint=(
        'Each row gets its own patch position and its own source prompt. Indexing with two integer tensors of '
        'the same length picks one element per row: one assignment does it, with no loop (and on a copy).'
    ),
    mistakes={
        "every position of each row was patched, not only its own": _rows_all_positions,
        "every row was patched at the first row's position": _rows_first_position,
        "every row took the source of prompt 0 instead of its own prompt": _rows_wrong_prompt,
    },
)


# ---------------------------------------------------------------------------
# 4.10 patching one head
# ---------------------------------------------------------------------------


def _cases_head_z(**_):
    g = _generator(6)
    cases = []
    for batch, pos, heads, d, head in ((2, 9, 12, 8, 7), (3, 4, 5, 2, 1), (1, 12, 12, 4, 11)):
        cases.append(dict(z=torch.randn(batch, pos, heads, d, generator=g),
                          source_z=torch.randn(batch, pos, heads, d, generator=g), head=head))
    return cases


def _head_on_pos_axis(z, source_z, head):
    out = z.clone()
    out[:, head] = source_z[:, head]
    return out


register_check(
    "duality.patch_head_z",
    reference=D.patch_head_z,
    cases=_cases_head_z,
    hint=(
        "The activation's axes are batch, position, head, d_head. Replace one head's slice at every position "
        'and leave the other heads as they are (and do not edit the activation you were given).'
    ),
    mistakes={
        "the head index was used on the position axis (z[:, head])": _head_on_pos_axis,
        "every head was replaced": lambda z, source_z, head: source_z.clone(),
    },
)


# ---------------------------------------------------------------------------
# 4.11 a head's change of output (path patching's sender)
# ---------------------------------------------------------------------------


def _cases_delta(model):
    lr = _left_right(model).where_answer(" left").subset([0, 1, 2])
    pp = _pairs(model, 4)
    cases = []
    for prompts, layer, head in ((lr, 6, 1), (pp, 8, 6), (lr, 2, 11)):
        _, clean = _run(model, prompts.clean_tokens)
        _, corrupt = _run(model, prompts.corrupt_tokens)
        cases.append(dict(model=model, source_cache=corrupt, target_cache=clean, layer=layer, head=head))
    return cases


def _delta_all_heads(model, source_cache, target_cache, layer, head):
    z = source_cache[f"blocks.{layer}.attn.hook_z"] - target_cache[f"blocks.{layer}.attn.hook_z"]
    return torch.einsum("bphd,hdm->bpm", z, model.W_O[layer])


register_check(
    "duality.head_output_delta",
    reference=D.head_output_delta,
    cases=_cases_delta,
    hint=(
        "A head's contribution to the residual stream is its z (one vector per position) multiplied by its "
        "output matrix. Take the difference of the head's z between the two runs first; which run comes first "
        'decides the sign.'
    ),
    mistakes={
        "source and target are swapped (the sign is flipped)":
            lambda model, source_cache, target_cache, layer, head: -D.head_output_delta(model, source_cache, target_cache, layer, head),
        "the change of every head of the layer, summed": _delta_all_heads,
    },
    atol=1e-3,
    needs=("model",),
    model=MODEL,
)
