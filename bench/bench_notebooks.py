"""Wall time and peak memory of each notebook, on the stand-ins: every solution notebook under nbval, and
every exercise notebook executed blank (as generated, no exercise filled in).

    .venv/bin/python bench/bench_notebooks.py [solutions/NN_x.ipynb | chapters/NN_x.ipynb ...]

Each notebook runs in its own process: a solution notebook under `pytest --nbval-lax`, an exercise notebook
top to bottom with every cell run (a cell that fails is counted and the run goes on, as a learner's would);
the peak resident memory reported is the largest of that process and its children (the kernel). Targets
(Colab's free tier, 2 CPU cores): under 3 minutes and under 4 GB each. Prints a table, with the ratio of each
figure to its target.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_GB = 180.0, 4.0

WRAPPER = r"""
import json, resource, subprocess, sys, time
start = time.monotonic()
proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", sys.argv[1]],
                      capture_output=True, text=True)
wall = time.monotonic() - start
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall": wall, "peak_gb": peak_kb / 1024 ** 2, "rc": proc.returncode,
                  "tail": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]}))
"""


BLANK = r"""
import json, resource, sys, time
from pathlib import Path
import nbformat
from exercises_lib import kernel_wait
path = Path(sys.argv[1])
nb = nbformat.read(path, as_version=4)
start = time.monotonic()
kernel_wait.notebook_client(nb, timeout=900, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
wall = time.monotonic() - start
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
code = [c for c in nb.cells if c.cell_type == "code"]
failed = [c for c in code if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
print(json.dumps({"wall": wall, "peak_gb": peak_kb / 1024 ** 2, "rc": int(bool(failed)),
                  "tail": f"blank: {len(code)} code cells run, {len(failed)} failed"}))
"""


def measure(notebook: Path) -> dict:
    env = dict(os.environ, MECHINTERP_SOURCE=os.environ.get("MECHINTERP_SOURCE", "standin"))
    env.pop("MECHINTERP_CHECKS_RAISE", None)  # a blank exercise's check reports and hands on the course's function
    script = BLANK if notebook.resolve().parent.name == "chapters" else WRAPPER
    out = subprocess.run([sys.executable, "-c", script, str(notebook)], capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    notebooks = [Path(a) for a in argv] or (sorted((ROOT / "solutions").glob("*.ipynb"))
                                            + sorted((ROOT / "chapters").glob("*.ipynb")))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; source: stand-in; device: cpu")
    print(f"{'notebook':<46} {'wall (s)':>9} {'/ 180 s':>8} {'peak RSS (GB)':>14} {'/ 4 GB':>7}  result")
    worst = 0.0
    for nb in notebooks:
        r = measure(nb)
        worst = max(worst, r["wall"] / TARGET_S, r["peak_gb"] / TARGET_GB)
        name = f"{nb.resolve().parent.name}/{nb.name}"
        print(f"{name:<46} {r['wall']:>9.1f} {r['wall'] / TARGET_S:>8.2f} {r['peak_gb']:>14.2f} {r['peak_gb'] / TARGET_GB:>7.2f}  {r['tail']}")
    print(f"worst ratio to target: {worst:.2f} ({'within' if worst <= 1 else 'OVER'} targets)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
