"""The sweep's results table: one row per variant × seed, one column per benchmark.

The same rows go to MLflow (``log_table`` on the parent run, read back by the report command)
and to Prefect (a table artifact, plus a markdown artifact whose cells link to the MLflow
runs, since the UI's table view shows plain text).
"""

from __future__ import annotations

import re
from typing import Any

from mlflow.tracking import MlflowClient

from tasks.conventions import RESULTS_TABLE

BASE_COLUMNS = ["variant", "seed", "status", "iterations", "wall_seconds"]
LINK_COLUMNS = ["mlflow_run_id", "mlflow_url", "error"]


def table_columns(eval_tasks: list[str]) -> list[str]:
    return ["variant", "seed", *eval_tasks, "status", "iterations", "wall_seconds", *LINK_COLUMNS]


def make_row(variant: str, seed: int, status: str, run_id: str, url: str, iterations: int | None = None,
             seconds: float | None = None, scores: dict[str, float] | None = None,
             eval_tasks: list[str] = (), error: str = "") -> dict[str, Any]:
    """One table row; a benchmark without a score is None (never a made-up number)."""
    row: dict[str, Any] = {"variant": variant, "seed": seed}
    scores = scores or {}
    for t in eval_tasks:
        row[t] = scores.get(t)
    row.update({"status": status, "iterations": iterations,
                "wall_seconds": None if seconds is None else round(float(seconds), 1),
                "mlflow_run_id": run_id, "mlflow_url": url, "error": error})
    return row


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "ireasoner"


def log_results_table(client: MlflowClient, parent_run_id: str, rows: list[dict[str, Any]],
                      eval_tasks: list[str]) -> None:
    """mlflow.log_table on the parent run, as column lists (the report command reads it back)."""
    cols = table_columns(eval_tasks)
    data = {c: [r.get(c) for r in rows] for c in cols}
    client.log_table(parent_run_id, data=data, artifact_file=RESULTS_TABLE)


def markdown_table(rows: list[dict[str, Any]], eval_tasks: list[str], title: str) -> str:
    cols = ["variant", "seed", *eval_tasks, "status", "iterations", "wall_seconds"]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " | MLflow run |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = ["" if r.get(c) is None else (f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
        link = f"[{r['mlflow_run_id'][:8]}]({r['mlflow_url']})" if r.get("mlflow_run_id") else ""
        lines.append("| " + " | ".join(cells) + f" | {link} |")
    if not eval_tasks:
        lines += ["", "No evaluation tasks configured: the table has no benchmark columns."]
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        lines += ["", f"**{r['variant']} (seed {r['seed']}) failed:** {r['error']}"]
    return "\n".join(lines)


def publish_prefect_artifacts(rows: list[dict[str, Any]], eval_tasks: list[str], sweep: str) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(f"ireasoner-{sweep}-results")
    cols = table_columns(eval_tasks)
    create_table_artifact(table=[{c: r.get(c) for c in cols} for r in rows], key=key,
                          description=f"Results of sweep {sweep}: one row per variant and seed; "
                          "mlflow_url opens the variant's MLflow run.")
    create_markdown_artifact(markdown=markdown_table(rows, eval_tasks, f"ireasoner sweep {sweep}"),
                             key=artifact_key(f"ireasoner-{sweep}-summary"),
                             description="Results table with links to the MLflow runs.")
