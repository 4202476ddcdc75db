"""A skipped or wrong exercise never breaks the cells after it.

Every exercise notebook of ``chapters/`` runs top to bottom on the stand-ins
twice: as generated (every exercise left blank) and with every exercise wrong
(each stub returns the course's answer shifted by one, of the right shape, or
raises where an answer cannot be shifted). Exercise cells only define
functions and each check hands later cells the course's function when the
learner's fails, so no cell may fail at all. The twelve runs start with the
session and share the machine's cores with it (``tests/_background.py``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

import _background
from exercises_lib.chapters import chapter_of_notebook
from exercises_lib.generate import DEF_NAME

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
MODES = ("blank", "wrong")
STUB = re.compile(r"^(\s*)raise NotImplementedError\(.*\)$", re.M)
WRONG_ANSWER = '''
def _wrong_answer(name, args):
    """The course's answer to exercise `name` shifted by one (or an error where it cannot be shifted)."""
    import inspect
    import torch
    from exercises_lib.checks import course_function
    fn = course_function(name)
    out = fn(**{k: v for k, v in args.items() if k in inspect.signature(fn).parameters})

    def shift(x):
        if isinstance(x, torch.Tensor):
            return ~x if x.dtype == torch.bool else x + 1
        if isinstance(x, (tuple, list)):
            return type(x)(shift(v) for v in x)
        if isinstance(x, (int, float)):
            return x + 1
        raise ValueError("wrong on purpose")

    return shift(out)
'''


def _prepared(path: Path, mode: str):
    nb = nbformat.read(path, as_version=4)
    if mode == "wrong":
        module = chapter_of_notebook(path.name).module
        for cell in nb.cells:
            if "solution" in cell.metadata.get("tags", []):
                name = f"{module}.{DEF_NAME.search(cell.source).group(1)}"
                cell.source = STUB.sub(lambda m: f'{m.group(1)}return _wrong_answer("{name}", locals())', cell.source)
        nb.cells.insert(2, nbformat.v4.new_code_cell(WRONG_ANSWER.strip()))
    return nb


def _failing_cells(path: Path, mode: str) -> list[str]:
    from exercises_lib import kernel_wait

    nb = _prepared(path, mode)
    env = {k: v for k, v in os.environ.items() if k != "MECHINTERP_CHECKS_RAISE"}  # a failed check must not stop it
    env.update(MECHINTERP_SOURCE="standin", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    kernel_wait.notebook_client(nb, timeout=900, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue', '')[:200]}"
            for i, cell in enumerate(nb.cells) for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _job_id(path: Path, mode: str) -> str:
    return f"exercise-notebook:{path.stem}:{mode}"


def background_jobs_for(item) -> dict:
    """The run a test of this module reads (started beside the suite: tests/_background.py)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "path" not in params:
        return {}
    path, mode = params["path"], params["mode"]
    return {_job_id(path, mode): lambda folder: _failing_cells(path, mode)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_runs_with_the_exercises_blank_or_wrong(path, mode, request):
    failing = _background.result(_job_id(path, mode), lambda: background_jobs_for(request.node))
    assert failing == [], f"{path.name} with its exercises {mode}: " + "; ".join(failing)


def test_wrong_mode_replaces_every_stub():
    for path in NOTEBOOKS:
        wrong = _prepared(path, "wrong")
        assert not any(STUB.search(c.source) for c in wrong.cells if c.cell_type == "code"), path.name
