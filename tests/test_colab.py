"""The notebooks' Colab path: badge and bootstrap cell, run in a simulated Colab.

Colab is simulated by a fresh IPython kernel in which ``google.colab`` is
imported at start (as Colab's kernel does), running in a virtual environment
that has the course's dependencies but not the course package, with the
publication setting (``exercises_lib.REPO_URL`` / ``RELEASE_TAG``) pointed at a
local git repository and tag that the test makes from the working tree. The
generated bootstrap cell really installs the package from there with pip
(offline: the dependencies are already present, and the build backend too).

Failures (a repository that does not exist, no network) must end in one
short message with no pip output, stop "Run all" at the setup cell, and make
cells run by hand afterwards say in one line to run the setup cell first.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from _tree import copy_working_tree

import exercises_lib
from exercises_lib import colab

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TIMEOUT_S = 300

# --------------------------------------------------------------------------
# Badge, bootstrap text and the book's settings (no kernel)
# --------------------------------------------------------------------------


def test_badge_opens_the_release_the_package_is_pinned_to():
    badge = colab.badge_markdown("chapters/01_x.ipynb")
    repo = exercises_lib.REPO_URL.removeprefix("https://github.com/")
    assert exercises_lib.RELEASE_TAG == f"v{exercises_lib.__version__}"
    assert f"https://colab.research.google.com/github/{repo}/blob/{exercises_lib.RELEASE_TAG}/chapters/01_x.ipynb" in badge
    assert colab.install_target() == f"mechinterp-course @ git+{exercises_lib.REPO_URL}@{exercises_lib.RELEASE_TAG}"
    assert colab.install_target() in colab.bootstrap_code()


def test_setting_moves_badge_and_bootstrap_together(monkeypatch):
    monkeypatch.setattr(exercises_lib, "REPO_URL", "https://github.com/someone/fork")
    monkeypatch.setattr(exercises_lib, "RELEASE_TAG", "v9.9.9")
    assert "github/someone/fork/blob/v9.9.9/solutions/a.ipynb" in colab.badge_markdown("solutions/a.ipynb")
    assert '"mechinterp-course @ git+https://github.com/someone/fork@v9.9.9"' in colab.bootstrap_code()


def test_book_launch_buttons_use_the_same_release():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == exercises_lib.REPO_URL
    assert config["repository"]["branch"] == exercises_lib.RELEASE_TAG, (
        "_config.yml's repository.branch is the release the launch buttons open: set it to exercises_lib.RELEASE_TAG"
    )


def test_bootstrap_is_plain_python_and_short():
    import ast

    code = colab.bootstrap_code()
    ast.parse(code)  # no IPython magics: it runs the same everywhere
    assert len(code.splitlines()) <= 32


def test_stale_modules_names_a_dependency_loaded_in_another_version(monkeypatch):
    import types

    assert colab.stale_modules() == []
    fake = types.ModuleType("einops")
    fake.__version__ = "0.0.1"
    monkeypatch.setitem(sys.modules, "einops", fake)
    stale = colab.stale_modules()
    assert len(stale) == 1 and stale[0].startswith("einops 0.0.1 loaded, ") and stale[0].endswith(" installed")


def test_setup_in_colab_refuses_stale_modules(monkeypatch):
    import types

    fake = types.ModuleType("einops")
    fake.__version__ = "0.0.1"
    monkeypatch.setitem(sys.modules, "einops", fake)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(colab.SetupError, match=r"Restart the session") as info:
        colab.setup(verbose=False)
    assert info.value._render_traceback_() == [f"SetupError: {info.value}"]


# --------------------------------------------------------------------------
# A simulated Colab
# --------------------------------------------------------------------------

FAKE_COLAB = '''"""Stand-in for Colab's google.colab (the bits the course touches)."""
'''
FAKE_COLAB_OUTPUT = '''def enable_custom_widget_manager():
    pass
