"""A flow SIGKILLed mid-training (local, ephemeral Prefect mode) never blocks the next one.

Real parts throughout: ``python -m flows.run smoke`` as a user runs it, its own ephemeral
Prefect server on a temporary PREFECT_HOME, a temporary SQLite MLflow store. The first flow is
SIGKILLed right after its first checkpoint, while it holds the ``ireasoner-training`` slot; the
rerun must take the slot back, finish within a bounded time, and leave no MLflow run RUNNING.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tasks.conventions import EXPERIMENT, TAG_STATUS

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ("overrides={checkpoint.every: 1, sampling.num_rollouts: 2, sampling.solver_max_new_tokens: 12, "
             "sampling.proposer_max_new_tokens: 12, log_diagnostics_every: 100}")
RERUN_BOUND_S = 420  # a fresh ephemeral server + model load + 1 tiny iteration on a loaded 2-core machine

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _cmd(runs: Path) -> list[str]:
    return [sys.executable, "-m", "flows.run", "smoke", "--set", "name=killed", "--set", "iterations=2",
            "--set", "variants=[full]", "--set", "evaluation={tasks: []}", "--set", f"runs_dir={runs}",
            "--set", "images.synthetic_images=4", "--set", "resources.retries=0", "--set", OVERRIDES]


def test_a_sigkilled_flow_frees_its_slot_and_runs_for_the_next_flow(tmp_path, embedded_model_dir):
    runs = tmp_path / "runs"
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    first_log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(_cmd(runs), cwd=REPO, env=env, stdout=first_log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not any(runs.glob("killed/full-s0-*/checkpoints/iter-000001/COMPLETE")):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the first flow never wrote its first checkpoint"
        time.sleep(0.2)
    helpers = psutil.Process(first.pid).children(recursive=True)  # its ephemeral Prefect server
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert any("prefect.server" in " ".join(p.cmdline()) for p in helpers if p.is_running())

    started = time.monotonic()
    second = subprocess.run(_cmd(runs), check=False, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=RERUN_BOUND_S)
    took = time.monotonic() - started
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    print(f"rerun took {took:.0f} s")
    # It resumed the killed variant from its checkpoint instead of starting over.
    assert re.search(r"2 iterations \(resumed at [12]\)", out), out[-4000:]

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs_ = client.search_runs([exp.experiment_id])
    assert not [r.info.run_id for r in runs_ if r.info.status == "RUNNING"]
    dead = [r for r in runs_ if r.info.status == "FAILED"]
    # The killed flow's parent and child runs are failed, saying why.
    assert len(dead) == 2 and all(r.data.tags.get(TAG_STATUS) == "failed" for r in dead)
    assert all(f"process {first.pid}" in r.data.tags.get("ireasoner.error", "") for r in dead)
    # The killed flow's orphaned ephemeral Prefect server was stopped by the rerun.
    deadline = time.monotonic() + 20
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in helpers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p.pid for p in helpers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
