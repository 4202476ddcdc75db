"""Checks of chapter 3's exercises (a polysemantic attention head)."""

from __future__ import annotations

import torch

from exercises_lib import code_prompts
from exercises_lib import polysemantic as P
from exercises_lib.checks import random_pattern, register_check

# ---------------------------------------------------------------------------
# indentation_depths
# ---------------------------------------------------------------------------

_GPT2_STYLE = ["def", " f", "():", "\n", " ", " ", " ", " return", " x", "\n", "\n", "y", " =", " ", " 1"]
_NEOX_STYLE = ["class", " A", ":", "\n   ", " def", " f", "():", "\n       ", " pass", "\n\n   ", " x", " =", "  ", " 2"]
_MIXED = ["if", " x", ":", "\n", "\t", " y", "\n  ", " ", " z", "  ", "#", " c", " \n", "    ", "w", "\n\n", "\n"]


def _depth_cases(**_):
    return [{"str_tokens": _GPT2_STYLE}, {"str_tokens": _NEOX_STYLE}, {"str_tokens": _MIXED}]


def _width(whitespace: str) -> int:
    return whitespace.count(" ") + 4 * whitespace.count("\t")


def _depths_only_newline_tokens(str_tokens):
    out = []
    for s in str_tokens:
        if s and s.strip(" \t\r\n") == "" and "\n" in s:
            out.append(_width(s.rsplit("\n", 1)[1]))
        else:
            out.append(-1)
    return out


def _depths_any_whitespace(str_tokens):
    depths, depth = [], 0
    for s in str_tokens:
        if s and s.strip(" \t\r\n") == "":
            depth = _width(s.rsplit("\n", 1)[1]) if "\n" in s else depth + _width(s)
            depths.append(depth)
        else:
            depth = 0
            depths.append(-1)
    return depths


def _depths_whole_token(str_tokens):
    out = P.indentation_depths(str_tokens)
    return [_width(s) if d >= 0 and "\n" in s else d for s, d in zip(str_tokens, out)]


register_check(
    "polysemantic.indentation_depths",
    reference=P.indentation_depths,
    cases=_depth_cases,
    hint=(
        "Walk through the tokens keeping a flag 'still in the leading whitespace of a line'. A "
        'whitespace-only token containing a newline starts a line (depth = spaces after its last newline); a '
        'whitespace-only token while the flag is set adds its spaces; any other token clears the flag and '
        'gets -1.'
    ),
    mistakes={
        "only tokens containing a newline count (GPT-2 writes indentation one space per token)": _depths_only_newline_tokens,
        "whitespace in the middle of a line counted as indentation": _depths_any_whitespace,
        "spaces before the newline counted too": _depths_whole_token,
    },
)

# ---------------------------------------------------------------------------
# induction_mask
# ---------------------------------------------------------------------------


def _mask_cases(**_):
    g = torch.Generator().manual_seed(1)
    return [
        {"tokens": torch.tensor([50256, 7, 3, 9, 7, 3, 5, 9, 7, 2])},
        {"tokens": torch.randint(0, 6, (30,), generator=g)},
        {"tokens": torch.randint(0, 3, (17,), generator=g)},
    ]


def _mask_copies(tokens):
    n = tokens.shape[0]
    idx = torch.arange(n)
    return (tokens[None, :] == tokens[:, None]) & (idx[None, :] < idx[:, None])


def _mask_not_causal(tokens):
    n = tokens.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:, 1:] = tokens[None, :-1] == tokens[:, None]
    return mask


def _mask_token_before(tokens):
    n = tokens.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:, :-1] = tokens[None, 1:] == tokens[:, None]
    idx = torch.arange(n)
    return mask & (idx[None, :] < idx[:, None])


register_check(
    "polysemantic.induction_mask",
    reference=P.induction_mask,
    cases=_mask_cases,
    hint=(
        "An induction head attends to the token AFTER an earlier copy of the current token: the source's "
        "previous token equals the destination's token. Only sources strictly before the destination, and "
        'never BOS.'
    ),
    mistakes={
        "off by one: the earlier copies themselves are marked, not the tokens after them": _mask_copies,
        "sources at or after the destination are marked (keep s < d)": _mask_not_causal,
        "the token before the copy is marked (tokens[s + 1] == tokens[d])": _mask_token_before,
    },
)

