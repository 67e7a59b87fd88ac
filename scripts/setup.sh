#!/usr/bin/env bash
# Create .venv (if missing) and install causalgeom with the given extras. Idempotent.
# Usage: bash scripts/setup.sh [EXTRAS]     e.g. bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.causalgeom-installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing causalgeom${extras:+[$extras]} and its dependencies (first time: about 3 minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision come from the files on this disk (pip's constraint file caps them).
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
