"""The grader, against honest notebooks and against every forgery we know of.

Each notebook here is generated from the course's exercise notebook. Most use
chapter 0 cut down to its setup, imports and exercise cell (the exercise needs
no model, so a notebook runs in seconds); they are graded together, two at a
time, as a class would be. One run grades chapter 1's whole exercise notebook
with the solutions filled in.

A forgery must come out as ``failed``, ``flagged`` or ``not run``: never
``passed``.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from exercises_lib.grade import grade_notebooks, main
from exercises_lib.grading.report import STATUSES, format_class, format_table, validate

ROOT = Path(__file__).resolve().parents[1]
EXERCISE0 = ROOT / "chapters" / "00_setup_check.ipynb"
EXERCISE1 = ROOT / "chapters" / "01_duplicate_token_heads.ipynb"
SOLUTION1 = ROOT / "solutions" / "01_duplicate_token_heads.ipynb"
CHECK = "basics.attention_entropy"
RIGHT = "return -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)"
WRONG = "return -(pattern * pattern.clamp_min(1e-30).log2()).sum(-1)"  # a typical mistake: bits

slow = pytest.mark.slow


# ---------------------------------------------------------------------------
# Notebooks
# ---------------------------------------------------------------------------


def _is_solution(cell) -> bool:
    return cell.cell_type == "code" and "solution" in cell.metadata.get("tags", [])


def chapter0(
    body: str | None = None,
    *,
    before: tuple[str, ...] = (),
    after: tuple[str, ...] = (),
    before_check: str = "",
    drop_check: bool = False,
    drop_exercise: bool = False,
):
    """Chapter 0's exercise notebook, cut to setup + imports + exercise, with changes.

    ``body`` replaces the stub's ``raise NotImplementedError(...)``; ``before``
    and ``after`` are cells put around the exercise cell; ``before_check`` is
    code put just before the exercise cell's ``check(...)`` line.
    """
    nb = nbformat.read(EXERCISE0, as_version=4)
    keep = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if "bootstrap" in tags or _is_solution(cell) or "from exercises_lib.checks import check" in cell.source:
            keep.append(cell)
        elif f'check("{CHECK}"' in cell.source:
            keep[-1].source += "\n" + cell.source  # the check cell, joined to its exercise
    (exercise,) = [c for c in keep if _is_solution(c)]
    if body is not None:
        exercise.source = re.sub(
            r"^(\s*)raise NotImplementedError\(.*\)\s*$",
            lambda m: textwrap.indent(textwrap.dedent(body).strip(), m.group(1)),
            exercise.source, count=1, flags=re.M,
        )
        assert "NotImplementedError" not in exercise.source
    lines = exercise.source.splitlines()
    at = next(i for i, line in enumerate(lines) if f'check("{CHECK}"' in line)
    if drop_check:
        del lines[at]
    elif before_check:
        lines[at:at] = before_check.splitlines()
    exercise.source = "\n".join(lines)
    i = keep.index(exercise)
    cells = keep[:i] + [nbformat.v4.new_code_cell(s) for s in before] + ([] if drop_exercise else [exercise])
    cells += [nbformat.v4.new_code_cell(s) for s in after] + keep[i + 1:]
    for c in cells:
        c.outputs, c.execution_count = [], None
    nb.cells = cells
    return nb


def chapter1_filled(replace: dict[str, str] | None = None):
    """Chapter 1's exercise notebook with every solution filled in (cells ``replace``d by function name)."""
    ex = nbformat.read(EXERCISE1, as_version=4)
    sol = nbformat.read(SOLUTION1, as_version=4)
    answers = [c.source for c in sol.cells if _is_solution(c)]
    cells = [c for c in ex.cells if _is_solution(c)]
    assert len(answers) == len(cells) > 5
    for cell, answer in zip(cells, answers):
        cell.source = answer
        for fname, source in (replace or {}).items():
            if re.search(rf"^def {fname}\(", answer, re.M):
                cell.source = source
    for c in ex.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return ex