# ---------------------------------------------------------------------------
# behaviour_masses
# ---------------------------------------------------------------------------


def _masses_cases(**_):
    g = torch.Generator().manual_seed(2)
    toks = ["<|endoftext|>", "def", " f", "():", "\n", " ", " ", " ", " if", " x", ":", "\n", " ", " ", " ", " ", " ", " ", " ", " f", "():", "\n", " ", " ", " "]
    ids = torch.tensor([50256, 5, 6, 7, 8, 9, 9, 9, 10, 11, 12, 8, 9, 9, 9, 9, 9, 9, 9, 6, 7, 8, 9, 9, 9])
    depths = torch.tensor(P.indentation_depths(toks))
    neox = ["<|endoftext|>", "if", " a", ":", "\n    ", " b", "\n", "c", "\n    ", " d", " b", "\n"]
    ids2 = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 4, 8, 5, 6])
    ids3 = torch.randint(0, 4, (14,), generator=g)
    depths3 = torch.randint(-1, 5, (14,), generator=g)
    return [
        {"pattern": random_pattern(len(toks), seed=20, scale=2.0), "tokens": ids, "depths": depths},
        {"pattern": random_pattern(3, 12, seed=21, scale=2.0), "tokens": ids2, "depths": torch.tensor(P.indentation_depths(neox))},
        {"pattern": random_pattern(2, 3, 14, seed=22, scale=2.0), "tokens": ids3, "depths": depths3},
    ]


def _masses_double_count(pattern, tokens, depths):
    m = P.behaviour_masses(pattern, tokens, depths)
    ind = P.induction_mask(tokens).float()
    ind[:, 0] = 0
    m[..., 2] = (pattern * ind).sum(-1)
    return m


def _masses_bos_as_previous(pattern, tokens, depths):
    m = P.behaviour_masses(pattern, tokens, depths)
    m[..., 1, 1] = pattern[..., 1, 0]
    return m


def _masses_indent_any_dest(pattern, tokens, depths):
    d = depths.clone()
    d[d < 0] = 0
    return P.behaviour_masses(pattern, tokens, d)


register_check(
    "polysemantic.behaviour_masses",
    reference=P.behaviour_masses,
    cases=_masses_cases,
    hint=(
        'Build one [destination, source] mask per kind of source: BOS, the previous token, induction sources '
        '(not BOS, not the previous token), and deeper-indented earlier sources (none of the others). Each '
        'source counts in the first kind it belongs to; sum the pattern under each mask over the sources.'
    ),
    mistakes={
        "the previous token is counted again as an induction source (a source counts once)": _masses_double_count,
        "at position 1 the previous token (BOS) is counted as 'previous' instead of 'bos'": _masses_bos_as_previous,
        "bigger indentation counted at destinations that are not newline+indent tokens": _masses_indent_any_dest,
    },
)

# ---------------------------------------------------------------------------
# classify_behaviour
# ---------------------------------------------------------------------------


def _classify_cases(**_):
    g = torch.Generator().manual_seed(3)
    m1 = torch.rand(12, 4, generator=g).softmax(-1) * 1.6
    m1[0] = torch.tensor([0.5, 0.3, 0.1, 0.1])  # exactly at the thresholds
    m1[1] = torch.tensor([0.1, 0.2, 0.3, 0.25])
    m1[2] = torch.tensor([0.6, 0.35, 0.0, 0.0])  # BOS wins over previous
    m2 = torch.rand(3, 7, 4, generator=g)
    m2[..., 0] *= 0.9
    return [
        {"masses": m1},
        {"masses": m2, "bos_threshold": 0.7, "min_mass": 0.45},
        {"masses": torch.tensor([0.2, 0.1, 0.15, 0.5])},
    ]


def _classify_behaviour_first(masses, bos_threshold=0.5, min_mass=0.3):
    labels = P.classify_behaviour(masses, bos_threshold=2.0, min_mass=min_mass)
    fallback = P.classify_behaviour(masses, bos_threshold=bos_threshold, min_mass=min_mass)

    def merge(a, b):
        if isinstance(a, list):
            return [merge(x, y) for x, y in zip(a, b)]
        return b if (a == "unknown" and b == "inactive") else a

    return merge(labels, fallback)


def _classify_no_unknown(masses, bos_threshold=0.5, min_mass=0.3):
    return P.classify_behaviour(masses, bos_threshold=bos_threshold, min_mass=0.0)


