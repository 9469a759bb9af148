"""The ``ireasoner`` flow: image pool → variants × seeds (train, evaluate) → results table → report.

One flow run is one sweep and one MLflow parent run; each variant × seed is a child run.
Deployments (deployments/prefect.yaml) are presets of this flow's single parameter, the
``ExperimentSpec``, which Prefect validates before the body runs.

Order of work, and why:
1. MLflow experiment and the training concurrency limit are created once, before fan-out
   (parallel creators race).
2. The pool is sampled once (cached on disk by a hash of sources, size and seed); its manifest
   hash is the data identity of every child run.
3. Variants whose child run already finished with the same config, data and code hashes, and
   has scores for every benchmark of this spec on as many items with the same evaluation
   protocol, are skipped and their run is
   re-used in this sweep's tables (``force=True`` retrains them from scratch); a finished
   variant lacking some scores runs again, resuming from its final checkpoint, and is
   evaluated. The others run concurrently as Prefect tasks (``dispatch='local'``) or as flow
   runs of ``ireasoner-variant/variant`` that any worker of the pool picks up
   (``dispatch='workers'``). A failed variant does not stop the others.
4. The table (one row per variant × seed: greedy and avg@k scores, each with its 95 % interval,
   read back from each child run's metrics) goes to the parent run and to Prefect artifacts;
   the flow run fails at the end, naming the failed variants, if any failed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run as current_flow_run

from flows.spec import (
    EvaluationSpec,
    ExperimentSpec,
    ResourcesSpec,
    VariantPlan,
    plan_variants,
    resolve_path,
)
from ireasoner_core.config import flat_overrides
from ireasoner_core.evaluation.runner import sampled_plan
from tasks.conventions import (
    EXPERIMENT,
    TAG_CONFIG_HASH,
    TAG_FAILED_VARIANTS,
    TAG_FLOW_RUN_ID,
    TAG_FLOW_RUN_URL,
    TAG_REUSED_RUNS,
    TAG_SOURCE_HASH,
)
from tasks.liveness import (
    TAG_PROCESS,
    clean_up_after_dead_flows,
    concurrency_slot,
    process_tags,
)
from tasks.pool import sample_image_pool
from tasks.provenance import code_hash, lock_hash, source_hash
from tasks.results import (
    eval_details,
    log_results_table,
    make_row,
    publish_prefect_artifacts,
)
from tasks.runs import (
    TAG_EVAL_LIMIT,
    create_child_run,
    create_parent_run,
    ensure_experiment,
    eval_limit_tag,
    find_finished_variant,
    finish_run,
    log_params,
    open_client,
    provenance_tags,
    run_url,
    tracking_uri,
)
from tasks.tracking import spec_params
from tasks.train import (
    TRAINING_LIMIT,
    check_not_preempted,
    preemption_requested,
    train_variant,
    variants_stop_on_sigterm,
)

# MLflow draws a "Downloading artifacts" bar for each artifact read back (the report reads every variant's
# per-item scores and diagnostics: 7 bars in a smoke run), noise in a flow's log; MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true
# brings them back.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

VARIANT_DEPLOYMENT = "ireasoner-variant/variant"
NO_EVALUATION = "no evaluation tasks configured"


def evaluation_available() -> bool:
    return importlib.util.find_spec("tasks.evaluate") is not None


# The value a spec last gave the training limit: while the limit still holds it, nobody has edited it
# since, so the next spec's value replaces it; any other value was set by hand (UI or CLI) and is kept.
LIMIT_SET_BY_SPEC = "ireasoner_training_limit_set_by_spec"


def ensure_training_limit(limit: int) -> None:
    """Create the global concurrency limit on first use, or set it to this spec's value if a spec set it
    last; a limit edited by hand (the UI, `prefect gcl update`) is kept."""
    from prefect.exceptions import MissingContextError, ObjectNotFound
    from prefect.variables import Variable

    try:
        log = get_run_logger()
    except MissingContextError:
        import logging

        log = logging.getLogger(__name__)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(TRAINING_LIMIT)
        except ObjectNotFound:
            existing = None
        if existing is not None and existing.limit == limit:
            return
        if existing is None or Variable.get(LIMIT_SET_BY_SPEC) == existing.limit:
            client.upsert_global_concurrency_limit_by_name(TRAINING_LIMIT, limit)
            Variable.set(LIMIT_SET_BY_SPEC, limit, overwrite=True)
            if existing is not None:
                log.info("concurrency limit %r: %d -> %d, as this spec asks (resources.max_parallel_training)",
                         TRAINING_LIMIT, existing.limit, limit)
        else:
            log.warning("concurrency limit %r stays at %d, set by hand (spec asks %d; change it with "
                        "`prefect gcl update %s --limit N` or in the UI)",
                        TRAINING_LIMIT, existing.limit, limit, TRAINING_LIMIT)


@task(name="variant", task_run_name="{plan.key}")
def run_variant(plan: VariantPlan, run_id: str, tracking: str, resources: ResourcesSpec,
                evaluation: EvaluationSpec, data_hash: str) -> dict[str, Any]:
    """Train (unless baseline) and evaluate one variant × seed into its MLflow child run."""
    log = get_run_logger()
    client = MlflowClient(tracking)
    client.set_tag(run_id, TAG_PROCESS, process_tags()[TAG_PROCESS])  # who drives it, for a stale-run check
    try:
        trained: dict[str, Any] = {}
        adapter = None
        if not plan.baseline:
            trained = train_variant.with_options(
                retries=resources.retries, retry_delay_seconds=resources.retry_delay_seconds,
            )(plan, run_id, tracking, launcher=resources.launcher, devices=resources.devices_per_variant,
              cpu=resources.cpu, data_hash=data_hash, threads=resources.threads_per_variant)
            adapter = trained["solver_adapter"]
        scores: dict[str, float] = {}
        if evaluation.tasks:
            from tasks.evaluate import evaluate_variant

            check_not_preempted(f"evaluation of {plan.key}")

            # evaluation holds the GPUs as training does
            with concurrency_slot(TRAINING_LIMIT, f"evaluation of {plan.key}", log):
                scores = evaluate_variant.with_options(task_run_name=f"evaluate-{plan.key}")(
                    plan.model, adapter, list(evaluation.tasks), str(Path(plan.output_dir) / "eval"), run_id,
                    limit=evaluation.limit, tracking_uri=tracking, protocol=evaluation.protocol,
                    sampled_k=evaluation.sampled_k, seed=plan.seed)
            # What a later sweep's re-use matches on: scores on this many items per benchmark.
            client.set_tag(run_id, TAG_EVAL_LIMIT, eval_limit_tag(evaluation.limit))
        else:
            log.info("%s: %s, so it has no benchmark scores", plan.key, NO_EVALUATION)
            client.set_tag(run_id, "ireasoner.evaluation", NO_EVALUATION)
        finish_run(client, run_id, ok=True, status_tag="finished")
        return {**trained, "scores": dict(scores)}
    except BaseException as err:
        finish_run(client, run_id, ok=False, status_tag="failed", error=f"{type(err).__name__}: {err}")
        raise


@flow(name="ireasoner-variant", log_prints=True)
def ireasoner_variant(plan: VariantPlan, run_id: str, tracking: str, resources: ResourcesSpec,
                      evaluation: EvaluationSpec, data_hash: str) -> dict[str, Any]:
    """One variant × seed as its own flow run, for ``dispatch='workers'`` (any worker of the pool runs it)."""
    with variants_stop_on_sigterm():
        return run_variant(plan, run_id, tracking, resources, evaluation, data_hash)


@task(name="dispatch-variant", task_run_name="dispatch-{plan.key}")
def dispatch_variant(plan: VariantPlan, run_id: str, tracking: str, resources: ResourcesSpec,
                     evaluation: EvaluationSpec, data_hash: str) -> dict[str, Any]:
    """Start the variant as a flow run of ireasoner-variant/variant and wait for it."""
    from prefect.deployments import run_deployment

    fr = run_deployment(VARIANT_DEPLOYMENT, parameters={
        "plan": plan.model_dump(mode="json"), "run_id": run_id, "tracking": tracking,
        "resources": resources.model_dump(mode="json"), "evaluation": evaluation.model_dump(mode="json"),
        "data_hash": data_hash}, flow_run_name=plan.key, timeout=None, poll_interval=10)
    if fr.state is None or not fr.state.is_completed():
        raise RuntimeError(f"variant flow run {fr.name} ended {fr.state.name if fr.state else 'unknown'}: "
                           f"{fr.state.message if fr.state else ''}")
    # The variant ran on another worker, whose task results this process cannot read: its
    # numbers come from its MLflow child run.
    return _outcome_from_run(MlflowClient(tracking).get_run(run_id), list(evaluation.tasks))


def _outcome_from_run(run: Any, eval_tasks: list[str]) -> dict[str, Any]:
    m = run.data.metrics
    return {"iterations": _int(m.get("iterations")), "seconds": m.get("train_seconds"),
            "scores": _scores(m, eval_tasks)}


def _spec_hash(spec: ExperimentSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _flow_run_url() -> str:
    url = current_flow_run.ui_url  # "None/..." when PREFECT_UI_URL is unset (ephemeral mode)
    if not url or url.startswith("None"):
        url = f"http://127.0.0.1:4200/runs/flow-run/{current_flow_run.id}"
    return url


def with_changes(spec: ExperimentSpec, changes: dict[str, Any]) -> ExperimentSpec:
    """The spec with ``changes`` merged in: mappings merge key by key, anything else replaces."""
    def merge(base: Any, change: Any) -> Any:
        if isinstance(base, dict) and isinstance(change, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in change.items()}}
        return change

    unknown = sorted(set(changes) - set(ExperimentSpec.model_fields))
    if unknown:
        raise ValueError(f"changes: unknown spec fields {unknown}; known: {', '.join(ExperimentSpec.model_fields)}")
    if isinstance(changes.get("overrides"), dict):
        # The spec's overrides are dotted: a nested change must meet them key for key.
        changes = {**changes, "overrides": flat_overrides(changes["overrides"], "changes.overrides")}
    return ExperimentSpec.model_validate(merge(spec.model_dump(mode="json"), changes))


@flow(name="ireasoner", log_prints=True)
def ireasoner(spec: ExperimentSpec, force: bool = False, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a sweep: pool, then every variant × seed of the spec, then the results table.

    ``changes`` edits a deployment's preset without restating it: `prefect deployment run
    ireasoner/ablations --params '{"changes": {"iterations": 2}}'` keeps the rest of its spec
    (``--params '{"spec": ...}'`` replaces the whole spec: Prefect merges parameters at the top level).
    """
    log = get_run_logger()
    if changes:
        spec = with_changes(spec, changes)
    uri = tracking_uri()
    client = open_client(uri)
    experiment_id = ensure_experiment(client, EXPERIMENT)
    # A flow of this machine that was killed left its slot taken, its runs RUNNING and its local
    # Prefect server alive; nobody else will ever release them.
    clean_up_after_dead_flows(client, experiment_id, log)
    if spec.evaluation.tasks and not evaluation_available():
        raise RuntimeError(f"evaluation.tasks={spec.evaluation.tasks} but the evaluation layer (tasks/evaluate.py) "
                           "is not installed; remove the tasks or install it")
    ensure_training_limit(spec.resources.max_parallel_training)
    code, source, lock = code_hash(), source_hash(), lock_hash()
    runs_dir = resolve_path(spec.runs_dir)

    pool = sample_image_pool(sources=[str(resolve_path(s)) for s in spec.images.sources],
                             size=spec.images.pool_size, seed=spec.images.pool_seed,
                             synthetic_images=spec.images.synthetic_images, pools_dir=str(runs_dir / "pools"),
                             synthetic_kinds=spec.images.synthetic_kinds)
    plans = plan_variants(spec, Path(pool.manifest), pool.data_hash, source)
    tags = provenance_tags(code, source, lock, pool.data_hash)
    parent = create_parent_run(client, experiment_id, spec.name, {
        **tags, **process_tags(), TAG_CONFIG_HASH: _spec_hash(spec), TAG_FLOW_RUN_ID: str(current_flow_run.id),
        TAG_FLOW_RUN_URL: _flow_run_url()})
    print(f"MLflow parent run {parent} ({run_url(uri, experiment_id, parent)}); tracking store {uri}")
    try:
        client.log_dict(parent, spec.model_dump(mode="json"), "spec.json")
        log_params(client, parent, spec_params(spec.model_dump(mode="json")))  # what Compare diffs between sweeps
        client.log_dict(parent, [p.model_dump(mode="json") for p in plans], "plans.json")
        # SIGTERM (docker stop, Kubernetes): the variants checkpoint and stop, and the table below still comes
        with variants_stop_on_sigterm():
            rows, failures = _run_plans(spec, plans, force, client, uri, experiment_id, parent, tags,
                                        pool.data_hash)
        sampled = sampled_plan(list(spec.evaluation.tasks), spec.evaluation.sampled_k)
        log_results_table(client, parent, rows, list(spec.evaluation.tasks), sampled)
        publish_prefect_artifacts(rows, list(spec.evaluation.tasks), spec.name, sampled)
        client.set_tag(parent, TAG_FAILED_VARIANTS, json.dumps(failures))
        finish_run(client, parent, ok=not failures, status_tag="failed" if failures else "finished")
    except BaseException as err:
        finish_run(client, parent, ok=False, status_tag="failed", error=f"{type(err).__name__}: {err}")
        raise
    if any(r["status"] == "finished" for r in rows):
        try:
            _report(spec, uri, parent, runs_dir)
        except Exception as err:  # noqa: BLE001 - any report error is recorded, not raised
            # The trained variants and the table are logged; a report that cannot be drawn does
            # not undo them. Recorded on the parent run and in the log, and rebuildable later
            # with `ireasoner report --parent-run-id <id>`.
            client.set_tag(parent, "ireasoner.report_error", f"{type(err).__name__}: {err}"[:5000])
            log.error("report failed (rebuild with `ireasoner report --parent-run-id %s`): %s: %s",
                      parent, type(err).__name__, err)
    else:
        log.info("nothing was trained or evaluated in this run: no new report")
    summary = {"parent_run_id": parent, "experiment_id": experiment_id, "tracking_uri": uri, "rows": rows,
               "failed": failures}
    log.info("sweep %s: %d finished, %d skipped, %d failed", spec.name,
             sum(r["status"] == "finished" for r in rows), sum(r["status"] == "skipped" for r in rows),
             sum(r["status"] == "failed" for r in rows))
    if failures:
        stopped = preemption_requested()
        why = f"interrupted by {signal.Signals(stopped).name}, rerun to resume; " if stopped else ""
        raise RuntimeError(why + "failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return summary


def _run_plans(spec: ExperimentSpec, plans: list[VariantPlan], force: bool, client: MlflowClient, uri: str,
               experiment_id: str, parent: str, tags: dict[str, str], data_hash: str
               ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Skip finished variants, run the rest concurrently, and collect one row per plan."""
    log = get_run_logger()
    source = tags[TAG_SOURCE_HASH]
    eval_tasks = list(spec.evaluation.tasks)
    sampled = sampled_plan(eval_tasks, spec.evaluation.sampled_k)
    # avg@k and every score's interval, as the variant's evaluation logged them
    details = lambda run: eval_details(run.data.metrics, eval_tasks, sampled)
    rows: dict[str, dict[str, Any]] = {}
    reused: dict[str, str] = {}
    submitted = []
    runner = run_variant if spec.resources.dispatch == "local" else dispatch_variant
    for plan in plans:
        done = None if force else find_finished_variant(client, experiment_id, plan.variant, plan.seed,
                                                       plan.config_hash, data_hash, source, eval_tasks,
                                                       spec.evaluation.limit, spec.evaluation.protocol, sampled)
        if done is not None:
            reused[plan.key] = done.info.run_id
            o = _outcome_from_run(done, eval_tasks)
            rows[plan.key] = make_row(plan.variant, plan.seed, "skipped", done.info.run_id,
                                      run_url(uri, experiment_id, done.info.run_id), o["iterations"],
                                      o["seconds"], o["scores"], eval_tasks, details=details(done), sampled=sampled)
            log.info("%s: skipped, run %s already finished with the same config, data and code", plan.key,
                     done.info.run_id)
            continue
        if force and Path(plan.output_dir).exists():
            # Only here, never inside the task: a retry must find its checkpoints.
            shutil.rmtree(plan.output_dir)
        if plan.baseline:
            params = {f"model.{k}": v for k, v in plan.model.items()}
        else:
            params = _flat(plan.config)
        child = create_child_run(client, experiment_id, parent, plan.key, plan.variant, plan.seed, plan.config_hash,
                                 tags, params)
        future = runner.submit(plan, child, uri, spec.resources, spec.evaluation, data_hash)
        submitted.append((plan, child, future))
    # The report of this sweep reads its child runs and these re-used runs (of earlier sweeps): every
    # variant of the spec has its row in tables 1-3.
    client.set_tag(parent, TAG_REUSED_RUNS, json.dumps(reused))
    failures: dict[str, str] = {}
    for plan, child, future in submitted:
        future.wait()
        state = future.state
        url = run_url(uri, experiment_id, child)
        if state.is_completed():
            out = state.result()
            rows[plan.key] = make_row(plan.variant, plan.seed, "finished", child, url, out.get("iterations"),
                                      out.get("seconds"), out.get("scores"), eval_tasks,
                                      details=details(client.get_run(child)), sampled=sampled)
        else:
            failures[plan.key] = state.message or state.name
            rows[plan.key] = make_row(plan.variant, plan.seed, "failed", child, url, eval_tasks=eval_tasks,
                                      error=failures[plan.key], sampled=sampled)
            log.error("%s failed: %s", plan.key, failures[plan.key])
    return [rows[p.key] for p in plans], failures


def _report(spec: ExperimentSpec, uri: str, parent: str, runs_dir: Path) -> None:
    """Tables and figures from MLflow, when the report layer (tasks/reporting.py) is installed."""
    log = get_run_logger()
    if importlib.util.find_spec("tasks.reporting") is None:
        log.info("report layer (tasks/reporting.py) not installed: results table only")
        return
    from tasks.reporting import build_report

    out = runs_dir / spec.name / "report"
    build_report(EXPERIMENT, uri, str(out), parent_run_id=parent)
    log.info("report written to %s", out)


def _flat(cfg: dict[str, Any]) -> dict[str, Any]:
    from ireasoner_core.config import TrainConfig

    return TrainConfig.model_validate(cfg).flat()


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def _scores(metrics: dict[str, float], eval_tasks: list[str]) -> dict[str, float]:
    from tasks.conventions import EVAL_PREFIX, metric_name

    return {t: metrics[metric_name(EVAL_PREFIX + t)] for t in eval_tasks if metric_name(EVAL_PREFIX + t) in metrics}

