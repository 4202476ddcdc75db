"""Grade a student's notebook: ``python -m exercises_lib.grade path/to/notebook.ipynb``.

The notebook is executed top to bottom in a fresh kernel with a timeout
(stand-in models offline, real ones where they load), errors do not stop the
run, and every exercise check the notebook calls is reported as

* ``passed``,
* ``failed`` (with the check's message),
* ``not attempted`` (the exercise still raises ``NotImplementedError``), or
* ``not run`` (the cell calling the check never ran to it: an earlier error, or the timeout).

The table is printed, and the same is written as JSON (``--json``, default
``<notebook>.grade.json``). Exit status: 0 when every exercise passed, 1 otherwise.

Taught in: the instructors' guide (book/instructors.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

__all__ = ["grade_notebook", "format_table", "main"]

CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.]+)["']""")


def expected_checks(nb) -> list[str]:
    """Names of the checks called by the notebook's code cells, in order."""
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for name in CHECK_CALL.findall(cell.source):
                if name not in names:
                    names.append(name)
    return names


def _first_error(nb) -> str | None:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") != "NotImplementedError":
                return f"{out.get('ename')}: {out.get('evalue')}"[:300]
    return None


def grade_notebook(path: str | Path, *, timeout: int = 900, source: str | None = None) -> dict:
    """Execute ``path`` in a fresh kernel and return the per-exercise results."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    from exercises_lib import kernel_wait

    kernel_wait.install()  # a lost ZeroMQ wake-up costs a second, not the cell's timeout

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    names = expected_checks(nb)
    log = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    env_changes = {"MECHINTERP_GRADE_LOG": str(log), "MECHINTERP_CHECKS_RAISE": None}
    if source:
        env_changes["MECHINTERP_SOURCE"] = source
    saved = {k: os.environ.get(k) for k in env_changes}
    for k, v in env_changes.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    start = time.monotonic()
    stopped = None
    try:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", allow_errors=True,
            resources={"metadata": {"path": str(path.parent.resolve())}},
        )
        try:
            client.execute()
        except CellTimeoutError:
            stopped = f"a cell ran longer than {timeout}s"
        except DeadKernelError:
            stopped = "the kernel died (out of memory?)"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    log.unlink(missing_ok=True)
    by_name: dict[str, dict] = {}
    for rec in records:  # the last call of a check counts
        by_name[rec["name"]] = rec
    error = stopped or _first_error(nb)
    results = []
    for name in names + [n for n in by_name if n not in names]:
        if name in by_name:
            results.append(by_name[name])
        else:
            why = f"the check was never reached ({error})" if error else "the check was never reached"
            results.append({"name": name, "status": "not run", "message": why})
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "not attempted", "not run")}
    return {
        "notebook": str(path),
        "seconds": round(time.monotonic() - start, 1),
        "summary": counts,
        "exercises": results,
    }


def format_table(report: dict) -> str:
    rows = [(r["name"], r["status"], r["message"] if r["status"] != "passed" else "") for r in report["exercises"]]
    w1 = max([len("exercise")] + [len(r[0]) for r in rows])
    w2 = max([len("status")] + [len(r[1]) for r in rows])
    lines = [f"{'exercise':<{w1}}  {'status':<{w2}}  message", f"{'-' * w1}  {'-' * w2}  -------"]
    for name, status, msg in rows:
        lines.append(f"{name:<{w1}}  {status:<{w2}}  {msg[:160]}")
    s = report["summary"]
    lines.append(
        f"\n{s['passed']} passed, {s['failed']} failed, {s['not attempted']} not attempted, "
        f"{s['not run']} not run ({report['seconds']}s)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade a course notebook.")
    parser.add_argument("notebook")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    parser.add_argument("--json", help="where to write the JSON report (default: <notebook>.grade.json)")
    parser.add_argument("--source", choices=["auto", "real", "standin"], help="model source (default: auto)")
    args = parser.parse_args(argv)
    if not Path(args.notebook).is_file():
        print(f"No such notebook: {args.notebook}", file=sys.stderr)
        return 2
    report = grade_notebook(args.notebook, timeout=args.timeout, source=args.source)
    print(format_table(report))
    out = Path(args.json) if args.json else Path(args.notebook).with_suffix(".grade.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"JSON report: {out}")
    return 0 if report["summary"]["passed"] == len(report["exercises"]) and report["exercises"] else 1


if __name__ == "__main__":
    sys.exit(main())
