"""Helper library of the mechanistic-interpretability course.

Every chapter of the course has a notebook in ``solutions/``, a generated
exercise twin in ``chapters/``, and its helpers here: the chapter's module
(:mod:`exercises_lib.chapters`) holds the reference solution of each of its
exercises, from which the solution cells are written. Each public function
says which chapter teaches it.
"""

__version__ = "0.1.0"

#: Where the course is published: its GitHub repository, at the release tag
#: ``RELEASE_TAG``. The notebooks' Colab badges, the book's launch buttons and
#: Colab's install of this package all point there, so a notebook opened from
#: a release runs with that release's library. Change it here only:
#: ``_config.yml`` (repository url and branch) must agree, a test checks it.
REPO_URL = "https://github.com/mechinterp-course/mechinterp-course"
RELEASE_TAG = f"v{__version__}"

from exercises_lib.colab import setup  # noqa: E402

__all__ = ["__version__", "REPO_URL", "RELEASE_TAG", "setup"]
