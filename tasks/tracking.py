"""MLflow side of a training run: per-iteration signals as step metrics, batched.

The trainer reports each global iteration as one ``metrics.jsonl`` record (keys in
docs/architecture.md). ``MlflowTrainLogger`` turns those records into ``train/<key>`` step
metrics of one child run, whether they arrive in-process through the trainer's callback
interface or from a subprocess through ``JsonlFollower``, which tails the run's
``metrics.jsonl``. Run ids are always passed explicitly: MLflow's active-run stack is
thread-local and Prefect runs tasks in worker threads.

A record is logged once per step. After a retry resumes from checkpoint k, the trainer redoes
iterations k+1.. that may already be in MLflow; those steps are not logged a second time, so
every metric history has exactly one point per iteration.

Every ``log_completions_every`` iterations a record also carries the generations of that iteration
(``record["completions"]``, rows of ``ireasoner_core.callbacks.completion_rows``); they are appended
to the run's ``train/completions.json`` table (``log_table``), one row per Solver rollout.

``spec_params`` is the sweep (parent) run's side: its experiment spec as flat ``spec.*`` params,
so MLflow's Compare view shows what two sweeps did differently.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ireasoner_core.callbacks import COMPLETIONS_KEY, TrainerCallback
from tasks.conventions import ARTIFACT_COMPLETIONS, TRAIN_PREFIX, metric_name

# Keys of a metrics.jsonl record that are not per-iteration signals (the step itself, text).
NON_METRIC_KEYS = {"iteration", "question", "answers", COMPLETIONS_KEY}
# MLflow's log_batch accepts at most 1000 metrics per call.
MAX_BATCH = 1000
# MLflow's limits on one param (mlflow.utils.validation): value and key length.
MAX_PARAM_VALUE = 6000
MAX_PARAM_KEY = 250
SPEC_PREFIX = "spec."
TRUNCATED = " ...(truncated; the whole spec is the run's spec.json)"


def spec_params(spec: dict[str, Any], prefix: str = SPEC_PREFIX) -> dict[str, str]:
    """An experiment spec (``ExperimentSpec.model_dump(mode="json")``) as flat MLflow params.

    Nested sections become dotted keys (``spec.evaluation.limit``, ``spec.overrides.optim.lr``: an
    override's own dotted name follows its section), lists are JSON (``spec.variants`` =
    ``["baseline", "full"]``), and a variant given with its own settings adds
    ``spec.variants.<name>.<field>`` keys. A value longer than MLflow's limit is cut and says so.
    """
    out: dict[str, str] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{key}.{k}", v)
            return
        text = json.dumps(value) if isinstance(value, list) else str(value)
        if len(text) > MAX_PARAM_VALUE:
            text = text[:MAX_PARAM_VALUE - len(TRUNCATED)] + TRUNCATED
        out[key[:MAX_PARAM_KEY]] = text

    for key, value in spec.items():
        if key == "variants":
            put(prefix + key, [v["name"] if isinstance(v, dict) else v for v in value])
            for v in value:
                if isinstance(v, dict):
                    put(f"{prefix}{key}.{v['name']}", {k: x for k, x in v.items() if k != "name"})
        else:
            put(prefix + key, value)
    return out


def record_to_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Numeric signals of one metrics.jsonl record as ``train/<key>`` MLflow metric values.

    A signal that was not measured at this iteration (None in the JSONL, NaN in the trainer's
    in-process record: e.g. the Proposer's loss on iterations without a Proposer update) is no
    point at all: MLflow's stores would keep NaN as 0.0, and a run resumed from its JSONL would
    have fewer points than one logged in-process.
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in NON_METRIC_KEYS or value is None:
            continue
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[metric_name(TRAIN_PREFIX + key)] = float(value)
    return out


LAST_STEP_TAG = "ireasoner.last_logged_step"


def last_logged_step(client: MlflowClient, run_id: str) -> int:
    """Highest iteration already sent to the run (0 when none): where a resumed run's logging continues."""
    return int(client.get_run(run_id).data.tags.get(LAST_STEP_TAG, 0))


