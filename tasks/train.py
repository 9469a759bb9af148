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

What the Prefect UI shows of a training that runs for hours (``TrainingProgress``, fed the same
records as MLflow either way): a progress artifact moved every iteration (with the iteration, the
seconds per iteration and the time left) and one markdown artifact, ``ireasoner-<sweep>-<variant>-training``,
rewritten every ``metrics_every`` iterations with the latest signals. Both are updated in place,
so a run has two artifacts, not one per update.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task

from ireasoner_core.callbacks import TrainerCallback
from ireasoner_core.preempt import StopRequest
from ireasoner_core.quiet import python_warnings_env, quiet_known_warnings
from tasks.conventions import ARTIFACT_ADAPTERS, ARTIFACT_CONFIG, ARTIFACT_METRICS_JSONL
from tasks.liveness import concurrency_slot
from tasks.results import artifact_key
from tasks.runs import log_artifact_dir, register_solver
from tasks.tracking import JsonlFollower, MlflowTrainLogger, start_system_metrics

TRAINING_LIMIT = "ireasoner-training"
LAUNCH_CONFIG = "launch-config.yaml"  # the config handed to the subprocess (the trainer writes config.yaml)
# The signals of the "latest metrics" artifact, in the order a researcher reads them (metrics.jsonl keys).
PROGRESS_SIGNALS = ("lambda", "r_sol_mean", "r_ans_mean", "r_step_mean", "answer_entropy", "majority_density",
                    "group_size", "mean_step_cos", "step_positions_used", "mean_steps_per_rollout",
                    "tagged_fraction", "proposer_reward", "kl_solver", "beta_solver", "loss_solver",
                    "grad_norm_solver", "kl_proposer", "loss_proposer", "rollouts", "images_skipped")


class PrefectArtifacts:
    """The three Prefect artifact calls TrainingProgress makes (a test passes its own)."""

    def create_progress(self, progress: float, key: str, description: str) -> Any:
        from prefect.artifacts import create_progress_artifact

        return create_progress_artifact(progress=progress, key=key, description=description)

    def update_progress(self, artifact_id: Any, progress: float, description: str) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id, progress=progress, description=description)

    def write_markdown(self, artifact_id: Any, markdown: str, key: str, description: str) -> Any:
        """Create the markdown artifact (artifact_id None), else rewrite it in place; returns its id."""
        if artifact_id is None:
            from prefect.artifacts import create_markdown_artifact

            return create_markdown_artifact(markdown=markdown, key=key, description=description)
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            client.update_artifact(artifact_id, ArtifactUpdate(data=markdown, description=description))
        return artifact_id


