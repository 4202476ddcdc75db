"""Every solution notebook through the real-model path, under nbval, offline.

The stand-ins are exported in their real models' hub layouts once
(``_exports.standin_exports``) and each solution notebook runs under nbval
with ``MECHINTERP_SOURCE=real`` and ``MECHINTERP_WEIGHTS_DIR`` pointing at the
export: every ``load_model`` goes through TransformerLens's loaders and every
``if not model.is_standin:`` branch of the notebooks executes (attn-only-4l
is exported with the course's code tokenizer, its stand-in's default, and that
tokenizer's files).

The runs start with the session, beside it, one per core, each kernel with one
thread (``tests/_background.py``), and each test reports its notebook's run.
``PENDING`` lists the runs known to fail for a reason in the notebook itself,
each with that reason: they are marked ``xfail(strict=False)`` until the
notebook is changed, then removed from the list.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import _background
from _exports import standin_exports

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb"))
RUNS = [(nb.stem, nb, "weights") for nb in NOTEBOOKS]

#: Runs that fail because of a notebook cell (not the library), with the reason.
PENDING: dict[str, str] = {}

_TIMEOUT_S = 1800


def _run(notebook: Path, weights: Path, tmp: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(
        MECHINTERP_SOURCE="real",
        MECHINTERP_WEIGHTS_DIR=str(weights),
        HF_HOME=str(tmp / "hf"),  # an empty cache: only the export can be found
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(notebook.relative_to(ROOT))]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        return 124, f"timed out after {_TIMEOUT_S} s\n{err.stdout or ''}"
    return out.returncode, out.stdout + out.stderr


def _job_id(run_id: str) -> str:
    return f"real-path-notebook:{run_id}"


def background_jobs_for(item) -> dict:
    """The run a test of this module reads (started beside the suite: tests/_background.py)."""
    run_id = getattr(getattr(item, "callspec", None), "params", {}).get("run_id")
    if run_id is None:
        return {}
    _, notebook, weights = next(r for r in RUNS if r[0] == run_id)
    return {_job_id(run_id): lambda folder: _run(notebook, standin_exports() / weights, folder)}


@pytest.mark.slow
@pytest.mark.parametrize("run_id", [r[0] for r in RUNS])
def test_solution_notebook_through_the_real_path(run_id, request):
    if run_id in PENDING:
        request.applymarker(pytest.mark.xfail(reason=PENDING[run_id], strict=False))
    code, output = _background.result(_job_id(run_id), lambda: background_jobs_for(request.node))
    assert code == 0, f"{run_id} failed through the real path:\n{output[-8000:]}"
