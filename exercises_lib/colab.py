"""The first two cells of every notebook (Colab badge, bootstrap) and :func:`setup`.

The generator (:mod:`exercises_lib.generate`) writes the same two leading cells
into every notebook, from :func:`badge_markdown` and :func:`bootstrap_code`.
Both point to where the course is published: the repository
``exercises_lib.REPO_URL`` at the release tag ``exercises_lib.RELEASE_TAG``
(``v{__version__}``). The badge opens the notebook as it is in that release,
and the bootstrap installs the package from that same release, so a notebook
always runs against the library it was written with.

In Colab the bootstrap cell installs the package with pip (its output shown as
one status line), and when that fails it stops with one line saying what
failed and what to do: no pip traceback, and "Run all" stops there. Cells run
by hand afterwards report a missing name or module in one line that points
back to the setup cell. Elsewhere the cell only imports the package (install
it as the book's Setup page says). No setup code is copied by hand into
notebooks.

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import os
import random
import re
import sys

from exercises_lib.render import in_colab

__all__ = [
    "setup",
    "badge_markdown",
    "bootstrap_code",
    "install_target",
    "colab_url",
    "stale_modules",
    "SetupError",
]

PACKAGE = "mechinterp-course"
COLAB = "https://colab.research.google.com"


class SetupError(RuntimeError):
    """A setup step failed; IPython shows it as one line (what failed, what to do)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def _published() -> tuple[str, str]:
    """(repository URL, release tag), read when called so tests can point them elsewhere."""
    import exercises_lib

    return exercises_lib.REPO_URL.rstrip("/"), exercises_lib.RELEASE_TAG


def install_target() -> str:
    """The pip requirement Colab installs: this package at its release tag."""
    repo, tag = _published()
    return f"{PACKAGE} @ git+{repo}@{tag}"


def colab_url(notebook_path: str) -> str:
    """Colab's address of ``notebook_path`` (relative to the repository root) in the release."""
    repo, tag = _published()
    if not repo.startswith("https://github.com/"):
        raise ValueError(f"Colab opens notebooks from GitHub only; the course's REPO_URL is {repo!r}")
    return f"{COLAB}/github/{repo.removeprefix('https://github.com/')}/blob/{tag}/{notebook_path}"


def badge_markdown(notebook_path: str) -> str:
    """The Open-in-Colab badge of a notebook at ``notebook_path`` in the repository."""
    return (
        f'<a href="{colab_url(notebook_path)}" target="_parent">'
        f'<img src="{COLAB}/assets/colab-badge.svg" alt="Open In Colab"/></a>'
    )


# The Colab branch of the bootstrap cell. It runs before the package exists, so
# it is written out in the cell (kept short); everything after the install
# happens in exercises_lib.setup(). pip runs in a subprocess (not %pip) so its
# output can be folded into one status line and its errors into one message.
_BOOTSTRAP = '''\
# NBVAL_IGNORE_OUTPUT
# Setup. In Colab: install the course package, release {tag} of
# {repo}. Elsewhere: only import it (see the book's Setup page).
import sys
if "google.colab" in sys.modules:
    def _install(requirement, version):
        import importlib, importlib.metadata, os, subprocess
        get_ipython().set_custom_exc((), None)
        if version in {{d.version for d in importlib.metadata.distributions(name="{package}")}}:
            return  # installed by an earlier run of this cell
        print(f"Installing the course package ({{requirement.split('@ ')[1]}}), a minute or two...")
        pip = subprocess.Popen([sys.executable, "-m", "pip", "install", "--progress-bar", "off", requirement],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={{**os.environ, "GIT_TERMINAL_PROMPT": "0"}})
        lines = []
        for line in pip.stdout:  # pip's progress, as one status line
            lines.append(line.strip())
            print(f"\\r  {{lines[-1][:90]:<90}}", end="", flush=True)
        print("\\r" + " " * 92 + "\\r", end="", flush=True)
        if pip.wait():
            why = next((l for l in lines if l.startswith(("fatal:", "error:")) and "subprocess-exited" not in l), None)
            why = why or next((l for l in lines if l.startswith("ERROR:")), f"pip exited with status {{pip.returncode}}")
            get_ipython().set_custom_exc((ImportError, NameError), lambda shell, etype, value, tb, tb_offset=None: print(
                f"{{etype.__name__}}: {{value}}. Run the setup cell (the first code cell) first.", file=sys.stderr))
            class SetupError(RuntimeError):
                _render_traceback_ = lambda self: [f"SetupError: {{self}}"]
            raise SetupError(f"pip could not install {{requirement}} ({{why}}). Check that this runtime is online "
                             "and run this cell again; if it fails again, open the notebook from the course book.")
        importlib.invalidate_caches()
    _install("{requirement}", "{version}")
import exercises_lib
exercises_lib.setup()'''


def bootstrap_code() -> str:
    """Source of the first code cell of every notebook."""
    import exercises_lib

    repo, tag = _published()
    return _BOOTSTRAP.format(
        tag=tag, repo=repo, package=PACKAGE, requirement=install_target(), version=exercises_lib.__version__
    )


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stale_modules() -> list[str]:
    """The package's dependencies whose loaded copy is older or newer than the installed one.

    When pip upgrades a package that the running kernel has already imported
    (Colab imports some at start), the kernel keeps the old copy until it is
    restarted. Each entry reads ``"numpy 1.26.4 loaded, 2.1.0 installed"``.
    """
    from importlib import metadata

    try:
        wanted = {_normalise(_dist_name(r)) for r in metadata.requires(PACKAGE) or [] if "extra ==" not in r}
    except metadata.PackageNotFoundError:
        return []
    stale = []
    for module_name, dists in metadata.packages_distributions().items():
        module = sys.modules.get(module_name)
        loaded = getattr(module, "__version__", None)
        if module is None or not isinstance(loaded, str):
            continue
        for dist in dists:
            if _normalise(dist) not in wanted:
                continue
            try:
                installed = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
            if installed != loaded:
                stale.append(f"{module_name} {loaded} loaded, {installed} installed")
    return sorted(set(stale))


def setup(seed: int = 0, *, verbose: bool = True) -> None:
    """Prepare a notebook: seeds, no autograd, figure renderers; print one line.

    Seeds Python, NumPy and torch with ``seed`` so notebooks give the same
    numbers on every run. In Colab, first checks that no dependency the
    install just upgraded is still loaded in its old version (then the
    session must be restarted: :class:`SetupError` says so).
    """
    if in_colab():
        stale = stale_modules()
        if stale:
            raise SetupError(
                f"the install upgraded packages this session had already loaded ({'; '.join(stale)}). "
                "Restart the session (Runtime > Restart session), then run this cell again."
            )
    import numpy as np
    import torch

    from exercises_lib import __version__
    from exercises_lib.models import default_device

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_grad_enabled(False)
    try:
        from exercises_lib.render import configure_renderers

        configure_renderers()
    except ImportError:
        pass
    if verbose:
        source = os.environ.get("MECHINTERP_SOURCE", "auto")
        where = "Colab" if in_colab() else "local"
        print(f"exercises_lib {__version__} | {where} | device {default_device()} | model source: {source}")