class TrainingProgress(TrainerCallback):
    """A training as the Prefect UI shows it: progress (percent, iteration, time left) and the latest signals.

    Fed every iteration's record, in-process (a trainer callback) or from a subprocess's metrics.jsonl.
    The Prefect API failing never stops the training: the first failure is logged and the artifacts stop.
    """

    def __init__(self, name: str, key: str, total: int, log: Any, mlflow_url: str = "", metrics_every: int = 10,
                 api: PrefectArtifacts | None = None) -> None:
        self.name, self.key, self.total, self.log = name, key, max(1, int(total)), log
        self.mlflow_url, self.metrics_every = mlflow_url, max(1, int(metrics_every))
        self.api = api or PrefectArtifacts()
        self.progress_id: Any = None
        self.metrics_id: Any = None
        self.start_iteration = 0
        self.started = time.monotonic()
        self.broken = False

    def on_train_start(self, cfg: Any, start_iteration: int) -> None:
        self.start_iteration, self.started = int(start_iteration), time.monotonic()
        self._call(self._create, start_iteration)

    def on_iteration(self, record: dict[str, Any]) -> None:
        self._call(self._update, record)

    def _create(self, iteration: int) -> None:
        self.progress_id = self.api.create_progress(100.0 * iteration / self.total, self.key + "-progress",
                                                    self._status(iteration))

    def _update(self, record: dict[str, Any]) -> None:
        t = int(record["iteration"])
        if self.progress_id is None:   # a subprocess's records: no on_train_start in this process
            self._create(t - 1)
        self.api.update_progress(self.progress_id, min(100.0, 100.0 * t / self.total), self._status(t))
        if self.metrics_id is None or t % self.metrics_every == 0 or t >= self.total:
            self.metrics_id = self.api.write_markdown(
                self.metrics_id, self.latest_metrics(record), self.key,
                f"{self.name}: the latest training signals (every {self.metrics_every} iterations and the last)")

    def _status(self, iteration: int) -> str:
        done = iteration - self.start_iteration
        text = f"{self.name}: iteration {iteration} of {self.total}"
        if done > 0:
            per = (time.monotonic() - self.started) / done
            left = per * max(0, self.total - iteration)
            text += f", {per:.1f} s per iteration, about {_duration(left)} left"
        return text

    def latest_metrics(self, record: dict[str, Any]) -> str:
        """Markdown: the record's signals (an undefined one shows as —, never as 0), its question and answers."""
        t = int(record["iteration"])
        lines = [f"# {self.name}: iteration {t} of {self.total}", ""]
        if self.mlflow_url:
            lines += [f"Every iteration's signals: [MLflow run]({self.mlflow_url}) (metrics `train/*`).", ""]
        lines += ["| signal | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(record[k])} |" for k in PROGRESS_SIGNALS if k in record]
        seconds = {k: v for k, v in record.items() if k.startswith("seconds_") and isinstance(v, (int, float))}
        if seconds:
            lines.append("| seconds per phase | " + ", ".join(f"{k.removeprefix('seconds_')} {v:.1f}"
                                                             for k, v in seconds.items()) + " |")
        if record.get("question"):
            lines += ["", f"**Question:** {record['question']}"]
        if record.get("answers"):
            lines += ["", "**Answers:** " + ", ".join(f"`{a}`" if a else "(none)" for a in record["answers"])]
        return "\n".join(lines)

    def _call(self, fn: Any, *args: Any) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - the UI's view must not stop a training
            self.broken = True
            self.log.warning("progress artifacts for %s stopped: %s: %s", self.name, type(err).__name__, err)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"      # not measured at this iteration (e.g. mean_step_cos with no dominant group of 2)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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


class VariantInterrupted(RuntimeError):
    """The flow was asked to stop (SIGTERM): this variant checkpointed and stopped, or never started."""


class _Preemption:
    """A flow's SIGTERM and what it reaches: in-process trainings (their StopRequest) and training subprocesses."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stops: set[StopRequest] = set()

    def request(self, signum: int) -> None:
        # Runs in a signal handler: no logging, no locks; the subprocess loops forward the signal.
        self.signum = self.signum or int(signum)
        for stop in list(self.stops):
            stop.request(signum)


PREEMPTION = _Preemption()


def preemption_requested() -> int | None:
    """The signal this process's flow received (it passes it on to its variants), if any."""
    return PREEMPTION.signum


def check_not_preempted(what: str) -> None:
    """Raise VariantInterrupted before starting ``what`` once the flow was asked to stop."""
    if PREEMPTION.signum is not None:
        raise VariantInterrupted(f"{what} not started: the flow received {signal.Signals(PREEMPTION.signum).name}")


@contextmanager
def variants_stop_on_sigterm() -> Iterator[None]:
    """Inside a flow: SIGTERM stops every variant after its current iteration, with a checkpoint.

    The flow then ends normally with its table of what finished. A second SIGTERM goes to the handler
    that was there before (Prefect's: the flow crashes at once; its training subprocesses get SIGTERM
    from the kernel as their parent dies, their own second signal, and stop at once). Outside the main
    thread signal handlers cannot be set: nothing changes.
    """
    PREEMPTION.signum = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: FrameType | None) -> None:
        if PREEMPTION.signum is not None:
            signal.signal(signal.SIGTERM, previous)
            signal.raise_signal(signum)
            return
        PREEMPTION.request(signum)

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _stoppable(stop: StopRequest) -> Iterator[StopRequest]:
    PREEMPTION.stops.add(stop)
    if PREEMPTION.signum is not None:   # the flow's signal came before this training registered
        stop.request(PREEMPTION.signum)
    try:
        yield stop
    finally:
        PREEMPTION.stops.discard(stop)


