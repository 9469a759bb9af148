"""What the Prefect UI shows of a sweep (issue 28): a training's progress and latest signals while it
runs, and a results table with greedy and avg@5 scores, each with its 95 % interval."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.train import TrainingProgress

REPO = Path(__file__).resolve().parents[1]


class FakeArtifacts:
    """Records TrainingProgress's calls in place of Prefect's API."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, str]] = []
        self.markdown: list[tuple[object, str]] = []
        self.keys: list[str] = []

    def create_progress(self, progress, key, description):
        self.keys.append(key)
        self.progress.append((progress, description))
        return "progress-id"

    def update_progress(self, artifact_id, progress, description):
        assert artifact_id == "progress-id"
        self.progress.append((progress, description))

    def write_markdown(self, artifact_id, markdown, key, description):
        self.keys.append(key)
        self.markdown.append((artifact_id, markdown))
        return "markdown-id"


class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg, *args):
        self.warnings.append(msg % args)


def _record(t: int, step_cos: float | None = 0.5) -> dict:
    return {"iteration": t, "lambda": 0.1 * t, "r_sol_mean": 0.25, "mean_step_cos": step_cos, "kl_solver": 1e-4,
            "seconds_rollout": 1.5, "question": "What is the largest bar?", "answers": ["3", "3", ""]}


def test_progress_moves_every_iteration_and_the_latest_signals_every_few():
    api = FakeArtifacts()
    p = TrainingProgress("training of full-s0", "ireasoner-smoke-full-s0-training", 20, Log(),
                         mlflow_url="http://mlflow/#/run", metrics_every=10, api=api)
    p.on_train_start(None, 0)
    for t in range(1, 21):
        p.on_iteration(_record(t, step_cos=None if t == 20 else 0.5))
    values = [v for v, _ in api.progress]
    assert values[0] == 0.0 and values[-1] == 100.0 and values == sorted(values) and len(values) == 21
    assert "iteration 7 of 20" in api.progress[7][1] and "left" in api.progress[7][1]
    # one markdown artifact, written at the first iteration, then rewritten in place at 10 and 20
    assert [a for a, _ in api.markdown] == [None, "markdown-id", "markdown-id"]
    last = api.markdown[-1][1]
    assert "iteration 20 of 20" in last and "| r_sol_mean | 0.25 |" in last and "[MLflow run](http://mlflow/#/run)" in last
    # an undefined signal is shown as such, never as 0
    assert "| mean_step_cos | — |" in last
    assert "`3`, `3`, (none)" in last
    assert set(api.keys) == {"ireasoner-smoke-full-s0-training-progress", "ireasoner-smoke-full-s0-training"}


def test_a_resumed_or_subprocess_training_starts_its_bar_where_it_is():
    api = FakeArtifacts()
    p = TrainingProgress("training of full-s0", "k", 10, Log(), api=api)
    p.on_iteration(_record(6))   # records from a subprocess: no on_train_start in this process
    assert [v for v, _ in api.progress] == [50.0, 60.0]


def test_a_failing_prefect_api_never_stops_the_training():
    class Broken(FakeArtifacts):
        def update_progress(self, *a):
            raise ConnectionError("server gone")

    log = Log()
    p = TrainingProgress("training of full-s0", "k", 10, log, api=Broken())
    p.on_train_start(None, 0)
    for t in (1, 2, 3):
        p.on_iteration(_record(t))
    assert len(log.warnings) == 1 and "server gone" in log.warnings[0]


REAL = r"""
import json
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
from tasks.train import TrainingProgress

class Log:
    def warning(self, msg, *a): raise AssertionError(msg % a)

@task
def training():
    p = TrainingProgress("training of full-s0", "ireasoner-probe-full-s0-training", 4, Log(), metrics_every=2)
    p.on_train_start(None, 0)
    for t in (1, 2, 3, 4):
        p.on_iteration({"iteration": t, "r_sol_mean": 0.1 * t, "mean_step_cos": None})

@flow
def sweep():
    training()

state = sweep(return_state=True)
with get_client(sync_client=True) as c:
    runs = c.read_flow_runs()
    arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
print(json.dumps([{"type": a.type, "key": a.key, "data": a.data, "task_run": bool(a.task_run_id)} for a in arts]))
"""


@pytest.mark.slow
def test_a_training_task_shows_its_progress_and_latest_signals_in_prefect(tmp_path):
    """Against Prefect's own (ephemeral) server: two artifacts of the training's task run, updated in place."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    env.pop("PREFECT_API_URL", None)
    r = subprocess.run([sys.executable, "-c", REAL], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=400, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    arts = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(a["type"] for a in arts) == ["markdown", "progress"], arts
    progress = next(a for a in arts if a["type"] == "progress")
    markdown = next(a for a in arts if a["type"] == "markdown")
    assert math.isclose(float(progress["data"]), 100.0) and progress["task_run"]
    assert progress["key"] == "ireasoner-probe-full-s0-training-progress"
    assert markdown["key"] == "ireasoner-probe-full-s0-training"
    assert "iteration 4 of 4" in markdown["data"] and "| mean_step_cos | — |" in markdown["data"]
