"""Helper library of the mechanistic-interpretability course.

Every chapter of the course has a notebook in ``solutions/``, a generated
exercise twin in ``chapters/``, and its helpers here: the chapter's module
(:mod:`exercises_lib.chapters`) holds the reference solution of each of its
exercises, from which the solution cells are written. Each public function
says which chapter teaches it.
"""

__version__ = "0.1.0"

#: The course repository. Colab installs the package from here, pinned to
#: ``__version__`` (tag ``v{__version__}``); change it in this one place.
REPO_URL = "https://github.com/mechinterp-course/mechinterp-course"

from exercises_lib.colab import setup  # noqa: E402

__all__ = ["__version__", "REPO_URL", "setup"]