def _signal_training(proc: subprocess.Popen, ranks_are_children: bool, signum: int) -> None:
    """Send ``signum`` to the trainer: the process itself, or each rank of an `accelerate launch`.

    Not to the launcher: torchrun would pass on one more SIGTERM (a second signal, which stops a rank
    at once) and SIGKILL the ranks 30 s later, often before their iteration ends.
    """
    targets = [proc.pid]
    if ranks_are_children:
        try:
            import psutil

            targets = [c.pid for c in psutil.Process(proc.pid).children()] or targets
        except Exception:  # noqa: BLE001 - psutil missing or the launcher gone: the launcher forwards it
            targets = [proc.pid]
    for pid in targets:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_subprocess_training(cmd: list[str], env: dict[str, str], metrics_path: Path,
                            mlflow_logger: MlflowTrainLogger, log: Any, poll_seconds: float = 2.0,
                            callbacks: Sequence[TrainerCallback] = (), ranks_are_children: bool = False) -> None:
    """Run the trainer as a subprocess; stream its output into ``log``, its metrics into MLflow (and ``callbacks``).

    When the flow receives SIGTERM, the trainer gets it too (within ``poll_seconds``): it checkpoints
    its current iteration and exits, and this raises VariantInterrupted with the trainer's last line.
    """
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

    def forward() -> None:
        for record in follower.poll():
            mlflow_logger.on_iteration(record)
            for cb in callbacks:
                cb.on_iteration(record)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    forwarded = None
    while proc.poll() is None:
        if forwarded is None and (forwarded := preemption_requested()) is not None:
            log.warning("the flow received %s: the training stops after its current iteration, with a checkpoint",
                        signal.Signals(forwarded).name)
            _signal_training(proc, ranks_are_children, forwarded)
        forward()
        time.sleep(poll_seconds)
    reader.join(timeout=10)
    forward()
    mlflow_logger.flush()
    if forwarded is not None and proc.returncode != 0:
        raise VariantInterrupted(tail[-1].removeprefix("error: ") if tail else
                                 f"training stopped by {signal.Signals(forwarded).name}")
    if proc.returncode != 0:
        last = "\n".join(tail)
        raise RuntimeError(f"training subprocess exited with code {proc.returncode}; last output:\n{last}")


def _retry_unless_preempted(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: a variant the flow stopped is not retried."""
    return preemption_requested() is None


@task(name="train-variant", task_run_name="train-{plan.key}", retries=2, retry_delay_seconds=10,
      retry_condition_fn=_retry_unless_preempted)
def train_variant(plan: Any, run_id: str, tracking_uri: str, launcher: str = "auto", devices: int = 1,
                  cpu: bool = False, data_hash: str = "", threads: int | None = None) -> dict[str, Any]:
    """Train one variant × seed into its run directory; log metrics, artifacts, and the registry entry."""
    from ireasoner_core.config import TrainConfig
    from tasks.runs import run_url

    log = get_run_logger()
    client = MlflowClient(tracking_uri)
    cfg = TrainConfig.model_validate(plan.config)
    out = Path(cfg.checkpoint.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mlflow_logger = MlflowTrainLogger(run_id, client=client, logger=log)
    progress = TrainingProgress(f"training of {plan.key}", artifact_key(f"ireasoner-{out.parent.name}-{plan.key}-training"),
                                cfg.schedule.iterations, log,
                                mlflow_url=run_url(tracking_uri, client.get_run(run_id).info.experiment_id, run_id))
    check_not_preempted(f"training of {plan.key}")
    with concurrency_slot(TRAINING_LIMIT, f"training of {plan.key}", log):
        check_not_preempted(f"training of {plan.key}")      # the signal came while it waited for the slot
        monitor = start_system_metrics(run_id, tracking_uri, log)
        started = time.monotonic()
        try:
            if _use_subprocess(launcher, devices):
                cfg_path = out / LAUNCH_CONFIG
                cfg.to_yaml(cfg_path)
                env = {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": tracking_uri,
                       "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": python_warnings_env(os.environ.get("PYTHONWARNINGS"))}
                if threads is not None:
                    env["OMP_NUM_THREADS"] = str(threads)
                run_subprocess_training(launch_command(cfg_path, devices, cpu), env, out / "metrics.jsonl",
                                        mlflow_logger, log, callbacks=[progress], ranks_are_children=devices > 1)
                result = json.loads((out / "result.json").read_text())
            else:
                from ireasoner_core.preempt import TrainingInterrupted
                from ireasoner_core.trainer import train

                quiet_known_warnings()
                try:
                    with _stoppable(StopRequest()) as stop:
                        r = train(cfg, callbacks=[mlflow_logger, progress], stop=stop)
                except TrainingInterrupted as err:
                    raise VariantInterrupted(str(err)) from None
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
