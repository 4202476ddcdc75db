"""Benchmark: the weights-only analyses of layer 0, library functions vs per-neuron loops.

Two analyses of GPT-2 small's layer 0 that read only the weights, each timed in
one run with the library's functions (what the notebooks call) and with a
straightforward loop over MLP-0 neurons, each iteration computing one neuron's
column:

1. Token contributions (chapter 2): for every token ``t`` (50,257) and every
   MLP-0 neuron ``k`` (3,072), ``ln2_scale * e~(t) . W_in[:, k]`` with ``e~``
   the extended embeddings of the plain contextual heads. Library:
   ``contextual.extended_embeddings`` then ``contextual.contribution_summary``
   (chunked: the top/bottom 20 tokens, mean and std of every neuron, without
   holding the 0.6 GB matrix). Per-neuron loops: ``contextual.token_contributions``
   on the same extended embeddings, and ``contextual.per_head_token_contributions``
   from the weights (no extended embeddings), each followed by the same
   summary of the column. A reference row computes the whole matrix with one
   matmul and holds it (not a library function). Targets: the whole
   matrix in under a minute on 2 CPU cores, peak memory under 2 GB.
2. PVO contributions (chapter 1): ``P[i] V_h O_h W_in[:, k]`` for every position,
   every head (12) and every neuron (3,072). Library:
   ``duplicate_tokens.pvo_contributions`` once per head. Per-neuron loops:
   ``duplicate_tokens.pvo_of_neuron`` (chapter 1's one-neuron function), and
   the same product with layer 0's weights fetched once. A reference row
   computes the library's product per head with the weights fetched once, to
   show what the model's weight properties cost (each access of ``model.W_in``
   stacks all twelve layers).

The per-neuron loops are timed on a subset of neurons (``--neurons``, evenly
spaced) and extrapolated linearly to all 3,072; the output says so. Library and
loop results are checked to agree (``allclose``) before any ratio is printed.
Peak memory is the largest increase of the process's resident set size
(sampled every 2 ms by a thread with psutil) over its size when the step
started; on CUDA, the increase of ``torch.cuda.max_memory_allocated``.

Usage::

    nice .venv/bin/python bench/bench_weights.py [--neurons 64] [--device cpu] [--source standin]

Taught in: chapter 1 (PVO contributions) and chapter 2 (token contributions).
"""

from __future__ import annotations

import os
import threading
import time

import psutil
import torch

from benchlib import parser, sync
from exercises_lib import contextual as cx
from exercises_lib import duplicate_tokens as dt
from exercises_lib.models import load_model
from exercises_lib.texts import load_text

TEXTS = ["bible_genesis", "bible_psalms", "legal_gpl3", "python_docs", "british_prose", "american_prose",
         "war_history", "cooking", "fiction"]  # chapter 2's texts
TARGET_S, TARGET_GB = 60.0, 2.0
TOP_K = 20
GB = 1024**3


class Meter:
    """Wall time and peak memory increase of the block it wraps."""

    def __init__(self, device: str, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.proc = psutil.Process(os.getpid())

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "Meter":
        sync(self.device)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = self.proc.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._t0
        if self.device.startswith("cuda"):
            self.peak_gb = (torch.cuda.max_memory_allocated() - self._base) / GB
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self.proc.memory_info().rss)
            self.peak_gb = (self._peak - self._base) / GB


def measured(device: str, *fns) -> list[tuple[object, Meter]]:
    """Run each function in turn under its own :class:`Meter`: ``[(its result, its meter), ...]``."""
    out = []
    for fn in fns:
        with Meter(device) as meter:
            result = fn()
        out.append((result, meter))
    return out


def summarise_column(col: torch.Tensor, k: int = TOP_K) -> tuple[torch.Tensor, ...]:
    """What contribution_summary keeps of one neuron: top/bottom k values, mean, population std."""
    d = col.double()
    return col.topk(k).values, col.topk(k, largest=False).values, d.mean(), d.std(unbiased=False)


