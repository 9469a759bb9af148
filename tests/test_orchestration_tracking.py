"""The MLflow logger of training signals, the JSONL follower and the run helpers, on synthetic records."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from tasks.conventions import KIND_VARIANT, TAG_KIND, TAG_STATUS
from tasks.runs import (
    TAG_EVAL_LIMIT,
    create_child_run,
    create_parent_run,
    ensure_experiment,
    find_finished_variant,
    finish_run,
)
from tasks.tracking import JsonlFollower, MlflowTrainLogger, record_to_metrics


def _record(it: int) -> dict:
    return {"iteration": it, "lambda": 0.1 * it, "r_sol_mean": 0.5, "proposer_updated": True,
            "question": "how many bars?", "answers": ["3", "4"], "kl_solver": None, "group_size": 3}


@pytest.fixture()
def client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_record_to_metrics_keeps_numbers_drops_text_and_step():
    m = record_to_metrics({**_record(2), "weird,name": 1.5})
    # iteration is the step, question/answers are text, None is missing: none become metrics.
    assert m == {"train/lambda": pytest.approx(0.2), "train/r_sol_mean": 0.5, "train/proposer_updated": 1.0,
                 "train/group_size": 3.0, "train/weird_name": 1.5}


def test_unmeasured_proposer_signals_are_no_points_in_process_or_after_resume(client, tmp_path):
    """Iterations without a Proposer update: NaN in the trainer's record, null in metrics.jsonl."""
    def rec(it: int, updated: bool, nan) -> dict:
        v = 0.25 * it if updated else nan
        return {"iteration": it, "loss_proposer": v, "grad_norm_proposer": v, "kl_proposer": v,
                "lambda": 0.1 * it, "proposer_updated": updated}

    updates = {1: False, 2: True, 3: False, 4: True}
    assert record_to_metrics(rec(1, False, float("nan"))) == {"train/lambda": pytest.approx(0.1),
                                                              "train/proposer_updated": 0.0}
    exp = client.create_experiment("t")
    live = client.create_run(exp).info.run_id
    log = MlflowTrainLogger(live, client=client, flush_every=1)
    for it, up in updates.items():   # in-process: the trainer's own records
        log.on_iteration(rec(it, up, float("nan")))
    # Resumed at 4 from another attempt's checkpoint: the history comes back from the JSONL (null).
    jsonl = tmp_path / "run" / "metrics.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("".join(json.dumps(rec(it, up, None)) + "\n" for it, up in updates.items()))
    resumed = client.create_run(exp).info.run_id
    log2 = MlflowTrainLogger(resumed, client=client)
    log2.backfill(jsonl, up_to=4)
    for run_id in (live, resumed):
        for key in ("loss_proposer", "grad_norm_proposer", "kl_proposer"):
            hist = client.get_metric_history(run_id, f"train/{key}")
            assert sorted((m.step, m.value) for m in hist) == [(2, 0.5), (4, 1.0)], (run_id, key)
        assert len(client.get_metric_history(run_id, "train/lambda")) == 4


def test_logger_batches_and_skips_steps_already_logged(client):
    exp = client.create_experiment("t")
    run_id = client.create_run(exp).info.run_id
    log = MlflowTrainLogger(run_id, client=client, flush_every=3, flush_seconds=1e9)
    for it in (1, 2):
        log.on_iteration(_record(it))
    assert client.get_metric_history(run_id, "train/lambda") == []  # buffered, not yet sent
    log.on_iteration(_record(3))  # third record triggers a flush
    assert [m.step for m in client.get_metric_history(run_id, "train/lambda")] == [1, 2, 3]

    # A retry resumed from checkpoint 2 redoes iteration 3: a fresh logger must not log it twice.
    log2 = MlflowTrainLogger(run_id, client=client, flush_every=100)
    assert log2.last_step == 3
    for it in (3, 4, 5):
        log2.on_iteration(_record(it))
    log2.on_train_end(None)
    hist = client.get_metric_history(run_id, "train/lambda")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4, 5]
    assert math.isclose(max(hist, key=lambda m: m.step).value, 0.5)


