"""The sweep's results table: one row per variant × seed, one column per benchmark score.

Each benchmark has its greedy score (column ``<task>``) and, where avg@k was measured, its avg@k
(``<task>@avg<k>``), each with the 95 % bootstrap interval of its mean over the benchmark's items
(``…_ci_low``/``…_ci_high``; ``tasks.evaluate`` logs them as ``eval_ci/<task>/low|high`` and
``eval_sampled_ci/<task>/low|high``). The same rows go to MLflow (``log_table`` on the parent run)
and to Prefect (a table artifact, plus a markdown artifact with one "score [low, high]" cell per
score and links to the MLflow runs, since the UI's table view shows plain text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.tracking import MlflowClient

from ireasoner_core.evaluation.benchmarks import label as task_label
from ireasoner_core.evaluation.benchmarks import sampled_key, split_sampled
from tasks.conventions import EVAL_SAMPLED_PREFIX, RESULTS_TABLE, metric_name

BASE_COLUMNS = ["variant", "seed", "status", "iterations", "wall_seconds"]
LINK_COLUMNS = ["mlflow_run_id", "mlflow_url", "error"]
EVAL_CI_PREFIX = "eval_ci/"                   # eval_ci/<task>/low|high: 95 % interval of eval/<task>
EVAL_SAMPLED_CI_PREFIX = "eval_sampled_ci/"   # eval_sampled_ci/<task>/low|high: of eval_sampled/<task>
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"

Sampled = tuple[Sequence[str], int]
"""(tasks with avg@k, k), as ``ireasoner_core.evaluation.runner.sampled_plan`` gives it."""


def ci_metric(task: str, end: str, sampled: bool = False) -> str:
    """MLflow metric of one end ("low"/"high") of a score's interval."""
    return metric_name(f"{EVAL_SAMPLED_CI_PREFIX if sampled else EVAL_CI_PREFIX}{task}/{end}")


def score_keys(eval_tasks: Sequence[str], sampled: Sampled = ((), 0)) -> list[str]:
    """The scores of a row, benchmark by benchmark: ``<task>`` (greedy), then ``<task>@avg<k>`` if measured."""
    tasks_k, k = sampled
    return [key for t in eval_tasks for key in ([t, sampled_key(t, k)] if t in tasks_k and k else [t])]


def score_columns(eval_tasks: Sequence[str], sampled: Sampled = ((), 0)) -> list[str]:
    return [c for key in score_keys(eval_tasks, sampled) for c in (key, key + CI_LOW, key + CI_HIGH)]


def table_columns(eval_tasks: list[str], sampled: Sampled = ((), 0)) -> list[str]:
    return ["variant", "seed", *score_columns(eval_tasks, sampled), "status", "iterations", "wall_seconds",
            *LINK_COLUMNS]


def eval_details(metrics: Mapping[str, float], eval_tasks: Sequence[str], sampled: Sampled = ((), 0)
                 ) -> dict[str, float | None]:
    """A run's avg@k scores and every score's interval, from its MLflow metrics; None where not logged."""
    tasks_k, k = sampled
    out: dict[str, float | None] = {}
    for t in eval_tasks:
        keys = [(t, False)] + ([(sampled_key(t, k), True)] if t in tasks_k and k else [])
        for key, is_sampled in keys:
            if is_sampled:
                out[key] = metrics.get(metric_name(EVAL_SAMPLED_PREFIX + t))
            out[key + CI_LOW] = metrics.get(ci_metric(t, "low", is_sampled))
            out[key + CI_HIGH] = metrics.get(ci_metric(t, "high", is_sampled))
    return out


