"""run_evaluation end to end on the mini tasks, with the network cut: nothing is downloaded, the
per-item files agree with the headline scores, and a real benchmark that cannot be reached is an
error naming it."""

from __future__ import annotations

import json
import socket

import pytest

from ireasoner_core.config import ModelConfig
from ireasoner_core.evaluation import MINI_TASKS, TABLE1_TASKS
from ireasoner_core.evaluation.runner import (
    BenchmarkUnavailableError,
    EvaluationError,
    _task_manager,
    check_tasks,
    run_evaluation,
)


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every outgoing connection fails and is recorded (a library that swallows the error is still
    caught); hub libraries are told they are offline as well. Yields the list of attempts."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[1:] if len(args) > 1 else args))
        raise NetworkUsed(f"network access attempted: {attempts[-1]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    # a fresh cache: the mini sets are built inside the test, with the network cut
    monkeypatch.setenv("IREASONER_EVAL_CACHE", str(tmp_path / "eval-cache"))
    # and an empty datasets cache, so a benchmark cached on this machine cannot hide a download
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    yield attempts


@pytest.fixture(scope="module")
def task_manager():
    return _task_manager()


@pytest.mark.slow
def test_mini_tasks_evaluate_offline_and_samples_match_scores(no_network, tmp_path, embedded_model_dir):
    res = run_evaluation(ModelConfig(), None, list(MINI_TASKS), tmp_path / "out", limit=3, max_new_tokens=12,
                         device="cpu")
    assert res.is_main_process and res.tasks == MINI_TASKS
    assert set(res.scores) == set(MINI_TASKS)
    for task in MINI_TASKS:
        rows = [json.loads(line) for line in res.samples[task].read_text().splitlines()]
        assert [r["doc_id"] for r in rows] == [0, 1, 2] and res.n_items[task] == 3
        assert all(r["score"] in (0.0, 100.0) and r["generation"] is not None for r in rows)
        # the headline is the mean of the per-item scores, on 0-100
        assert res.scores[task] == pytest.approx(sum(r["score"] for r in rows) / 3)
        # avg@5 (on by default for the mini tasks): per item the mean of its 5 sample scores, and the
        # task's avg@5 the mean over the same items
        assert res.sampled_k == 5
        for r in rows:
            assert len(r["sampled_item_scores"]) == len(r["sampled_predictions"]) == 5
            assert set(r["sampled_item_scores"]) <= {0.0, 100.0}
            assert r["sampled_score"] == pytest.approx(sum(r["sampled_item_scores"]) / 5)
        assert res.sampled_scores[task] == pytest.approx(sum(r["sampled_score"] for r in rows) / 3)
        assert res.metrics[task] and all("," not in k for k in res.metrics[task])
    assert res.metrics["ireasoner_chartqa_mini"]["relaxed_overall"] * 100 == pytest.approx(
        res.scores["ireasoner_chartqa_mini"])
    summary = json.loads(res.results_path.read_text())
    assert set(MINI_TASKS) <= set(summary["results"])
    assert summary["ireasoner"]["sampled_k"] == 5 and summary["ireasoner"]["sample_temperature"] == 1.0
    assert no_network == []   # not even a DNS lookup was tried


@pytest.mark.slow
def test_unknown_and_unreachable_tasks_are_errors_naming_the_task(no_network, task_manager):
    with pytest.raises(EvaluationError, match="'chartqa_mini_typo'"):
        check_tasks(["chartqa_mini_typo"], task_manager)
    with pytest.raises(EvaluationError, match="more than once"):
        check_tasks(["ireasoner_ai2d_mini", "ireasoner_ai2d_mini"], task_manager)
    # a table-1 benchmark whose dataset is not on this machine and cannot be fetched
    with pytest.raises(BenchmarkUnavailableError, match="`ireasoner benchmarks fetch mathverse_testmini`"):
        check_tasks(["mathverse_testmini"], task_manager)


@pytest.mark.slow
def test_table1_task_names_exist_in_the_installed_lmms_eval(task_manager):
    assert set(TABLE1_TASKS) | {"mathvision_test"} <= set(task_manager.all_tasks)
    assert set(MINI_TASKS) <= set(task_manager.all_tasks)


@pytest.mark.slow
def test_offline_a_missing_dataset_is_looked_for_once_not_retried(no_network, task_manager, monkeypatch):
    # lmms-eval retries a failed download 5 times, 2 s apart; offline that only delays the error
    import datasets
    from lmms_eval.api.task import ConfigurableTask

    looked: list[str] = []
    real_load = datasets.load_dataset

    def counting_load(*args, **kwargs):
        looked.append(str(args[:1] or kwargs.get("path")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", counting_load)
    download = ConfigurableTask.download
    with pytest.raises(BenchmarkUnavailableError, match="chartqa"):
        check_tasks(["chartqa"], task_manager)
    assert len(looked) == 1, looked
    assert ConfigurableTask.download is download   # lmms-eval's own retry is back for online fetches