def test_follower_reads_complete_lines_and_restarts_after_truncation(tmp_path):
    p = tmp_path / "metrics.jsonl"
    f = JsonlFollower(p)
    assert list(f.poll()) == []  # not created yet
    p.write_text(json.dumps(_record(1)) + "\n" + '{"iteration": 2, "lam')  # torn last line
    assert [r["iteration"] for r in f.poll()] == [1]
    with p.open("a") as fh:
        fh.write('bda": 0.2}\n')
    assert [r["iteration"] for r in f.poll()] == [2]
    p.write_text(json.dumps(_record(1)) + "\n")  # resume rewrote the file shorter
    assert [r["iteration"] for r in f.poll()] == [1]


def test_skip_lookup_matches_only_finished_runs_with_same_hashes(client):
    exp = ensure_experiment(client, "ireasoner-test")
    parent = create_parent_run(client, exp, "sweep", {})
    tags = {"ireasoner.data_hash": "d1", "ireasoner.source_hash": "c1"}
    a = create_child_run(client, exp, parent, "full-s0", "full", 0, "h1", tags, {"rewards.alpha": 0.7})
    assert client.get_run(a).data.tags[TAG_KIND] == KIND_VARIANT
    assert client.get_run(a).data.params["rewards.alpha"] == "0.7"
    assert find_finished_variant(client, exp, "full", 0, "h1", "d1", "c1") is None  # still running
    finish_run(client, a, ok=True, status_tag="finished")
    b = create_child_run(client, exp, parent, "full-s0", "full", 0, "h1", tags, {})
    finish_run(client, b, ok=False, status_tag="failed", error="boom")
    found = find_finished_variant(client, exp, "full", 0, "h1", "d1", "c1")
    assert found is not None and found.info.run_id == a
    assert client.get_run(b).data.tags[TAG_STATUS] == "failed"
    for other in (("full", 1, "h1", "d1", "c1"), ("full", 0, "h2", "d1", "c1"), ("full", 0, "h1", "d2", "c1"),
                  ("full", 0, "h1", "d1", "c2"), ("soft_only", 0, "h1", "d1", "c1")):
        assert find_finished_variant(client, exp, *other) is None


def test_skip_lookup_needs_every_requested_benchmark_on_as_many_items(client):
    """A run trained without evaluation (or on other benchmarks, or fewer items) is not a skip."""
    exp = ensure_experiment(client, "ireasoner-test")
    parent = create_parent_run(client, exp, "sweep", {})
    tags = {"ireasoner.data_hash": "d1", "ireasoner.source_hash": "c1"}
    trained = create_child_run(client, exp, parent, "full-s0", "full", 0, "h1", tags, {})
    finish_run(client, trained, ok=True, status_tag="finished")
    key = ("full", 0, "h1", "d1", "c1")
    assert find_finished_variant(client, exp, *key).info.run_id == trained  # no benchmark asked: re-use
    assert find_finished_variant(client, exp, *key, ["ireasoner_chartqa_mini"], 2) is None
    evaluated = create_child_run(client, exp, parent, "full-s0", "full", 0, "h1", tags, {})
    client.log_metric(evaluated, "eval/ireasoner_chartqa_mini", 50.0)
    client.set_tag(evaluated, TAG_EVAL_LIMIT, "2")
    finish_run(client, evaluated, ok=True, status_tag="finished")
    assert find_finished_variant(client, exp, *key, ["ireasoner_chartqa_mini"], 2).info.run_id == evaluated
    assert find_finished_variant(client, exp, *key, ["ireasoner_chartqa_mini"], None) is None  # all items
    assert find_finished_variant(client, exp, *key, ["ireasoner_chartqa_mini", "ireasoner_ai2d_mini"], 2) is None
    # Scores under one protocol are not re-used for a sweep that asks for the other.
    client.set_tag(evaluated, "ireasoner.eval_protocol", "solver")
    assert find_finished_variant(client, exp, *key, ["ireasoner_chartqa_mini"], 2, "solver").info.run_id == evaluated
    assert find_finished_variant(client, exp, *key, ["ireasoner_chartqa_mini"], 2, "lmms_eval") is None


