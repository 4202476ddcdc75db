"""The chapters of the course, in one place.

Each chapter has one name (its ``slug``) shared by four places: the solution
notebook ``solutions/<slug>.ipynb``, the exercise notebook
``chapters/<slug>.ipynb``, the helper module ``exercises_lib/<module>.py``
(which also holds the reference solution of every exercise) and its checks
``exercises_lib/checks/<module>.py``. A check is named ``"<module>.<function>"``.

The generator, the grader and the tests read this table; nothing else lists
the chapters.

Taught in: chapter 0 (how the course is built).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Chapter", "CHAPTERS", "chapter_of_notebook", "chapter_of_module"]


@dataclass(frozen=True)
class Chapter:
    number: int
    slug: str  # notebook stem, e.g. "01_duplicate_token_heads"
    module: str  # helper module and check prefix, e.g. "duplicate_tokens"
    title: str
    models: tuple[str, ...]  # course models the chapter loads (keys of exercises_lib.models.MODELS)

    @property
    def notebook(self) -> str:
        return f"{self.slug}.ipynb"


CHAPTERS: tuple[Chapter, ...] = (
    Chapter(0, "00_setup_check", "basics", "Setup check: the models of the course", ("gpt2-small", "attn-only-4l")),
    Chapter(1, "01_duplicate_token_heads", "duplicate_tokens", "Duplicate-token heads and neurons", ("gpt2-small",)),
    Chapter(2, "02_contextual_heads", "contextual", "Contextual attention heads and neurons", ("gpt2-small",)),
    Chapter(3, "03_polysemantic_head", "polysemantic", "A polysemantic attention head: 1.4", ("attn-only-4l",)),
    Chapter(4, "04_duality_circuit", "duality", "The duality circuit (left/right)", ("gpt2-small",)),
    Chapter(5, "05_layernorm_and_patching", "layernorm", "LayerNorm and patching", ("gpt2-small", "gpt2-noLN")),
)


def chapter_of_notebook(path: str) -> Chapter:
    """The chapter whose notebook (solution or exercise, any folder) is ``path``."""
    from pathlib import Path

    stem = Path(path).stem
    for chapter in CHAPTERS:
        if stem == chapter.slug or stem.startswith(chapter.slug):
            return chapter
    raise ValueError(
        f"{path!r} is not a course notebook: its name must start with one of "
        + ", ".join(c.slug for c in CHAPTERS)
    )


def chapter_of_module(module: str) -> Chapter:
    """The chapter whose helper module (and check prefix) is ``module``."""
    for chapter in CHAPTERS:
        if chapter.module == module:
            return chapter
    raise ValueError(f"no chapter has the module {module!r}")
