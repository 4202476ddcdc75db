"""Write the solution cells from the library, then the exercise notebooks from the solutions.

Each exercise's solution exists once: as the reference function in the
chapter's helper module, ``exercises_lib.<module>.<function>`` (the module is
the chapter's, :mod:`exercises_lib.chapters`; the check is named
``"<module>.<function>"``). A solution cell of ``solutions/NN_*.ipynb`` (tagged
``solution``) holds exactly that function's source text: this script writes it
from the library, finding the function by the name of the ``def`` in the cell,
and ``--check`` fails when a cell and its function differ. Names the function
uses unqualified (helpers, constants) are imported by name in the notebook, so
the cell runs as it stands.

The solution notebook is then the source of the exercise notebook. In its
code cells:

* lines between ``# SOLUTION`` and ``# END SOLUTION`` are the answer: in the
  exercise notebook they become one ``raise NotImplementedError(hint)`` at the
  marker's indentation. The hint is the text after ``# SOLUTION:`` when given;
* lines between ``# EXERCISE`` and ``# END EXERCISE`` are commented-out code
  that only the exercise notebook has (uncommented there, dropped in nothing:
  the solution notebook keeps them as comments);
* a cell tagged ``remove-from-exercise`` is left out of the exercise notebook.

Every cell holding a ``# SOLUTION`` region must carry the cell tag
``solution`` (the book collapses those cells behind a toggle).

The exercise notebook has no outputs. Both notebooks start with the same two
cells, written here from :mod:`exercises_lib.colab`: the Open-in-Colab badge and
the bootstrap cell.

Usage::

    python -m exercises_lib.generate            # write the solution cells, chapters/ (and normalise solutions/)
    python -m exercises_lib.generate --check    # exit 1 if anything is out of date

Taught in: chapter 0 (how the course is built).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

import nbformat

from exercises_lib.chapters import chapter_of_notebook
from exercises_lib.colab import badge_markdown, bootstrap_code

__all__ = [
    "make_exercise_source",
    "exercise_notebook",
    "normalise_solution",
    "library_source",
    "solution_from_library",
    "main",
]

DEF_NAME = re.compile(r"^def (\w+)\(", re.M)
SOLUTION_START = re.compile(r"^(?P<indent>\s*)# SOLUTION(?::\s*(?P<hint>.*?))?\s*$")
SOLUTION_END = re.compile(r"^\s*# END SOLUTION\s*$")
EXERCISE_START = re.compile(r"^\s*# EXERCISE\s*$")
EXERCISE_END = re.compile(r"^\s*# END EXERCISE\s*$")
DEFAULT_HINT = "Write your solution here (see the hint above)."
BADGE_TAG = "colab-badge"
BOOTSTRAP_TAG = "bootstrap"


class MarkerError(ValueError):
    """Unbalanced or nested markers in a solution cell."""


def make_exercise_source(source: str) -> str:
    """The exercise version of one code cell's source."""
    out: list[str] = []
    in_solution = in_exercise = False
    for lineno, line in enumerate(source.split("\n"), 1):
        start = SOLUTION_START.match(line)
        if start:
            if in_solution or in_exercise:
                raise MarkerError(f"line {lineno}: '# SOLUTION' inside another region")
            in_solution = True
            hint = (start.group("hint") or DEFAULT_HINT).replace('"', "'")
            out.append(f'{start.group("indent")}raise NotImplementedError("{hint}")')
            continue
        if SOLUTION_END.match(line):
            if not in_solution:
                raise MarkerError(f"line {lineno}: '# END SOLUTION' without '# SOLUTION'")
            in_solution = False
            continue
        if EXERCISE_START.match(line):
            if in_solution or in_exercise:
                raise MarkerError(f"line {lineno}: '# EXERCISE' inside another region")
            in_exercise = True
            continue
        if EXERCISE_END.match(line):
            if not in_exercise:
                raise MarkerError(f"line {lineno}: '# END EXERCISE' without '# EXERCISE'")
            in_exercise = False
            continue
        if in_solution:
            continue
        if in_exercise:
            out.append(re.sub(r"^(\s*)# ?", r"\1", line, count=1))
            continue
        out.append(line)
    if in_solution or in_exercise:
        raise MarkerError("a region is not closed at the end of the cell")
    return "\n".join(out)


def solution_regions(source: str) -> list[str]:
    """The code inside each ``# SOLUTION`` region of a cell (for the leak test)."""
    regions, current = [], None
    for line in source.split("\n"):
        if SOLUTION_START.match(line):
            current = []
        elif SOLUTION_END.match(line) and current is not None:
            regions.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return regions


def library_source(module: str, function: str) -> str:
    """The exact source text of ``exercises_lib.<module>.<function>`` (decorators included)."""
    mod = importlib.import_module(f"exercises_lib.{module}")
    fn = getattr(mod, function, None)
    if fn is None:
        raise MarkerError(f"exercises_lib.{module} has no function {function!r}: its solution lives there")
    return textwrap.dedent(inspect.getsource(inspect.unwrap(fn))).rstrip("\n")


def solution_from_library(nb, rel_path: str) -> tuple[object, list[str]]:
    """A copy of a solution notebook whose solution cells are their library functions' source,
    and the names of the functions whose cell changed."""
    nb = copy.deepcopy(nb)
    module = chapter_of_notebook(rel_path).module
    changed = []
    for cell in nb.cells:
        if not _has_solution(cell):
            continue
        names = DEF_NAME.findall(cell.source)
        if len(names) != 1:
            raise MarkerError(f"{rel_path}: a solution cell must define exactly one function, found {names}")
        text = library_source(module, names[0])
        if not any(SOLUTION_START.match(line) for line in text.split("\n")):
            raise MarkerError(f"exercises_lib.{module}.{names[0]} has no '# SOLUTION' region")
        if cell.source != text:
            cell.source = text
            changed.append(f"{module}.{names[0]}")
    return nb, changed


