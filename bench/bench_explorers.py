"""Explorers: how long an ipywidgets explorer takes to answer a change, by calling its update function.

The course holds every explorer to 0.5 s per change on 2 CPU cores. For each explorer this script builds
what its chapter builds before showing it, then times ``box.update(...)`` for a sequence of changes (a new
neuron, a new text, both) and prints the median and the slowest, with the machine's load average (a busy
machine slows every change). Run with::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_explorers.py [--device cpu] [--repeat 3]

Explorers timed: chapter 2's neuron explorer (``exercises_lib.contextual_explorer.neuron_explorer``; its
texts are run through layer 0 when it is built, timed separately). Outside a kernel ``display`` would
print the figure's repr; here it is replaced by what a kernel does with a plotly figure, serialising it to
JSON, so the time is the update's computation, the figure and its serialisation.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchlib import parser, sync

LIMIT_S = 0.5


def chapter2(model, device: str, repeat: int) -> None:
    from exercises_lib import contextual as cx
    from exercises_lib.contextual_explorer import DEFAULT_PAIRS, neuron_explorer
    from exercises_lib.texts import load_text

    heads = [0, 2, 6, 8, 9]
    approx = cx.fit_layer0_approximation(model, cx.tokens_of(model, load_text("british_prose"), 800), heads)
    ext = cx.extended_embeddings(model, heads, approx.Z_median[heads])
    ext[model.tokenizer.eos_token_id] = 0.0
    pairs = list(DEFAULT_PAIRS)
    import IPython.display

    IPython.display.display = lambda obj, *a, **k: obj.to_json() if hasattr(obj, "to_json") else None
    t0 = time.perf_counter()
    box = neuron_explorer(model, ext, approx, [1710, 300, 704, 1621])
    sync(device)
    print(f"chapter 2 neuron explorer: built ({len(pairs)} texts through layer 0) and first drawn in "
          f"{time.perf_counter() - t0:.2f} s")
    changes = [(n, p) for _ in range(repeat) for n, p in
               [("300", pairs[0]), ("704", pairs[1]), ("1621", pairs[2]), ("5", pairs[3]), ("1710", pairs[0])]]
    times = []
    for neuron, pair in changes:
        t0 = time.perf_counter()
        box.update(neuron, pair)
        sync(device)
        times.append(time.perf_counter() - t0)
    med, worst = statistics.median(times), max(times)
    verdict = "within" if worst <= LIMIT_S else "OVER"
    print(f"  a change (neuron and/or text), {len(times)} changes: median {med:.3f} s, slowest {worst:.3f} s "
          f"({verdict} the {LIMIT_S} s limit)")


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--repeat", type=int, default=3)
    opts = args.parse_args()
    from exercises_lib.models import load_model

    torch.set_grad_enabled(False)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    model = load_model("gpt2-small", source=opts.source, device=opts.device, quiet=True)
    print(f"model: {model.display_name}")
    chapter2(model, opts.device, opts.repeat)


if __name__ == "__main__":
    main()
