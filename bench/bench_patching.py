"""Benchmark: the course's patching sweeps against TransformerLens's, and against the FLOP limit.

For every sweep chapter 4 teaches (resid_pre, resid_mid, attention-head
outputs, MLP outputs, head by position, path patching), on chapter 4's
left-correct dual-word prompts, in ONE process, this script runs

* the peer: TransformerLens's own function from ``transformer_lens.patching``
  (``get_act_patch_resid_pre``, ``get_act_patch_attn_head_out_all_pos``...),
  or, where it has none, the natural TransformerLens hook loop (one
  ``run_with_hooks`` per site); the peer's time includes the ``run_with_cache``
  calls its API needs;
* the course: the call the chapter makes (``patching.patch_sweep``; for path
  patching ``patching.path_patch_sweep``, which batches ``path_patch`` over
  receivers);

interleaved (peer and course of one sweep back to back, their order
alternating between rounds) and repeated ``--rounds`` times, with the
reference matmul (float32 2048x768 @ 768x3072, both as ``torch.mm`` and as the
course's own product, oneDNN's kernel on CPUs) timed before every sweep of
every round. It checks that peer and course give the same numbers and prints,
per sweep: the median peer and course times, their ratio (median and worst
of the rounds, each ratio measured within one round), the FLOP limit and the
course's time against it, and the peak extra memory of each method.

The FLOP limit counts the work the sweep truly needs: a patch at layer L
whose value first differs from the target run's at position p leaves every
earlier layer and every earlier position as in the target run, so only
layers >= L at positions >= p are recomputed (attending to the cached keys
and values of earlier positions), starting inside layer L where the patched
activation sits (after the attention for ``hook_z``, the MLP for
``resid_mid``, the next layer for ``mlp_out``); sites whose source and target
activations are equal need nothing; the unembedding runs at the metric's
position only (the last; for ``patch_sweep``'s defaults, which hand the
metric every position, at every position a patch changes). The two reference runs (clean and corrupted, every
position, every layer) are added once per sweep. Matmuls count 2 FLOPs per
multiply-add; LayerNorms, softmax and biases are not counted. The limit's
time is that count at the matmul rate measured in the same round, the faster
of the two kernels.

Memory: each method runs once more (untimed) under a probe that reads the C
heap in use (glibc ``mallinfo2``) after every ATen operation (CUDA:
``torch.cuda.max_memory_allocated``); the figure is the peak over the value
before the call, so it counts the sweep's own tensors, not the model.

Usage::

    .venv/bin/python bench/bench_patching.py [--prompts 4] [--rounds 3] [--sweeps all] [--device cpu]

Taught in: chapter 4 (batched patching).
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch

from benchlib import matmul_flops_per_s, parser, peak_extra_bytes, sync, timed
from exercises_lib import duality as D
from exercises_lib import patching as P
from exercises_lib.models import load_model

SWEEPS = ("resid_pre", "resid_pre_default", "resid_mid", "head_out", "mlp_out", "head_by_pos", "path")


# ---------------------------------------------------------------------------
# The FLOP limit
# ---------------------------------------------------------------------------


def layer_flops(cfg, stage: str, p0: int, seq: int) -> float:
    """FLOPs of one layer for one prompt, positions p0..seq-1 recomputed, from ``stage`` on:
    ``pre`` (the whole layer), ``o`` (attention output projection and MLP), ``mlp`` (MLP only)."""
    d, dm = cfg.d_model, cfg.d_mlp
    n = seq - p0
    keys = sum(i + 1 for i in range(p0, seq))  # each new query attends to every earlier position
    qkv, att, o, mlp = 2 * n * d * 3 * d, 2 * 2 * d * keys, 2 * n * d * d, 2 * 2 * n * d * dm
    return {"pre": qkv + att + o + mlp, "o": o + mlp, "mlp": mlp}[stage]


def site_flops(cfg, layer: int, stage: str, p0: int | None, seq: int, every_position: bool = False) -> float:
    """FLOPs one prompt needs for one site (None: the site changes nothing); the unembedding at the
    metric's position, or (``every_position``: the metric is handed every position) at every
    position the patch changes."""
    if p0 is None:
        return 0.0
    total = 2 * cfg.d_model * cfg.d_vocab * ((seq - p0) if every_position else 1)
    if stage == "final":
        return total
    if stage == "post":
        layer, stage = layer + 1, "pre"
    for lay in range(layer, cfg.n_layers):
        total += layer_flops(cfg, stage if lay == layer else "pre", p0, seq)
    return total


def reference_flops(cfg, seq: int, every_position: bool = False) -> float:
    """The clean and corrupted runs, every position of every layer, plus the target run's
    unembedding at the metric's position (``every_position``: at every position)."""
    return 2 * cfg.n_layers * layer_flops(cfg, "pre", 0, seq) + 2 * cfg.d_model * cfg.d_vocab * (
        seq if every_position else 1)


