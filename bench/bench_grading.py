"""Grading time per notebook, as a ratio to executing the same notebook plainly.

    .venv/bin/python bench/bench_grading.py [--chapter 1] [--copies 30] [--jobs 2] [--plain 2]

The notebook is the chapter's exercise notebook with every solution filled in
(the solution notebook's solution cells put in place of the stubs): what a
student who solved every exercise hands in. That is the fair one to time: a
blank exercise notebook errors early and skips most of the work, and the
solution notebook is not what students submit.

In one run, on the stand-ins:

* plain, one at a time: the notebook executed with nbclient ``--plain`` times
  in a row (the way a simple script would run a class);
* plain, ``--jobs`` at a time: one round of ``--jobs`` executions side by
  side, each kernel with ``cores / jobs`` threads, as the grader gives them;
* graded: ``python -m exercises_lib.grade`` on ``--copies`` copies with
  ``-j --jobs`` (every exercise must pass).

The plain figures are measured before and after grading and averaged (the
load of a shared machine drifts). Prints the seconds per notebook of each and
the grader's ratio to both plain figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exercises_lib.chapters import CHAPTERS  # noqa: E402
from exercises_lib.kernel_wait import notebook_client  # noqa: E402


def filled_notebook(slug: str):
    """The exercise notebook of ``slug`` with the solution notebook's solution cells in place of the stubs."""
    ex = nbformat.read(ROOT / "chapters" / f"{slug}.ipynb", as_version=4)
    sol = nbformat.read(ROOT / "solutions" / f"{slug}.ipynb", as_version=4)

    def solution_cells(nb):
        return [c for c in nb.cells if c.cell_type == "code" and "solution" in c.metadata.get("tags", [])]

    answers = [c.source for c in solution_cells(sol)]
    stubs = solution_cells(ex)
    if len(answers) != len(stubs):
        raise SystemExit(f"{slug}: {len(stubs)} exercise cells but {len(answers)} solution cells")
    for cell, answer in zip(stubs, answers):
        cell.source = answer
    return ex


def execute_plain(path: Path, threads: int | None = None) -> float:
    """Seconds to execute ``path`` with nbclient (errors allowed, as the grader allows them)."""
    nb = nbformat.read(path, as_version=4)
    env = {"MECHINTERP_SOURCE": "standin"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.monotonic()
    client = notebook_client(nb, timeout=900, kernel_name="python3", allow_errors=True,
                             resources={"metadata": {"path": str(path.parent)}})
    client.execute(env={**os.environ, **env})
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chapter", type=int, default=1)
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--plain", type=int, default=2, help="plain executions one at a time (default 2)")
    args = parser.parse_args(argv)
    chapter = CHAPTERS[args.chapter]
    os.environ.pop("MECHINTERP_CHECKS_RAISE", None)
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; stand-ins; CPU")
    print(f"notebook: chapters/{chapter.slug}.ipynb with the solutions filled in")
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        folder = Path(tmp)
        nb = filled_notebook(chapter.slug)
        plain_dir = folder / "plain"
        plain_dir.mkdir()
        plain_nb = plain_dir / f"{chapter.slug}.ipynb"
        nbformat.write(nb, plain_nb)

        side = []
        for j in range(args.jobs):
            d = folder / f"side{j}"
            d.mkdir()
            side.append(d / f"{chapter.slug}.ipynb")
            nbformat.write(nb, side[-1])

        def plain_rounds(when: str) -> tuple[list[float], float]:
            serial = [execute_plain(plain_nb) for _ in range(args.plain)]
            start = time.monotonic()
            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(lambda p: execute_plain(p, threads=max(1, cores // args.jobs)), side))
            parallel = (time.monotonic() - start) / args.jobs
            print(f"plain ({when} grading): one at a time {', '.join(f'{s:.1f}' for s in serial)} s; "
                  f"{args.jobs} at a time {parallel:.1f} s per notebook", flush=True)
            return serial, parallel

        serial_before, parallel_before = plain_rounds("before")
        class_dir = folder / "class"
        class_dir.mkdir()
        copies = []
        for i in range(args.copies):
            copies.append(class_dir / f"{chapter.slug}_student{i:02d}.ipynb")
            nbformat.write(nb, copies[-1])
        report_path = folder / "grades.json"
        command = [sys.executable, "-m", "exercises_lib.grade", *map(str, copies), "-j", str(args.jobs),
                   "--source", "standin", "--json", str(report_path), "--quiet"]
        start = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        graded_wall = time.monotonic() - start
        if not report_path.is_file():
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            return 1
        report = json.loads(report_path.read_text())
        passed = sum(nb["all_passed"] for nb in report["notebooks"])
        per = graded_wall / args.copies
        print(f"graded: {args.copies} copies with -j {args.jobs} in {graded_wall:.1f} s -> {per:.1f} s per notebook "
              f"({passed}/{args.copies} with every exercise passed)", flush=True)
        serial_after, parallel_after = plain_rounds("after")
        # On a shared machine the load drifts: the plain figures are the mean of before and after.
        plain_serial = sum(serial_before + serial_after) / len(serial_before + serial_after)
        plain_parallel = (parallel_before + parallel_after) / 2
        print(f"plain, mean: one at a time {plain_serial:.1f} s, {args.jobs} at a time {plain_parallel:.1f} s per notebook")
        print(f"ratio, graded / plain one at a time: {per / plain_serial:.2f}")
        print(f"ratio, graded / plain {args.jobs} at a time: {per / plain_parallel:.2f}")
        if passed != args.copies:
            print(proc.stdout[-3000:])
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