def make_row(variant: str, seed: int, status: str, run_id: str, url: str, iterations: int | None = None,
             seconds: float | None = None, scores: dict[str, float] | None = None,
             eval_tasks: list[str] = (), error: str = "", details: Mapping[str, float | None] | None = None,
             sampled: Sampled = ((), 0)) -> dict[str, Any]:
    """One table row; a score or interval that was not measured is None (never a made-up number).

    ``scores``: greedy score per task; ``details``: the rest of the score columns (``eval_details``).
    """
    row: dict[str, Any] = {"variant": variant, "seed": seed}
    values = {**(details or {}), **(scores or {})}
    for c in score_columns(eval_tasks, sampled):
        row[c] = values.get(c)
    row.update({"status": status, "iterations": iterations,
                "wall_seconds": None if seconds is None else round(float(seconds), 1),
                "mlflow_run_id": run_id, "mlflow_url": url, "error": error})
    return row


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "ireasoner"


def log_results_table(client: MlflowClient, parent_run_id: str, rows: list[dict[str, Any]],
                      eval_tasks: list[str], sampled: Sampled = ((), 0)) -> None:
    """mlflow.log_table on the parent run, as column lists."""
    cols = table_columns(eval_tasks, sampled)
    data = {c: [r.get(c) for r in rows] for c in cols}
    client.log_table(parent_run_id, data=data, artifact_file=RESULTS_TABLE)


def _score_cell(row: Mapping[str, Any], key: str) -> str:
    """"41.0 [35.2, 47.1]": the score and its 95 % interval; the score alone where no interval was logged."""
    score, low, high = row.get(key), row.get(key + CI_LOW), row.get(key + CI_HIGH)
    if score is None:
        return ""
    return f"{score:.1f}" + ("" if low is None or high is None else f" [{low:.1f}, {high:.1f}]")


def _score_header(key: str) -> str:
    """"ChartQA-mini greedy", "ChartQA-mini avg@5"."""
    return task_label(key) if split_sampled(key)[1] is not None else f"{task_label(key)} greedy"


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def markdown_table(rows: list[dict[str, Any]], eval_tasks: list[str], title: str, sampled: Sampled = ((), 0)) -> str:
    keys = score_keys(eval_tasks, sampled)
    plain = ["status", "iterations", "wall_seconds"]
    headers = ["variant", "seed", *(_score_header(k) for k in keys), *plain, "MLflow run"]
    lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        link = f"[{r['mlflow_run_id'][:8]}]({r['mlflow_url']})" if r.get("mlflow_run_id") else ""
        cells = [_fmt(r.get("variant")), _fmt(r.get("seed")), *(_score_cell(r, k) for k in keys),
                 *(_fmt(r.get(c)) for c in plain), link]
        lines.append("| " + " | ".join(cells) + " |")
    if not eval_tasks:
        lines += ["", "No evaluation tasks configured: the table has no benchmark columns."]
    elif any(r.get(k + CI_LOW) is not None for r in rows for k in keys):
        lines += ["", ("Scores in 0-100 with their 95 % bootstrap interval over the benchmark's items "
                       "[low, high]; avg@k is the mean accuracy of k samples at temperature 1 per item.")]
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        lines += ["", f"**{r['variant']} (seed {r['seed']}) failed:** {r['error']}"]
    return "\n".join(lines)


def publish_prefect_artifacts(rows: list[dict[str, Any]], eval_tasks: list[str], sweep: str,
                              sampled: Sampled = ((), 0)) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(f"ireasoner-{sweep}-results")
    cols = table_columns(eval_tasks, sampled)
    create_table_artifact(table=[{c: r.get(c) for c in cols} for r in rows], key=key,
                          description=f"Results of sweep {sweep}: one row per variant and seed, greedy and avg@k "
                          "scores each with its 95 % interval (_ci_low, _ci_high); mlflow_url opens the "
                          "variant's MLflow run.")
    create_markdown_artifact(markdown=markdown_table(rows, eval_tasks, f"ireasoner sweep {sweep}", sampled),
                             key=artifact_key(f"ireasoner-{sweep}-summary"),
                             description="Results table: scores with their 95 % intervals, links to the MLflow runs.")
