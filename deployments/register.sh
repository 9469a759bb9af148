#!/usr/bin/env bash
# Register every ireasoner deployment (deployments/prefect.yaml) on the Prefect server at
# $PREFECT_API_URL, creating their process work pool `ireasoner-pool` if it is missing.
# Idempotent: re-running updates the deployments in place, and every schedule that already
# existed keeps the on/off switch it has on the server (a schedule switched on in the UI stays on;
# compose runs this on every `up`). New deployments and schedules start as prefect.yaml says.
#   PREFECT_API_URL=http://127.0.0.1:4200/api bash deployments/register.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-.venv/bin/prefect}
# The Python beside the prefect CLI (the .venv's, or the image's).
PYTHON=${PYTHON:-$(dirname "$(command -v "$PREFECT")")/python}
POOL=ireasoner-pool
switches=$(mktemp)
trap 'rm -f "$switches"' EXIT
if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
  "$PREFECT" work-pool create "$POOL" --type process
fi
"$PYTHON" deployments/schedules.py save "$switches"
"$PREFECT" --no-prompt deploy --all --prefect-file deployments/prefect.yaml
"$PYTHON" deployments/schedules.py restore "$switches"
