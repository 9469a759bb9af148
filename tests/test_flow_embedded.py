"""The `ireasoner` flow end to end on the embedded model, against a temporary Prefect server.

- a training subprocess killed mid-run is retried by Prefect and resumes from its checkpoint
  (the global iteration continues; every iteration is in MLflow exactly once);
- a variant that fails does not stop the others, and the parent run records which and why.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tasks.conventions import (
    EXPERIMENT,
    KIND_VARIANT,
    TAG_FAILED_VARIANTS,
    TAG_KIND,
    TAG_STATUS,
    TAG_VARIANT,
)

TINY = {"checkpoint.every": 2, "sampling.num_rollouts": 2, "sampling.solver_max_new_tokens": 16,
        "sampling.proposer_max_new_tokens": 16}

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def _children(client: MlflowClient, parent: str):
    exp = client.get_experiment_by_name(EXPERIMENT)
    return {r.data.tags[TAG_VARIANT]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and tags.`{TAG_KIND}` = '{KIND_VARIANT}'")}


def _kill_training_after_checkpoint(runs: Path, iteration: int, killed: list[int], stop: threading.Event) -> None:
    """Wait for checkpoint `iteration` to be complete, then SIGKILL the training subprocess."""
    marker = f"checkpoints/iter-{iteration:06d}/COMPLETE"
    while not stop.is_set():
        if any(runs.glob(f"*/*/{marker}")):
            for child in psutil.Process().children(recursive=True):
                try:
                    if "ireasoner_core.cli" in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                        killed.append(child.pid)
                except psutil.NoSuchProcess:
                    continue
            if killed:
                return
        time.sleep(0.2)


def test_killed_training_resumes_from_its_checkpoint_on_retry(harness, store, tmp_path):
    from flows.ireasoner import ireasoner

    runs = tmp_path / "runs"
    spec = {"name": "resume", "iterations": 6, "runs_dir": str(runs), "overrides": {**TINY, "log_completions_every": 3},
            "variants": ["full"],
            "images": {"synthetic_images": 4},
            "resources": {"launcher": "subprocess", "retries": 1, "retry_delay_seconds": 0}}
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_training_after_checkpoint, args=(runs, 2, killed, stop), daemon=True)
    killer.start()
    try:
        state = ireasoner(spec=spec, return_state=True)
    finally:
        stop.set()
    assert killed, "the training subprocess was never killed"
    assert state.is_completed(), state.message
    (row,) = state.result()["rows"]
    assert row["status"] == "finished" and row["iterations"] == 6
    child = _children(store, state.result()["parent_run_id"])["full"]
    # The retry started from a checkpoint (2, or 4 if the kill landed late), not from zero.
    start = int(child.data.tags["ireasoner.start_iteration"])
    assert start in (2, 4)
    # One point per iteration, 1..6: the redone iterations after the checkpoint were not logged twice.
    steps = [m.step for m in store.get_metric_history(child.info.run_id, "train/lambda")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    # The run directory holds one history too: the trainer's JSONL continues from the checkpoint.
    (out,) = runs.glob("resume/full-s0-*")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6
    # The generations of iterations 3 and 6 (2 rollouts each) reached the training run's table from the
    # subprocess's JSONL, each once although the retry redid iterations after the checkpoint.
    table = store.load_table(child.info.experiment_id, run_ids=[child.info.run_id],
                             artifact_file="train/completions.json")
    assert sorted(table["iteration"].tolist()) == [3, 3, 6, 6] and table["completion"].map(bool).all()


def test_a_failed_variant_does_not_stop_the_others(harness, store, tmp_path):
    from flows.ireasoner import ireasoner

    # Valid for the spec, fails only when the variant runs: its model directory does not exist.
    broken = {"name": "broken", "ablation": "full",
              "overrides": {"model.name_or_path": str(tmp_path / "no-model"), "data.image_dir": str(tmp_path)}}
    spec = {"name": "isolation", "iterations": 2, "runs_dir": str(tmp_path / "runs"), "overrides": TINY,
            "variants": [broken, "soft_only"], "images": {"synthetic_images": 4},
            "resources": {"retries": 0}}
    state = ireasoner(spec=spec, return_state=True)
    assert state.is_failed() and "broken-s0" in state.message
    exp = store.get_experiment_by_name(EXPERIMENT)
    (parent,) = store.search_runs([exp.experiment_id], "tags.`ireasoner.kind` = 'sweep'")
    assert "broken-s0" in parent.data.tags[TAG_FAILED_VARIANTS]
    # The sweep's spec as params, what MLflow's Compare diffs between sweeps.
    params = parent.data.params
    assert params["spec.iterations"] == "2" and params["spec.variants"] == '["broken", "soft_only"]'
    assert params["spec.variants.broken.overrides.model.name_or_path"] == str(tmp_path / "no-model")
    assert params["spec.overrides.sampling.num_rollouts"] == "2"
    assert parent.info.status == "FAILED"
    children = _children(store, parent.info.run_id)
    assert children["soft_only"].info.status == "FINISHED"
    assert children["soft_only"].data.tags[TAG_STATUS] == "finished"
    assert children["soft_only"].data.metrics["iterations"] == 2
    assert children["broken"].info.status == "FAILED" and "no-model" in children["broken"].data.tags[
        "ireasoner.error"]
    # The table still has both rows, and says which failed.
    table = store.load_table(exp.experiment_id, run_ids=[parent.info.run_id], artifact_file="results_table.json")
    assert dict(zip(table["variant"], table["status"])) == {"broken": "failed", "soft_only": "finished"}
