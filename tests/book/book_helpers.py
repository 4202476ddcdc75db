"""Helpers shared by the book tests: paths, the table of contents, the Sphinx extension."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_coursebook():
    """The book's Sphinx extension (book/_ext/coursebook.py) as a module."""
    path = ROOT / "book" / "_ext" / "coursebook.py"
    spec = importlib.util.spec_from_file_location("coursebook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docname(file: str) -> str:
    for suffix in (".ipynb", ".md"):
        if file.endswith(suffix):
            return file[: -len(suffix)]
    return file


def toc_docnames() -> tuple[str, list[str]]:
    """The root page and every other page of ``_toc.yml``, in order (no extensions)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages: list[str] = []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(_docname(entry["file"]))
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return _docname(toc["root"]), pages


def chapter_docnames() -> list[str]:
    """The solution notebooks of the book, in _toc.yml order."""
    return [d for d in toc_docnames()[1] if d.startswith("solutions/")]