def test_skip_lookup_needs_the_asked_avg_at_k_with_the_same_k(client):
    """A run scored greedy only, or avg@3, is not re-used by a sweep that asks for avg@5: its table-1
    avg@k column would be missing or mix two k."""
    from ireasoner_core.evaluation.runner import sampled_plan

    exp = ensure_experiment(client, "ireasoner-test")
    parent = create_parent_run(client, exp, "sweep", {})
    tags = {"ireasoner.data_hash": "d1", "ireasoner.source_hash": "c1"}
    key, task = ("full", 0, "h1", "d1", "c1"), "ireasoner_chartqa_mini"
    run = create_child_run(client, exp, parent, "full-s0", "full", 0, "h1", tags, {})
    client.log_metric(run, f"eval/{task}", 50.0)
    client.set_tag(run, TAG_EVAL_LIMIT, "2")
    finish_run(client, run, ok=True, status_tag="finished")
    assert sampled_plan([task], None) == ([task], 5) and sampled_plan([task], 0) == ([], 0)
    assert find_finished_variant(client, exp, *key, [task], 2, None, sampled_plan([task], 0)).info.run_id == run
    assert find_finished_variant(client, exp, *key, [task], 2, None, sampled_plan([task], None)) is None
    client.log_metric(run, f"eval_sampled/{task}", 40.0)
    client.log_param(run, "eval_sampled_k", 3)
    assert find_finished_variant(client, exp, *key, [task], 2, None, sampled_plan([task], 5)) is None
    assert find_finished_variant(client, exp, *key, [task], 2, None, sampled_plan([task], 3)).info.run_id == run
    # greedy-only asked: a run that also has avg@3 has everything asked
    assert find_finished_variant(client, exp, *key, [task], 2, None, sampled_plan([task], 0)).info.run_id == run
    # avg@3 asked on two tasks, measured on one (the other's per-item scores were not numbers): not a skip
    other = "ireasoner_ai2d_mini"
    client.log_metric(run, f"eval/{other}", 30.0)
    assert find_finished_variant(client, exp, *key, [task, other], 2, None, sampled_plan([task, other], 0)
                                 ).info.run_id == run
    assert find_finished_variant(client, exp, *key, [task, other], 2, None, sampled_plan([task, other], 3)) is None


def test_system_metrics_go_to_the_sweeps_store_not_the_working_directory(tmp_path, monkeypatch):
    """With the default SQLite store and no MLFLOW_TRACKING_URI (the README set-up), the monitor
    used to write to ./mlflow.db of the worker's working directory: the run showed no system metrics."""
    import time

    from tasks.tracking import start_system_metrics

    store = tmp_path / "store"
    store.mkdir()
    cwd = tmp_path / "worker-cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("IREASONER_SYSTEM_METRICS_INTERVAL", "0.2")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    monitor = start_system_metrics(run_id, uri)
    assert monitor is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics):
        time.sleep(0.5)
    monitor.finish()
    keys = set(client.get_run(run_id).data.metrics)
    assert any(k.startswith("system/cpu_utilization") for k in keys), keys
    assert sorted(p.name for p in cwd.iterdir()) == []  # no stray store where the process runs


# --------------------------------------------------------------------------- MLflow as a researcher browses it


