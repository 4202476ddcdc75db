"""The first code cell of every notebook: a Colab bootstrap and :func:`setup`.

The generator (:mod:`exercises_lib.generate`) writes the same two leading cells
into every notebook, from :func:`badge_markdown` and :func:`bootstrap_code`:
an Open-in-Colab badge, then a cell that installs this package in Colab,
pinned to the release ``v{__version__}``, and elsewhere only imports it. No
setup code is copied by hand into notebooks.

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import os
import random

from exercises_lib.render import in_colab

__all__ = ["setup", "badge_markdown", "bootstrap_code", "install_target"]


def install_target() -> str:
    """The pip requirement Colab installs: this package at its release tag."""
    from exercises_lib import REPO_URL, __version__

    return f"mechinterp-course @ git+{REPO_URL}@v{__version__}"


def badge_markdown(notebook_path: str) -> str:
    """The Open-in-Colab badge of a notebook at ``notebook_path`` in the repository."""
    from exercises_lib import REPO_URL

    repo = REPO_URL.removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{repo}/blob/main/{notebook_path}"
    return f'<a href="{url}" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>'


def bootstrap_code() -> str:
    """Source of the first code cell of every notebook."""
    return "\n".join(
        [
            "# NBVAL_IGNORE_OUTPUT",
            "# Setup. In Colab this installs the course package, pinned; elsewhere it only imports it.",
            "import sys",
            "if 'google.colab' in sys.modules:",
            f"    %pip install -q \"{install_target()}\"",
            "import exercises_lib",
            "exercises_lib.setup()",
        ]
    )


def setup(seed: int = 0, *, verbose: bool = True) -> None:
    """Prepare a notebook: seeds, no autograd, figure renderers; print one line.

    Seeds Python, NumPy and torch with ``seed`` so notebooks give the same
    numbers on every run.
    """
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
