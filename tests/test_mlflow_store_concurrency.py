"""Two sweeps at once on one fresh SQLite MLflow store: the schema is created once, no run is lost.

Real processes against a real SQLite store, started together (a barrier file releases them at
the same moment), each doing what a sweep does to the store before and while it trains.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.conventions import EXPERIMENT

REPO = Path(__file__).resolve().parents[1]
SWEEP = """
import sys, time
from pathlib import Path
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from tasks.runs import create_child_run, create_parent_run, ensure_experiment, finish_run, open_client
uri, go, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
while not go.exists():
    time.sleep(0.01)
client = open_client(uri)  # as the flow opens its store
exp = ensure_experiment(client)
parent = create_parent_run(client, exp, name, {})
for v in range(3):
    child = create_child_run(client, exp, parent, f"{name}-{v}", "full", v, "h", {}, {"p": v})
    client.log_batch(child, metrics=[Metric("train/x", float(i), 0, i) for i in range(20)], synchronous=True)
    finish_run(client, child, ok=True, status_tag="finished")
finish_run(client, parent, ok=True, status_tag="finished")
print("ok", name)
"""


@pytest.mark.slow
def test_concurrent_sweeps_on_a_fresh_sqlite_store_lose_nothing(tmp_path):
    procs_per_trial, trials = 3, 1  # the unlocked store failed in the first trial every time
    for trial in range(trials):
        db = tmp_path / f"t{trial}" / "mlflow.db"
        db.parent.mkdir()
        uri, go = f"sqlite:///{db}", tmp_path / f"go{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", SWEEP, uri, str(go), f"s{k}"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for k in range(procs_per_trial)]
        time.sleep(8)  # every process has imported mlflow and waits at the barrier
        go.touch()
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * procs_per_trial, "\n---\n".join(o[-1500:] for o in outs)
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
        assert len(runs) == procs_per_trial * 4 and all(r.info.status == "FINISHED" for r in runs)
        for r in runs:
            if r.data.tags.get("mlflow.parentRunId"):
                assert len(client.get_metric_history(r.info.run_id, "train/x")) == 20