def _write(folder: Path, name: str, nb) -> Path:
    path = folder / f"00_setup_check_{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _by_notebook(report: dict) -> dict[str, dict]:
    return {Path(nb["notebook"]).stem.replace("00_setup_check_", ""): nb for nb in report["notebooks"]}


def _status(nb: dict, name: str = CHECK) -> dict:
    (ex,) = [e for e in nb["exercises"] if e["name"] == name]
    return ex


# ---------------------------------------------------------------------------
# A class of chapter-0 notebooks: honest ones and forgeries, graded two at a time
# ---------------------------------------------------------------------------

REFERENCE_IMPORT = "from exercises_lib.basics import attention_entropy as reference_entropy"

CLASS = {
    # honest
    "solution": dict(body=RIGHT),
    "exercise": dict(),
    "wrong": dict(body=WRONG),
    "deleted_exercise": dict(drop_exercise=True),
    # forgeries
    "no_check_cell": dict(body=WRONG, drop_check=True),
    "fake_log_line": dict(body=WRONG, after=(textwrap.dedent("""
        import json, os
        line = json.dumps({"name": "basics.attention_entropy", "status": "passed", "message": "all 3 test cases pass"})
        for path in (os.environ.get("MECHINTERP_GRADE_LOG"), "grade.jsonl"):
            if path:
                with open(path, "a") as f:
                    f.write(line + "\\n")
        print("\\u2714 basics.attention_entropy: passed - all 3 test cases pass")
        """),)),
    "patched_run_check": dict(body=WRONG, before=(textwrap.dedent("""
        import exercises_lib.checks as C
        _real = C.run_check
        C.run_check = lambda name, fn, **ctx: _real(name, C.CHECKS[name].reference, **ctx)
        """),)),
    "patched_compare": dict(body=WRONG, before=("import exercises_lib.checks as C\nC.compare = lambda *a, **k: None",)),
    "patched_reference": dict(body=WRONG, before_check=(
        "import exercises_lib.checks as C\nC.load_check_modules()\n"
        f'C.CHECKS["{CHECK}"].reference = attention_entropy')),
    "replaced_check": dict(body=WRONG, before=(
        'def check(name, fn, **ctx):\n    print(f"\\u2714 {name}: passed - all 3 test cases pass")\n    return fn',)),
    "rechecked_with_reference": dict(body=WRONG, after=(f'{REFERENCE_IMPORT}\ncheck("{CHECK}", reference_entropy)',)),
    "aliased_reference": dict(body=WRONG, after=(f"{REFERENCE_IMPORT}\nattention_entropy = reference_entropy",)),
    "wrapped_reference": dict(body="import exercises_lib.basics as B\nreturn B.attention_entropy(pattern)"),
    "patches_from_inside_its_function": dict(body=textwrap.dedent("""
        import exercises_lib.checks as C
        C.compare = lambda *a, **k: None
        C.CHECKS["basics.attention_entropy"].reference = lambda **kw: None
        return pattern.sum(-1)
        """)),
    "kills_the_grading_worker": dict(body=textwrap.dedent("""
        import os, signal, sys
        if "ipykernel" not in sys.modules:  # only outside the notebook's kernel
            os.kill(os.getppid(), signal.SIGKILL)
        return pattern.sum(-1)
        """)),
    "kills_its_kernel": dict(body=WRONG, after=("import os\nos._exit(0)",)),
}

EXPECTED = {
    "solution": "passed",
    "exercise": "not attempted",
    "wrong": "failed",
    "deleted_exercise": "missing",
    "no_check_cell": "failed",
    "fake_log_line": "failed",
    "patched_run_check": "failed",
    "patched_compare": "failed",
    "patched_reference": "failed",
    "replaced_check": "failed",
    "rechecked_with_reference": "failed",
    "aliased_reference": "flagged",
    "wrapped_reference": "flagged",
    "patches_from_inside_its_function": "failed",
    "kills_the_grading_worker": "flagged",
    "kills_its_kernel": "not run",
}


