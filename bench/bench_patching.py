"""Benchmark: batched activation patching vs the one-forward-per-site loop.

Runs the same sweep (resid_pre of every layer x every position, denoising, on
the chapter-4 left/right prompts) with ``patching.patch_loop`` and
``patching.patch_sweep``, checks they agree, and prints in one run:

* the wall time of each and their ratio (loop / batched), for the default
  batched sweep and for one with ``skip_identical=False`` (batching and
  late starts only, every site run);
* the FLOPs the batched sweep actually executed (counted by
  ``torch.utils.flop_counter``) divided by its wall time, as a fraction of this
  machine's matmul throughput measured in the same run (a float32 GEMM of the
  MLP's shape).

Usage::

    nice .venv/bin/python bench/bench_patching.py [--prompts 4] [--device cpu] [--source standin]

Taught in: chapter 4 (batched patching).
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from exercises_lib import duality as D
from exercises_lib import patching as P
from benchlib import parser, sync
from exercises_lib.models import load_model


def matmul_flops_per_s(device: str, n: int = 2048, d: int = 768, m: int = 3072, repeats: int = 20) -> float:
    """Throughput of a float32 [n, d] @ [d, m] GEMM (the MLP's shape), in FLOP/s."""
    a = torch.randn(n, d, device=device)
    b = torch.randn(d, m, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * d * m * repeats / best


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--prompts", type=int, default=4, help="left-correct prompts in the sweep (max 8)")
    args = cli.parse_args()
    torch.set_grad_enabled(False)

    model = load_model("gpt2-small", device=args.device, source=args.source, quiet=True)
    sweep = D.left_right_prompts(model, " left").subset(list(range(min(args.prompts, 8))))
    metric = D.logit_diff_metric(sweep)
    hooks = P.resid_hook_names(model, "resid_pre")
    n_sites = len(hooks) * sweep.seq_len
    kw = dict(last_position_only=True, progress=False)
    print(f"model: {model.display_name} on {args.device}; threads: {torch.get_num_threads()}")
    print(f"sweep: {len(hooks)} hooks x {sweep.seq_len} positions = {n_sites} sites, {len(sweep)} prompts each")

    peak = matmul_flops_per_s(args.device)
    P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks[:1], metric, **kw)  # warm-up
    looped, t_loop = timed(lambda: P.patch_loop(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric, **kw), args.device)
    batched, t_batch = timed(lambda: P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric, **kw), args.device)
    every, t_every = timed(lambda: P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric,
                                                 skip_identical=False, **kw), args.device)
    err = max(float((batched - looped).abs().max()), float((every - looped).abs().max()))
    with FlopCounterMode(display=False) as counter:
        P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric, **kw)
    flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter_every:
        P.patch_sweep(model, sweep.clean_tokens, sweep.corrupt_tokens, hooks, metric, skip_identical=False, **kw)
    flops_every = counter_every.get_total_flops()

    print(f"max |batched - loop| = {err:.2e} (metric scale {float(looped.abs().max()):.1f})")
    print(f"matmul throughput ({args.device}, float32 2048x768 @ 768x3072): {peak / 1e9:.1f} GFLOP/s")
    print(f"loop (one forward per site):           {t_loop:8.2f} s")
    print(f"batched (default):                     {t_batch:8.2f} s   speed-up x{t_loop / t_batch:.1f}   "
          f"{flops / 1e9:.0f} GFLOP, {flops / t_batch / 1e9:.1f} GFLOP/s = {flops / t_batch / peak:.0%} of matmul")
    print(f"batched (skip_identical=False):        {t_every:8.2f} s   speed-up x{t_loop / t_every:.1f}   "
          f"{flops_every / 1e9:.0f} GFLOP, {flops_every / t_every / 1e9:.1f} GFLOP/s = {flops_every / t_every / peak:.0%} of matmul")
    assert err < 1e-2 * max(1.0, float(looped.abs().max())), "batched and loop sweeps disagree"


if __name__ == "__main__":
    main()
