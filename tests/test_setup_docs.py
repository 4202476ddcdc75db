"""Every command that book/setup.md and the README give in a ``bash`` block is run by a test.

The commands are read from the documents themselves: adding a command that no
test runs fails ``test_every_documented_command_is_run_by_a_test``. Where each runs:

* ``python3 -m venv .venv`` and ``.venv/bin/pip install ...`` (setup.md): verbatim,
  in a fresh copy of the repository (``test_fresh_install_then_jupyterlab_starts``;
  slow, and it needs the package index: skipped, saying so, without one);
* ``.venv/bin/jupyter lab chapters/`` (setup.md): launched headless on a free
  loopback port, its ``/api`` polled, a kernel started, then shut down; with
  this checkout's environment (quick) and in the fresh copy;
* ``bash tools/build_book.sh`` (README) and ``tools/build_book.sh`` (setup.md): by
  the book tests' build fixture (``tests/book/conftest.py``), which runs it;
* ``bash tools/test.sh`` (README): started here with ``--collect-only`` (running
  the whole suite is what this very run does).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import _background
from _tree import copy_working_tree

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("book/setup.md", "README.md")
JUPYTER_START_TIMEOUT_S = 90
FRESH_INSTALL_TIMEOUT_S = 1800


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every command line in a ```bash block of DOCS (comments dropped)."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), flags=re.S):
            for line in block.splitlines():
                command = line.split(" #", 1)[0].strip()
                if command and not command.startswith("#"):
                    found.append((doc, command))
    return found


# How each documented command is run by the tests (see the module docstring).
RUN_BY = {
    "python3 -m venv .venv": "test_fresh_install_then_jupyterlab_starts",
    ".venv/bin/pip install torch==2.13.0 -r requirements.txt -e .": "test_fresh_install_then_jupyterlab_starts",
    ".venv/bin/jupyter lab chapters/": "test_jupyterlab_starts / test_fresh_install_then_jupyterlab_starts",
    "tools/build_book.sh": "tests/book/conftest.py::book_html",
    "bash tools/build_book.sh": "tests/book/conftest.py::book_html",
    "bash tools/test.sh": "test_test_command_starts",
    # "Model weights" (setup.md): the downloads need the Hugging Face hub, which this suite cannot reach;
    # the folders they write are the layouts tests/test_real_path.py exports and loads offline.
    "W=/path/to/weights": "test_manifest_command_on_the_exported_layouts (sets W)",
    "hf download gpt2 config.json model.safetensors vocab.json merges.txt tokenizer.json tokenizer_config.json "
    "--local-dir $W/gpt2": "needs the hub; layout: tests/test_real_path.py",
    'hf download apollo-research/gpt2_noLN --include "*.json" "*.safetensors" "*.txt" '
    "--local-dir $W/apollo-research/gpt2_noLN": "needs the hub; layout: tests/test_real_path.py",
    "hf download NeelNanda/Attn_Only_4L512W_C4_Code config.json model_final.pth "
    "--local-dir $W/NeelNanda/Attn_Only_4L512W_C4_Code": "needs the hub; layout: tests/test_real_path.py",
    "hf download NeelNanda/gpt-neox-tokenizer-digits --local-dir $W/NeelNanda/gpt-neox-tokenizer-digits":
        "needs the hub; layout: tests/test_real_path.py",
    ".venv/bin/python -m exercises_lib.models.manifest --all $W": "test_manifest_command_on_the_exported_layouts",
}


def test_every_documented_command_is_run_by_a_test():
    commands = documented_commands()
    assert len(commands) >= 5, commands  # the parser still finds the blocks
    unknown = [f"{doc}: {command}" for doc, command in commands if command not in RUN_BY]
    assert not unknown, f"documented commands that no test runs (add them to RUN_BY and test them): {unknown}"
    book_fixture = (ROOT / "tests" / "book" / "conftest.py").read_text()
    assert '"tools" / "build_book.sh"' in book_fixture, "the book fixture no longer runs tools/build_book.sh"


@pytest.mark.slow
def test_manifest_command_on_the_exported_layouts(tmp_path):
    """setup.md's manifest command, verbatim, with ``W`` a copy (hard links) of the stand-ins exported in
    the hub's layouts: it writes each folder's manifest, naming its weights."""
    from _exports import standin_exports

    weights = tmp_path / "weights"
    shutil.copytree(standin_exports() / "weights", weights, copy_function=os.link)
    command = _setup_md(".venv/bin/python -m exercises_lib.models.manifest").replace(".venv/bin/python", sys.executable, 1)
    out = subprocess.run(["bash", "-c", command], cwd=ROOT, env=dict(os.environ, W=str(weights)),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for folder, weight_file in (("gpt2", "model.safetensors"), ("apollo-research/gpt2_noLN", "model.safetensors"),
                                ("NeelNanda/Attn_Only_4L512W_C4_Code", "model_final.pth")):
        manifest = weights / folder / "mechinterp-manifest.json"
        assert manifest.is_file() and weight_file in manifest.read_text(), (folder, out.stdout[-2000:])


def _setup_md(command_start: str) -> str:
    (command,) = [c for doc, c in documented_commands() if doc == "book/setup.md" and c.startswith(command_start)]
    return command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None, method: str = "GET", body: dict | None = None):
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        request.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read()
        return response.status, (json.loads(data) if data[:1] in (b"{", b"[") else data.decode(errors="replace"))


def run_jupyterlab(repo: Path, venv_bin: Path, tmp: Path) -> dict:
    """Run setup.md's ``jupyter lab`` command in ``repo``, headless on a free loopback port; check, stop.

    Returns what was measured (seconds to answer, the notebooks it serves).
    """
    command = shlex.split(_setup_md(".venv/bin/jupyter lab"))
    assert command[0] == ".venv/bin/jupyter", command
    command[0] = str(venv_bin / "jupyter")
    port, token = _free_port(), secrets.token_hex(16)
    command += [
        "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")  # as setup.md says for root (containers)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),  # nobody's own settings
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
        JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
        PATH=f"{venv_bin}:{os.environ['PATH']}",
    )
    log = tmp / "jupyterlab.log"
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        version = None
        while time.monotonic() - start < JUPYTER_START_TIMEOUT_S and proc.poll() is None:
            try:
                status, version = _get(f"{base}/api")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        answered = time.monotonic() - start
        assert version is not None, f"JupyterLab did not answer on {base}/api (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
        assert status == 200 and "version" in version, version
        status, lab = _get(f"{base}/lab", token)
        assert status == 200 and "JupyterLab" in lab, lab[:500]
        # it serves the exercise notebooks (the folder named on the command line) ...
        _, listing = _get(f"{base}/api/contents/", token)
        served = sorted(item["name"] for item in listing["content"] if item["type"] == "notebook")
        expected = sorted(p.name for p in (repo / "chapters").glob("*.ipynb"))
        assert served == expected, (served, expected)
        # ... and can start a Python kernel for them
        _, kernel = _get(f"{base}/api/kernels", token, method="POST", body={"name": "python3"})
        _get(f"{base}/api/kernels/{kernel['id']}", token, method="DELETE")
        _get(f"{base}/api/shutdown", token, method="POST")
        proc.wait(timeout=30)
        return {"seconds_to_answer": answered, "notebooks": served, "version": version["version"]}
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_jupyterlab_starts(tmp_path):
    """setup.md's last command, with the environment the install step made (this checkout's)."""
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "jupyter-lab").exists():
        pytest.fail(f"no jupyter-lab in {venv_bin}: the install step (tools/install.sh, requirements.txt) must install JupyterLab")
    measured = run_jupyterlab(ROOT, venv_bin, tmp_path)
    print(f"\nJupyterLab answered in {measured['seconds_to_answer']:.1f} s, serving {len(measured['notebooks'])} notebooks")


def test_test_command_starts():
    """README's ``bash tools/test.sh``: installs what is needed, then runs pytest with the given arguments."""
    result = subprocess.run(
        ["bash", "tools/test.sh", "--collect-only", "-q", "tests/test_setup_docs.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test_every_documented_command_is_run_by_a_test" in result.stdout


def _index_reachable(tmp: Path) -> bool:
    """Whether pip can download from the package index (a small wheel, bypassing pip's cache)."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q", "-d", str(tmp / "probe"), "six==1.16.0"],
        capture_output=True, text=True, timeout=120,
    )
    return probe.returncode == 0


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def _fresh_install(tmp_path: Path) -> str | None:
    """setup.md's commands, verbatim, in a fresh copy of the repository: install, then JupyterLab starts.

    Returns what was measured, or ``None`` when no package index can be reached."""
    if not _index_reachable(tmp_path):
        return None
    repo = tmp_path / "course"
    copy_working_tree(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    timings = {}
    for command in (_setup_md("python3 -m venv"), _setup_md(".venv/bin/pip install")):
        start = time.monotonic()
        result = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True,
                                timeout=FRESH_INSTALL_TIMEOUT_S)
        timings[command] = time.monotonic() - start
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    python = repo / ".venv" / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import exercises_lib; print(exercises_lib.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(repo.resolve()), where
    measured = run_jupyterlab(repo, repo / ".venv" / "bin", tmp_path)
    return (
        "fresh install: "
        + "; ".join(f"{c}: {t:.0f} s" for c, t in timings.items())
        + f"; .venv {_du_mb(repo / '.venv'):.0f} MB; JupyterLab (server API {measured['version']}) answered in"
        f" {measured['seconds_to_answer']:.1f} s"
    )


#: The fresh install is the suite's longest single job (mostly pip): it starts first, beside the suite.
BACKGROUND_FIRST = True
_FRESH = "fresh-install"


def background_jobs_for(item) -> dict:
    """The fresh install, when its test is selected (tests/_background.py)."""
    return {_FRESH: _fresh_install} if item.name == "test_fresh_install_then_jupyterlab_starts" else {}


@pytest.mark.slow
def test_fresh_install_then_jupyterlab_starts(request):
    """setup.md's commands, verbatim, in a fresh copy of the repository: install, then JupyterLab starts."""
    measured = _background.result(_FRESH, lambda: background_jobs_for(request.node))
    if measured is None:
        pytest.skip("no package index reachable: the fresh install of book/setup.md needs one")
    print("\n" + measured)
