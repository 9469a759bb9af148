"""Train one variant: the trainer in-process for one device, ``accelerate launch`` for several.

The task receives a plan (resolved run config + run directory) and the id of the variant's
MLflow child run, and returns paths and numbers, never a model. The run directory is fixed by
(variant, seed, config hash, data hash), and the trainer resumes from the newest complete
checkpoint it finds there, so a Prefect retry after a crash or a killed process continues the
global iteration count instead of starting over. A global concurrency limit
(``ireasoner-training``) caps how many variants train at once on the pool's machines.

In the subprocess case the trainer's ``metrics.jsonl`` is tailed and forwarded to MLflow from
this process (the core never imports mlflow), and the subprocess's output lines are streamed
into the Prefect task log. ``MLFLOW_RUN_ID`` is still exported to the subprocess so anything
in it that does use MLflow joins the child run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task

from tasks.conventions import ARTIFACT_ADAPTERS, ARTIFACT_CONFIG, ARTIFACT_METRICS_JSONL
from tasks.liveness import concurrency_slot
from tasks.runs import log_artifact_dir, register_solver
from tasks.tracking import JsonlFollower, MlflowTrainLogger, start_system_metrics

TRAINING_LIMIT = "ireasoner-training"
LAUNCH_CONFIG = "launch-config.yaml"  # the config handed to the subprocess (the trainer writes config.yaml)


def launch_command(config_path: Path, devices: int, cpu: bool) -> list[str]:
    """The training command line: plain python for one process, accelerate launch for several."""
    if devices <= 1:
        return [sys.executable, "-m", "ireasoner_core.cli", "train", "--config", str(config_path)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(devices)]
    if cpu:
        cmd.append("--cpu")
    return cmd + ["-m", "ireasoner_core.cli", "train", "--config", str(config_path)]


def _use_subprocess(launcher: str, devices: int) -> bool:
    return launcher == "subprocess" or (launcher == "auto" and devices > 1)


def _die_with_parent() -> Any:
    """A preexec_fn: the child gets SIGTERM when the flow process dies (even by SIGKILL), so no orphan
    trainer keeps writing the run directory (and holding its lock) while the next flow resumes it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child after fork only calls it
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def run_subprocess_training(cmd: list[str], env: dict[str, str], metrics_path: Path,
                            mlflow_logger: MlflowTrainLogger, log: Any, poll_seconds: float = 2.0) -> None:
    """Run the trainer as a subprocess; stream its output into ``log``, its metrics into MLflow."""
    follower = JsonlFollower(metrics_path)
    tail: deque[str] = deque(maxlen=20)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True, preexec_fn=_die_with_parent())
    log.info("training subprocess pid %d: %s", proc.pid, " ".join(cmd))

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log.info("[train] %s", line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while proc.poll() is None:
        for record in follower.poll():
            mlflow_logger.on_iteration(record)
        time.sleep(poll_seconds)
    reader.join(timeout=10)
    for record in follower.poll():
        mlflow_logger.on_iteration(record)
    mlflow_logger.flush()
    if proc.returncode != 0:
        last = "\n".join(tail)
        raise RuntimeError(f"training subprocess exited with code {proc.returncode}; last output:\n{last}")


@task(name="train-variant", task_run_name="train-{plan.key}", retries=2, retry_delay_seconds=10)
def train_variant(plan: Any, run_id: str, tracking_uri: str, launcher: str = "auto", devices: int = 1,
                  cpu: bool = False, data_hash: str = "") -> dict[str, Any]:
    """Train one variant × seed into its run directory; log metrics, artifacts, and the registry entry."""
    from ireasoner_core.config import TrainConfig

    log = get_run_logger()
    client = MlflowClient(tracking_uri)
    cfg = TrainConfig.model_validate(plan.config)
    out = Path(cfg.checkpoint.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mlflow_logger = MlflowTrainLogger(run_id, client=client, logger=log)
    with concurrency_slot(TRAINING_LIMIT, f"training of {plan.key}", log):
        monitor = start_system_metrics(run_id, tracking_uri, log)
        started = time.monotonic()
        try:
            if _use_subprocess(launcher, devices):
                cfg_path = out / LAUNCH_CONFIG
                cfg.to_yaml(cfg_path)
                env = {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": tracking_uri,
                       "PYTHONUNBUFFERED": "1"}
                run_subprocess_training(launch_command(cfg_path, devices, cpu), env, out / "metrics.jsonl",
                                        mlflow_logger, log)
                result = json.loads((out / "result.json").read_text())
            else:
                from ireasoner_core.trainer import train

                r = train(cfg, callbacks=[mlflow_logger])
                result = r.to_json()
        finally:
            if monitor is not None:
                monitor.finish()
    seconds = time.monotonic() - started
    _log_outputs(client, run_id, out, result)
    version = register_solver(client, run_id, f"{ARTIFACT_ADAPTERS}/solver", plan.variant,
                              {"ireasoner.config_hash": plan.config_hash, "ireasoner.data_hash": data_hash,
                               "ireasoner.seed": str(plan.seed)})
    log.info("%s: %d iterations (resumed at %d) in %.0f s; solver registered as version %s",
             plan.key, result["iterations"], result.get("start_iteration", 0), seconds, version)
    return {"iterations": int(result["iterations"]), "start_iteration": int(result.get("start_iteration", 0)),
            "seconds": float(result.get("seconds", seconds)), "solver_adapter": str(result["solver_adapter"]),
            "proposer_adapter": str(result["proposer_adapter"]), "output_dir": str(out),
            "model_version": version}


def _log_outputs(client: MlflowClient, run_id: str, out: Path, result: dict[str, Any]) -> None:
    """JSONL, resolved config and final adapters as artifacts; summary numbers as metrics."""
    from mlflow.entities import Metric

    for local, artifact in ((out / "metrics.jsonl", ARTIFACT_METRICS_JSONL), (out / "config.yaml", ARTIFACT_CONFIG)):
        if local.is_file():
            client.log_artifact(run_id, str(local), str(Path(artifact).parent))
    diagnostics = out / "diagnostics.jsonl"
    if diagnostics.is_file():
        client.log_artifact(run_id, str(diagnostics), "train")
    log_artifact_dir(client, run_id, Path(result["solver_adapter"]), f"{ARTIFACT_ADAPTERS}/solver")
    log_artifact_dir(client, run_id, Path(result["proposer_adapter"]), f"{ARTIFACT_ADAPTERS}/proposer")
    client.set_tag(run_id, "ireasoner.start_iteration", str(result.get("start_iteration", 0)))
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[
        Metric("iterations", float(result["iterations"]), now, 0),
        Metric("train_seconds", float(result.get("seconds", 0.0)), now, 0),
        Metric("images_skipped", float(result.get("images_skipped", 0)), now, 0),
    ], synchronous=True)