def test_experiments_are_made_for_the_training_view_and_printed_links_open_it(tmp_path):
    """MLflow 3.17's UI opens its GenAI view (traces, assistant; a run under "Evaluations") unless the
    link says workflowType=machine_learning; the experiment tag is what UIs reading the kind go by."""
    from tasks.conventions import EXPERIMENT_KIND_TRAINING, TAG_EXPERIMENT_KIND
    from tasks.runs import experiment_url, open_client, run_url

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    exp = ensure_experiment(client, "fresh")
    kind = client.get_experiment(exp).tags[TAG_EXPERIMENT_KIND]
    assert kind == EXPERIMENT_KIND_TRAINING == "custom_model_development"
    older = client.create_experiment("older")          # made before the tag was set
    assert ensure_experiment(client, "older") == older
    assert client.get_experiment(older).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    assert run_url(uri, exp, "r1") == f"http://127.0.0.1:5000/#/experiments/{exp}/runs/r1?workflowType=machine_learning"
    assert experiment_url(uri, exp) == f"http://127.0.0.1:5000/#/experiments/{exp}?workflowType=machine_learning"
    from flows.run import _how_to_look  # what `python -m flows.run` prints at the end
    assert f"then open {experiment_url(uri, exp)}" in _how_to_look(uri, exp)
    assert "open http://mlflow:5000/#/?workflowType=machine_learning" in _how_to_look("http://mlflow:5000")


def test_a_new_store_keeps_the_default_experiments_artifacts_beside_its_database(tmp_path, monkeypatch):
    """MLflow writes Default's artifact location when it creates the schema: ./mlruns of the process
    that opened the store first, a temporary folder when a Prefect worker runs the flow."""
    from tasks.runs import open_client

    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    monkeypatch.chdir(worker_tmp)
    store = tmp_path / "store"
    client = open_client(f"sqlite:///{store / 'mlflow.db'}")
    default = client.get_experiment("0")
    assert default.name == "Default"
    assert default.artifact_location == (store / "mlartifacts" / "0").as_uri()
    assert list(worker_tmp.iterdir()) == []


def test_a_sweeps_spec_becomes_params_that_compare_can_diff(client):
    from flows.presets import PRESETS
    from flows.spec import ExperimentSpec
    from tasks.runs import log_params
    from tasks.tracking import MAX_PARAM_VALUE, spec_params

    a = ExperimentSpec.model_validate(PRESETS["smoke"])
    b = ExperimentSpec.model_validate({**PRESETS["smoke"], "iterations": 4, "variants": [
        "baseline", {"name": "fast", "ablation": "full", "overrides": {"optim.lr": 0.01}}]})
    exp = client.create_experiment("t")
    params = {}
    for name, spec in (("a", a), ("b", b)):
        run_id = client.create_run(exp, run_name=name).info.run_id
        log_params(client, run_id, spec_params(spec.model_dump(mode="json")))
        params[name] = client.get_run(run_id).data.params
    pa, pb = params["a"], params["b"]
    assert pa["spec.iterations"] == "20" and pb["spec.iterations"] == "4"
    assert pa["spec.variants"] == '["baseline", "full"]' and pb["spec.variants"] == '["baseline", "fast"]'
    assert pa["spec.evaluation.limit"] == "100" and pa["spec.evaluation.protocol"] == "solver"
    assert json.loads(pa["spec.evaluation.tasks"])[0] == "ireasoner_chartqa_mini"
    assert pa["spec.overrides.checkpoint.every"] == "5" and pa["spec.resources.devices_per_variant"] == "1"
    assert pb["spec.variants.fast.overrides.optim.lr"] == "0.01"
    # What MLflow's Compare shows as differing between the two sweeps:
    assert {k for k in pa.keys() | pb.keys() if pa.get(k) != pb.get(k)} == {
        "spec.iterations", "spec.variants", "spec.variants.fast.ablation", "spec.variants.fast.overrides.optim.lr"}
    # A value beyond MLflow's limit is cut to it and says where the whole spec is.
    long = spec_params({"overrides": {"note": "x" * 10_000}})["spec.overrides.note"]
    assert len(long) == MAX_PARAM_VALUE and long.endswith("the whole spec is the run's spec.json)")


