"""The CI workflow files: valid (linted against GitHub's schema) and in step with the repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_pass_the_schema_linter():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _load(name):
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def test_gpu_workflow_runs_every_solution_notebook_on_a_gpu_runner():
    wf = _load("gpu-notebooks.yml")
    job = wf["jobs"]["notebook"]
    assert "gpu" in job["runs-on"] and "self-hosted" in job["runs-on"]
    listed = job["strategy"]["matrix"]["notebook"]
    on_disk = sorted(f"solutions/{p.name}" for p in (ROOT / "solutions").glob("*.ipynb"))
    assert sorted(listed) == on_disk, "the GPU matrix must list every solution notebook (one job each)"
    steps = " ".join(str(s) for s in job["steps"])
    assert "actions/cache" in steps and "HF_HOME" in str(job["env"])
    assert "pytest" in steps and "matrix.notebook" in steps


def test_cpu_workflow_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash tools/test.sh" in readme
    steps = _load("cpu.yml")["jobs"]["test"]["steps"]
    assert any(s.get("run") == "bash tools/test.sh" for s in steps)
    assert "bash tools/test.sh" in (ROOT / ".ci" / "run").read_text()
