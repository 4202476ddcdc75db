#!/usr/bin/env bash
# Build the course book: execute every solution notebook listed in _toc.yml and
# write the static site to _build/html.
#
#   tools/build_book.sh                      # full build (every notebook executed)
#   BOOK_INCREMENTAL=1 tools/build_book.sh   # rebuild changed pages only
#   tools/build_book.sh -W                   # extra arguments go to `jupyter-book build`
#
# The claims page (book/claims.md) is written by tools/claims_page.py from the
# claims tests' results ($CLAIMS_RESULTS, default _build/claims.json, written
# whenever tests/claims runs). A full build without that file runs the claims
# tests first (CLAIMS_RUN=0 skips them; the page then says they were not run);
# the test suite's build (BOOK_EXECUTE=off) never runs them, and leaves the
# committed page as it is when no results file exists.
#
# Uses .venv, installed by tools/install.sh (idempotent, quick when nothing
# changed). VENV=path builds with another environment: it is checked against
# requirements.txt and completed only where something is missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv="${VENV:-.venv}"
if [ "$venv" = ".venv" ] && [ -f tools/install.sh ]; then
    bash tools/install.sh
else
    if [ ! -x "$venv/bin/python" ]; then
        echo "build_book: creating $venv"
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" - <<'PYCHECK'
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(1)

lines = ["torch==2.13.0"]
for raw in Path("requirements.txt").read_text().splitlines():
    line = raw.split("#", 1)[0].strip()
    if line and not line.startswith("-"):
        lines.append(line)
missing = []
for line in lines:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(line)
        continue
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        missing.append(f"{line} (have {version})")
try:
    import exercises_lib
except ImportError:
    missing.append("exercises_lib (pip install -e .)")
else:
    if Path(exercises_lib.__file__).resolve().parent != Path("exercises_lib").resolve():
        missing.append("exercises_lib from this checkout (pip install -e .)")
if missing:
    print("build_book: missing or out of range: " + ", ".join(missing))
    sys.exit(1)
PYCHECK
    then
        echo "build_book: installing into $venv"
        "$venv/bin/python" -m pip install --quiet torch==2.13.0 -r requirements.txt -e .
    fi
fi

# The kernels that execute the notebooks are started from this environment.
export PATH="$(cd "$venv" && pwd)/bin:$PATH"

args=(build . --builder html)
if [ -z "${BOOK_INCREMENTAL:-}" ]; then
    # A full build starts from an empty site, so no page of a notebook that
    # left _toc.yml survives from an earlier build.
    rm -rf _build/html
    args+=(--all)
fi
if [ "${BOOK_EXECUTE:-}" = "off" ]; then
    # The test suite's build: nbval has just executed every solution notebook
    # in the same run, so the book renders their committed outputs instead of
    # executing them a second time.
    mkdir -p _build
    "$venv/bin/python" - <<'PYCONF'
import yaml
cfg = yaml.safe_load(open("_config.yml"))
cfg["execute"]["execute_notebooks"] = "off"
yaml.safe_dump(cfg, open(".book-config-noexec.yml", "w"), sort_keys=False)
PYCONF
    args+=(--config .book-config-noexec.yml)
fi
claims_results="${CLAIMS_RESULTS:-_build/claims.json}"
if [ ! -f "$claims_results" ] && [ "${BOOK_EXECUTE:-}" != "off" ] && [ "${CLAIMS_RUN:-1}" != "0" ]; then
    echo "build_book: running the claims tests for the claims page (CLAIMS_RUN=0 skips them)"
    # Failures are part of the page, not a reason to stop the build.
    CLAIMS_RESULTS="$claims_results" "$venv/bin/python" -m pytest tests/claims -q -p no:cacheprovider || true
fi
if [ -f "$claims_results" ] || [ "${BOOK_EXECUTE:-}" != "off" ] || [ ! -f book/claims.md ]; then
    "$venv/bin/python" tools/claims_page.py --results "$claims_results" --out book/claims.md
fi

start=$(date +%s)
"$venv/bin/jupyter-book" "${args[@]}" "$@"
echo "build_book: built in $(( $(date +%s) - start )) s"
echo "build_book: the book is at $root/_build/html/index.html"
