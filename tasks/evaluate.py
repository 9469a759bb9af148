"""Prefect task: evaluate one variant (base model, or base + Solver adapter) and log it to MLflow.

On the variant's run (passed explicitly: MLflow's active run is thread-local and Prefect runs
tasks in worker threads) it logs ``eval/<task>`` = headline score in 0-100, every lmms-eval
metric as ``eval_metrics/<task>/<metric>``, the per-item JSONL as ``eval_samples/<task>.jsonl``
(what the report's paired bootstrap reads back) and lmms-eval's results JSON, plus the
sampled accuracy ``eval_sampled/<task>`` (avg@k, 0-100; its k as param ``eval_sampled_k``;
per item as ``sampled_score`` in the same JSONL) where it was measured, each score's 95 % percentile
bootstrap interval of the mean over items (``eval_ci/<task>/low|high``,
``eval_sampled_ci/<task>/low|high``: what the sweep's results table shows beside it), and the
evaluation protocol, answer extractor and MathVista extractor as params ``eval_protocol``,
``eval_answer_extractor``, ``eval_math_judge`` (and the same names as ``ireasoner.*`` tags).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from ireasoner_core.config import ModelConfig
from ireasoner_core.evaluation.runner import EvalResult, run_evaluation
from ireasoner_core.reports.bootstrap import paired_bootstrap
from tasks.conventions import (
    EVAL_PREFIX,
    EVAL_SAMPLE_SEED_PARAM,
    EVAL_SAMPLED_K_PARAM,
    EVAL_SAMPLED_PREFIX,
    EVAL_SAMPLES_DIR,
    metric_name,
)
from tasks.results import ci_metric
from tasks.runs import tracking_uri as default_tracking_uri

EVAL_METRICS_PREFIX = "eval_metrics/"   # eval/<task> stays the headline; details live apart
EVAL_RESULTS_DIR = "eval_results"
CONFIDENCE = 0.95


def score_intervals(result: EvalResult, seed: int = 0, n_resamples: int = 10_000
                    ) -> dict[tuple[str, bool], tuple[float, float]]:
    """(task, sampled) -> 95 % percentile bootstrap interval of the score's mean over the task's items.

    Read from the per-item JSONL (``score``; ``sampled_score`` for avg@k). A score with an item that
    has no number gets no interval: an interval over the other items would not be the score's.
    """
    out: dict[tuple[str, bool], tuple[float, float]] = {}
    for name, path in result.samples.items():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        for field, sampled in (("score", False), ("sampled_score", True)):
            if sampled and name not in result.sampled_scores:
                continue
            values = [r.get(field) for r in rows]
            if not values or any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                continue
            # mean(values - 0) with its interval: the bootstrap of one score is the paired one against zeros
            ci = paired_bootstrap(values, [0.0] * len(values), n_resamples=n_resamples, confidence=CONFIDENCE,
                                  seed=seed)
            out[(name, sampled)] = (ci.low, ci.high)
    return out


def log_eval_result(client: MlflowClient, run_id: str, result: EvalResult) -> dict[str, float]:
    """Scores, detailed metrics and per-item files of ``result`` onto run ``run_id``; returns the scores."""
    now = int(time.time() * 1000)
    metrics = [Metric(metric_name(EVAL_PREFIX + t), float(s), now, 0) for t, s in result.scores.items()]
    metrics += [Metric(metric_name(EVAL_SAMPLED_PREFIX + t), float(s), now, 0)
                for t, s in result.sampled_scores.items()]
    for t, values in result.metrics.items():
        metrics += [Metric(metric_name(f"{EVAL_METRICS_PREFIX}{t}/{k}"), float(v), now, 0) for k, v in values.items()]
    for (t, sampled), (low, high) in score_intervals(result, seed=result.sample_seed).items():
        metrics += [Metric(ci_metric(t, "low", sampled), low, now, 0), Metric(ci_metric(t, "high", sampled), high, now, 0)]
    for start in range(0, len(metrics), 1000):   # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    for t, path in result.samples.items():
        client.log_artifact(run_id, str(path), EVAL_SAMPLES_DIR)
    if result.results_path is not None and Path(result.results_path).is_file():
        client.log_artifact(run_id, str(result.results_path), EVAL_RESULTS_DIR)
    client.set_tag(run_id, "ireasoner.eval_tasks", ",".join(result.tasks))
    # Which protocol produced the numbers decides what they can be compared with (docs/evaluation.md).
    for key, value in (("eval_protocol", result.protocol), ("eval_answer_extractor", result.answer_extractor),
                       ("eval_math_judge", result.math_judge)):
        client.log_param(run_id, key, value)
        client.set_tag(run_id, f"ireasoner.{key}", value)
    if result.sampled_scores:
        client.log_param(run_id, EVAL_SAMPLED_K_PARAM, result.sampled_k)
        client.log_param(run_id, EVAL_SAMPLE_SEED_PARAM, result.sample_seed)
    if result.adapter:
        client.set_tag(run_id, "ireasoner.eval_adapter", result.adapter)
    return dict(result.scores)


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:   # called as a plain function (evaluate_variant.fn), e.g. in tests
        return logging.getLogger(__name__)


@task(name="evaluate", task_run_name="evaluate-{mlflow_run_id}")
def evaluate_variant(model_cfg: dict[str, Any], adapter: str | None, tasks: list[str], output_dir: str,
                     mlflow_run_id: str, limit: int | None = None,
                     tracking_uri: str | None = None, protocol: str = "lmms_eval",
                     sampled_k: int | None = None, seed: int = 0) -> dict[str, float]:
    """Run the lmms-eval tasks on base + ``adapter`` (None = the untrained baseline) and log them.

    ``tracking_uri`` None: ``MLFLOW_TRACKING_URI``, else the flow's store (``tasks.runs.tracking_uri``).
    ``protocol``: lmms_eval (paper table 1, the default) or solver; see docs/evaluation.md.
    ``sampled_k``: avg@k's k (None: 5 on the mini tasks, none elsewhere; 0: off).
    ``seed``: lmms-eval's seeds and avg@k's sampling seed; a sweep passes the variant's seed so that
    a variant's seeds are independent draws of its samples, not one draw repeated.
    """
    log = _logger()
    cfg = ModelConfig.model_validate(model_cfg)
    result = run_evaluation(cfg, Path(adapter) if adapter else None, list(tasks), Path(output_dir), limit=limit,
                             protocol=protocol, sampled_k=sampled_k, seed=seed)
    if not result.is_main_process:
        return {}
    for note in result.notes:
        log.warning(note)
    scores = log_eval_result(MlflowClient(tracking_uri or default_tracking_uri()), mlflow_run_id, result)
    log.info("evaluated %s%s in %.0f s: %s", cfg.name_or_path, f" + {adapter}" if adapter else "",
             result.seconds, ", ".join(f"{t}={s:.2f}" for t, s in scores.items()))
    return scores
