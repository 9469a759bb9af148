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
# Two processes share the 2 cores below: OpenMP threads that sleep when idle, rather than spin,
# keep one process's torch from stalling the other's.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15)
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi
# The whole suite as two pytest processes side by side: the modules that use Prefect or MLflow
# (marked `orchestration` by tests/conftest.py: they share the Prefect home, the training slot
# and their servers, so they run one after another) spend most of their time waiting on servers,
# and the rest is CPU-bound. Every test runs; the run fails if either process fails.
log=$(mktemp -t ireasoner-orchestration-tests.XXXXXX)
"${PYTEST[@]}" -m orchestration >"$log" 2>&1 &
orchestration=$!
trap 'kill "$orchestration" 2>/dev/null || true' INT TERM
set +e
"${PYTEST[@]}" -m "not orchestration"
rest=$?
wait "$orchestration"
orch=$?
set -e
echo
echo "===== tests marked orchestration (Prefect / MLflow), run beside the above ====="
cat "$log"
rm -f "$log"
echo "[test] not orchestration: exit $rest; orchestration: exit $orch"
[ "$rest" -eq 0 ] && [ "$orch" -eq 0 ]
