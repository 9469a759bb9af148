"""The documented production path, for real: a Prefect server on 127.0.0.1 (temporary SQLite),
the deployments registered with `bash deployments/register.sh`, a process worker polling the
pool, and `prefect deployment run ireasoner/ablations` with a two-variant, two-iteration
override. MLflow must then hold the parent run, both child runs and the results table; a second
identical run must skip both variants; a bad parameter must fail the flow run at validation,
before any task, with the reason on the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ireasoner_core.data.synthetic import generate_synthetic
from ireasoner_core.embedded.shipped import SHIPPED_DIR
from tasks.conventions import (
    EXPERIMENT,
    KIND_SWEEP,
    KIND_VARIANT,
    TAG_FLOW_RUN_ID,
    TAG_KIND,
    TAG_STATUS,
    TAG_VARIANT,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)   # nothing to keep at teardown; a server's graceful exit takes ~30 s
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def start_stack(tmp: Path):
    """Server + registered deployments + worker, in a temporary PREFECT_HOME and MLflow store
    (conftest's session fixture `stack`: one server for this module and test_schedules_fire)."""
    port = _free_port()
    # The 7B presets read their images from $IREASONER_IMAGES on the worker, as documented.
    images = tmp / "unlabeled"
    generate_synthetic(images, 6, seed=3)
    env = {**os.environ, "IREASONER_IMAGES": str(images),
           "PREFECT_HOME": str(tmp / "prefect-home"),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # The scheduler service looks for due schedules every 60 s by default; 5 s keeps
           # test_schedules_fire short without changing what the service does.
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
           # A worker asks for due runs every 10 s by default; 2 s takes minutes off the suite's
           # dozen deployment runs, the same worker code path.
           "PREFECT_WORKER_QUERY_SECONDS": "2",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    server_log = tmp / "server.log"
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api/health", server, server_log)
        reg = subprocess.run(["bash", "deployments/register.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=400, check=False)
        assert reg.returncode == 0, reg.stdout[-3000:] + reg.stderr[-3000:]
        worker_log = tmp / "worker.log"
        # The documented worker command, started outside the repository: entrypoints are module paths.
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "ireasoner-pool"], cwd=tmp,
                                  env=env, stdout=worker_log.open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        yield {"env": env, "tmp": tmp, "mlflow": MlflowClient(env["MLFLOW_TRACKING_URI"]), "worker_log": worker_log}
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)


def _run_deployment(stack, name: str, params: dict, watch: bool = True) -> str:
    """`prefect deployment run NAME --params JSON [--watch]`; returns the flow-run id."""
    cmd = [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params)]
    if watch:
        cmd += ["--watch", "--watch-timeout", "900"]
    out = subprocess.run(cmd, cwd=ROOT, env=stack["env"], capture_output=True, text=True, timeout=960, check=False)
    text = out.stdout + out.stderr
    ids = [line.split("UUID:")[1].strip() for line in text.splitlines() if "UUID:" in line]
    assert ids, text[-3000:]
    return ids[0]


def _flow_run(stack, flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack["env"]["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        fr = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
        return fr, task_runs


def _wait_final(stack, flow_run_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fr, task_runs = _flow_run(stack, flow_run_id)
        if fr.state is not None and fr.state.is_final():
            return fr, task_runs
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish:\n{stack['worker_log'].read_text()[-3000:]}")


def _parent(stack, flow_run_id: str):
    client = stack["mlflow"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`{TAG_KIND}` = '{KIND_SWEEP}' and "
                                                   f"tags.`{TAG_FLOW_RUN_ID}` = '{flow_run_id}'")
    assert len(runs) == 1, f"no parent run for flow run {flow_run_id}"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{runs[0].info.run_id}' and "
                                                       f"tags.`{TAG_KIND}` = '{KIND_VARIANT}'")
    return runs[0], {c.data.tags[TAG_VARIANT]: c for c in children}, _table(client, runs[0].info.run_id)


def _table(client: MlflowClient, run_id: str) -> dict[str, list]:
    """The results table logged with log_table, read back as columns (MlflowClient.load_table
    searches with the process-wide tracking URI, not the client's, so it is not used here)."""
    with tempfile.TemporaryDirectory() as d:
        doc = json.loads(Path(client.download_artifacts(run_id, "results_table.json", d)).read_text())
    return {c: [row[i] for row in doc["data"]] for i, c in enumerate(doc["columns"])}


def test_ablations_deployment_runs_two_variants_then_skips_them(stack):
    params = {"spec": {"name": "ablations-ci", "variants": ["full", "soft_only"], "iterations": 2,
                       "runs_dir": str(stack["tmp"] / "runs"), "images": {"synthetic_images": 4},
                       "overrides": {"checkpoint.every": 1, "sampling.num_rollouts": 2,
                                     "sampling.solver_max_new_tokens": 16, "sampling.proposer_max_new_tokens": 16}}}
    first = _run_deployment(stack, "ireasoner/ablations", params)
    fr, _ = _wait_final(stack, first)
    assert fr.state.is_completed(), f"{fr.state}\n{stack['worker_log'].read_text()[-4000:]}"
    parent, children, table = _parent(stack, first)
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_FLOW_RUN_ID] == first
    assert set(children) == {"full", "soft_only"}
    client = stack["mlflow"]
    for child in children.values():
        assert child.info.status == "FINISHED" and child.data.tags[TAG_STATUS] == "finished"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train/r_sol_mean")] == [1, 2]
        assert "config.yaml" in {Path(a.path).name for a in client.list_artifacts(child.info.run_id, "train")}
    assert list(table["variant"]) == ["full", "soft_only"] and list(table["status"]) == ["finished", "finished"]
    assert list(table["iterations"]) == [2, 2]

    second = _run_deployment(stack, "ireasoner/ablations", params)
    fr2, _ = _wait_final(stack, second)
    assert fr2.state.is_completed(), fr2.state
    _, children2, table2 = _parent(stack, second)
    assert children2 == {}  # nothing trained again
    assert list(table2["status"]) == ["skipped", "skipped"]
    assert set(table2["mlflow_run_id"]) == {c.info.run_id for c in children.values()}


def test_ablations_on_a_local_model_folder_runs_to_completed_with_its_mlflow_rows(stack):
    """The 7B's path on CPU: the preset as registered, cut down with `changes`, its model a local
    Qwen2.5-VL folder loaded by path (a copy of the shipped weights), images from $IREASONER_IMAGES."""
    model_dir = stack["tmp"] / "qwen2.5-vl-local"
    shutil.copytree(SHIPPED_DIR, model_dir)
    tasks = ["ireasoner_chartqa_mini", "ireasoner_ai2d_mini"]
    changes = {"name": "ablations-local", "model": str(model_dir), "variants": ["full", "soft_only"],
               "iterations": 2, "runs_dir": str(stack["tmp"] / "runs"),
               "evaluation": {"tasks": tasks, "limit": 4}, "resources": {"devices_per_variant": 1},
               "overrides": {"checkpoint.every": 1, "sampling.num_rollouts": 2,
                             "sampling.solver_max_new_tokens": 16, "sampling.proposer_max_new_tokens": 16}}
    flow_run_id = _run_deployment(stack, "ireasoner/ablations", {"changes": changes})
    fr, _ = _wait_final(stack, flow_run_id)
    assert fr.state.is_completed(), f"{fr.state}\n{stack['worker_log'].read_text()[-4000:]}"
    parent, children, table = _parent(stack, flow_run_id)
    assert parent.info.status == "FINISHED"
    assert set(children) == {"full", "soft_only"}
    client = stack["mlflow"]
    for child in children.values():
        assert child.info.status == "FINISHED" and child.data.tags[TAG_STATUS] == "finished"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train/r_sol_mean")] == [1, 2]
        for task in tasks:
            assert 0.0 <= child.data.metrics[f"eval/{task}"] <= 100.0, (task, child.data.metrics)
        with tempfile.TemporaryDirectory() as d:
            config = yaml.safe_load(Path(client.download_artifacts(child.info.run_id, "train/config.yaml", d))
                                    .read_text())
        assert config["model"]["name_or_path"] == str(model_dir)  # trained the folder, not 'embedded'
        assert config["schedule"]["iterations"] == 2 and config["sampling"]["num_rollouts"] == 2
    assert sorted(table["variant"]) == ["full", "soft_only"] and set(table["status"]) == {"finished"}


@pytest.mark.parametrize("bad_spec, reason", [
    ({"variants": ["warp_drive"]}, "unknown variant 'warp_drive'"),
    ({"iterations": -4}, "iterations"),
    ({"images": {"sources": ["/no/such/image/folder"]}}, "images.sources[0]: image folder not found"),
])
def test_bad_parameter_fails_the_flow_run_at_validation(stack, bad_spec, reason):
    client = stack["mlflow"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    parents_before = len(client.search_runs([exp.experiment_id])) if exp else 0
    flow_run_id = _run_deployment(stack, "ireasoner/ablations", {"spec": bad_spec}, watch=False)
    fr, task_runs = _wait_final(stack, flow_run_id)
    assert fr.state.is_failed()
    assert "Validation of flow parameters failed" in fr.state.message and reason in fr.state.message
    assert task_runs == []  # no pool, no training: the body never ran
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert (len(client.search_runs([exp.experiment_id])) if exp else 0) == parents_before


def test_dispatch_workers_runs_each_variant_as_its_own_flow_run(stack):
    """Scale-out path: each variant × seed is a flow run of ireasoner-variant/variant on the pool."""
    params = {"spec": {"name": "fanout-ci", "variants": ["no_density"], "iterations": 2,
                       "runs_dir": str(stack["tmp"] / "runs"), "images": {"synthetic_images": 4},
                       "resources": {"dispatch": "workers"},
                       "overrides": {"checkpoint.every": 1, "sampling.num_rollouts": 2,
                                     "sampling.solver_max_new_tokens": 16, "sampling.proposer_max_new_tokens": 16}}}
    flow_run_id = _run_deployment(stack, "ireasoner/smoke", params)
    fr, _ = _wait_final(stack, flow_run_id)
    assert fr.state.is_completed(), f"{fr.state}\n{stack['worker_log'].read_text()[-4000:]}"
    _, children, table = _parent(stack, flow_run_id)
    assert set(children) == {"no_density"} and table["status"] == ["finished"] and table["iterations"] == [2]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack["env"]["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["variant"])),
                                     flow_run_filter=FlowRunFilter())
    assert [r.name for r in runs] == ["no_density-s0"] and runs[0].state.is_completed()