def _classify_strict(masses, bos_threshold=0.5, min_mass=0.3):
    return P.classify_behaviour(masses, bos_threshold=bos_threshold + 1e-6, min_mass=min_mass + 1e-6)


register_check(
    "polysemantic.classify_behaviour",
    reference=P.classify_behaviour,
    cases=_classify_cases,
    hint=(
        "Check for 'inactive' first (BOS mass at or above its threshold); otherwise the behaviour with the "
        "largest mass wins if that mass reaches min_mass, else the label is 'unknown'. Keep one label per row "
        "in the input's layout (a plain string for a single row)."
    ),
    mistakes={
        "the behaviours are tested before BOS (inactive must win when BOS >= bos_threshold)": _classify_behaviour_first,
        "min_mass is ignored (nothing is ever 'unknown')": _classify_no_unknown,
        "strict > instead of >= at the thresholds": _classify_strict,
    },
)

# ---------------------------------------------------------------------------
# behaviour_table
# ---------------------------------------------------------------------------


def _table_cases(**_):
    import random

    rng = random.Random(4)
    toks = ["\n   ", " R", " dict", " width", "("]
    labels = [rng.choice(P.BEHAVIOURS) for _ in range(60)]
    dests = [rng.choice(toks) for _ in range(60)]
    labels2 = [rng.choice(P.BEHAVIOURS[:3]) for _ in range(25)]
    dests2 = [rng.choice(toks[:2]) for _ in range(25)]
    return [
        {"labels": labels, "dest_tokens": dests, "groups": [None, "\n   ", " R", " dict"]},
        {"labels": labels2, "dest_tokens": dests2, "groups": [" R", None, " missing"]},
    ]


def _table_counts(labels, dest_tokens, groups):
    t = P.behaviour_table(labels, dest_tokens, groups)
    sizes = torch.tensor([sum(1 for d in dest_tokens if g is None or d == g) for g in groups], dtype=torch.float)
    return t * sizes[:, None]


def _table_by_column(labels, dest_tokens, groups):
    counts = _table_counts(labels, dest_tokens, groups)
    return counts / counts.sum(0, keepdim=True).clamp_min(1)


def _table_sorted_columns(labels, dest_tokens, groups):
    t = P.behaviour_table(labels, dest_tokens, groups)
    order = sorted(range(len(P.BEHAVIOURS)), key=lambda i: P.BEHAVIOURS[i])
    return t[:, order]


register_check(
    "polysemantic.behaviour_table",
    reference=P.behaviour_table,
    cases=_table_cases,
    hint=(
        'For each group, look only at the positions whose destination token belongs to it (every position for '
        'None) and give the fraction of each label among them, columns in BEHAVIOURS order; an empty group is '
        'a row of zeros.'
    ),
    mistakes={
        "counts instead of fractions": _table_counts,
        "each behaviour (column) normalised instead of each group (row)": _table_by_column,
        "columns in alphabetical order instead of BEHAVIOURS order": _table_sorted_columns,
    },
)

# ---------------------------------------------------------------------------
# prompt_and_answer
# ---------------------------------------------------------------------------


def _prompt_cases(model, **_):
    return [
        {"model": model, "texts": code_prompts.induction_texts(model, n=4, seed=0)},
        {"model": model, "texts": code_prompts.previous_texts(model, n=3, seed=1)},
        {"model": model, "texts": code_prompts.indentation_texts(model, n=2, seed=2)},
    ]


def _prompt_keeps_answer(model, texts):
    tokens = torch.stack([model.to_tokens(t)[0] for t in texts])
    return tokens, tokens[:, -1]


def _prompt_no_bos(model, texts):
    tokens = torch.stack([model.to_tokens(t, prepend_bos=False)[0] for t in texts])
    return tokens[:, :-1], tokens[:, -1]


def _prompt_off_by_one(model, texts):
    tokens = torch.stack([model.to_tokens(t)[0] for t in texts])
    return tokens[:, :-1], tokens[:, -2]


register_check(
    "polysemantic.prompt_and_answer",
    reference=P.prompt_and_answer,
    cases=_prompt_cases,
    hint=(
        'Tokenize each text with BOS first; the last token is the answer and everything before it is the '
        'prompt. Stack the prompts into one tensor.'
    ),
    mistakes={
        "the prompt still ends with the answer": _prompt_keeps_answer,
        "no BOS token at the start (model.to_tokens prepends it)": _prompt_no_bos,
        "off by one: the answer is the prompt's last token, not the token after it": _prompt_off_by_one,
    },
    needs=("model",),
    model="attn-only-4l",
)