def _has_solution(cell) -> bool:
    return cell.cell_type == "code" and (
        "solution" in cell.metadata.get("tags", []) or any(SOLUTION_START.match(l) for l in cell.source.split("\n"))
    )


def _leading_cells(nb_path: str):
    badge = nbformat.v4.new_markdown_cell(badge_markdown(nb_path))
    badge.metadata["tags"] = [BADGE_TAG]
    boot = nbformat.v4.new_code_cell(bootstrap_code())
    boot.metadata["tags"] = [BOOTSTRAP_TAG]
    return badge, boot


def _strip_ids(nb) -> None:
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"


def normalise_solution(nb, rel_path: str):
    """The solution notebook with the standard leading cells and tags (outputs kept)."""
    nb = copy.deepcopy(nb)
    badge, boot = _leading_cells(rel_path)
    cells = [c for c in nb.cells if not set(c.metadata.get("tags", [])) & {BADGE_TAG, BOOTSTRAP_TAG}]
    old_boot = next((c for c in nb.cells if BOOTSTRAP_TAG in c.metadata.get("tags", [])), None)
    if old_boot is not None and old_boot.source == boot.source:
        boot = old_boot  # keep its outputs and execution count
        boot.metadata = {"tags": [BOOTSTRAP_TAG]}
    for cell in cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        if _has_solution(cell):
            tags = cell.metadata.setdefault("tags", [])
            if "solution" not in tags:
                tags.append("solution")
    nb.cells = [badge, boot, *cells]
    widgets = nb.metadata.get("widgets")  # ipywidgets state, so the book can show explorers
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    if widgets:
        nb.metadata["widgets"] = widgets
    _strip_ids(nb)
    return nb


def exercise_notebook(solution_nb, exercise_rel_path: str):
    """The exercise notebook generated from a (normalised) solution notebook."""
    nb = copy.deepcopy(solution_nb)
    badge, boot = _leading_cells(exercise_rel_path)
    cells = []
    for cell in nb.cells:
        tags = set(cell.metadata.get("tags", []))
        if tags & {BADGE_TAG, BOOTSTRAP_TAG, "remove-from-exercise"}:
            continue
        if cell.cell_type == "code":
            cell.source = make_exercise_source(cell.source)
            cell.outputs = []
            cell.execution_count = None
            cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        cells.append(cell)
    nb.cells = [badge, boot, *cells]
    nb.metadata.pop("widgets", None)
    _strip_ids(nb)
    return nb


def _dumps(nb) -> str:
    return nbformat.writes(nb, version=4) + ("" if nbformat.writes(nb).endswith("\n") else "\n")


def execute_in_place(path: Path, timeout: int = 900) -> None:
    """Run a solution notebook top to bottom on the stand-ins and save its outputs."""
    import os
    import time
    from unittest import mock

    from nbclient import NotebookClient

    from exercises_lib import kernel_wait

    kernel_wait.install()  # a lost ZeroMQ wake-up costs a second, not the cell's timeout
    nb, _ = solution_from_library(nbformat.read(path, as_version=4), f"solutions/{path.name}")
    nb = normalise_solution(nb, f"solutions/{path.name}")
    env = {
        "MECHINTERP_SOURCE": os.environ.get("MECHINTERP_SOURCE", "standin"),
        "MECHINTERP_CHECKS_RAISE": "1",
        "MECHINTERP_SMALL_OUTPUTS": "1",  # circuitsvis in its small CDN form (see render.py)
    }
    start = time.monotonic()
    with mock.patch.dict(os.environ, env):  # the kernel inherits them; restored afterwards
        NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True, resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(normalise_solution(nb, f"solutions/{path.name}"), path)
    print(f"executed {path.name} in {time.monotonic() - start:.0f}s")


def pairs(root: Path) -> list[tuple[Path, Path]]:
    """(solution, exercise) paths for every solution notebook."""
    return [(p, root / "chapters" / p.name) for p in sorted((root / "solutions").glob("*.ipynb"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".", help="repository root")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    parser.add_argument(
        "--execute", nargs="*", metavar="NOTEBOOK", default=None,
        help="first execute these solution notebooks in place on the stand-ins (all if none named)",
    )
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    stale = []
    todo = pairs(root)
    if args.execute is not None:
        names = {Path(n).name for n in args.execute}
        for sol_path, _ in todo:
            if not names or sol_path.name in names:
                execute_in_place(sol_path)
    for sol_path, ex_path in todo:
        sol = nbformat.read(sol_path, as_version=4)
        sol, drifted = solution_from_library(sol, f"solutions/{sol_path.name}")
        for name in drifted:
            verb = "differs from" if args.check else "rewritten from"
            print(f"{sol_path.name}: the solution cell of {name} {verb} its library function, exercises_lib.{name}")
        sol_norm = normalise_solution(sol, f"solutions/{sol_path.name}")
        ex = exercise_notebook(sol_norm, f"chapters/{ex_path.name}")
        for path, nb in ((sol_path, sol_norm), (ex_path, ex)):
            text = _dumps(nb)
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(root))
                if not args.check:
                    path.write_text(text)
    if args.check:
        if stale:
            print("Out of date (run `python -m exercises_lib.generate`):", *stale, sep="\n  ")
            return 1
        print("All exercise notebooks are up to date.")
        return 0
    print(f"Wrote {len(stale)} notebook(s)." if stale else "Nothing to do.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
