"""The grader, on chapter 0: the exercise notebook (not attempted), the solution (passed),
and the solution with one planted wrong answer (failed, with the check's message)."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from exercises_lib.grade import expected_checks, format_table, grade_notebook

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_setup_check.ipynb"
EXERCISE = ROOT / "chapters" / "00_setup_check.ipynb"

pytestmark = pytest.mark.slow


def _copy(path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / path.name
    shutil.copy(path, dst)
    return dst


def test_expected_checks_are_found():
    assert expected_checks(nbformat.read(SOLUTION, as_version=4)) == ["basics.attention_entropy"]


def test_grade_solution_all_passed(tmp_path):
    report = grade_notebook(_copy(SOLUTION, tmp_path), source="standin")
    assert report["summary"]["passed"] == len(report["exercises"]) == 1, report


def test_grade_exercise_not_attempted(tmp_path):
    report = grade_notebook(_copy(EXERCISE, tmp_path), source="standin")
    assert [r["status"] for r in report["exercises"]] == ["not attempted"], report
    assert "passed" not in format_table(report).split("\n")[2]


def test_grade_planted_wrong_answer_via_cli(tmp_path, capsys):
    """The command-line entry point, run in this process (a subprocess whose pipes a
    lingering kernel could hold open once hung a CI run; the CLI logic is the same)."""
    from exercises_lib.grade import main

    nb = nbformat.read(SOLUTION, as_version=4)
    for cell in nb.cells:
        if "def attention_entropy" in cell.source:
            cell.source = cell.source.replace(".log()).sum(-1)", ".log2()).sum(-1)")
    wrong = tmp_path / "student.ipynb"
    nbformat.write(nb, wrong)
    out_json = tmp_path / "report.json"
    rc = main([str(wrong), "--json", str(out_json), "--source", "standin", "--timeout", "300"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "basics.attention_entropy" in out and "failed" in out
    report = json.loads(out_json.read_text())
    (ex,) = report["exercises"]
    assert ex["status"] == "failed" and "log base 2" in ex["message"]


def test_grade_cli_missing_notebook(tmp_path, capsys):
    from exercises_lib.grade import main

    assert main([str(tmp_path / "nope.ipynb")]) == 2
    assert "No such notebook" in capsys.readouterr().err