@pytest.fixture(scope="module")
def class_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    paths = [_write(folder, name, chapter0(**kw)) for name, kw in CLASS.items()]
    report = grade_notebooks(paths, jobs=2, source="standin", timeout=300, time_limit=600, progress=False)
    return report


@slow
def test_the_report_follows_its_schema(class_report):
    validate(class_report)
    assert len(class_report["notebooks"]) == len(CLASS)


@pytest.mark.parametrize("name", list(CLASS))
@slow
def test_each_notebook_gets_its_status(class_report, name):
    nb = _by_notebook(class_report)[name]
    ex = _status(nb)
    assert ex["status"] == EXPECTED[name], format_table(nb)
    if EXPECTED[name] != "passed":
        assert not nb["all_passed"]


@slow
def test_the_expected_exercises_come_from_the_course(class_report):
    nb = _by_notebook(class_report)["deleted_exercise"]
    assert [e["name"] for e in nb["exercises"]] == [CHECK]
    assert "defines no `attention_entropy`" in _status(nb)["message"]


@slow
def test_a_wrong_answer_gets_the_checks_whole_diagnosis(class_report):
    ex = _status(_by_notebook(class_report)["wrong"])
    assert "the entropy in bits (log base 2) instead of nats" in ex["message"] and "Hint:" in ex["message"]
    # The table wraps the message instead of cutting it.
    table = format_table(_by_notebook(class_report)["wrong"], width=100)
    assert "Hint:" in table and all(len(line) <= 100 for line in table.splitlines())


@slow
def test_not_attempted_quotes_the_learners_line(class_report):
    ex = _status(_by_notebook(class_report)["exercise"])
    assert "not written yet" in ex["message"] and "raise NotImplementedError" in ex["message"]


@slow
def test_calling_the_reference_is_reported_as_such(class_report):
    for name in ("wrapped_reference", "aliased_reference"):
        ex = _status(_by_notebook(class_report)[name])
        assert ex["calls_reference"] and ex["check_passed"] is True
        assert "calls the reference" in ex["message"] and "exercises_lib.basics.attention_entropy" in ex["message"]


@slow
def test_a_killed_worker_is_flagged_and_replaced(class_report):
    nb = _by_notebook(class_report)["kills_the_grading_worker"]
    assert any("worker was killed" in f for f in nb["flags"])
    # The worker was replaced: the notebooks graded after it still have verdicts.
    assert all(_status(n)["status"] != "error" for n in class_report["notebooks"])


@slow
def test_a_dead_kernel_is_not_a_pass(class_report):
    nb = _by_notebook(class_report)["kills_its_kernel"]
    assert "kernel died" in (nb["execution"]["stopped"] or "")


@slow
def test_the_class_summary_says_how_long(class_report):
    text = format_class(class_report)
    assert f"{len(CLASS)} notebook(s) graded in" in text and "per notebook, 2 in parallel" in text


# ---------------------------------------------------------------------------
# Forgeries that reach beyond the notebook: the report file and the installed package
# ---------------------------------------------------------------------------