def check_close(name: str, a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> float:
    """Assert ``a`` and ``b`` agree (allclose, atol relative to their scale); return the max abs difference."""
    a, b = a.double().cpu(), b.double().cpu()
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * scale), f"{name}: max |diff| {err:.2e} (scale {scale:.2e})"
    return err / scale


def row(label: str, seconds: float, gb: float | None, ratio: str = "") -> str:
    mem = f"{gb:10.3f}" if gb is not None else f"{'':>10}"
    return f"{label:<70} {seconds:9.2f} {mem} {ratio:>8}"


def section(title: str, errs: list[float], mem_label: str) -> None:
    """The heading of one analysis's table: its title, the agreement of the methods, the column names."""
    print(f"\n{title}")
    print(f"   library and per-neuron results agree (allclose): max |diff| / scale = {max(errs):.1e}")
    print(f"{'':<70} {'wall (s)':>9} {mem_label:>10} {'ratio':>8}")


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--neurons", type=int, default=64, help="neurons timed in the per-neuron loops (then extrapolated)")
    args = cli.parse_args()
    torch.set_grad_enabled(False)
    dev = args.device
    mem_label = "+GPU GB" if dev.startswith("cuda") else "+RSS GB"

    t0 = time.perf_counter()
    model = load_model("gpt2-small", device=dev, source=args.source, quiet=True)
    t_load = time.perf_counter() - t0
    name = "GPT-2 small (stand-in, same shapes as GPT-2 small)" if model.is_standin else model.display_name
    n_heads, d_mlp, n_ctx, d_vocab = model.cfg.n_heads, model.cfg.d_mlp, model.cfg.n_ctx, model.cfg.d_vocab
    print(f"model: {name} on {dev}; torch {torch.__version__}; threads: {torch.get_num_threads()}; "
          f"cpu cores: {os.cpu_count()}; loaded in {t_load:.1f} s")

    # Setup, as chapter 2 does it (not timed as part of either analysis).
    t0 = time.perf_counter()
    THE = model.to_single_token(" the")
    BOS = model.tokenizer.eos_token_id
    copy_score = cx.copy_attention_score(model)
    groups = cx.classify_heads(cx.head_features(cx.positional_pattern(model, THE, 400)), copy_score)
    heads = [h for h in sorted(groups["contextual"]) if copy_score[h] < cx.PARTIAL_DUPLICATE]
    texts = {name: cx.tokens_of(model, load_text(name), 800) for name in TEXTS}
    control = sorted(texts, key=lambda name: cx.stopword_fraction(model, texts[name]))[len(texts) // 2]
    approx = cx.fit_layer0_approximation(model, texts[control], heads)
    Z, ln2 = approx.Z_median[heads], approx.ln2_scale
    W = cx.layer0_weights(model)
    W_in = W["W_in"]
    t_setup = time.perf_counter() - t0
    rss0 = psutil.Process(os.getpid()).memory_info().rss / GB
    print(f"setup (chapter 2: heads, control text, normalisers; not counted below): {t_setup:.1f} s; "
          f"bag heads {heads}, control text {control}, LN-2 scale {ln2:.2f}; process RSS now {rss0:.2f} GB")

    subset = torch.linspace(0, d_mlp - 1, args.neurons).round().long().unique().tolist()
    n_sub = len(subset)
    scale_up = d_mlp / n_sub
    extrap = f"  measured on {n_sub} neurons (evenly spaced), then x{scale_up:.0f}"

    # ------------------------------------------------------------------
    # 1. Token contributions: 50,257 tokens x 3,072 neurons
    # ------------------------------------------------------------------
    # Warm-up (BLAS thread pool, allocator) on a slice, with the functions timed below.
    cx.contribution_summary(cx.extended_embeddings(model, heads, Z, token_ids=torch.arange(4096)), W_in[:, :256], ln2)

    sub_t = {}

    def library_matrix():
        t = time.perf_counter()
        ext = cx.extended_embeddings(model, heads, Z)
        ext[BOS] = 0.0  # as chapter 2 does
        sync(dev)
        sub_t["ext"] = time.perf_counter() - t
        t = time.perf_counter()
        summary = cx.contribution_summary(ext, W_in, ln2, k=TOP_K)
        sync(dev)
        sub_t["summary"] = time.perf_counter() - t
        return ext, summary

    with Meter(dev) as m_lib:
        ext, summary = library_matrix()
    top_v, _, bot_v, _, mean, std = summary

    def per_neuron_ext():
        return [summarise_column(cx.token_contributions(ext, W_in[:, k], ln2)) for k in subset]

    def per_neuron_weights():
        out = []
        for k in subset:
            T = cx.per_head_token_contributions(model, heads, k, ln2)  # [head, token], no 1/Z yet
            col = (T / Z[:, None].to(T)).sum(0)
            col[BOS] = 0.0
            out.append(summarise_column(col))
        return out

    def dense():
        C = ln2 * (W_in.T @ ext.T)  # [d_mlp, tokens]: the whole matrix, 0.6 GB
        std, mean = torch.std_mean(C, dim=1, correction=0)  # float32 (a float64 copy would be 1.2 GB)
        return C.topk(TOP_K, dim=1).values, C.topk(TOP_K, dim=1, largest=False).values, mean, std

    per_neuron_ext()  # warm-up
    (naive_ext, m_ext), (naive_w, m_w), (dense_out, m_dense) = measured(dev, per_neuron_ext, per_neuron_weights, dense)

    # Agreement before any ratio.
    errs = []
    for name, naive in (("token_contributions loop", naive_ext), ("per_head_token_contributions loop", naive_w)):
        for j, (lib, idx) in enumerate(((top_v, 0), (bot_v, 1), (mean, 2), (std, 3))):
            got = torch.stack([torch.as_tensor(r[idx]) for r in naive])
            errs.append(check_close(f"{name}, summary field {j}", got.to(lib.dtype), lib[subset]))
    for j, (lib, ref) in enumerate(zip((top_v, bot_v, mean, std), dense_out)):
        errs.append(check_close(f"whole-matrix matmul, summary field {j}", ref.to(lib.dtype), lib))
    # The two loops' columns agree with each other too (extended embeddings vs straight from the weights).
    k0 = subset[len(subset) // 2]
    col_ext = cx.token_contributions(ext, W_in[:, k0], ln2)
    T = cx.per_head_token_contributions(model, heads, k0, ln2)
    col_w = (T / Z[:, None].to(T)).sum(0)
    col_w[BOS] = 0.0
    errs.append(check_close("one column, ext vs weights", col_w, col_ext))

    t_lib = m_lib.seconds
    t_ext_all, t_w_all = m_ext.seconds * scale_up, m_w.seconds * scale_up
    section(f"1. Token contributions: {ext.shape[0]} tokens x {d_mlp} neurons (top/bottom {TOP_K}, mean, std of each "
            f"neuron), {len(heads)} bag heads", errs, mem_label)
    print(row("library: extended_embeddings + contribution_summary", t_lib, m_lib.peak_gb, "1.0"))
    print(row("  of which extended_embeddings (all tokens)", sub_t["ext"], None))
    print(row("  of which contribution_summary (all neurons, chunks of 8192)", sub_t["summary"], None))
    print(row("per neuron: token_contributions(ext, W_in[:, k]) + summary", t_ext_all, m_ext.peak_gb,
              f"{t_ext_all / t_lib:.1f}"))
    print(row(extrap, m_ext.seconds, None))
    print(row("per neuron: per_head_token_contributions (from weights) + summary", t_w_all, m_w.peak_gb,
              f"{t_w_all / t_lib:.1f}"))
    print(row(extrap, m_w.seconds, None))
    print(row("reference: one matmul, whole matrix held (not a library function)", m_dense.seconds, m_dense.peak_gb,
              f"{m_dense.seconds / t_lib:.1f}"))
    print("   per-neuron rows: extrapolated to all neurons (the measured subset on the line below each)")
    print("   ratio = per-neuron (or reference) wall time / library wall time; memory = peak increase during the step")
    met_t = "met" if t_lib < TARGET_S else "NOT met"
    met_m = "met" if m_lib.peak_gb < TARGET_GB else "NOT met"
    print(f"   target whole matrix < {TARGET_S:.0f} s: {met_t} ({t_lib:.1f} s); "
          f"peak memory < {TARGET_GB:.0f} GB: {met_m} (+{m_lib.peak_gb:.2f} GB during the step)")
    del ext, summary, dense_out, naive_ext, naive_w

    # ------------------------------------------------------------------
    # 2. PVO contributions: 12 heads x 1024 positions x 3,072 neurons
    # ------------------------------------------------------------------
    W_pos, W_V, W_O = model.W_pos.detach(), W["W_V"], W["W_O"]

    def library_pvo():
        return torch.stack([dt.pvo_contributions(model, h) for h in range(n_heads)])  # [head, pos, neuron]

    def per_neuron_library():
        return [dt.pvo_of_neuron(model, k, n_ctx) for k in subset]

    def per_neuron_cached():
        out = []
        for k in subset:
            Ow = W_O @ W_in[:, k]  # [head, d_head]
            out.append(torch.stack([(W_pos @ W_V[h]) @ Ow[h] for h in range(n_heads)]))  # [head, pos]
        return out

    def cached_pvo():
        return torch.stack([(W_pos @ W_V[h]) @ (W_O[h] @ W_in) for h in range(n_heads)])

    dt.pvo_contributions(model, 0), dt.pvo_of_neuron(model, 0, n_ctx)  # warm-up
    (pvo, m_pvo), (naive_one, m_one), (naive_cached, m_cached), (ref_pvo, m_ref) = measured(
        dev, library_pvo, per_neuron_library, per_neuron_cached, cached_pvo)
    t0 = time.perf_counter()
    for _ in range(3):
        model.W_in
    sync(dev)
    t_access = (time.perf_counter() - t0) / 3

    errs = [check_close("pvo_of_neuron loop", torch.stack(naive_one, -1), pvo[:, :, subset]),
            check_close("cached-weights loop", torch.stack(naive_cached, -1), pvo[:, :, subset]),
            check_close("cached-weights reference", ref_pvo, pvo)]
    del ref_pvo
    t_pvo = m_pvo.seconds
    t_one_all, t_cached_all = m_one.seconds * scale_up, m_cached.seconds * scale_up
    section(f"2. PVO contributions: {n_heads} heads x {n_ctx} positions x {d_mlp} neurons "
            f"({pvo.numel() * pvo.element_size() / GB:.2f} GB of results)", errs, mem_label)
    print(row("library: pvo_contributions(model, h) for each head", t_pvo, m_pvo.peak_gb, "1.0"))
    print(row("per neuron: pvo_of_neuron(model, k, n_ctx)", t_one_all, m_one.peak_gb, f"{t_one_all / t_pvo:.1f}"))
    print(row(extrap, m_one.seconds, None))
    print(row("per neuron: (W_pos @ W_V[h]) @ (W_O[h] @ W_in[:, k]), weights once", t_cached_all,
              m_cached.peak_gb, f"{t_cached_all / t_pvo:.1f}"))
    print(row(extrap, m_cached.seconds, None))
    print(row("reference: the same per head, weights fetched once (not a library fn)", m_ref.seconds, m_ref.peak_gb,
              f"{m_ref.seconds / t_pvo:.2f}"))
    print(f"   one access of model.W_in (the bridge stacks all layers' weights): {t_access:.3f} s")
    print("   per-neuron rows: extrapolated to all neurons (the measured subset on the line below each)")
    print("   ratio = per-neuron (or reference) wall time / library wall time; memory = peak increase during the step")
    print("   (RSS counts memory the allocator keeps after a free: repeated ~28 MB weight stacks can fragment it)")
    print(f"\nprocess RSS (model included): {psutil.Process(os.getpid()).memory_info().rss / GB:.2f} GB at the end, "
          f"{_max_rss_gb():.2f} GB at its peak (model loading included)")


def _max_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: kB


if __name__ == "__main__":
    main()
