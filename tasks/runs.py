"""MLflow runs of a sweep: the experiment, the parent run, child runs, skip look-up, the registry.

Everything takes run ids and a client explicitly (the fluent API's active run is
thread-local, and Prefect tasks run in worker threads). The default store is a SQLite file
and an artifact folder in the repository, so the embedded default needs no server;
``MLFLOW_TRACKING_URI`` points every process at a tracking server instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ireasoner_core.locks import file_lock
from tasks.conventions import (
    EXPERIMENT,
    EXPERIMENT_KIND_TRAINING,
    KIND_SWEEP,
    KIND_VARIANT,
    LATEST_ALIAS,
    REGISTERED_MODEL,
    TAG_CODE_HASH,
    TAG_CONFIG_HASH,
    TAG_DATA_HASH,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_LOCK_HASH,
    TAG_SEED,
    TAG_SOURCE_HASH,
    TAG_STATUS,
    TAG_VARIANT,
    UI_WORKFLOW_PARAM,
)
from tasks.provenance import REPO_ROOT

DEFAULT_DB = REPO_ROOT / "mlflow.db"
DEFAULT_ARTIFACTS = REPO_ROOT / "mlartifacts"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the repository's SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"


def ui_base_url(uri: str) -> str:
    """Where a person opens the MLflow UI for this store (IREASONER_MLFLOW_UI_URL wins)."""
    if os.environ.get("IREASONER_MLFLOW_UI_URL"):
        return os.environ["IREASONER_MLFLOW_UI_URL"].rstrip("/")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's training view (without the parameter MLflow 3.17 opens its GenAI view,
    which files a run with no logged model under "Evaluations")."""
    return f"{ui_base_url(uri)}/#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW_PARAM}"


def experiment_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's training view."""
    return f"{ui_base_url(uri)}/#/experiments/{experiment_id}?{UI_WORKFLOW_PARAM}"


def sqlite_schema_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """For a SQLite store: an inter-process lock around its first use. MLflow creates and migrates the
    schema when a process first opens the file, and two processes doing that at once fail with
    "table ... already exists"; a server store does this once, at server start."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return file_lock(db.with_name(db.name + ".schema-lock"))


def sqlite_artifact_root(uri: str) -> str:
    """Artifacts of a SQLite store live beside its database file, not in ./mlruns of whatever directory
    a process happens to run in (a Prefect worker runs flows in a temporary one)."""
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / DEFAULT_ARTIFACTS.name).absolute().as_uri()


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient whose store is open: for SQLite, its schema created under the schema lock.

    A new SQLite store is created with its artifact root beside the database: MLflow writes the
    ``Default`` experiment's artifact location when it creates the schema, and would otherwise take
    ``./mlruns`` of the current directory, a temporary folder when a worker runs the flow.
    """
    with sqlite_schema_lock(uri):
        if uri.startswith("sqlite:///"):
            from mlflow.tracking._tracking_service.utils import _get_store

            _get_store(uri, sqlite_artifact_root(uri))  # creates the schema and Default with this root
        client = MlflowClient(uri)  # opens the store (creating or migrating its schema) right here
        client.search_experiments(max_results=1)
    return client


def ensure_experiment(client: MlflowClient, name: str = EXPERIMENT) -> str:
    """Create the experiment once, before variants fan out (parallel creators would race)."""
    with sqlite_schema_lock(client.tracking_uri):
        exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND_TRAINING:  # created before the tag was set
            client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
        return exp.experiment_id
    location = sqlite_artifact_root(client.tracking_uri) if client.tracking_uri.startswith("sqlite:///") else None
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING})
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def provenance_tags(code: str, source: str, lock: str, data: str) -> dict[str, str]:
    return {TAG_CODE_HASH: code, TAG_SOURCE_HASH: source, TAG_LOCK_HASH: lock, TAG_DATA_HASH: data}


def create_parent_run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    run = client.create_run(experiment_id, run_name=name, tags={TAG_KIND: KIND_SWEEP, **tags})
    return run.info.run_id


def create_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, run_name: str,
                     variant: str, seed: int, config_hash: str, tags: dict[str, str],
                     params: dict[str, Any]) -> str:
    """A child run of the sweep for one variant × seed, with the flattened run config as params."""
    run = client.create_run(experiment_id, run_name=run_name, tags={
        "mlflow.parentRunId": parent_run_id, TAG_KIND: KIND_VARIANT, TAG_VARIANT: variant,
        TAG_SEED: str(seed), TAG_CONFIG_HASH: config_hash, **tags})
    run_id = run.info.run_id
    log_params(client, run_id, params)
    return run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=items[i:i + 100], synchronous=True)


