"""Names shared by every writer and reader of the MLflow store.

Reports are rebuilt from MLflow alone, so the flow (writer) and the report command (reader)
must agree on these names; keep them here and nowhere else.
"""

from __future__ import annotations

import re

EXPERIMENT = "ireasoner"
REGISTERED_MODEL = "ireasoner-solver"       # each trained solver adapter becomes a version of it
LATEST_ALIAS = "current"                    # MLflow reserves the alias "latest"; models:/ireasoner-solver@current

# Tags
TAG_KIND = "ireasoner.kind"                 # "sweep" on the parent run, "variant" on child runs
KIND_SWEEP = "sweep"
KIND_VARIANT = "variant"
TAG_VARIANT = "ireasoner.variant"           # ablation name, or "baseline" for the untrained model
TAG_SEED = "ireasoner.seed"
TAG_CONFIG_HASH = "ireasoner.config_hash"
TAG_DATA_HASH = "ireasoner.data_hash"       # PoolManifest.hash()
TAG_CODE_HASH = "ireasoner.code_hash"       # git commit (+ "-dirty")
TAG_SOURCE_HASH = "ireasoner.source_hash"   # sha256 of the source files (what skip-if-finished matches on)
TAG_LOCK_HASH = "ireasoner.lock_hash"       # sha256 of requirements.lock
TAG_STATUS = "ireasoner.status"             # "finished" | "failed" | "skipped"
TAG_FLOW_RUN_ID = "prefect.flow_run_id"
TAG_FLOW_RUN_URL = "prefect.flow_run_url"
TAG_FAILED_VARIANTS = "ireasoner.failed_variants"
TAG_REUSED_RUNS = "ireasoner.reused_runs"   # on a sweep run: JSON {plan key: run id} of finished runs it re-used

BASELINE = "baseline"

# How the MLflow UI (3.x) opens an experiment: its training view (runs, params, metrics, the model
# registry) or its GenAI view (traces, an assistant). MLflow 3.17.2's UI picks the view from the link's
# ``workflowType`` query parameter, else from the browser's last choice (localStorage
# ``mlflow.workflowType``), else GenAI; links this project prints carry the parameter. The experiment
# tag is what MLflow UIs that still read the experiment's kind go by (3.17.2's build ignores it).
UI_WORKFLOW_PARAM = "workflowType=machine_learning"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"

# Metrics
TRAIN_PREFIX = "train/"                     # per-iteration signals, step = global iteration
EVAL_PREFIX = "eval/"                       # eval/<task> = headline score in [0, 100]
EVAL_SAMPLED_PREFIX = "eval_sampled/"       # eval_sampled/<task> = avg@k (k = param eval_sampled_k), [0, 100]
EVAL_SAMPLED_K_PARAM = "eval_sampled_k"
EVAL_SAMPLE_SEED_PARAM = "eval_sample_seed"  # torch seed of those samples: the variant's seed in a sweep

# Artifacts (paths inside a run's artifact root)
ARTIFACT_METRICS_JSONL = "train/metrics.jsonl"
ARTIFACT_CONFIG = "train/config.yaml"
ARTIFACT_COMPLETIONS = "train/completions.json"  # log_table: generations every log_completions_every iterations
ARTIFACT_ADAPTERS = "adapters"              # adapters/solver, adapters/proposer
EVAL_SAMPLES_DIR = "eval_samples"           # eval_samples/<task>.jsonl: {"doc_id", "score", "sampled_score", ...}
RESULTS_TABLE = "results_table.json"        # mlflow.log_table on the parent run
FIGURES_DIR = "figures"

_METRIC_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_name(name: str) -> str:
    """MLflow metric names may not contain commas (lmms-eval keys look like 'relaxed_overall,none')."""
    return _METRIC_BAD.sub("_", name.replace(",none", "").replace(",", "_"))
