#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with the locked
# dependency set (requirements.lock) and this project installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "uv==0.13.8"
fi
stamp=.venv/.lock-$(sha256sum requirements.lock | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || uv venv --quiet --python "$PY" .venv
  echo "[setup] installing locked dependencies into .venv (first run downloads torch with its CUDA libraries, several GB)"
  uv pip sync --python .venv/bin/python requirements.lock
  uv pip install --quiet --python .venv/bin/python --no-deps -e .
  rm -f .venv/.lock-*; touch "$stamp"
fi