TAG_EVAL_LIMIT = "ireasoner.eval_limit"     # evaluation.limit the run's eval/<task> scores were measured with
ALL_ITEMS = "all"


def eval_limit_tag(limit: int | None) -> str:
    return ALL_ITEMS if limit is None else str(limit)


def find_finished_variant(client: MlflowClient, experiment_id: str, variant: str, seed: int,
                          config_hash: str, data_hash: str, source_hash: str,
                          eval_tasks: Sequence[str] = (), eval_limit: int | None = None,
                          eval_protocol: str | None = None,
                          eval_sampled: tuple[Sequence[str], int] = ((), 0)) -> Any | None:
    """The newest child run that finished with the same variant, seed, config, data and source, and
    that has a score for every benchmark the new sweep asks for, measured on as many items with the
    same evaluation protocol, and avg@k with the same k on every task of ``eval_sampled``
    (``runner.sampled_plan``'s tasks and k): a skip.

    A run trained by a sweep without evaluation (or with other benchmarks, a smaller limit, or
    without the asked avg@k) is not re-used: the variant runs again, resuming from its finished
    checkpoint, and is evaluated.
    """
    from tasks.conventions import (
        EVAL_PREFIX,
        EVAL_SAMPLED_K_PARAM,
        EVAL_SAMPLED_PREFIX,
        metric_name,
    )

    def q(v: str) -> str:
        return v.replace("'", "\\'")
    flt = (f"tags.`{TAG_KIND}` = '{KIND_VARIANT}' and tags.`{TAG_VARIANT}` = '{q(variant)}' "
           f"and tags.`{TAG_SEED}` = '{seed}' and tags.`{TAG_CONFIG_HASH}` = '{q(config_hash)}' "
           f"and tags.`{TAG_DATA_HASH}` = '{q(data_hash)}' and tags.`{TAG_SOURCE_HASH}` = '{q(source_hash)}' "
           f"and tags.`{TAG_STATUS}` = 'finished' and attributes.status = 'FINISHED'")
    if eval_tasks:
        flt += f" and tags.`{TAG_EVAL_LIMIT}` = '{eval_limit_tag(eval_limit)}'"
        if eval_protocol is not None:
            # A score under the Solver's prompt is not a table-1 score under lmms-eval's, and vice versa.
            flt += f" and tags.`ireasoner.eval_protocol` = '{q(eval_protocol)}'"
    runs = client.search_runs([experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"],
                              max_results=100)
    sampled_tasks, k = eval_sampled
    wanted = {metric_name(EVAL_PREFIX + t) for t in eval_tasks}
    wanted |= {metric_name(EVAL_SAMPLED_PREFIX + t) for t in sampled_tasks}
    for run in runs:
        # avg@3 re-used where avg@5 was asked would put two different k in one table-1 column.
        same_k = not sampled_tasks or run.data.params.get(EVAL_SAMPLED_K_PARAM) == str(k)
        if wanted <= set(run.data.metrics) and same_k:
            return run
    return None


def finish_run(client: MlflowClient, run_id: str, ok: bool, status_tag: str, error: str | None = None) -> None:
    client.set_tag(run_id, TAG_STATUS, status_tag)
    if error:
        client.set_tag(run_id, "ireasoner.error", error[:5000])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def register_solver(client: MlflowClient, run_id: str, artifact_path: str, variant: str,
                    tags: dict[str, str]) -> str:
    """Register the run's solver adapter as a new version of REGISTERED_MODEL; move the aliases to it."""
    try:
        client.create_registered_model(REGISTERED_MODEL, description="iReasoner solver LoRA adapters "
                                       "(peft directories) trained by the ireasoner flow.")
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(REGISTERED_MODEL, source=source, run_id=run_id,
                                     tags={TAG_VARIANT: variant, **tags})
    client.set_registered_model_alias(REGISTERED_MODEL, LATEST_ALIAS, mv.version)
    client.set_registered_model_alias(REGISTERED_MODEL, f"{LATEST_ALIAS}-{_alias_safe(variant)}", mv.version)
    return str(mv.version)


def _alias_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def log_artifact_dir(client: MlflowClient, run_id: str, local: Path, artifact_path: str) -> None:
    if Path(local).is_dir():
        client.log_artifacts(run_id, str(local), artifact_path)
