#!/usr/bin/env bash
# The README's test command: install what is needed, then run the whole suite
# (unit tests, claims tests, the book build + browser tests, and nbval over
# every solution notebook). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 bash tools/install.sh
export PYTHONHASHSEED=0
exec .venv/bin/python -m pytest "$@"
