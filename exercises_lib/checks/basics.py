"""Checks of chapter 0's exercise."""

import torch

from exercises_lib.basics import attention_entropy
from exercises_lib.checks import random_pattern, register_check


def _cases():
    one_hot = torch.eye(5)[None]  # rows with exact zeros: 0 log 0 must count as 0
    return [{"pattern": random_pattern(4, 6, seed=0)}, {"pattern": one_hot}, {"pattern": random_pattern(2, 3, 9, seed=1)}]


register_check(
    "basics.attention_entropy",
    reference=attention_entropy,
    cases=_cases,
    hint=(
        'The entropy of a distribution adds, over its outcomes, minus each probability times its natural '
        'logarithm; here the outcomes are the sources (the last dimension). A zero probability contributes '
        'nothing, but its logarithm is -inf: keep it out of the log.'
    ),
    mistakes={
        "the entropy in bits (log base 2) instead of nats": lambda pattern: -(pattern * pattern.clamp_min(1e-30).log2()).sum(-1),
        "a missing minus sign": lambda pattern: (pattern * pattern.clamp_min(1e-30).log()).sum(-1),
        "a sum over the destination dimension instead of the source": lambda pattern: -(pattern * pattern.clamp_min(1e-30).log()).sum(-2),
    },
)
