"""Quiet logs (issue 28): the project's bars honour TQDM_DISABLE, known-harmless third-party warnings are
filtered by message, category and module (others still show), MLflow's artifact bars stay off in the
flow, and compose runs the Prefect server with its telemetry off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from ireasoner_core.quiet import python_warnings_env, quiet_known_warnings

REPO = Path(__file__).resolve().parents[1]

BARS = r"""
import json
from ireasoner_core.callbacks import ProgressBar
from ireasoner_core.evaluation.lmm import progress_bar

class Cfg: ablation = "full"
train = ProgressBar(3); train.on_train_start(Cfg(), 0)
print(json.dumps({"rank0": progress_bar(5, 0).disable, "rank1": progress_bar(5, 1).disable,
                  "train": train.bar.disable}))
"""


def _bars(**env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    r = subprocess.run([sys.executable, "-c", BARS], cwd=REPO, env={**full, **env}, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh interpreter per setting
def test_tqdm_disable_turns_off_the_projects_own_bars():
    # tqdm reads TQDM_* when it is imported, hence a fresh process for each setting
    assert _bars() == {"rank0": False, "rank1": True, "train": False}
    # the generation bar passed disable=self.rank != 0, which overrode TQDM_DISABLE on rank 0
    assert _bars(TQDM_DISABLE="1") == {"rank0": True, "rank1": True, "train": True}


TINY_MODEL = ("from transformers import Qwen2Config, Qwen2ForCausalLM\n"
              "model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=8, intermediate_size=16, "
              "num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))\n")


def _tiny_model():
    scope: dict = {}
    exec(TINY_MODEL, scope)  # noqa: S102 - the same few lines run in the subprocess test below
    return scope["model"]


def test_the_is_gradient_checkpointing_future_warning_is_filtered_and_nothing_else():
    model = _tiny_model()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert not model.is_gradient_checkpointing       # what peft reads when it wraps a model
    assert any("is_gradient_checkpointing" in str(w.message) for w in seen)   # transformers does warn
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_warnings()
        assert not model.is_gradient_checkpointing
        warnings.warn("`is_gradient_checkpointing` is deprecated, said someone else", FutureWarning)
        warnings.warn("another deprecation", FutureWarning)
    # only transformers' own warning is gone: the same text from another module, and others, still show
    assert [str(w.message) for w in seen] == ["`is_gradient_checkpointing` is deprecated, said someone else",
                                              "another deprecation"]


@pytest.mark.slow  # a fresh interpreter per setting
def test_a_training_subprocess_gets_the_same_filters():
    code = TINY_MODEL + ("import warnings\ngetattr(model, 'is_gradient_checkpointing')\n"
                         "warnings.warn('still shown', FutureWarning)\n")
    env = {**os.environ, "PYTHONWARNINGS": python_warnings_env("default::DeprecationWarning")}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is_gradient_checkpointing" not in r.stderr and "still shown" in r.stderr
    assert python_warnings_env(None).startswith("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning:")


def test_compose_runs_the_prefect_server_with_its_telemetry_off(monkeypatch):
    from prefect.settings import Settings

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = compose["services"]["prefect-server"]["environment"]
    assert str(env["PREFECT_SERVER_ANALYTICS_ENABLED"]).lower() == "false"
    # ... and that is the variable the server's telemetry service reads (server.analytics_enabled)
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    assert Settings().server.analytics_enabled is True
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", env["PREFECT_SERVER_ANALYTICS_ENABLED"])
    assert Settings().server.analytics_enabled is False


DOWNLOAD = r"""
import pathlib, sys, tempfile
if sys.argv[1] == "flow":
    import flows.ireasoner  # noqa: F401 - what a flow process imports
from mlflow.tracking import MlflowClient
d = pathlib.Path(tempfile.mkdtemp())
c = MlflowClient(f"sqlite:///{d}/m.db")
run = c.create_run(c.create_experiment("x", artifact_location=(d / "art").as_uri())).info.run_id
(d / "f").mkdir(); (d / "f" / "a.txt").write_text("a"); (d / "f" / "b.txt").write_text("b")
c.log_artifacts(run, str(d / "f"), "eval_samples")
c.download_artifacts(run, "eval_samples", str(d / "out"))
"""


@pytest.mark.slow  # a fresh interpreter per setting
def test_the_flow_reads_mlflow_artifacts_back_without_a_bar_each(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "TQDM_DISABLE")}
    out = {}
    for mode in ("plain", "flow"):
        r = subprocess.run([sys.executable, "-c", DOWNLOAD, mode], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        out[mode] = r.stderr
    assert "Downloading artifacts" in out["plain"]        # MLflow's default, outside the flow
    assert "Downloading artifacts" not in out["flow"]
