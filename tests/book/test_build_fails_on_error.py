"""`execute.raise_on_error` is on: a notebook whose cell raises fails the book build."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_a_failing_cell_fails_the_build(tmp_path):
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["raise_on_error"] is True and cfg["execute"]["execute_notebooks"] != "off"
    book = tmp_path / "book"
    book.mkdir()
    small = {
        "title": "failing", "only_build_toc_files": True,
        "execute": {k: cfg["execute"][k] for k in ("execute_notebooks", "raise_on_error", "timeout")},
    }
    (book / "_config.yml").write_text(yaml.safe_dump(small))
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: bad\n")
    (book / "intro.md").write_text("# Intro\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Bad"), nbformat.v4.new_code_cell("raise ValueError('planted failure')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, book / "bad.ipynb")
    jb = shutil.which("jupyter-book") or str(Path(sys.executable).parent / "jupyter-book")
    proc = subprocess.run([jb, "build", str(book)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "planted failure" in proc.stdout + proc.stderr
