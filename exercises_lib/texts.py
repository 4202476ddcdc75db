"""Real texts for the experiments, offline.

Short texts of several genres ship as package data in ``data/texts/`` (one
UTF-8 ``.txt`` file per text; source, licence and how each was obtained are in
``data/texts/PROVENANCE.md``). Python source code is not shipped: it is read
from the standard library of the running interpreter.

Genres: ``religious`` (King James Bible), ``legal`` (software licences),
``technical`` (the Python documentation), ``news`` (two parallel passages, one
in British and one in American English), ``history`` (19th-20th century wars),
``cooking`` and ``fiction`` (written for the course).

Taught in: chapter 1 (a long passage with repeated words), chapter 2 (texts of
different genres for contextual neurons), chapter 3 (Python code).
"""

from __future__ import annotations

import functools
import os
import pathlib
import random
import sysconfig
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "TextInfo",
    "list_texts",
    "load_text",
    "texts_by_genre",
    "python_source_files",
    "python_source_snippets",
]


@dataclass(frozen=True)
class TextInfo:
    """Metadata of one packaged text."""

    name: str
    genre: str
    source: str
    licence: str
    n_chars: int


_KJV = "King James Version via Debian package bible-kjv-text 4.38"
_OWN = "written for this course"
_CC_BY = "CC BY 4.0 (as the course)"

# name -> (genre, source, licence); the file is data/texts/<name>.txt
_TEXTS: dict[str, tuple[str, str, str]] = {
    "bible_genesis": ("religious", f"{_KJV}: Genesis 1-3", "public domain"),
    "bible_psalms": ("religious", f"{_KJV}: Psalms 1-8", "public domain"),
    "bible_matthew": ("religious", f"{_KJV}: Matthew 5-7", "public domain"),
    "legal_gpl3": (
        "legal",
        "GNU GPL version 3, preamble to section 1 (Debian /usr/share/common-licenses/GPL-3)",
        "verbatim copying permitted (Free Software Foundation)",
    ),
    "legal_apache2": (
        "legal",
        "Apache License 2.0, sections 1-3 (Debian /usr/share/common-licenses/Apache-2.0)",
        "Apache License 2.0 text, redistributed verbatim",
    ),
    "python_docs": (
        "technical",
        "Python 3.11 tutorial, 'Whetting Your Appetite' and 'Floating Point "
        "Arithmetic' (Debian python3.11-doc), reST markup removed",
        "PSF License Version 2",
    ),
    "british_prose": ("news", f"{_OWN} (British English)", _CC_BY),
    "american_prose": ("news", f"{_OWN} (American English)", _CC_BY),
    "war_history": ("history", _OWN, _CC_BY),
    "cooking": ("cooking", _OWN, _CC_BY),
    "fiction": ("fiction", _OWN, _CC_BY),
}

# Folder names skipped when collecting standard-library source files.
_SKIPPED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)


def _texts_dir():
    """The packaged texts folder, as an ``importlib.resources`` Traversable."""
    return resources.files("exercises_lib") / "data" / "texts"


@functools.lru_cache(maxsize=None)
def load_text(name: str) -> str:
    """The packaged text called ``name`` (see ``list_texts()`` for the names).

    Raises ``KeyError`` naming the available texts when ``name`` is unknown.
    """
    if name not in _TEXTS:
        raise KeyError(
            f"Unknown text {name!r}. Available texts: {', '.join(sorted(_TEXTS))}."
        )
    return (_texts_dir() / f"{name}.txt").read_text(encoding="utf-8")


def list_texts() -> list[TextInfo]:
    """Metadata of every packaged text, in a fixed order."""
    return [
        TextInfo(name, genre, source, licence, len(load_text(name)))
        for name, (genre, source, licence) in _TEXTS.items()
    ]


def texts_by_genre(genre: str) -> dict[str, str]:
    """All packaged texts of one genre, as ``{name: text}``.

    Raises ``KeyError`` naming the known genres when ``genre`` is unknown.
    """
    genres = sorted({g for g, _, _ in _TEXTS.values()})
    if genre not in genres:
        raise KeyError(f"Unknown genre {genre!r}. Known genres: {', '.join(genres)}.")
    return {name: load_text(name) for name, (g, _, _) in _TEXTS.items() if g == genre}


def _stdlib_source_files(max_bytes: int) -> list[pathlib.Path]:
    """Every eligible ``.py`` file of the standard library, sorted by path.

    Skips test folders, installed third-party packages, files named
    ``test_*.py``, empty files and files larger than ``max_bytes``.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]  # prune in place
        for name in names:
            path = pathlib.Path(folder) / name
            if name.endswith(".py") and not name.startswith("test_") and (
                0 < path.stat().st_size <= max_bytes
            ):
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def python_source_files(
    n: int = 50, seed: int = 0, max_bytes: int = 20_000
) -> list[pathlib.Path]:
    """``n`` Python files of the running interpreter's standard library.

    A seeded sample from the sorted list of eligible files (no tests, none
    above ``max_bytes``), so the same interpreter version always gives the
    same files. Returns fewer than ``n`` only if fewer files are eligible.
    """
    files = _stdlib_source_files(max_bytes)
    return random.Random(seed).sample(files, min(n, len(files)))


def _snippet(text: str, n_chars: int, rng: random.Random) -> str | None:
    """``n_chars`` characters of ``text`` starting at a random line start.

    Returns ``None`` when the text is too short.
    """
    last = len(text) - n_chars
    if last < 0:
        return None
    starts = [0] + [i + 1 for i, c in enumerate(text[:last]) if c == "\n"]
    start = rng.choice(starts)
    return text[start : start + n_chars]


def python_source_snippets(n: int, n_chars: int, seed: int = 0) -> list[str]:
    """``n`` snippets of ``n_chars`` characters of real Python source code.

    Each comes from a different standard-library file (visited in a seeded
    order) and starts at the beginning of a line. Deterministic for a given
    interpreter version. Raises ``ValueError`` if too few files are long enough.
    """
    rng = random.Random(seed)
    snippets = []
    for path in python_source_files(n=10**9, seed=seed):
        text = path.read_text(encoding="utf-8", errors="replace")
        snippet = _snippet(text, n_chars, rng)
        if snippet is not None and snippet.strip():
            snippets.append(snippet)
        if len(snippets) == n:
            return snippets
    raise ValueError(
        f"Only {len(snippets)} standard-library files have {n_chars} characters; "
        f"asked for {n} snippets."
    )
