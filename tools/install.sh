#!/usr/bin/env bash
# Install everything the course needs into ./.venv (idempotent; quick when done).
# Used by the README's two commands (tools/build_book.sh, tools/test.sh).
#   WITH_BROWSER=1  also installs Debian's chromium + chromium-driver (browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.course-install-stamp
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[install] pip install (torch 2.13.0 CPU build unless a torch is already installed)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch==2.13.0 takes the CPU build on this project's machines; on a CUDA
  # machine install your CUDA build of torch first (README, "GPU").
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
if [ "${WITH_BROWSER:-0}" = "1" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  echo "[install] apt-get install chromium chromium-driver fonts-noto-color-emoji"
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji >/dev/null
fi