@slow
def test_a_detached_process_cannot_rewrite_the_report_and_a_planted_check_module_is_undone(tmp_path, capsys):
    """Three notebooks, one at a time, through the command line: the first starts a
    detached process (its own session, no environment) that keeps rewriting the JSON
    report with a pass; the second writes a module into the installed
    ``exercises_lib/checks/``; the third, the next student, has a wrong answer."""
    import exercises_lib.checks as C

    report_path = tmp_path / "grades.json"
    marker = f"grader-test-daemon-{time.time_ns()}"
    plant = Path(C.__file__).with_name("zz_grader_test_plant.py")
    daemon = textwrap.dedent(f"""
        import os, sys, time
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
        end = time.time() + 120
        while time.time() < end:  # {marker}
            try:
                with open({str(report_path)!r}, "w") as f:
                    f.write('{{"forged": true}}')
            except OSError:
                pass
            time.sleep(0.1)
        """)
    rewriter = chapter0(body=WRONG, after=(
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {daemon!r}], env={{}}, start_new_session=True)",))
    planter = chapter0(body=RIGHT, after=(
        "import pathlib, exercises_lib.checks as C\n"
        "pathlib.Path(C.__file__).with_name('zz_grader_test_plant.py').write_text("
        "'import exercises_lib.checks as C\\nC.compare = lambda *a, **k: None\\n')",))
    paths = [_write(tmp_path, "rewriter", rewriter), _write(tmp_path, "planter", planter),
             _write(tmp_path, "next_student", chapter0(body=WRONG))]
    try:
        rc = main([*map(str, paths), "--json", str(report_path), "--source", "standin", "--quiet", "--timeout", "300"])
        time.sleep(1.5)  # a surviving daemon would have rewritten the report by now
        out = capsys.readouterr().out
        report = json.loads(report_path.read_text())
        assert rc == 1, out
        validate(report)
        nbs = _by_notebook(report)
        assert _status(nbs["rewriter"])["status"] == "failed"
        assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
        assert nbs["rewriter"]["execution"]["processes_killed"] >= 1
        assert not plant.exists(), "the planted module was not removed"
        assert _status(nbs["planter"])["status"] == "flagged"
        assert any("zz_grader_test_plant.py" in f for f in nbs["planter"]["flags"])
        assert _status(nbs["next_student"])["status"] == "failed"
        assert "failed" in out and "FLAGGED" in out
    finally:
        plant.unlink(missing_ok=True)
        for p in psutil.process_iter(["cmdline"]):
            if marker in " ".join(p.info["cmdline"] or []):
                p.kill()


@slow
def test_the_time_limit_per_notebook(tmp_path):
    nb = chapter0(body=RIGHT, before=("import time\nwhile True:\n    time.sleep(1)",))
    report = grade_notebooks([_write(tmp_path, "hangs", nb)], source="standin", timeout=300, time_limit=20, progress=False)
    (graded,) = report["notebooks"]
    ex = _status(graded)
    assert ex["status"] == "not run", format_table(graded)
    assert "time limit (20 s)" in graded["execution"]["stopped"]


# ---------------------------------------------------------------------------
# A bigger chapter, whole
# ---------------------------------------------------------------------------


@slow
def test_chapter1_filled_in_passes_and_a_wrapped_reference_is_flagged(tmp_path):
    """Chapter 1's exercise notebook with the solutions filled in, except
    ``duplicate_token_score``, which calls ``duplicate_tokens.duplicate_token_score`` (the
    notebook itself calls it in the next cell, so it is easy to find)."""
    wrapper = ("def duplicate_token_score(pattern, tokens):\n"
               "    return duplicate_tokens.duplicate_token_score(pattern, tokens)\n")
    path = tmp_path / "01_duplicate_token_heads.ipynb"
    nbformat.write(chapter1_filled({"duplicate_token_score": wrapper}), path)
    report = grade_notebooks([path], source="standin", progress=False)
    validate(report)
    (nb,) = report["notebooks"]
    statuses = {e["name"]: e["status"] for e in nb["exercises"]}
    assert statuses.pop("duplicate_tokens.duplicate_token_score") == "flagged", format_table(nb)
    assert len(statuses) >= 5 and set(statuses.values()) == {"passed"}, format_table(nb)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_cli_missing_notebook(tmp_path, capsys):
    assert main([str(tmp_path / "nope.ipynb")]) == 2
    assert "No such notebook" in capsys.readouterr().err


def test_cli_notebook_of_no_chapter(tmp_path, capsys):
    path = tmp_path / "homework.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    assert main([str(path)]) == 2
    assert "--chapter" in capsys.readouterr().err


def test_statuses_are_the_schemas():
    schema = json.loads((ROOT / "exercises_lib" / "grading" / "report.schema.json").read_text())
    assert tuple(schema["$defs"]["status"]["enum"]) == STATUSES


