"""Re-use of a finished variant respects the benchmarks the new sweep asks for (issue: a sweep
asking for ChartQA-mini re-used a `full` run trained without evaluation, and `full` vanished
from the tables).

Three sweeps of the `ireasoner` flow on the embedded model, against a temporary Prefect server
and SQLite MLflow store: (1) `full` trained without evaluation; (2) the same variant with a
benchmark: it runs again (resuming from its final checkpoint, no iteration redone) and is
evaluated, and the sweep's table 1 has its row; (3) the same again: skipped, its run re-used, and
the table still has the row.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tasks.conventions import EXPERIMENT, TAG_REUSED_RUNS

TASK = "ireasoner_chartqa_mini"
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_variant_trained_without_evaluation_is_evaluated_when_a_sweep_asks(harness, tmp_path, monkeypatch):
    from flows.ireasoner import ireasoner

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    spec = {"name": "noeval", "iterations": 2, "seeds": [1], "runs_dir": str(tmp_path / "runs"), "variants": ["full"],
            "images": {"synthetic_images": 4}, "evaluation": {"tasks": []},
            "overrides": {"checkpoint.every": 1, "sampling.num_rollouts": 2, "sampling.solver_max_new_tokens": 12,
                          "sampling.proposer_max_new_tokens": 12}}
    first = ireasoner(spec=spec)
    (row,) = first["rows"]
    assert row["status"] == "finished"
    (run_dir,) = (tmp_path / "runs" / "noeval").glob("full-s1-*")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter-000001", "iter-000002"]

    evaluated = {**spec, "evaluation": {"tasks": [TASK], "limit": 2, "sampled_k": 3}}
    second = ireasoner(spec=evaluated)
    (row2,) = second["rows"]
    # Not a skip of the unevaluated run: a new run, resumed at its final checkpoint, with a score.
    assert row2["status"] == "finished" and row2["mlflow_run_id"] != row["mlflow_run_id"]
    assert row2[TASK] is not None
    run2 = client.get_run(row2["mlflow_run_id"])
    assert run2.data.tags["ireasoner.start_iteration"] == "2"
    assert f"eval/{TASK}" in run2.data.metrics
    # the spec's evaluation.sampled_k reaches the evaluation: avg@3 beside the greedy score
    assert f"eval_sampled/{TASK}" in run2.data.metrics and run2.data.params["eval_sampled_k"] == "3"
    # and the variant's seed is the samples' seed, so two seeds of a variant are independent draws
    assert run2.data.params["eval_sample_seed"] == "1"
    table1 = (tmp_path / "runs" / "noeval" / "report" / "tables" / "table1.md").read_text()
    assert "iReasoner (full)" in table1 and "avg@3" in table1

    third = ireasoner(spec=evaluated)
    (row3,) = third["rows"]
    assert row3["status"] == "skipped" and row3["mlflow_run_id"] == row2["mlflow_run_id"]
    assert row3[TASK] == pytest.approx(row2[TASK])
    parent3 = client.get_run(third["parent_run_id"])
    assert row2["mlflow_run_id"] in parent3.data.tags[TAG_REUSED_RUNS]
    # Its report (rebuilt from MLflow for the third sweep) still has the row.
    from tasks.reporting import build_report

    res = build_report(EXPERIMENT, uri, tmp_path / "rep3", third["parent_run_id"], log_to_mlflow=False,
                       n_resamples=100)
    assert row2["mlflow_run_id"] in res.runs_used and "iReasoner (full)" in res.tables["table1"][0].read_text()
