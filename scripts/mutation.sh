#!/usr/bin/env bash
# Mutation testing of the learning rule (docs/testing.md): mutmut over ireasoner_core/rewards.py,
# parsing.py (what the rewards read) and reports/bootstrap.py (the tables' intervals), all of them, the functions of trainer.py / policy.py that compute an update and Trainer.iteration that wires
# them, using only the fast tests in [tool.mutmut] of pyproject.toml. Run from the repository root; results: `.venv/bin/mutmut results`.
# Extra arguments replace the default selection of mutant names (fnmatch patterns).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
if [ $# -eq 0 ]; then
  set -- "ireasoner_core.rewards.*" "ireasoner_core.parsing.*" "ireasoner_core.reports.bootstrap.*" \
    "ireasoner_core.trainer.*_step__mutmut_*" "ireasoner_core.trainer.*_update__mutmut_*" \
    "ireasoner_core.trainer.*ǁiteration__mutmut_*" \
    "ireasoner_core.policy.*completion_logprobs__mutmut_*" "ireasoner_core.policy.*_head_weight__mutmut_*" \
    "ireasoner_core.policy.*_exact_chunk__mutmut_*" "ireasoner_core.policy.*_sampled_chunk__mutmut_*" \
    "ireasoner_core.policy.*_Headǁforward__mutmut_*" \
    "ireasoner_core.policy.*_rollout_batch__mutmut_*" "ireasoner_core.policy.*_hidden__mutmut_*"
fi
exec .venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
