#!/usr/bin/env bash
# The README's test command: set up (idempotent), build the embedded model once, run every test.
# Slow tests are marked but run here too: a skipped test in CI is a missing test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ireasoner build-embedded >/dev/null
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
