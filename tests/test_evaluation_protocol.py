"""protocol=lmms_eval is lmms-eval's own Qwen2.5-VL evaluation: the ``ireasoner`` model and
lmms-eval's built-in ``qwen2_5_vl`` simple model, run by lmms-eval on the same mini tasks with the
same weights, give the same generation and the same score for every item - for the base model
and for a Solver adapter (ours: base + peft adapter; lmms-eval's: the adapter merged into a full
checkpoint). Everything is real: lmms-eval's evaluator, its model class, its scorers.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ireasoner_core.evaluation import tasks_include_path
from ireasoner_core.evaluation.lmm import (LMMS_EVAL_MAX_PIXELS, LMMS_EVAL_MIN_PIXELS, LMMS_EVAL_SYSTEM_PROMPT,
                                           extract_answer)
from test_evaluation_plugin import make_perturbed_adapter

TASKS = ["ireasoner_chartqa_mini", "ireasoner_ai2d_mini"]
LIMIT = 16
BATCH = 4   # > 1, so left padding and lmms-eval's length-sorted batches are part of what is compared
# Small images keep the CPU run short; the same limits go to both models (the defaults are checked below).
PIXELS = "min_pixels=3136,max_pixels=28224"


def _evaluate(model: str, model_args: str, tasks: list[str]) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    # As lmms-eval's command line does it: the task manager knows the model's name, so each model
    # gets the task prompts lmms-eval would give it.
    tm = TaskManager(verbosity="WARNING", include_path=str(tasks_include_path()), model_name=model)
    return simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=tm, limit=LIMIT,
                           log_samples=True, batch_size=BATCH, device="cpu", force_simple=True, bootstrap_iters=0,
                           verbosity="WARNING")


def _per_item(results: dict, task: str) -> dict[int, tuple]:
    metric = {"ireasoner_chartqa_mini": "relaxed_overall", "ireasoner_ai2d_mini": "exact_match"}[task]
    return {s["doc_id"]: (s["resps"], s["filtered_resps"], s[metric]) for s in results["samples"][task]}


def _compare(pretrained_ours: str, pretrained_lmms_eval: str, adapter: str | None) -> dict:
    reference = {}
    for task in TASKS:
        # One task per run: lmms-eval's qwen2_5_vl reads every image of a batch from the batch's
        # first task, so two mini tasks with equal generation settings in one run would mix images.
        reference.update(_evaluate("qwen2_5_vl", f"pretrained={pretrained_lmms_eval},device_map=cpu,{PIXELS}",
                                   [task])["samples"])
    ours_args = f"pretrained={pretrained_ours},{PIXELS},answer_extractor=none" + (f",adapter={adapter}" if adapter else "")
    ours = _evaluate("ireasoner", ours_args, TASKS)
    texts: set[str] = set()
    for task in TASKS:
        theirs = _per_item({"samples": reference}, task)
        mine = _per_item(ours, task)
        assert len(theirs) == LIMIT and sorted(mine) == sorted(theirs)
        differing = {d: (theirs[d], mine[d]) for d in theirs if theirs[d] != mine[d]}
        assert not differing, f"{task}: {len(differing)} of {LIMIT} items differ: {differing}"
        texts |= {str(v[0]) for v in mine.values()}
    # Not vacuous: the model does answer, and the answers are not all the same text. Counted over
    # both tasks: the shipped build answers AI2D-mini's 16 direct prompts with one letter (it sits
    # at chance there, docs/embedded_model.md), while its ChartQA-mini answers differ.
    assert len(texts) > 1 and all(texts), texts
    return {t: _per_item(ours, t) for t in TASKS}


def test_the_mini_and_table1_tasks_give_ireasoner_the_prompts_they_give_qwen2_5_vl():
    """lmms-eval picks a task's prompt kwargs by model name; neither name may have its own entry."""
    import yaml

    from ireasoner_core.evaluation.benchmarks import TABLE1_TASKS

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    root = Path(inspect.getfile(__import__("lmms_eval"))).parent / "tasks"
    # Every YAML of the table-1 task folders (templates included through ``include:``) and ours.
    folders = {"infovqa", "ai2d", "scienceqa", "mmmu", "chartqa", "mathvista", "mathvision", "mathverse"}
    files = list(tasks_include_path().glob("*.yaml"))
    files += [p for f in folders for p in (root / f).rglob("*.yaml")]
    assert {t for t in TABLE1_TASKS if any(p.stem == t for p in files)} == set(TABLE1_TASKS)
    for path in files:
        cfg = yaml.load(path.read_text(), Loader=Loader) or {}
        if not isinstance(cfg, dict):
            continue
        for key in ("lmms_eval_specific_kwargs", "model_specific_target_kwargs", "model_specific_generation_kwargs"):
            assert not {"ireasoner", "qwen2_5_vl"} & set(cfg.get(key) or {}), (path, key)


@pytest.mark.parametrize("text, answer", [
    ("Step 1 ... <answer> 42 </answer>", "42"),
    ("<answer>1</answer> then <answer>B</answer>", "B"),
    ("so the area is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
    ("<answer>7</answer> and \\boxed{8}", "7"),
    ("B", "B"),
    ("unclosed <answer>9", "unclosed <answer>9"),
])
def test_evolmm_answer_extraction(text, answer):
    assert extract_answer(text, "evolmm") == answer
    assert extract_answer(text, "none") == text


@pytest.fixture(scope="module")
def base_items(embedded_model_dir):
    return _compare("embedded", str(embedded_model_dir), None)


@pytest.mark.slow
def test_base_model_matches_lmms_eval_qwen2_5_vl_item_by_item(base_items):
    from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL

    assert sorted(base_items) == sorted(TASKS)
    # Run with explicit pixel limits; without them ours falls back to lmms-eval's defaults.
    defaults = {k: p.default for k, p in inspect.signature(Qwen2_5_VL.__init__).parameters.items()}
    assert (defaults["min_pixels"], defaults["max_pixels"], defaults["system_prompt"]) == (
        LMMS_EVAL_MIN_PIXELS, LMMS_EVAL_MAX_PIXELS, LMMS_EVAL_SYSTEM_PROMPT)


@pytest.mark.slow
def test_adapter_matches_lmms_eval_qwen2_5_vl_on_the_merged_checkpoint(embedded_model_dir, base_items, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor, AutoTokenizer

    from ireasoner_core.config import ModelConfig
    from ireasoner_core.model import load_backbone

    adapter = make_perturbed_adapter(tmp_path / "adapter")
    # The merged checkpoint as our model builds it in memory: bfloat16 base (lmms-eval's dtype) + adapter.
    base, _ = load_backbone(ModelConfig(), "cpu", dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, str(adapter / "solver"), adapter_name="solver").merge_and_unload()
    out = tmp_path / "merged"
    merged.save_pretrained(str(out))
    AutoProcessor.from_pretrained(str(embedded_model_dir)).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(embedded_model_dir)).save_pretrained(str(out))
    tuned = _compare("embedded", str(out), str(adapter))
    # The adapter is not a no-op: some generations change.
    assert any(tuned[t][d][0] != base_items[t][d][0] for t in TASKS for d in tuned[t])
