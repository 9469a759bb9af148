"""`ireasoner benchmarks fetch [TASK...]` and what a worker without the table-1 datasets says.

The fetch itself needs the Hugging Face hub, which this test machine cannot reach: the tests check
its argument handling and that it asks lmms-eval's loader for each task with the offline switches
off (the hub is the mocked boundary). The flow test runs the real `main` preset's task list on a
machine without their datasets (no network, empty caches).
"""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from ireasoner_core import cli
from ireasoner_core.evaluation import fetch
from ireasoner_core.evaluation.benchmarks import TABLE1_TASKS


@pytest.fixture
def recorded(monkeypatch):
    calls: list[tuple[str, str, str]] = []

    def load(task: str) -> None:   # stands in for the hub download
        calls.append((task, os.environ["HF_HUB_OFFLINE"], os.environ["HF_DATASETS_OFFLINE"]))
        if task == "mmmu_val":
            raise ConnectionError("hub unreachable")

    monkeypatch.setattr(fetch, "load_with_lmms_eval", load)
    monkeypatch.setattr(fetch.fetch_benchmarks, "__defaults__", ((), load))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    return calls


def test_fetch_defaults_to_the_eight_table1_tasks_online(recorded, capsys):
    assert cli.main(["benchmarks", "fetch"]) == 1   # one failed
    assert recorded == [(t, "0", "0") for t in TABLE1_TASKS]
    out, err = capsys.readouterr()
    assert "ai2d: fetched" in out and "mmmu_val: FAILED - ConnectionError: hub unreachable" in out
    assert "1 of 8 task(s) not fetched: mmmu_val" in err


def test_fetch_named_tasks_only_and_refuses_mini_tasks(recorded, capsys):
    assert cli.main(["benchmarks", "fetch", "chartqa", "ai2d", "chartqa"]) == 0
    assert [c[0] for c in recorded] == ["chartqa", "ai2d"]
    assert cli.main(["benchmarks", "fetch", "ireasoner_ai2d_mini"]) == 2
    assert "'ireasoner_ai2d_mini' is a mini benchmark" in capsys.readouterr().err
    assert len(recorded) == 2


@pytest.mark.slow
@pytest.mark.integration
def test_main_preset_on_a_worker_without_the_datasets_fails_each_variant_naming_task_and_fetch(
        tmp_path, monkeypatch, embedded_model_dir):
    from prefect.testing.utilities import prefect_test_harness

    from flows.ireasoner import ireasoner
    from flows.presets import PRESETS
    from tasks.conventions import EXPERIMENT, KIND_VARIANT, TAG_KIND, TAG_STATUS, TAG_VARIANT

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf-datasets"))   # nothing cached
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    main_tasks = PRESETS["main"]["evaluation"]["tasks"]
    assert main_tasks == TABLE1_TASKS
    # The main preset's evaluation on the embedded model, untrained (no GPU, no training needed).
    spec = {"name": "main-offline", "base_config": "configs/tiny.yaml", "runs_dir": str(tmp_path / "runs"),
            "variants": ["baseline"], "seeds": [0], "images": {"synthetic_images": 4},
            "evaluation": {"tasks": main_tasks}, "resources": {"retries": 0}}
    with prefect_test_harness(server_startup_timeout=240):
        state = ireasoner(spec=spec, return_state=True)
    assert state.is_failed()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    children = client.search_runs([exp.experiment_id], f"tags.`{TAG_KIND}` = '{KIND_VARIANT}'")
    assert [c.data.tags[TAG_VARIANT] for c in children] == ["baseline"]
    for child in children:
        assert child.info.status == "FAILED" and child.data.tags[TAG_STATUS] == "failed"
        error = child.data.tags["ireasoner.error"]
        assert f"`ireasoner benchmarks fetch {' '.join(TABLE1_TASKS)}`" in error, error
        # MathVista and MathVerse load with the local scorer (math_judge=local): only their data is missing.
        assert "LLM judge whose API is not configured" not in error, error