def first_diff(a: torch.Tensor, b: torch.Tensor, pos_axis: int = 1) -> int | None:
    """First position where ``a`` and ``b`` differ for any prompt (None: they are equal)."""
    differ = (a != b).movedim(pos_axis, 0).reshape(a.shape[pos_axis], -1).any(-1)
    idx = differ.nonzero()
    return None if len(idx) == 0 else int(idx[0])


# ---------------------------------------------------------------------------
# The sweeps: (peer, course, how to compare, limit)
# ---------------------------------------------------------------------------


def build_sweeps(model, ps, metric, chosen, stride: int = 1):
    import pandas as pd
    import transformer_lens.patching as tlp

    cfg = model.cfg
    L, H, S = cfg.n_layers, cfg.n_heads, ps.seq_len
    clean, corrupt = ps.clean_tokens, ps.corrupt_tokens
    dual, last = ps.dual_pos, S - 1
    _, cc = model.run_with_cache(clean)  # for the limit's site counts only
    _, kc = model.run_with_cache(corrupt)
    kw = dict(last_position_only=True, progress=False)
    out = {}

    def cache_of(tokens, names):
        wanted = set(names)
        return model.run_with_cache(tokens, names_filter=lambda n: n in wanted)[1]

    def peer_of(activation_name, setter, index, src_cache):
        """TransformerLens's generic_activation_patch over every ``stride``-th row of ``index``."""
        sub = index.iloc[::stride].reset_index(drop=True)

        def run():
            t0 = time.perf_counter()
            cache = src_cache()
            sync(model.cfg.device)
            run.cache_s = time.perf_counter() - t0
            return tlp.generic_activation_patch(model, corrupt, cache, metric, patch_setter=setter,
                                                activation_name=activation_name, index_df=sub)

        return run, list(range(0, len(index), stride)), len(index) / len(sub)

    def grid(*axes):
        names, ranges = zip(*axes)
        import itertools
        return pd.DataFrame(list(itertools.product(*ranges)), columns=list(names))

    # resid_pre: layer x position, denoising (clean into the corrupted run).
    pre = P.resid_hook_names(model, "resid_pre")
    limit = sum(site_flops(cfg, l, "pre", p if not torch.equal(cc[pre[l]][:, p], kc[pre[l]][:, p]) else None, S)
                for l in range(L) for p in range(S))
    peer = peer_of("resid_pre", tlp.layer_pos_patch_setter, grid(("layer", range(L)), ("pos", range(S))),
                   lambda: cache_of(clean, pre))
    out["resid_pre"] = dict(
        what=f"resid_pre, {L} layers x {S} positions",
        peer_name="get_act_patch_resid_pre (= generic_activation_patch, layer_pos_patch_setter)", peer=peer,
        course=lambda: P.patch_sweep(model, clean, corrupt, pre, metric, **kw), limit=limit)
    # With its defaults patch_sweep hands the metric every position's logits: the metric could read any
    # of them, so every position a patch changes is unembedded, and the limit counts that.
    every = sum(site_flops(cfg, l, "pre", p if not torch.equal(cc[pre[l]][:, p], kc[pre[l]][:, p]) else None, S,
                           every_position=True) for l in range(L) for p in range(S))
    out["resid_pre_default"] = dict(
        what="resid_pre, patch_sweep's defaults (the metric gets the logits at every position; so does the limit)",
        peer_name="(the row above)", peer=None,
        course=lambda: P.patch_sweep(model, clean, corrupt, pre, metric, progress=False), limit=every,
        every_position=True)

    # resid_mid: TransformerLens's get_act_patch_resid_mid writes the bridge's hook_resid_mid, an alias
    # of ln2.hook_in (the MLP's input only); the residual stream itself is patched through hook_attn_out.
    mid = P.resid_hook_names(model, "resid_mid")
    attn_out = P.resid_hook_names(model, "attn_out")

    def mid_cache():
        src = cache_of(clean, mid)
        tgt = cache_of(corrupt, pre)
        return {attn_out[l]: src[mid[l]] - tgt[pre[l]] for l in range(L)}

    limit = sum(site_flops(cfg, l, "mlp", p if not torch.equal(cc[mid[l]][:, p], kc[mid[l]][:, p]) else None, S)
                for l in range(L) for p in range(S))
    out["resid_mid"] = dict(
        what=f"resid_mid, {L} layers x {S} positions",
        peer_name="get_act_patch_attn_out with attn_out := clean resid_mid - resid_pre",
        peer=peer_of("attn_out", tlp.layer_pos_patch_setter, grid(("layer", range(L)), ("pos", range(S))), mid_cache),
        course=lambda: P.patch_sweep(model, clean, corrupt, mid, metric, **kw), limit=limit)

    # Each head's output (z), all positions at once.
    zs = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    limit = sum(site_flops(cfg, l, "o", first_diff(cc[zs[l]][:, :, h], kc[zs[l]][:, :, h]), S)
                for l in range(L) for h in range(H))
    out["head_out"] = dict(
        what=f"head outputs (z), {L} layers x {H} heads, all positions",
        peer_name="get_act_patch_attn_head_out_all_pos (= generic_activation_patch, layer_head_vector_patch_setter)",
        peer=peer_of("z", tlp.layer_head_vector_patch_setter, grid(("layer", range(L)), ("head", range(H))),
                     lambda: cache_of(clean, zs)),
        course=lambda: P.patch_sweep(model, clean, corrupt, zs, metric, heads=True, **kw), limit=limit)

    # Each MLP's output, all positions at once (TransformerLens has it by position only).
    mlps = P.resid_hook_names(model, "mlp_out")
    limit = sum(site_flops(cfg, l, "post", first_diff(cc[mlps[l]], kc[mlps[l]]), S) for l in range(L))
    out["mlp_out"] = dict(
        what=f"MLP outputs, {L} layers, all positions",
        peer_name="generic_activation_patch(mlp_out, the whole activation, index: layer)",
        peer=peer_of("mlp_out", lambda act, index, clean_act: clean_act.clone(), grid(("layer", range(L))),
                     lambda: cache_of(clean, mlps)),
        course=lambda: P.patch_sweep(model, clean, corrupt, mlps, metric, positions="all", **kw), limit=limit)

    # Head by position: every head at the dual word and at the last token.
    positions = [dual, last]
    limit = sum(site_flops(cfg, l, "o", p if not torch.equal(cc[zs[l]][:, p, h], kc[zs[l]][:, p, h]) else None, S)
                for l in range(L) for h in range(H) for p in positions)
    index = grid(("layer", range(L)), ("head", range(H)), ("pos", positions))[["layer", "pos", "head"]]
    out["head_by_pos"] = dict(
        what=f"head outputs (z) by position, {L} x {H} heads x {len(positions)} positions (dual word, last)",
        peer_name="get_act_patch_attn_head_out_by_pos (= generic_activation_patch, layer_pos_head_vector_patch_setter)",
        peer=peer_of("z", tlp.layer_pos_head_vector_patch_setter, index, lambda: cache_of(clean, zs)),
        course=lambda: P.patch_sweep(model, clean, corrupt, zs, metric, heads=True, positions=positions, **kw),
        limit=limit)

    # Path patching: head 6.1 (chapter 4's hypothesis C sender), noising, into each later component
    # input on its own, every position.
    s_layer, s_head = 6, 1
    receivers = [f"blocks.{s_layer}.ln2.hook_in"]
    for later in range(s_layer + 1, L):
        receivers += [f"blocks.{later}.ln1.hook_in", f"blocks.{later}.ln2.hook_in"]
    receivers.append("ln_final.hook_in")
    z6 = zs[s_layer]
    timed_receivers = list(range(0, len(receivers), stride))

    def peer_path():
        t0 = time.perf_counter()
        src, tgt = cache_of(corrupt, [z6]), cache_of(clean, [z6])
        sync(model.cfg.device)
        peer_path.cache_s = time.perf_counter() - t0
        delta = (src[z6][:, :, s_head] - tgt[z6][:, :, s_head]) @ model.W_O[s_layer, s_head]

        def add(act, hook):
            return act + delta

        values = []
        for k in timed_receivers:
            values.append(torch.as_tensor(metric(model.run_with_hooks(clean, fwd_hooks=[(receivers[k], add)]))).float())
        return torch.stack(values)

    p0 = first_diff(cc[z6][:, :, s_head], kc[z6][:, :, s_head])
    stage = {"ln1": "pre", "ln2": "mlp"}
    limit = sum(site_flops(cfg, P.hook_layer(model, r), "final" if r.startswith("ln_final") else stage[r.split(".")[2]],
                           p0, S) for r in receivers)
    out["path"] = dict(
        what=f"path patching: head {s_layer}.{s_head} into each of {len(receivers)} later inputs (noising)",
        peer_name="run_with_hooks loop, delta added at the receiver",
        peer=(peer_path, timed_receivers, len(receivers) / len(timed_receivers)),
        course=lambda: P.path_patch_sweep(model, clean, corrupt, (s_layer, s_head), receivers, metric, **kw),
        limit=limit)

    for v in out.values():
        v["limit"] = len(ps) * v["limit"] + len(ps) * reference_flops(cfg, S, v.get("every_position", False))
    return {k: out[k] for k in chosen}


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--prompts", type=int, default=4, help="left-correct dual-word prompts (max 8)")
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--sweeps", default="all", help=f"comma-separated subset of {','.join(SWEEPS)}")
    cli.add_argument("--no-memory", action="store_true", help="skip the (untimed) memory runs")
    cli.add_argument("--peer-stride", type=int, default=1,
                     help="time the peer on every k-th site only and scale its time (for a busy machine)")
    args = cli.parse_args()
    torch.set_grad_enabled(False)
    chosen = SWEEPS if args.sweeps == "all" else tuple(s.strip() for s in args.sweeps.split(","))
    if "resid_pre_default" in chosen and "resid_pre" not in chosen:  # compared with resid_pre's peer call
        chosen = ("resid_pre",) + chosen
    t_start = time.perf_counter()

    model = load_model("gpt2-small", device=args.device, source=args.source, quiet=True)
    from importlib.metadata import version

    ps = D.left_right_prompts(model, " left").subset(list(range(min(args.prompts, 8))))
    metric = D.logit_diff_metric(ps)
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = ["?"]
    print(f"model: {model.display_name} on {args.device}; torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"transformer_lens {version('transformer-lens')}; load average at start {' '.join(load)}")
    print(f"prompts: {len(ps)} left-correct dual-word prompts x {ps.seq_len} tokens (dual word at {ps.dual_pos}); "
          f"metric: mean logit difference; {args.rounds} rounds")
    sweeps = build_sweeps(model, ps, metric, chosen, args.peer_stride)
    if args.peer_stride > 1:
        print(f"peer timed on every {args.peer_stride}th site of each sweep (each site is one full forward pass), "
              "its time scaled to the whole sweep; numbers compared on those sites")
    P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, ["blocks.0.hook_resid_pre"], metric,
                  positions=[ps.dual_pos], progress=False)  # warm-up (the fast path's one-off check)

    times = {k: {"peer": [], "course": [], "rate": []} for k in sweeps}
    results = {}
    for r in range(args.rounds):
        for name, sw in sweeps.items():
            kernel_rates = matmul_flops_per_s(args.device)
            for kernel, rate in kernel_rates.items():
                times[name].setdefault(f"matmul {kernel}", []).append(rate)
            times[name]["rate"].append(max(kernel_rates.values()))
            order = ("peer", "course") if r % 2 == 0 else ("course", "peer")
            for who in order:
                if sw[who] is None:
                    continue
                fn, scale = (sw[who][0], sw[who][2]) if who == "peer" else (sw[who], 1.0)
                res, t = timed(fn, args.device)
                if who == "peer":  # the caches once, the sites scaled to the whole sweep
                    t = fn.cache_s + (t - fn.cache_s) * scale
                times[name][who].append(t)
                results[(name, who)] = res
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s since start)", flush=True)
    # resid_pre with the defaults is compared with the same peer call.
    if "resid_pre_default" in sweeps and "resid_pre" in sweeps:
        times["resid_pre_default"]["peer"] = times["resid_pre"]["peer"]
        results[("resid_pre_default", "peer")] = results[("resid_pre", "peer")]

    print()
    head = (f"{'sweep':<18} {'peer s':>8} {'course s':>9} {'ratio':>6} {'worst':>6} {'limit GF':>9} "
            f"{'limit s':>8} {'/limit':>7} {'ceiling':>8} {'max|diff|':>9}")
    print(head)
    worst_all, rows = [], []
    for name, sw in sweeps.items():
        tt = times[name]
        peer, course = results.get((name, "peer")), results[(name, "course")]
        if peer is not None:
            picked = course.reshape(-1)[torch.as_tensor(sweeps[name if sw["peer"] else "resid_pre"]["peer"][1])]
            diff = float((peer.to(course.device).float().reshape(-1) - picked).abs().max())
        else:
            diff = float("nan")
        scale = float(course.abs().max())
        assert diff <= 1e-3 * max(1.0, scale), f"{name}: peer and course disagree by {diff}"
        ratios = [p / c for p, c in zip(tt["peer"], tt["course"])] if tt["peer"] else [float("nan")]
        limit_s = [sw["limit"] / rate for rate in tt["rate"]]
        to_limit = [c / l for c, l in zip(tt["course"], limit_s)]
        worst_all.append(min(ratios))
        # The ratio a sweep running exactly at the FLOP limit (at the matmul rate) would reach.
        ceiling = (statistics.median([p / l for p, l in zip(tt["peer"], limit_s)]) if tt["peer"] else float("nan"))
        print(f"{name:<18} {statistics.median(tt['peer']) if tt['peer'] else float('nan'):8.2f} "
              f"{statistics.median(tt['course']):9.2f} {statistics.median(ratios):5.1f}x {min(ratios):5.1f}x "
              f"{sw['limit'] / 1e9:9.1f} {statistics.median(limit_s):8.3f} {statistics.median(to_limit):6.1f}x "
              f"{ceiling:7.1f}x {diff:9.1e}", flush=True)
        rows.append(name)
    print()
    for name, sw in sweeps.items():
        print(f"  {name}: {sw['what']}; peer: {sw['peer_name']}")
    for kernel in ("rate", "matmul torch.mm", "matmul course"):
        rates = [x for name in sweeps for x in times[name].get(kernel, [])]
        if rates:
            what = {"rate": "the faster of the two below, the limit's rate", "matmul torch.mm": "torch.mm",
                    "matmul course": "the course's product, oneDNN's kernel where PyTorch has it"}[kernel]
            print(f"matmul (float32 2048x768 @ 768x3072), {what}: median {statistics.median(rates) / 1e9:.1f} "
                  f"GFLOP/s, range {min(rates) / 1e9:.1f}-{max(rates) / 1e9:.1f} over the {len(rates)} timings")
    print("ratio: peer time / course time, median over rounds (worst: the smallest round); "
          "/limit: course time / (FLOP limit at the same round's matmul rate); "
          "ceiling: peer time / limit time, the ratio of a sweep that ran exactly at the limit")
    print("MB: peak extra memory (2^20 bytes) of one untimed run of each method, after the table (peer: the timed "
          "subset of sites)", flush=True)
    memory = {}
    if not args.no_memory:
        print(f"\n{'sweep':<18} {'peer MB':>8} {'course MB':>9}")
        for name, sw in sweeps.items():
            for who in ("peer", "course"):
                if sw[who] is not None:
                    memory[(name, who)], how = peak_extra_bytes(sw[who][0] if who == "peer" else sw[who], args.device)
            print(f"{name:<18} {memory.get((name, 'peer'), float('nan')) / 2**20:8.1f} "
                  f"{memory[(name, 'course')] / 2**20:9.1f}", flush=True)
        print(f"memory measured as: {how}")
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = ["?"]
    print(f"load average at the end {' '.join(load)}; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
