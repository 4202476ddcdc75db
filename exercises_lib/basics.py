"""Small tools used from chapter 0 on.

Taught in: chapter 0 (setup check).
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

__all__ = ["attention_entropy"]


def attention_entropy(pattern: Float[Tensor, "... dest src"]) -> Float[Tensor, "... dest"]:
    """Entropy (in nats) of each attention row: ``H = -sum_j a_j log a_j``, with ``0 log 0 = 0``.

    A head that attends to one token has entropy 0; one spread evenly over
    ``n`` tokens has ``log n``.
    """
    # SOLUTION: sum -a log a over the last dimension; clamp before the log
    return -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)
    # END SOLUTION