def _logged_table(client, run_id: str, artifact_file: str) -> list[dict]:
    """A log_table artifact read back as rows (MlflowClient.load_table searches the default store, not the client's)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(run_id, artifact_file, tmp)).read_text())
    tagged = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": artifact_file, "type": "table"} in tagged   # MLflow's viewer shows it as a table
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def _rows(it: int, n: int = 3) -> list[dict]:
    return [{"iteration": it, "image": "img.png", "question": "how many bars?", "rollout": j,
             "completion": f"<think> Step 1: count. </think><answer>{j}</answer>", "answer": str(j),
             "dominant": j == 0, "r_ans": 0.5, "r_step": 0.25, "r_sol": 0.4} for j in range(n)]


def test_generations_are_appended_to_the_runs_completions_table_once_per_iteration(client):
    from tasks.conventions import ARTIFACT_COMPLETIONS

    exp = client.create_experiment("t")
    run_id = client.create_run(exp).info.run_id
    log = MlflowTrainLogger(run_id, client=client, flush_every=100, flush_seconds=1e9)
    for it in range(1, 5):
        log.on_iteration({**_record(it), **({"completions": _rows(it)} if it % 2 == 0 else {})})
    # A retry resumed from checkpoint 3 redoes iteration 4: its generations are not appended twice.
    MlflowTrainLogger(run_id, client=client).on_iteration({**_record(4), "completions": _rows(4)})
    table = _logged_table(client, run_id, ARTIFACT_COMPLETIONS)
    assert [r["iteration"] for r in table] == [2, 2, 2, 4, 4, 4] and [r["rollout"] for r in table] == [0, 1, 2] * 2
    assert [r["answer"] for r in table] == ["0", "1", "2"] * 2 and [r["r_sol"] for r in table] == [0.4] * 6
    assert not any(k.startswith("train/completions") for k in client.get_run(run_id).data.metrics)


@pytest.mark.slow
def test_training_hands_its_callbacks_a_table_of_generations_every_log_completions_every(tiny_cfg):
    """The trainer (no MLflow in the core) -> record["completions"] -> the MLflow callback's table."""
    from ireasoner_core.callbacks import read_jsonl
    from ireasoner_core.parsing import parse_rollout
    from ireasoner_core.trainer import train
    from tasks.conventions import ARTIFACT_COMPLETIONS

    cfg = tiny_cfg(**{"schedule.iterations": 2, "log_completions_every": 2, "log_diagnostics_every": 100})
    store = cfg.checkpoint.output_dir.parent / "store"
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.create_experiment("t", artifact_location=(store / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    train(cfg, callbacks=[MlflowTrainLogger(run_id, client=client)])
    table = _logged_table(client, run_id, ARTIFACT_COMPLETIONS)
    n = cfg.sampling.num_rollouts * cfg.schedule.images_per_iteration
    assert len(table) == n and {r["iteration"] for r in table} == {2}
    assert {"image", "question", "rollout", "completion", "answer", "dominant", "r_ans", "r_step", "r_sol",
            "answer_entropy", "proposer_reward"} <= set(table[0])
    assert len({r["question"] for r in table}) == 1 and table[0]["question"]
    for r in table:
        assert parse_rollout(r["completion"], cfg.rewards.max_reasoning_steps).answer == r["answer"]
        assert isinstance(r["dominant"], bool) and all(isinstance(r[k], float) for k in ("r_ans", "r_step", "r_sol"))
    # The same rows travel in metrics.jsonl, which is how a training subprocess hands them over.
    records = read_jsonl(cfg.checkpoint.output_dir / "metrics.jsonl")
    assert "completions" not in records[0] and len(records[1]["completions"]) == n
