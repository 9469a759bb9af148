"""Shared fixtures. Nothing here reaches a model hub: the embedded model ships with the code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The shipped embedded tiny Qwen2.5-VL (ireasoner_core/embedded/weights), its hashes verified."""
    from ireasoner_core.embedded.shipped import shipped_model_dir

    return shipped_model_dir()


def tiny_overrides(out: Path, **extra) -> dict:
    """A few-iteration, few-token run of the embedded default: seconds, not minutes."""
    o = {
        "model.name_or_path": "embedded", "model.dtype": "float32",
        "sampling.num_rollouts": 3, "sampling.solver_max_new_tokens": 40, "sampling.proposer_max_new_tokens": 24,
        "rewards.min_group": 2, "schedule.iterations": 4, "schedule.proposer_update_every": 2,
        "optim.lr": 1e-3, "data.synthetic_images": 8, "checkpoint.output_dir": str(out),
        "checkpoint.every": 2, "progress_bar": False, "log_diagnostics_every": 2,
    }
    o.update(extra)
    return o


@pytest.fixture
def tiny_cfg(tmp_path, embedded_model_dir):
    from ireasoner_core.config import build_config

    def make(**extra):
        return build_config({}, tiny_overrides(tmp_path / "run", **extra))

    return make


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect server and database for one test module (Prefect's own test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with prefect_test_harness(server_startup_timeout=240):
        yield


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A real Prefect server, the registered deployments and a process worker, shared by
    test_orchestration_integration and test_schedules_fire (starting one takes minutes)."""
    from test_orchestration_integration import start_stack

    yield from start_stack(tmp_path_factory.mktemp("stack"))



def _uses_orchestration(path: Path, cache: dict[Path, bool] = {}) -> bool:  # noqa: B006 (a memo)
    if path not in cache:
        text = path.read_text().lower()
        cache[path] = "prefect" in text or "mlflow" in text
    return cache[path]


def pytest_collection_modifyitems(items):
    # Modules that use Prefect or MLflow share the machine's Prefect home, its `ireasoner-training`
    # slot and its servers' ports: scripts/test.sh runs them (-m orchestration) in one process, one
    # after another, beside a second process running the rest (-m "not orchestration").
    for item in items:
        if _uses_orchestration(Path(str(item.fspath))):
            item.add_marker(pytest.mark.orchestration)
    # The shared Prefect stack (server, scheduler, worker) lives until the session ends once started;
    # its tests go last so that it never competes for the 2 cores with the timing-sensitive
    # CPU-bound tests (torch threads spin-wait badly on an oversubscribed machine).
    items.sort(key=lambda item: "stack" in getattr(item, "fixturenames", ()))


def _on_one_thread(run, root: Path, negate: bool):
    import torch

    torch.set_num_threads(1)   # the learning tests' documented setting; the two runs share the 2 cores
    return run(root, negate=negate)


def normal_and_negated(run, root: Path) -> dict:
    """``run(root, negate=False)`` and ``run(root, negate=True)`` side by side, each in a fresh spawned
    one-thread process: the runs are independent, so together they take half the suite's time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        normal = pool.submit(_on_one_thread, run, root, False)
        negated = pool.submit(_on_one_thread, run, root, True)
        return {"normal": normal.result(), "negated": negated.result()}
