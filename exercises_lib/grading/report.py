"""The grader's report: statuses, the printed table, the JSON schema.

Each exercise of a notebook gets one status:

``passed``
    the course's check passed on the learner's function;
``failed``
    it did not (the message is the check's whole diagnosis);
``not attempted``
    the function still raises ``NotImplementedError``;
``not run``
    the function was not defined when the notebook stopped (an earlier error,
    a cell or notebook time limit, a dead kernel);
``missing``
    the notebook has no such function at all (its cell was deleted or renamed);
``flagged``
    the verdict cannot stand as a pass: the function calls the course's own
    reference for this exercise, or the notebook changed the course package or
    stopped the grading (the message says which);
``error``
    the grader itself could not run the check (a problem on the grader's side,
    never a pass).

The JSON document follows ``report.schema.json`` (in this folder); :func:`validate`
checks a report against it.

Taught in: the instructors' guide ("Checking students' work").
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

__all__ = ["STATUSES", "SCHEMA_PATH", "summarise", "format_table", "format_class", "validate"]

STATUSES = ("passed", "failed", "not attempted", "not run", "missing", "flagged", "error")
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def summarise(exercises: list[dict]) -> dict[str, int]:
    return {s: sum(e["status"] == s for e in exercises) for s in STATUSES}


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for para in (text or "").splitlines() or [""]:
        lines += textwrap.wrap(para, width, break_long_words=True, break_on_hyphens=False) or [""]
    return lines


def format_table(nb: dict, width: int | None = None) -> str:
    """One notebook's table: every exercise with its status and whole message, wrapped."""
    width = width or max(100, shutil.get_terminal_size((120, 24)).columns)
    rows = []
    for e in nb["exercises"]:
        msg = e["message"] if e["status"] != "passed" else ""
        if e.get("uses_course"):
            msg = (msg + " " if msg else "") + "(uses the course's " + ", ".join(e["uses_course"]) + ")"
        rows.append((e["name"], e["status"], msg))
    w1 = max([len("exercise")] + [len(r[0]) for r in rows])
    w2 = max([len("status")] + [len(r[1]) for r in rows])
    w3 = max(30, width - w1 - w2 - 4)
    ch = nb.get("chapter") or {}
    title = f"{nb['notebook']}"
    if ch:
        title += f"  (chapter {ch['number']}: {ch['title']})"
    lines = _wrap(title, width) + [f"{'exercise':<{w1}}  {'status':<{w2}}  message", f"{'-' * w1}  {'-' * w2}  {'-' * min(w3, 40)}"]
    for name, status, msg in rows:
        wrapped = _wrap(msg, w3)
        lines.append(f"{name:<{w1}}  {status:<{w2}}  {wrapped[0]}".rstrip())
        lines += [f"{'':<{w1}}  {'':<{w2}}  {more}" for more in wrapped[1:]]
    for flag in nb.get("flags", []):
        lines += _wrap(f"FLAGGED: {flag}", width)
    ex = nb.get("execution") or {}
    notes = []
    if ex.get("stopped"):
        notes.append(f"execution stopped: {ex['stopped']}")
    if ex.get("first_error"):
        notes.append(f"first error: {ex['first_error']}")
    if ex.get("processes_killed"):
        notes.append(f"{ex['processes_killed']} process(es) the notebook left running were killed")
    for n in notes:
        lines += _wrap(f"note: {n}", width)
    s = nb["summary"]
    counts = ", ".join(f"{s[k]} {k}" for k in STATUSES if s.get(k))
    lines.append(f"{counts or 'no exercises'} ({nb['seconds']:.1f} s)")
    return "\n".join(lines)


def format_class(report: dict, width: int | None = None) -> str:
    """Every notebook's table, then one line for the whole run."""
    parts = [format_table(nb, width) for nb in report["notebooks"]]
    n = len(report["notebooks"])
    all_passed = sum(nb["all_passed"] for nb in report["notebooks"])
    per = report["seconds"] / n if n else 0.0
    parts.append(
        f"{n} notebook(s) graded in {report['seconds']:.1f} s ({per:.1f} s per notebook, "
        f"{report['grader']['jobs']} in parallel); {all_passed} with every exercise passed."
    )
    return "\n\n".join(parts)


def validate(report: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if ``report`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
