"""The fast path of batched patching: running a TransformerBridge block by block.

:func:`exercises_lib.patching.patch_sweep` lets each site's rows join the
batch at the block they patch, starting from the target run's cached residual
stream: the blocks before a patched layer are the unpatched run's, so they are
not computed again (:func:`forward_staggered`). This bypasses the bridge's own
``forward`` and relies on four things of TransformerLens 4's
``TransformerBridge`` (compatibility mode, GPT-2-style models):

* ``model.blocks[l](x)`` maps the residual stream entering block ``l``
  (``blocks.{l}.hook_resid_pre``, ``[batch, pos, d_model]``) to the stream
  leaving it, returned as a tensor or as a tuple whose first element it is;
  the block needs nothing else from the top-level forward pass (no position
  ids, no attention mask: the prompts are unpadded and causal masking happens
  inside the attention);
* ``model.ln_final(x)`` then ``model.unembed(x)`` turn the last block's output
  into the logits exactly as ``model(tokens)`` does;
* hooks added with ``model.hooks(fwd_hooks=...)`` fire inside blocks called
  directly, under the same hook names as in a full forward pass;
* ``blocks.{l}.hook_resid_pre`` and ``blocks.{L-1}.hook_resid_post`` of a
  cached run hold those residual streams.

:func:`fast_path_agrees` checks the whole contract on the first sweep of each
model (blocks one by one from the cache must give the model's own logits) and
``patch_sweep`` falls back to full forward passes, with a warning, if it does
not hold. ``tests/test_patching_fast_path.py`` fails when a TransformerLens
release breaks it, so the fallback is never silently taken.

Taught in: chapter 4 (the duality circuit), where batched patching is introduced.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor

__all__ = ["forward_staggered", "fast_path_agrees"]


def forward_staggered(
    model,
    row_starts: list[int],
    resid: dict[int, Tensor],
    rows_prompt: Tensor,
    fwd_hooks: list,
    last_position_only: bool,
) -> Tensor:
    """Logits of a pass whose rows enter the model at different blocks.

    Row ``r`` starts at block ``row_starts[r]`` (non-decreasing in ``r``) from
    the cached residual stream ``resid[start][rows_prompt[r]]``. At block ``l``
    the batch holds the rows that started at or before ``l``; they are a prefix
    of all rows, so a hook's absolute row indices stay valid as rows join.
    ``row_starts`` may hold ``n_layers`` (rows patched after the last block).
    """
    n_layers = model.cfg.n_layers
    counts = torch.bincount(torch.as_tensor(row_starts), minlength=n_layers + 1).tolist()
    first = row_starts[0]
    with model.hooks(fwd_hooks=fwd_hooks):
        x = None
        joined = 0
        for layer in range(first, n_layers + 1):
            if counts[layer]:
                new = resid[layer][rows_prompt[joined : joined + counts[layer]]]
                x = new if x is None else torch.cat([x, new])
                joined += counts[layer]
            if layer == n_layers:
                break
            out = model.blocks[layer](x)
            x = out[0] if isinstance(out, tuple) else out
        x = model.ln_final(x)  # before slicing: hooks in ln_final see every position
        return model.unembed(x[:, -1:] if last_position_only else x)


#: Per model object: whether its blocks run one by one reproduce its forward pass.
#: A property of the model's code, not of its weights or device, so it cannot go
#: stale; the entry goes with the model.
_AGREES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fast_path_agrees(model, target: Tensor, resid: dict[int, Tensor], logits: Tensor) -> bool:
    """Whether running blocks one by one from ``resid`` reproduces ``logits``, the model's
    logits on ``target``; checked once per model (on its first sweep's prompts)."""
    if model in _AGREES:
        return _AGREES[model]
    starts = [s for s in resid if s < model.cfg.n_layers]
    if not starts:
        return True
    rows = torch.arange(target.shape[0], device=target.device)
    again = forward_staggered(model, [min(starts)] * len(rows), resid, rows, [], False)
    tol = 1e-3 * max(1.0, float(logits.abs().max()))
    ok = bool((again - logits).abs().max() <= tol)
    _AGREES[model] = ok
    if not ok:
        warnings.warn("running the blocks one by one does not reproduce this model's logits: "
                      "patch_sweep falls back to full forward passes", stacklevel=3)
    return ok
