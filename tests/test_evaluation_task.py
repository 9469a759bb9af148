"""The flow's evaluation task logs headline scores, detailed metrics and per-item files on the run it is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ireasoner_core.evaluation import MINI_TASKS


@pytest.mark.slow
def test_evaluate_variant_logs_on_the_given_run(tmp_path, monkeypatch, embedded_model_dir):
    from tasks.evaluate import evaluate_variant

    monkeypatch.setenv("IREASONER_EVAL_CACHE", str(tmp_path / "eval-cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("ireasoner", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    scores = evaluate_variant.fn({"name_or_path": "embedded"}, None, list(MINI_TASKS), str(tmp_path / "eval"),
                                 run_id, limit=2, tracking_uri=uri, seed=3)
    metrics = client.get_run(run_id).data.metrics
    assert set(scores) == set(MINI_TASKS)
    for task in MINI_TASKS:
        assert metrics[f"eval/{task}"] == scores[task]
        assert 0.0 <= scores[task] <= 100.0
        local = client.download_artifacts(run_id, f"eval_samples/{task}.jsonl", str(tmp_path / "dl"))
        rows = [json.loads(line) for line in Path(local).read_text().splitlines()]
        assert len(rows) == 2 and sum(r["score"] for r in rows) / 2 == pytest.approx(scores[task])
        # avg@5, on by default for the mini tasks, is logged beside the greedy headline
        assert metrics[f"eval_sampled/{task}"] == pytest.approx(sum(r["sampled_score"] for r in rows) / 2)
    assert "eval_metrics/ireasoner_chartqa_mini/relaxed_overall" in metrics
    assert not any("," in k for k in metrics)
    run = client.get_run(run_id).data
    assert (run.params["eval_protocol"], run.params["eval_answer_extractor"]) == ("lmms_eval", "evolmm")
    assert run.tags["ireasoner.eval_protocol"] == "lmms_eval" and run.params["eval_math_judge"] == "local"
    assert run.params["eval_sampled_k"] == "5"
    assert run.params["eval_sample_seed"] == "3"   # the seed it was given, recorded with the samples
    local = client.download_artifacts(run_id, "eval_results/results.json", str(tmp_path / "dl"))
    recorded = json.loads(Path(local).read_text())["ireasoner"]
    assert (recorded["protocol"], recorded["answer_extractor"]) == ("lmms_eval", "evolmm")
    assert recorded["sample_seed"] == 3
