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


TASK = "ireasoner_chartqa_mini"
SAMPLED = ([TASK], 5)


def _eval_result(tmp_path, greedy, sampled):
    from ireasoner_core.evaluation.runner import EvalResult

    path = tmp_path / f"{TASK}.jsonl"
    path.write_text("".join(json.dumps({"doc_id": i, "score": g, "sampled_score": s}) + "\n"
                            for i, (g, s) in enumerate(zip(greedy, sampled))))
    return EvalResult(model="embedded", tasks=[TASK], scores={TASK: sum(greedy) / len(greedy)},
                      sampled_scores={TASK: sum(sampled) / len(sampled)}, sampled_k=5, samples={TASK: path})


def test_every_score_gets_the_bootstrap_interval_of_its_mean_over_items(tmp_path):
    from ireasoner_core.reports.bootstrap import paired_bootstrap
    from tasks.evaluate import score_intervals

    greedy = [100.0, 0.0, 100.0, 100.0, 0.0, 100.0, 0.0, 100.0]
    sampled = [80.0, 20.0, 60.0, 100.0, 0.0, 40.0, 20.0, 60.0]
    out = score_intervals(_eval_result(tmp_path, greedy, sampled), n_resamples=2000)
    low, high = out[(TASK, False)]
    assert low < sum(greedy) / len(greedy) < high and 0.0 <= low and high <= 100.0
    ref = paired_bootstrap(sampled, [0.0] * len(sampled), n_resamples=2000)
    assert out[(TASK, True)] == (ref.low, ref.high)
    # an item without a number: no interval for that score (it would not be the score's)
    broken = _eval_result(tmp_path, greedy, sampled)
    rows = [json.loads(line) for line in broken.samples[TASK].read_text().splitlines()]
    rows[0]["sampled_score"] = None
    broken.samples[TASK].write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert set(score_intervals(broken, n_resamples=200)) == {(TASK, False)}


@pytest.mark.slow
def test_the_results_table_has_greedy_and_avg_at_5_each_with_its_interval(tmp_path):
    """log_eval_result's metrics, read back as the flow does, make the results artifact's cells (issue 28:
    the Prefect results artifact had greedy scores only, although avg@5 was measured)."""
    from mlflow.tracking import MlflowClient

    from tasks.evaluate import log_eval_result
    from tasks.results import eval_details, make_row, markdown_table, table_columns

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    result = _eval_result(tmp_path, [100.0, 0.0, 100.0, 100.0], [80.0, 20.0, 60.0, 100.0])
    log_eval_result(client, run_id, result)
    details = eval_details(client.get_run(run_id).data.metrics, [TASK], SAMPLED)
    row = make_row("full", 0, "finished", run_id, "http://mlflow/run", 20, 12.0, result.scores, [TASK],
                   details=details, sampled=SAMPLED)
    cols = table_columns([TASK], SAMPLED)
    assert cols[2:8] == [TASK, f"{TASK}_ci_low", f"{TASK}_ci_high",
                         f"{TASK}@avg5", f"{TASK}@avg5_ci_low", f"{TASK}@avg5_ci_high"]
    assert row[TASK] == 75.0 and row[f"{TASK}@avg5"] == 65.0
    assert all(row[c] is not None for c in cols[2:8])
    assert row[f"{TASK}_ci_low"] < 75.0 < row[f"{TASK}_ci_high"]
    md = markdown_table([row], [TASK], "sweep", SAMPLED)
    assert "ChartQA-mini greedy" in md.splitlines()[2] and "ChartQA-mini avg@5" in md.splitlines()[2]
    assert f"75.0 [{row[f'{TASK}_ci_low']:.1f}, {row[f'{TASK}_ci_high']:.1f}]" in md
    assert f"65.0 [{row[f'{TASK}@avg5_ci_low']:.1f}, {row[f'{TASK}@avg5_ci_high']:.1f}]" in md
    # a run evaluated before intervals were logged: its scores, and no made-up interval
    old = make_row("baseline", 0, "skipped", "r", "u", None, None, {TASK: 50.0}, [TASK],
                   details={f"{TASK}@avg5": 40.0}, sampled=SAMPLED)
    assert old[f"{TASK}_ci_low"] is None and "| 50.0 | 40.0 |" in markdown_table([old], [TASK], "s", SAMPLED)


REAL = r"""
import json
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
from tasks.results import make_row, publish_prefect_artifacts
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
    row = make_row("full", 0, "finished", "abc12345", "http://mlflow/run", 4, 1.0, {"t": 75.0}, ["t"],
                   details={"t_ci_low": 50.0, "t_ci_high": 100.0, "t@avg5": 65.0, "t@avg5_ci_low": 40.0,
                            "t@avg5_ci_high": 85.0}, sampled=(["t"], 5))
    publish_prefect_artifacts([row], ["t"], "probe", (["t"], 5))

state = sweep(return_state=True)
with get_client(sync_client=True) as c:
    runs = c.read_flow_runs()
    arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
print(json.dumps([{"type": a.type, "key": a.key, "data": a.data, "task_run": bool(a.task_run_id)} for a in arts]))
"""


@pytest.mark.slow
def test_prefect_shows_a_trainings_progress_and_the_sweeps_scores_with_intervals(tmp_path):
    """Against Prefect's own (ephemeral) server: the training task's two artifacts, updated in place, and the
    results table and summary that the flow publishes."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    env.pop("PREFECT_API_URL", None)
    r = subprocess.run([sys.executable, "-c", REAL], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=400, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    arts = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(a["type"] for a in arts) == ["markdown", "markdown", "progress", "table"], arts
    progress = next(a for a in arts if a["type"] == "progress")
    markdown = next(a for a in arts if a["type"] == "markdown" and a["task_run"])
    # the sweep's results: greedy and avg@5 with their intervals, as a table and as readable cells
    table = next(a for a in arts if a["type"] == "table")
    table_rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert table_rows[0]["t@avg5"] == 65.0 and table_rows[0]["t@avg5_ci_high"] == 85.0
    summary = next(a for a in arts if a["key"] == "ireasoner-probe-summary")
    assert "75.0 [50.0, 100.0]" in summary["data"] and "65.0 [40.0, 85.0]" in summary["data"]
    assert math.isclose(float(progress["data"]), 100.0) and progress["task_run"]
    assert progress["key"] == "ireasoner-probe-full-s0-training-progress"
    assert markdown["key"] == "ireasoner-probe-full-s0-training"
    assert "iteration 4 of 4" in markdown["data"] and "| mean_step_cos | — |" in markdown["data"]