# ---------------------------------------------------------------------------
# The sandbox's parts
# ---------------------------------------------------------------------------


def test_the_notebooks_environment_leaves_secrets_out(monkeypatch):
    from exercises_lib.grading.sandbox import clean_env

    monkeypatch.setenv("MY_SERVICE_API_TOKEN", "s3cret")
    monkeypatch.setenv("HF_TOKEN", "hf_s3cret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("MECHINTERP_CHECKS_RAISE", "1")
    monkeypatch.setenv("MECHINTERP_SOURCE", "standin")
    env = clean_env({"EXTRA": "1"})
    assert "s3cret" not in " ".join(env.values()) and "hf_s3cret" not in env.values()
    assert "MECHINTERP_CHECKS_RAISE" not in env
    assert env["MECHINTERP_SOURCE"] == "standin" and env["EXTRA"] == "1" and "PATH" in env


def test_the_package_guard_sees_and_undoes_every_change(tmp_path):
    from exercises_lib.grading.sandbox import PackageGuard

    pkg = tmp_path / "pkg"
    (pkg / "checks").mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "checks" / "__init__.py").write_text("y = 2\n")
    guard = PackageGuard(pkg, hooks=False)
    assert guard.changes() == []
    (pkg / "__init__.py").write_text("x = 666\n")
    (pkg / "checks" / "evil.py").write_text("import os\n")
    (pkg / "checks" / "__init__.py").unlink()
    assert sorted(guard.changes()) == sorted([
        "changed exercises_lib/__init__.py", "added exercises_lib/checks/evil.py", "removed exercises_lib/checks/__init__.py"])
    kept = guard.restore()
    assert guard.changes() == []
    assert (pkg / "__init__.py").read_text() == "x = 1\n" and not (pkg / "checks" / "evil.py").exists()
    # Nothing is lost: what was undone is kept aside (an edit made to a checkout while it was grading).
    assert (kept / "exercises_lib" / "__init__.py").read_text() == "x = 666\n"
    assert (kept / "exercises_lib" / "checks" / "evil.py").read_text() == "import os\n"
    assert guard.restore() is None
    # A compiled file planted for this interpreter is seen too.
    import sys

    cache = pkg / "checks" / "__pycache__" / f"evil.{sys.implementation.cache_tag}.pyc"
    cache.write_bytes(b"not a real pyc")
    assert guard.changes() == [f"added exercises_lib/checks/__pycache__/{cache.name}"]
    guard.restore()
    assert not cache.exists()


@pytest.mark.parametrize("first_cells, runs", [(0, 2), (3, 1)])
def test_a_kernel_that_dies_before_any_cell_gets_one_more_start(tmp_path, monkeypatch, first_cells, runs):
    """A kernel that never ran a cell (it died before answering kernel_info) is started once more; one
    that ran cells and then stopped is the notebook's doing and is reported as it is."""
    import asyncio

    from exercises_lib.grading import kernel

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), str(tmp_path / "in.ipynb"))
    calls = []

    async def fake_run(nb, spec, folder, deadline, progress):
        calls.append(len(calls))
        if len(calls) == 1:
            progress["cells"] = first_cells
            return {"stopped": "the notebook could not be executed: RuntimeError: Kernel died", "extracted": False}
        progress["cells"] = 2
        return {"stopped": None, "extracted": True}

    monkeypatch.setattr(kernel, "_run_cells", fake_run)
    monkeypatch.setattr(kernel, "GradingKernelManager", object)
    spec = {"folder": str(tmp_path), "notebook": str(tmp_path / "in.ipynb"), "names": ["f"], "time_limit": 60,
            "executed": "out.ipynb"}
    status = asyncio.run(kernel._execute(spec))
    assert len(calls) == runs
    assert (status["stopped"] is None) == (runs == 2)
    assert (tmp_path / "out.ipynb").is_file()
