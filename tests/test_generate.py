"""The exercise generator: regions, stubs, sync of committed notebooks, no leaks."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from exercises_lib import __version__
from exercises_lib.colab import bootstrap_code, install_target
from exercises_lib.checks import CHECKS, load_check_modules
from exercises_lib.generate import (
    DEF_NAME,
    MarkerError,
    exercise_notebook,
    library_source,
    make_exercise_source,
    normalise_solution,
    pairs,
    solution_from_library,
    solution_regions,
)

ROOT = Path(__file__).resolve().parents[1]

SOURCE = '''def f(x):
    """Double x."""
    # SOLUTION: multiply by two
    y = x * 2
    return y
    # END SOLUTION

# EXERCISE
# answer = None  # your answer here
# END EXERCISE
print("kept")'''


def test_solution_region_becomes_stub_with_hint():
    out = make_exercise_source(SOURCE)
    assert 'raise NotImplementedError("multiply by two")' in out
    assert "x * 2" not in out
    assert "answer = None" in out and "# answer" not in out
    assert 'print("kept")' in out
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match="multiply by two"):
        ns["f"](3)


def test_unbalanced_markers_are_rejected():
    with pytest.raises(MarkerError):
        make_exercise_source("# SOLUTION\nx = 1\n")
    with pytest.raises(MarkerError):
        make_exercise_source("# END SOLUTION\n")
    with pytest.raises(MarkerError):
        make_exercise_source("# SOLUTION\n# SOLUTION\n# END SOLUTION\n")


def test_generated_notebook_has_badge_bootstrap_and_no_outputs():
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell(SOURCE)
    code.outputs = [nbformat.v4.new_output("stream", text="6\n")]
    code.execution_count = 3
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), code]
    sol = normalise_solution(nb, "solutions/99_x.ipynb")
    assert "solution" in sol.cells[3].metadata["tags"]
    ex = exercise_notebook(sol, "chapters/99_x.ipynb")
    assert "colab.research.google.com" in ex.cells[0].source and "chapters/99_x.ipynb" in ex.cells[0].source
    assert ex.cells[1].source == bootstrap_code()
    assert all(c.get("outputs", []) == [] for c in ex.cells if c.cell_type == "code")
    assert "x * 2" not in ex.cells[3].source


def test_bootstrap_pins_the_package_version():
    assert install_target().endswith(f"@v{__version__}")
    assert install_target() in bootstrap_code()


def test_committed_exercise_notebooks_are_in_sync():
    result = subprocess.run(
        [sys.executable, "-m", "exercises_lib.generate", "--check", "--root", str(ROOT)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("sol_path,ex_path", pairs(ROOT), ids=lambda p: p.name)
def test_exercise_notebooks_contain_no_solution_code(sol_path, ex_path):
    """No line of a solution region reaches the exercise notebook, unless the
    solution notebook also shows that line outside every solution region (a
    later, given cell reusing it is not a leak). Code cells only: a markdown
    hint that spells out a key line is the author's choice, not a generator leak."""
    sol = nbformat.read(sol_path, as_version=4)
    ex_text = "\n".join(c.source for c in nbformat.read(ex_path, as_version=4).cells if c.cell_type == "code")
    regions = [r for c in sol.cells if c.cell_type == "code" for r in solution_regions(c.source)]
    public = "\n".join(c.source for c in sol.cells if c.cell_type == "code")
    for region in regions:
        public = public.replace(region, "")
    public_lines = {l.strip() for l in public.split("\n")}
    assert regions, f"{sol_path.name} has no solution region"
    for region in regions:
        lines = [l.strip() for l in region.split("\n") if len(l.strip()) > 25]
        leaked = [l for l in lines if l in ex_text and l not in public_lines]
        assert not leaked, f"solution code found in {ex_path.name}: {leaked[:3]}"


@pytest.mark.parametrize("sol_path,ex_path", pairs(ROOT), ids=lambda p: p.name)
def test_every_notebook_starts_with_badge_and_bootstrap(sol_path, ex_path):
    for path in (sol_path, ex_path):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and "Open In Colab" in nb.cells[0].source, path
        assert nb.cells[1].cell_type == "code" and nb.cells[1].source == bootstrap_code(), path


def test_each_solution_exists_once_in_the_library():
    """Every solution cell is its library function's source, and every check has exactly one solution cell."""
    load_check_modules()
    found = []
    for sol_path, _ in pairs(ROOT):
        nb = nbformat.read(sol_path, as_version=4)
        _, drifted = solution_from_library(nb, f"solutions/{sol_path.name}")
        assert drifted == [], f"{sol_path.name}: solution cells differ from exercises_lib ({drifted}): run exercises_lib.generate"
        cells = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        found += [f"{_module(sol_path)}.{DEF_NAME.search(c.source).group(1)}" for c in cells]
    assert sorted(found) == sorted(n for n in CHECKS if not n.startswith("_test"))


def _module(path):
    from exercises_lib.chapters import chapter_of_notebook

    return chapter_of_notebook(path.name).module


def test_drift_is_found_and_repaired():
    sol_path = pairs(ROOT)[1][0]
    nb = nbformat.read(sol_path, as_version=4)
    cell = next(c for c in nb.cells if "solution" in c.metadata.get("tags", []))
    name = DEF_NAME.search(cell.source).group(1)
    cell.source = cell.source.replace("# END SOLUTION", "x = 1  # an edit made in the notebook\n    # END SOLUTION")
    repaired, drifted = solution_from_library(nb, f"solutions/{sol_path.name}")
    assert drifted == [f"{_module(sol_path)}.{name}"]
    cell = next(c for c in repaired.cells if "solution" in c.metadata.get("tags", []))
    assert cell.source == library_source(_module(sol_path), name)
