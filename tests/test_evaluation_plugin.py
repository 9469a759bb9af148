"""The lmms-eval ``ireasoner`` model: registered through the entry point, applies a trained adapter,
and runs from lmms-eval's own command line on a mini task, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.models.registry_v2 import ModelManifest

from ireasoner_core.data.synthetic import make_item
from ireasoner_core.evaluation import tasks_include_path
from ireasoner_core.evaluation.lmm import AdapterError, IReasonerLMM, find_adapter_dir

REPO = Path(__file__).resolve().parents[1]


def make_perturbed_adapter(out: Path) -> Path:
    """A fresh solver LoRA on the embedded model with non-zero B matrices (a fresh one is a no-op)."""
    from peft import LoraConfig, get_peft_model

    from ireasoner_core.config import LoRAConfig, ModelConfig
    from ireasoner_core.model import load_backbone
    from ireasoner_core.policy import lora_target_regex

    base, _ = load_backbone(ModelConfig(), "cpu")
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_regex(LoRAConfig())),
                           adapter_name="solver")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(str(out))   # a named adapter lands in out/solver/, as the trainer's may
    return out


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, embedded_model_dir):
    return make_perturbed_adapter(tmp_path_factory.mktemp("adapter") / "solver-adapter")


def _requests(n: int) -> tuple[list[Instance], dict]:
    docs = []
    for i in range(n):
        item, image = make_item(i, "bar", seed=99, occurrence=i)
        docs.append({"question": item.qa[0].question, "image": image})
    reqs = [Instance("generate_until", (d["question"], {"max_new_tokens": 16, "temperature": 0},
                                       lambda doc: [doc["image"]], i, "t", "test"), idx=0,
                     metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, d in enumerate(docs)]
    return reqs, {"t": {"test": docs}}


def _generate(lm: IReasonerLMM, n: int = 3) -> list[str]:
    reqs, task_dict = _requests(n)
    lm.task_dict = task_dict
    lm.generate_until(reqs)
    return [lm.generations[("t", i)] for i in range(n)]


def test_entry_point_yields_a_manifest_for_a_new_model_id():
    from importlib.metadata import entry_points

    from lmms_eval import models
    from lmms_eval.models import get_model, list_available_models

    (ep,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "ireasoner"]
    manifest = ep.load()
    assert isinstance(manifest, ModelManifest) and manifest.model_id == "ireasoner"
    # no built-in model of that id: nothing of lmms-eval's own is shadowed
    builtin_dir = Path(models.__file__).parent
    assert not (builtin_dir / "simple" / "ireasoner.py").exists() and not (builtin_dir / "chat" / "ireasoner.py").exists()
    assert "ireasoner" not in models.AVAILABLE_CHAT_TEMPLATE_MODELS
    assert models.AVAILABLE_SIMPLE_MODELS["ireasoner"] == "ireasoner_core.evaluation.lmm.IReasonerLMM"
    assert "ireasoner" in list_available_models()
    assert get_model("ireasoner") is IReasonerLMM


def test_adapter_dir_is_found_one_level_down_and_a_wrong_path_is_named(adapter_dir, tmp_path):
    assert find_adapter_dir(adapter_dir) == adapter_dir / "solver"
    with pytest.raises(AdapterError, match=str(tmp_path)):
        find_adapter_dir(tmp_path)
    with pytest.raises(AdapterError, match="not found"):
        find_adapter_dir(tmp_path / "missing")


def test_trained_adapter_is_applied_at_evaluation(adapter_dir):
    # protocol=solver in float32: merged and unmerged LoRA agree exactly (bfloat16 rounds the merge).
    base = IReasonerLMM(pretrained="embedded", device="cpu", max_new_tokens=12, batch_size=3, protocol="solver")
    base_out = _generate(base)
    assert _generate(base) == base_out   # greedy: the base model repeats itself exactly
    tuned = IReasonerLMM(pretrained="embedded", adapter=str(adapter_dir), device="cpu", max_new_tokens=12, batch_size=3,
                         protocol="solver")
    assert tuned.adapter_path == adapter_dir / "solver"
    tuned_out = _generate(tuned)
    assert tuned_out != base_out
    # merging the adapter into the weights (the default, for speed) answers as the LoRA layers do,
    # and it is the adapter that makes the difference: disabled, the base outputs come back
    unmerged = IReasonerLMM(pretrained="embedded", adapter=str(adapter_dir), device="cpu", max_new_tokens=12,
                            batch_size=3, merge_adapter=False, protocol="solver")
    assert _generate(unmerged) == tuned_out
    with unmerged.model.disable_adapter():
        assert _generate(unmerged) == base_out


def test_model_args_win_over_the_cli_defaults_and_unknown_args_are_named():
    lm = IReasonerLMM.create_from_arg_string("pretrained=embedded,batch_size=5,max_new_tokens=7",
                                             {"batch_size": 1, "device": "cpu", "max_batch_size": None})
    assert (lm.batch_size, lm.max_new_tokens, lm.device.type) == (5, 7, "cpu")
    # lmms-eval's command line logs exceptions and exits 0; a SystemExit carries the message out.
    with pytest.raises(SystemExit, match="temperature"):
        IReasonerLMM.create_from_arg_string("pretrained=embedded,temperature=0.5", {"device": "cpu"})
    with pytest.raises(SystemExit, match="protocol must be one of"):
        IReasonerLMM.create_from_arg_string("pretrained=embedded,protocol=cot", {"device": "cpu"})


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "IREASONER_EVAL_CACHE": str(tmp_path / "eval-cache"), "OMP_NUM_THREADS": "2"}
    return env


@pytest.mark.slow
@pytest.mark.integration
def test_lmms_eval_command_line_runs_a_mini_task_with_an_adapter(adapter_dir, tmp_path):
    """README's command: no protocol argument = lmms_eval; lmms-eval's --batch_size is the one used."""
    import json

    cmd = [sys.executable, "-m", "lmms_eval", "--model", "ireasoner",
           "--model_args", f"pretrained=embedded,adapter={adapter_dir}",
           "--tasks", "ireasoner_chartqa_mini", "--include_path", str(tasks_include_path()),
           "--limit", "4", "--device", "cpu", "--batch_size", "3", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=REPO, env=_offline_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|ireasoner_chartqa_mini")]
    assert any("relaxed_overall" in line for line in table), proc.stdout[-3000:]
    assert "batch_size: 3" in proc.stdout   # lmms-eval's printed header
    assert (tmp_path / "eval-cache").is_dir()   # the mini set was built on demand, locally
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*results*.json")]
    assert [r["config"]["batch_sizes"] for r in results] == [["3 (protocol=lmms_eval, answer_extractor=evolmm)"]]


@pytest.mark.slow
@pytest.mark.integration
def test_lmms_eval_command_line_exits_non_zero_naming_a_missing_adapter(tmp_path):
    missing = tmp_path / "nope"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "ireasoner", "--model_args", f"pretrained=embedded,adapter={missing}",
           "--tasks", "ireasoner_ai2d_mini", "--include_path", str(tasks_include_path()), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=_offline_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode != 0
    assert f"adapter: path not found: {missing}" in proc.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_lmms_eval_lists_the_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "models"], cwd=REPO, env=_offline_env(tmp_path),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(line.split()[:2] == ["ireasoner", "simple"] for line in proc.stdout.splitlines() if line.strip())