'''


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=_git_env())


def _git_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="test",
               GIT_AUTHOR_EMAIL="test@example.invalid", GIT_COMMITTER_NAME="test",
               GIT_COMMITTER_EMAIL="test@example.invalid")
    return env


@pytest.fixture(scope="module")
def release_repo(tmp_path_factory) -> Path:
    """A git repository holding the package as the working tree has it, tagged RELEASE_TAG."""
    repo = tmp_path_factory.mktemp("published") / "mechinterp-course"
    copy_working_tree(repo, "pyproject.toml", "README.md", "exercises_lib")
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "release", cwd=repo)
    _git("tag", exercises_lib.RELEASE_TAG, cwd=repo)
    return repo


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory) -> tuple[Path, Path]:
    """(links to everything installed here but the course package, a folder with a fake google.colab)."""
    farm = tmp_path_factory.mktemp("deps")
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        name = entry.name
        if name.endswith(".pth") or name.startswith(("__editable__", "mechinterp_course", "exercises_lib", "__pycache__")):
            continue
        (farm / name).symlink_to(entry)
    fake = tmp_path_factory.mktemp("fake_colab")
    (fake / "google" / "colab").mkdir(parents=True)  # no google/__init__.py: google.* stays a namespace
    (fake / "google" / "colab" / "__init__.py").write_text(FAKE_COLAB)
    (fake / "google" / "colab" / "output.py").write_text(FAKE_COLAB_OUTPUT)
    return farm, fake


def _colab_venv(tmp_path: Path, dependencies) -> Path:
    """A fresh environment with the dependencies (not the course package) and a fake google.colab."""
    farm, fake = dependencies
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # the fake google.colab first, then the dependencies (pip and setuptools among them)
    Path(site, "course_test_paths.pth").write_text(f"{fake}\n{farm}\n")
    return python


class Kernel:
    """A fresh IPython kernel in a simulated Colab; runs cells as Jupyter front ends do."""

    def __init__(self, python: Path, cwd: Path, env: dict[str, str]):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        ipython_dir = cwd / ".ipython"
        startup = ipython_dir / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-colab.py").write_text("import google.colab\n")  # Colab's kernel imports it at start
        spec = cwd / ".kernels" / "fake-colab"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "fake Colab", "language": "python",
        }))
        self.km = KernelManager(kernel_name="fake-colab", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
        kernel_env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
        kernel_env.update(env, IPYTHONDIR=str(ipython_dir), PATH=f"{python.parent}:{os.environ['PATH']}")
        self.km.start_kernel(cwd=str(cwd), env=kernel_env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, *cells: str, timeout: float = KERNEL_TIMEOUT_S) -> list[dict]:
        """Send every cell at once ("Run all"), stop_on_error as Jupyter does; one result per cell."""
        ids = [self.kc.execute(code, stop_on_error=True) for code in cells]
        results = {i: {"status": None, "outputs": [], "reply": None} for i in ids}
        deadline = time.monotonic() + timeout
        pending = set(ids)
        while pending:
            try:
                msg = self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"kernel gave no reply within {timeout} s") from None
            parent = msg["parent_header"].get("msg_id")
            if parent in pending and msg["msg_type"] == "execute_reply":
                results[parent]["status"] = msg["content"]["status"]
                results[parent]["reply"] = msg["content"]
                pending.discard(parent)
        # every output of these cells has been published before their reply; drain iopub
        idle = set()
        while idle != set(ids):
            msg = self.kc.get_iopub_msg(timeout=30)
            parent = msg["parent_header"].get("msg_id")
            if parent not in results:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle.add(parent)
            elif msg["msg_type"] in ("stream", "error", "display_data", "execute_result"):
                results[parent]["outputs"].append({"type": msg["msg_type"], **msg["content"]})
            if results[parent]["status"] == "aborted":
                idle.add(parent)  # an aborted request may publish no idle status of its own
        return [results[i] for i in ids]

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _text(result: dict) -> str:
    """What a learner sees under a cell: its streams (\\r-overwritten lines resolved) and errors."""
    chunks, stream = [], ""
    for out in result["outputs"]:
        if out["type"] == "stream":
            stream += out["text"]
            continue
        chunks.append(stream)
        stream = ""
        if out["type"] == "error":
            chunks.append("\n".join(out["traceback"]))
    chunks.append(stream)
    lines = [line.split("\r")[-1] for line in "\n".join(chunks).split("\n")]
    return "\n".join(line for line in lines if line.strip())


def _bootstrap_for(monkeypatch, repo_url: str, tag: str) -> str:
    monkeypatch.setattr(exercises_lib, "REPO_URL", repo_url)
    monkeypatch.setattr(exercises_lib, "RELEASE_TAG", tag)
    return colab.bootstrap_code()


OFFLINE_PIP = {
    # The simulated Colab has no package index: every dependency is already
    # there, and the package builds without build isolation (setuptools is there).
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_NO_INDEX": "1",
    "PIP_NO_BUILD_ISOLATION": "0",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

NEXT_CELL = """\
import exercises_lib
from importlib import metadata, resources
print("imported from", exercises_lib.__file__)
print("installed version", metadata.version("mechinterp-course"))
print("tokenizer data", resources.files("exercises_lib").joinpath("data/gpt2_tokenizer/vocab.json").is_file())
"""


@pytest.mark.slow
def test_bootstrap_installs_the_release_in_colab(tmp_path, monkeypatch, release_repo, dependencies):
    python = _colab_venv(tmp_path, dependencies)
    cell = _bootstrap_for(monkeypatch, release_repo.as_uri(), exercises_lib.RELEASE_TAG)
    work = tmp_path / "content"
    work.mkdir()
    kernel = Kernel(python, work, {**OFFLINE_PIP, "MECHINTERP_SOURCE": "standin"})
    try:
        start = time.monotonic()
        setup, nxt = kernel.run(cell, NEXT_CELL)
        took = time.monotonic() - start
        assert setup["status"] == "ok", _text(setup)
        shown = _text(setup)
        assert f"exercises_lib {exercises_lib.__version__} | Colab |" in shown, shown
        assert shown.splitlines()[0].startswith("Installing the course package (git+file://") and len(shown.splitlines()) == 2, shown
        assert nxt["status"] == "ok", _text(nxt)
        shown = _text(nxt)
        installed = Path(shown.split("imported from ", 1)[1].split("\n", 1)[0]).resolve()
        assert installed.is_relative_to((tmp_path / "venv").resolve()), f"imported from {installed}, not the install"
        assert f"installed version {exercises_lib.__version__}" in shown and "tokenizer data True" in shown, shown
        # running the cell again (a rerun, or after "Restart session") does not reinstall
        start2 = time.monotonic()
        (again,) = kernel.run(cell)
        assert again["status"] == "ok" and "Installing" not in _text(again), _text(again)
        print(f"\nsimulated Colab: install + setup {took:.1f} s, rerun {time.monotonic() - start2:.1f} s")
    finally:
        kernel.close()


def _assert_fails_cleanly(kernel: Kernel, cell: str, expect: str) -> str:
    setup, later, last = kernel.run(cell, "from exercises_lib import models\nprint('later cell ran')", "print('last cell ran')")
    assert setup["status"] == "error", _text(setup)
    errors = [o for o in setup["outputs"] if o["type"] == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1, errors
    message = errors[0]["traceback"][0]
    assert message.startswith("SetupError: pip could not install mechinterp-course @ git+"), message
    assert expect in message, message
    assert "run this cell again" in message and "\n" not in message, message
    shown = _text(setup)
    for noise in ("Traceback", "subprocess-exited-with-error", "note: This error", "Cloning", "ModuleNotFoundError"):
        assert noise not in shown, f"{noise!r} shown to the learner:\n{shown}"
    assert len(shown.splitlines()) == 2, shown  # "Installing ..." and the one error line
    # "Run all" stops at the setup cell: the cells queued after it are not run
    assert later["status"] == "aborted" and last["status"] == "aborted", (later["status"], last["status"])
    # a later cell run by hand says, in one line, to run the setup cell first
    (by_hand,) = kernel.run("from exercises_lib import models")
    assert by_hand["status"] == "error"
    shown = _text(by_hand)
    assert shown.splitlines() == [
        "ModuleNotFoundError: No module named 'exercises_lib'. Run the setup cell (the first code cell) first."
    ], shown
    (by_hand,) = kernel.run("model")
    assert _text(by_hand).splitlines() == [
        "NameError: name 'model' is not defined. Run the setup cell (the first code cell) first."
    ], _text(by_hand)
    return message


@pytest.mark.slow
def test_bootstrap_with_a_wrong_repository_says_so_and_stops(tmp_path, monkeypatch, release_repo, dependencies):
    python = _colab_venv(tmp_path, dependencies)
    missing = (tmp_path / "no-such-repository").as_uri()
    cell = _bootstrap_for(monkeypatch, missing, exercises_lib.RELEASE_TAG)
    work = tmp_path / "content"
    work.mkdir()
    kernel = Kernel(python, work, OFFLINE_PIP)
    try:
        message = _assert_fails_cleanly(kernel, cell, "fatal:")
        print("\nwrong repository:", message)
        # a release tag that does not exist fails the same way
        cell = _bootstrap_for(monkeypatch, release_repo.as_uri(), "v0.0.0-missing")
        setup, _, _ = kernel.run(cell, "pass", "pass")
        assert setup["status"] == "error"
        (error,) = [o for o in setup["outputs"] if o["type"] == "error"]
        assert len(error["traceback"]) == 1 and error["traceback"][0].startswith("SetupError: pip could not install")
        assert "error: pathspec 'v0.0.0-missing' did not match" in error["traceback"][0], error["traceback"][0]
        print("missing tag:", error["traceback"][0])
    finally:
        kernel.close()


@pytest.mark.slow
def test_bootstrap_without_network_says_so_and_stops(tmp_path, monkeypatch, dependencies):
    python = _colab_venv(tmp_path, dependencies)
    cell = colab.bootstrap_code()  # the real setting: GitHub, unreachable here
    work = tmp_path / "content"
    work.mkdir()
    closed = "http://127.0.0.1:9"  # the discard port, closed: every connection is refused
    no_network = {**OFFLINE_PIP, "https_proxy": closed, "HTTPS_PROXY": closed, "http_proxy": closed,
                  "HTTP_PROXY": closed, "ALL_PROXY": closed, "all_proxy": closed}
    kernel = Kernel(python, work, no_network)
    try:
        message = _assert_fails_cleanly(kernel, cell, "fatal: unable to access")
        print("\nno network:", message)
    finally:
        kernel.close()
