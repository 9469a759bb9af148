#!/usr/bin/env bash
# The README's main job: the `smoke` preset of the ireasoner flow, end to end, no servers to start.
# Prefect runs in its local ephemeral mode and MLflow writes to ./mlflow.db + ./mlartifacts.
# Extra arguments go to `python -m flows.run smoke` (e.g. --set iterations=4, --force).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m flows.run smoke "$@"