# ---------------------------------------------------------------------------
# bos_ablation_hook
# ---------------------------------------------------------------------------


def _hook_cases(**_):
    cases = [
        {"pattern": random_pattern(2, 4, 8, seed=50, scale=2.0), "hook": None, "head": 1, "dest_positions": 7},
        {"pattern": random_pattern(5, 3, 9, seed=51, scale=2.0), "hook": None, "head": 2, "dest_positions": torch.tensor([8, 3, 0, 5, 8])},
        {"pattern": random_pattern(3, 6, 6, seed=52, scale=2.0), "hook": None, "head": 0, "dest_positions": torch.tensor([5, 1, 2])},
    ]
    for case in cases:  # the hook may work in place: keep a copy of the input for the diagnoses
        case["pattern"]._original = case["pattern"].clone()
    return cases


def _fresh(pattern):
    return getattr(pattern, "_original", pattern).clone()


def _positions(pattern, dest_positions):
    return torch.as_tensor(dest_positions).expand(pattern.shape[0])


def _hook_reference(pattern, hook, head, dest_positions):
    return P.bos_ablation_hook(_fresh(pattern), hook, head, dest_positions)


def _hook_source_column(pattern, hook, head, dest_positions):
    p = _fresh(pattern)
    for b, d in enumerate(_positions(p, dest_positions).tolist()):
        p[b, head, :, d] = 0.0
        p[b, head, :, 0] = 1.0
    return p


def _hook_not_renormalised(pattern, hook, head, dest_positions):
    p = _fresh(pattern)
    for b, d in enumerate(_positions(p, dest_positions).tolist()):
        p[b, head, d, 0] = 1.0
    return p


def _hook_zero_row(pattern, hook, head, dest_positions):
    p = _fresh(pattern)
    for b, d in enumerate(_positions(p, dest_positions).tolist()):
        p[b, head, d] = 0.0
    return p


def _hook_all_heads(pattern, hook, head, dest_positions):
    p = _fresh(pattern)
    for b, d in enumerate(_positions(p, dest_positions).tolist()):
        p[b, :, d] = 0.0
        p[b, :, d, 0] = 1.0
    return p


def _hook_previous_position(pattern, hook, head, dest_positions):
    p = _fresh(pattern)
    for b, d in enumerate(_positions(p, dest_positions).tolist()):
        p[b, head, max(d - 1, 0)] = 0.0
        p[b, head, max(d - 1, 0), 0] = 1.0
    return p


register_check(
    "polysemantic.bos_ablation_hook",
    reference=_hook_reference,
    cases=_hook_cases,
    hint=(
        "For each batch element, the head's row of its destination position should attend only to BOS: clear "
        'that row and put all its weight on source 0. Other heads and rows stay as they are; the destination '
        'may be one number for the whole batch or one per element.'
    ),
    mistakes={
        "the ablation hits the source column instead of the destination row": _hook_source_column,
        "not renormalised: BOS set to 1 but the rest of the row kept (it no longer sums to 1)": _hook_not_renormalised,
        "the row is zeroed but BOS is not set to 1 (the head then writes nothing, not BOS's value)": _hook_zero_row,
        "every head is ablated, not only `head`": _hook_all_heads,
        "the wrong position: dest_positions - 1": _hook_previous_position,
    },
)

# ---------------------------------------------------------------------------
# clean_vs_ablated and ablation_sweep (on the model)
# ---------------------------------------------------------------------------


def _prompt_sets(model, seed, sizes):
    return code_prompts.make_prompt_sets(model, sizes=sizes, seed=seed)


def _ablated_hooks(layer, head, dest_positions):
    return [(f"blocks.{layer}.attn.hook_pattern", lambda p, hook: P.bos_ablation_hook(p, hook, head, dest_positions))]


def _table_model_cases(model, **_):
    sets = _prompt_sets(model, 0, {"induction": 8, "indentation": 4, "previous": 6})
    ind, prev = sets["induction"], sets["previous"]
    return [
        {"model": model, "tokens": ind.tokens, "answers": ind.answers, "layer": 1, "head": 4},
        {"model": model, "tokens": prev.tokens, "answers": prev.answers, "layer": 1, "head": 4},
        {"model": model, "tokens": ind.tokens[:4], "answers": ind.answers[:4], "layer": 0, "head": 7},
    ]


