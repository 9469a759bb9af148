#!/usr/bin/env bash
# Register every ireasoner deployment (deployments/prefect.yaml) on the Prefect server at
# $PREFECT_API_URL, creating their process work pool `ireasoner-pool` if it is missing.
# Idempotent: re-running updates the deployments in place (schedules edited in the UI stay as
# prefect.yaml declares them: run it again only when the presets change).
#   PREFECT_API_URL=http://127.0.0.1:4200/api bash deployments/register.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-.venv/bin/prefect}
POOL=ireasoner-pool
if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
  "$PREFECT" work-pool create "$POOL" --type process
fi
"$PREFECT" --no-prompt deploy --all --prefect-file deployments/prefect.yaml
