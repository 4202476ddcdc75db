"""Committed notebooks and code: no machine paths, secrets or stray metadata; safe weight loading."""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "chapters").glob("*.ipynb"))
FORBIDDEN = [
    (re.compile(r"/(work|root|home/\w+|Users/\w+)/"), "a machine path"),
    (re.compile(r"/tmp/[\w.-]+"), "a temporary path"),
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), "a Hugging Face token"),
    (re.compile(r"\b(ghp|gho|github_pat)_[A-Za-z0-9_]{20,}\b"), "a GitHub token"),
    (re.compile(r"site-packages"), "an installation path"),
]
ALLOWED_NB_METADATA = {"kernelspec", "language_info", "widgets"}
ALLOWED_CELL_METADATA = {"tags"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_is_clean(path):
    text = path.read_text()
    for pattern, what in FORBIDDEN:
        m = pattern.search(text)
        assert not m, f"{path.name} contains {what}: {m.group(0)!r}"
    nb = nbformat.read(path, as_version=4)
    assert set(nb.metadata) <= ALLOWED_NB_METADATA, set(nb.metadata) - ALLOWED_NB_METADATA
    for cell in nb.cells:
        assert set(cell.metadata) <= ALLOWED_CELL_METADATA, (path.name, dict(cell.metadata))


def test_exercise_notebooks_have_no_outputs():
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


def test_solution_notebooks_are_committed_executed():
    """nbval compares only cells with an execution count: every code cell must have one."""
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        missing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.execution_count]
        assert not missing, f"{path.name}: code cells {missing} have not been executed"


CODE = sorted(p for p in (ROOT / "exercises_lib").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))


def test_no_pickle_loading_and_no_remote_code():
    for path in CODE:
        if path.name == "test_hygiene.py":
            continue
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{path}: torch.load without weights_only=True"
        assert not re.search(r"\bpickle\.loads?\(", text), f"{path}: pickle.load"
        assert not re.search(r"trust_remote_code\s*=\s*True", text), f"{path}: trust_remote_code=True"