def _cva_wrong_position(model, tokens, answers, layer, head):
    out = torch.zeros(2, 2)
    dest = tokens.shape[1] - 1
    for i, hooks in enumerate([[], _ablated_hooks(layer, head, dest)]):
        correct, p = P._answer_probs(P.logits_at(model, tokens, dest - 1, hooks), answers)
        out[i, 0], out[i, 1] = correct.mean(), p.mean()
    return out


def _cva_ablate_previous_position(model, tokens, answers, layer, head):
    out = torch.zeros(2, 2)
    dest = tokens.shape[1] - 1
    for i, hooks in enumerate([[], _ablated_hooks(layer, head, dest - 1)]):
        correct, p = P._answer_probs(P.logits_at(model, tokens, dest, hooks), answers)
        out[i, 0], out[i, 1] = correct.mean(), p.mean()
    return out


def _cva_logits(model, tokens, answers, layer, head):
    out = torch.zeros(2, 2)
    dest = tokens.shape[1] - 1
    for i, hooks in enumerate([[], _ablated_hooks(layer, head, dest)]):
        logits = P.logits_at(model, tokens, dest, hooks)
        out[i, 0] = (logits.argmax(-1) == answers).float().mean()
        out[i, 1] = logits[torch.arange(len(answers)), answers].mean()
    return out


register_check(
    "polysemantic.clean_vs_ablated",
    reference=P.clean_vs_ablated,
    cases=_table_model_cases,
    hint=(
        'Read the prediction at the last position twice: once on the plain model, once with the BOS-ablation '
        "hook on the head's pattern at that position (attached for that run only). Accuracy compares the top "
        "prediction with the answer; probability is the softmax's value at the answer."
    ),
    mistakes={
        "the prediction is read one position too early": _cva_wrong_position,
        "the head is ablated at the position before the destination": _cva_ablate_previous_position,
        "mean logit instead of mean probability": _cva_logits,
    },
    atol=2e-3,
    rtol=1e-3,
    needs=("model",),
    model="attn-only-4l",
)


def _sweep_cases(model, **_):
    sets = _prompt_sets(model, 1, {"induction": 3, "indentation": 4, "previous": 2})
    ind, prev = sets["induction"], sets["previous"]
    return [
        {"model": model, "tokens": ind.tokens, "answers": ind.answers, "layer": 1, "head": 4},
        {"model": model, "tokens": prev.tokens, "answers": prev.answers, "layer": 1, "head": 4},
    ]


def _sweep_sign(model, tokens, answers, layer, head, batch_size=512):
    return -P.ablation_sweep(model, tokens, answers, layer, head, batch_size)


def _sweep_shifted(model, tokens, answers, layer, head, batch_size=512):
    d = P.ablation_sweep(model, tokens, answers, layer, head, batch_size)
    return torch.cat([d[1:], torch.zeros(1)])


def _sweep_logprob(model, tokens, answers, layer, head, batch_size=512):
    n, seq = tokens.shape
    rows = torch.arange(n)
    clean = P.logits_at(model, tokens, seq - 1).log_softmax(-1)[rows, answers]
    drops = []
    for j in range(seq):
        abl = P.logits_at(model, tokens, seq - 1, _ablated_hooks(layer, head, j)).log_softmax(-1)[rows, answers]
        drops.append((clean - abl).mean())
    return torch.stack(drops)


register_check(
    "polysemantic.ablation_sweep",
    reference=P.ablation_sweep,
    cases=_sweep_cases,
    hint=(
        'One copy of each prompt per position, each copy ablated at its own position, so the whole sweep is a '
        'few batched forward passes; the hook must then take one destination per row. The drop is the clean '
        'probability of the answer minus the ablated one, averaged over prompts.'
    ),
    mistakes={
        "the sign is flipped (ablated minus clean)": _sweep_sign,
        "off by one: drop[j] comes from ablating position j + 1": _sweep_shifted,
        "drop of the log-probability instead of the probability": _sweep_logprob,
    },
    atol=2e-3,
    rtol=1e-3,
    needs=("model",),
    model="attn-only-4l",
)