class MlflowTrainLogger(TrainerCallback):
    """Trainer callback: per-iteration records → ``train/*`` step metrics of one MLflow run.

    Records are buffered and sent with one ``log_batch`` call every ``flush_every`` iterations
    or ``flush_seconds`` seconds (per-metric calls cost one round trip each), and at every
    checkpoint and at the end, so a killed run loses at most what came after its last flush.
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None, flush_every: int = 10,
                 flush_seconds: float = 15.0, logger: Any = None):
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.logger = logger
        self._pending: list[Metric] = []
        self._pending_records = 0
        self._last_flush = time.monotonic()
        self.last_step = last_logged_step(self.client, run_id)
        self.logged_records = 0
        self._completions: list[dict[str, Any]] | None = None

    # -- TrainerCallback -------------------------------------------------------------------
    def on_train_start(self, cfg: Any, start_iteration: int) -> None:
        self.client.set_tag(self.run_id, "ireasoner.start_iteration", str(start_iteration))
        if self.logger is not None:
            self.logger.info("training starts at global iteration %d (MLflow has steps up to %d)",
                             start_iteration, self.last_step)
        if start_iteration > self.last_step:
            self.backfill(Path(cfg.checkpoint.output_dir) / "metrics.jsonl", start_iteration)

    def backfill(self, metrics_path: Path, up_to: int) -> None:
        """Log the checkpointed history (iterations <= up_to) that this run does not have yet: a
        run resumed from another attempt's checkpoint still shows every iteration."""
        follower = JsonlFollower(metrics_path)
        for record in follower.poll():
            if int(record.get("iteration", 0)) <= up_to:
                self.on_iteration(record, quiet=True)
        self.flush()

    def on_iteration(self, record: dict[str, Any], quiet: bool = False) -> None:
        step = int(record["iteration"])
        if step <= self.last_step:
            return  # redone after a resume: this step is already in MLflow
        now_ms = int(time.time() * 1000)
        self._pending.extend(Metric(k, v, now_ms, step) for k, v in record_to_metrics(record).items())
        self._pending_records += 1
        self.last_step = step
        if self.logger is not None and not quiet:
            self.logger.info("iteration %d: %s", step, _summary(record))
        if record.get(COMPLETIONS_KEY):
            # Metrics first: their last-step tag then covers this step, so a resume never appends
            # this iteration's generations a second time (a kill in between loses them instead).
            self.flush()
            self.log_completions(record[COMPLETIONS_KEY])
        elif self._pending_records >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def log_completions(self, rows: list[dict[str, Any]]) -> None:
        """Append one iteration's generations to the run's completions table (like trl's log_completions).

        The table is rewritten whole rather than with log_table's own append, which reads the old rows
        back through pandas and turns answers such as "0" or "007" into numbers.
        """
        if self._completions is None:   # a resumed attempt continues the table earlier attempts logged
            self._completions = read_logged_table(self.client, self.run_id, ARTIFACT_COMPLETIONS)
        self._completions += rows
        log_table_replacing(self.client, self.run_id, self._completions, ARTIFACT_COMPLETIONS)

    def on_checkpoint(self, path: Path, iteration: int) -> None:
        self.flush()
        self.client.set_tag(self.run_id, "ireasoner.last_checkpoint", str(iteration))

    def on_train_end(self, result: Any) -> None:
        self.flush()

    # -------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send buffered metrics in chunks of at most MAX_BATCH."""
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[i:i + MAX_BATCH], synchronous=True)
        if pending:
            self.client.set_tag(self.run_id, LAST_STEP_TAG, str(max(m.step for m in pending)))
        self.logged_records += self._pending_records
        self._pending_records = 0
        self._last_flush = time.monotonic()


def read_logged_table(client: MlflowClient, run_id: str, artifact_file: str) -> list[dict[str, Any]]:
    """The rows of a table the run has logged (``log_table``'s split-orient JSON), [] when it has none.
    Read as JSON, so every value keeps the type it was logged with."""
    folder, name = posixpath.split(artifact_file)
    if name not in {Path(f.path).name for f in client.list_artifacts(run_id, folder or None)}:
        return []
    with tempfile.TemporaryDirectory(prefix="ireasoner-table-") as tmp:
        table = json.loads(Path(client.download_artifacts(run_id, artifact_file, tmp)).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def log_table_replacing(client: MlflowClient, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
    """``log_table`` that replaces the run's table of that name instead of appending to it.

    MlflowClient.log_table appends to an existing file (a report rebuilt on the same sweep run would
    list every cell twice) and reads the old rows back through pandas. The first call is log_table
    itself (which tags the file as a table for MLflow's viewer); later ones write the same split-orient
    JSON over it. Non-finite numbers are written as null, as JSON has no NaN.
    """
    columns = list(dict.fromkeys(k for r in rows for k in r))
    folder, name = posixpath.split(artifact_file)
    if name not in {Path(f.path).name for f in client.list_artifacts(run_id, folder or None)}:
        client.log_table(run_id, data={c: [r.get(c) for r in rows] for c in columns}, artifact_file=artifact_file)
        return
    finite = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="ireasoner-table-") as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps({"columns": columns, "data": [[finite(r.get(c)) for c in columns] for r in rows]}))
        client.log_artifact(run_id, str(path), folder or None)


def start_system_metrics(run_id: str, tracking_uri: str, log: Any = None) -> Any:
    """CPU, memory, disk, network (and GPU where present) sampled into ``system/*`` metrics of the run.

    The monitor is given the sweep's tracking URI: left to itself it asks the fluent API, which
    falls back to ./mlflow.db of the worker's working directory, not the store the run lives in.
    """
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=float(os.environ.get(
            "IREASONER_SYSTEM_METRICS_INTERVAL", "5")), resume_logging=True, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 - psutil missing or a monitor failing must not stop training
        if log is not None:
            log.warning("system metrics disabled: %s", err)
        return None


def _summary(record: dict[str, Any]) -> str:
    keys = ("r_sol_mean", "answer_entropy", "group_size", "kl_solver", "lambda")
    parts = []
    for k in keys:
        v = record.get(k)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{k}={v:.4g}")
    return " ".join(parts)


class JsonlFollower:
    """Tail a metrics.jsonl that another process appends to; yields each complete new record.

    The trainer rewrites the file on resume (records past the checkpoint are dropped), so a
    file that shrinks is read again from the start; duplicates are the logger's concern.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def poll(self) -> Iterator[dict[str, Any]]:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return
        if size < self._offset:
            self._offset, self._partial = 0, b""
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unterminated last line waits for its newline
        for line in lines:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
