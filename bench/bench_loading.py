"""Loading a model: a stand-in's first and second load against the real path, time and memory.

Each load runs in a fresh process (as a new kernel would), timed from after
``import transformer_lens`` to the model being ready, with the process's peak
resident memory:

* **first**: ``load_model(name, source="standin")`` with an empty stand-in cache
  (it builds the stand-in and writes the cache entry);
* **second**: the same, in a new process, the cache filled;
* **real**: ``load_model(name, source="real")`` from the same weights exported
  in the real model's hub layout to a local folder (``MECHINTERP_WEIGHTS_DIR``):
  TransformerLens's loaders and weight processing, as on Colab.

It prints, per model, the three times and peak memories and the ratios the
course holds itself to: second / first <= 0.5, second / real <= 1, peak memory
second / real <= 1.2. Run with::

    .venv/bin/python bench/bench_loading.py [--models gpt2-small attn-only-4l gpt2-noLN] [--repeat 3]

(the median of ``--repeat`` runs of each load, interleaved; the machine's load
average is printed, since a busy machine slows every load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import psutil
import transformer_lens, transformer_lens.model_bridge.sources
from exercises_lib.models import load_model
base = psutil.Process().memory_info().rss
t = time.perf_counter()
model = load_model(sys.argv[1], source=sys.argv[2], device="cpu", quiet=True)
seconds = time.perf_counter() - t
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork and exec)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
print(json.dumps({"seconds": seconds, "peak_gb": peak / 1e9, "after_import_gb": base / 1e9, "standin": model.is_standin}))
"""


def _load(name: str, source: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, name, source], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} ({source}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from exercises_lib.models import MODELS
    from exercises_lib.models.export import export_standin

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-loading-"))
    base_env = {k: v for k, v in os.environ.items() if k not in ("MECHINTERP_SOURCE", "MECHINTERP_WEIGHTS_DIR")}
    base_env["HF_HOME"] = str(work / "hf")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads: "
          f"{base_env.get('OMP_NUM_THREADS', 'default')}")
    rows = []
    try:
        for name in args.models:
            export_standin(name, work / "weights")
            runs = {"first": [], "second": [], "real": []}
            for i in range(args.repeat):
                cache = work / f"cache-{name}-{i}"
                env = {**base_env, "MECHINTERP_CACHE_DIR": str(cache)}
                runs["first"].append(_load(name, "standin", env))
                runs["second"].append(_load(name, "standin", env))
                runs["real"].append(_load(name, "real", {**env, "MECHINTERP_WEIGHTS_DIR": str(work / "weights")}))
                shutil.rmtree(cache, ignore_errors=True)
            med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_gb", "after_import_gb")}
                   for k, v in runs.items()}
            rows.append((name, med))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| model | first load (s) | second load (s) | real path (s) | second/first | second/real "
          "| peak GB first / second / real | peak second/real | GB after imports |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    ok = True
    for name, m in rows:
        r1 = m["second"]["seconds"] / m["first"]["seconds"]
        r2 = m["second"]["seconds"] / m["real"]["seconds"]
        r3 = m["second"]["peak_gb"] / m["real"]["peak_gb"]
        ok &= r1 <= 0.5 and r2 <= 1.0 and r3 <= 1.2
        print(f"| {name} | {m['first']['seconds']:.1f} | {m['second']['seconds']:.1f} | {m['real']['seconds']:.1f} "
              f"| {r1:.2f} | {r2:.2f} | {m['first']['peak_gb']:.2f} / {m['second']['peak_gb']:.2f} / "
              f"{m['real']['peak_gb']:.2f} | {r3:.2f} | {m['second']['after_import_gb']:.2f} |")
    print()
    print("goals (second/first <= 0.5, second/real <= 1, peak second/real <= 1.2):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
