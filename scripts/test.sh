#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run every test on the shipped embedded model.
# Slow tests are marked but run here too: a skipped test in CI is a missing test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_compose_postgres.py runs the compose topology on a real PostgreSQL (Debian's package).
if ! command -v pg_ctl >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  echo "[test] installing PostgreSQL (apt-get install postgresql) for the compose integration test"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
