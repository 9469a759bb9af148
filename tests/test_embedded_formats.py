"""The embedded model is warm-started and measured on lmms-eval's own question formats: these
tests hold our renderings to lmms-eval's functions and to the mini tasks' YAMLs, output by output."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

from ireasoner_core.data.synthetic import KINDS, make_item
from ireasoner_core.embedded import formats
from ireasoner_core.embedded.corpus import solver_target, vary_steps
from ireasoner_core.embedded.measure import (
    lmms_eval_processor,
    lmms_eval_view,
    mini_items,
    relaxed_correctness,
)

TASKS = Path(__file__).resolve().parents[1] / "ireasoner_core" / "evaluation" / "tasks"


def _post_prompt(task: str) -> str:
    text = (TASKS / f"{task}.yaml").read_text()
    raw = re.search(r'^\s+post_prompt: "(.*)"\s*$', text, re.MULTILINE).group(1)
    return raw.encode().decode("unicode_escape")


def test_post_prompts_are_the_task_yamls():
    assert formats.CHARTQA_POST_PROMPT == _post_prompt("ireasoner_chartqa_mini")
    assert formats.AI2D_POST_PROMPT == _post_prompt("ireasoner_ai2d_mini")
    assert formats.GEOMETRY_POST_PROMPT == _post_prompt("ireasoner_geometry_mini")


@pytest.mark.slow
def test_contexts_match_lmms_eval_doc_to_text():
    from lmms_eval.tasks.ai2d.utils import ai2d_doc_to_text
    from lmms_eval.tasks.chartqa.utils import chartqa_doc_to_text

    chart_kw = {"pre_prompt": "", "post_prompt": formats.CHARTQA_POST_PROMPT}
    ai2d_kw = {"prompt_format": "mcq", "pre_prompt": "", "post_prompt": formats.AI2D_POST_PROMPT}
    rng = random.Random(0)
    seen = 0
    for i in range(40):
        item, _ = make_item(i, KINDS[i % len(KINDS)], seed=99, occurrence=i // len(KINDS))
        for f in formats.benchmark_formats(item, rng):
            if f.context.endswith(formats.AI2D_POST_PROMPT):
                question, options = f.context.split("\n")[0], [ln[3:] for ln in f.context.split("\n")[1:-1]]
                assert ai2d_doc_to_text({"question": question, "options": options}, ai2d_kw) == f.context
                assert f.answer in "ABCD" and options["ABCD".index(f.answer)]
            elif f.context.endswith(formats.CHARTQA_POST_PROMPT):
                question = f.context[: -len(formats.CHARTQA_POST_PROMPT)]
                assert chartqa_doc_to_text({"question": question}, chart_kw) == f.context
            seen += 1
    assert seen > 150


@pytest.mark.slow
def test_relaxed_correctness_agrees_with_lmms_eval():
    from lmms_eval.tasks.chartqa.utils import relaxed_correctness as reference

    cases = [("45", "45"), ("44", "45"), ("42", "45"), ("47.2", "45"), ("red", "Red"), ("red", "blue"), ("0", "0"),
             ("-12", "12"), ("15%", "15"), ("15%", "0.15"), ("up", "up"), ("", "3"), ("3", ""), ("1e3", "1000")]
    for pred, gold in cases:
        assert relaxed_correctness(pred, gold) == reference(pred, gold), (pred, gold)


@pytest.mark.slow
def test_lmms_eval_view_is_what_lmm_protocol_hands_the_processor():
    # lmm.IReasonerLMM._lmms_eval_messages: a JPEG-85 data URL, resized by qwen_vl_utils.
    from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url
    from qwen_vl_utils import process_vision_info

    from ireasoner_core.evaluation.lmm import LMMS_EVAL_MAX_PIXELS, LMMS_EVAL_MIN_PIXELS

    _, image = make_item(0, "bar", seed=5)
    url = encode_image_to_data_url(image, image_format="JPEG", mime_type="image/jpeg", convert_rgb=True, quality=85)
    msg = [{"role": "user", "content": [{"type": "image", "image": url, "min_pixels": LMMS_EVAL_MIN_PIXELS,
                                         "max_pixels": LMMS_EVAL_MAX_PIXELS}]}]
    (reference,), _ = process_vision_info(msg)
    ours = lmms_eval_view(image)
    assert ours.size == reference.size
    assert np.abs(np.asarray(ours, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1


@pytest.mark.slow
def test_lmms_eval_processor_sees_what_the_lmm_protocol_sees(embedded_model_dir):
    # lmm.py (protocol lmms_eval) builds the checkpoint's processor with lmms-eval's pixel limits,
    # which override the embedded checkpoint's own; BUILD.json must measure that view.
    from transformers import AutoProcessor

    from ireasoner_core.evaluation.lmm import LMMS_EVAL_MAX_PIXELS, LMMS_EVAL_MIN_PIXELS

    reference = AutoProcessor.from_pretrained(embedded_model_dir, max_pixels=LMMS_EVAL_MAX_PIXELS,
                                              min_pixels=LMMS_EVAL_MIN_PIXELS).image_processor
    own = AutoProcessor.from_pretrained(embedded_model_dir)  # the checkpoint's, as training loads it
    ours = lmms_eval_processor(own).image_processor
    for kind in ("bar", "diagram", "geometry"):
        image = make_item(0, kind, seed=5)[1]
        view = lmms_eval_view(image)
        assert view.size == (448, 448)  # qwen_vl_utils upscales to lmms-eval's min_pixels
        want, got = reference(images=[view], return_tensors="pt"), ours(images=[view], return_tensors="pt")
        assert got["image_grid_thw"].tolist() == want["image_grid_thw"].tolist()
        assert np.allclose(got["pixel_values"].numpy(), want["pixel_values"].numpy())
        # The embedded patch (architecture.PATCH_SIZE) is chosen so that this view has the grid
        # the checkpoint's own processor gives the original image: the 36 tokens it trained on,
        # not the 256 a patch of 14 would give (a view it never saw).
        trained = own.image_processor(images=[image], return_tensors="pt")
        assert got["image_grid_thw"].tolist() == trained["image_grid_thw"].tolist() == [[1, 12, 12]]


@pytest.mark.slow
def test_build_json_lmms_eval_scores_are_what_lmms_eval_scores(embedded_model_dir, tmp_path):
    """BUILD.json's in-process lmms_eval measurement against a real lmms-eval run of the same items."""
    import json

    from ireasoner_core.config import ModelConfig
    from ireasoner_core.evaluation.runner import run_evaluation

    mini = json.loads((embedded_model_dir / "BUILD.json").read_text())["warm_start"]["mini_benchmarks"]
    tasks = ["ireasoner_chartqa_mini", "ireasoner_ai2d_mini", "ireasoner_geometry_mini"]
    result = run_evaluation(ModelConfig(name_or_path="embedded", dtype="float32"), None, tasks, tmp_path,
                            limit=mini["items_per_task"], protocol="lmms_eval", sampled_k=0)
    for task in tasks:
        # One item of 60 (1.7 points) of room: BUILD.json was measured on the build machine, and
        # floats on another CPU may flip a near-tie (none flipped across the settings measured in
        # docs/embedded_model.md, "How far floats move it").
        assert mini[task]["lmms_eval"]["greedy"] == pytest.approx(result.scores[task], abs=1.8), task


def test_mini_items_are_the_benchmark_rows_scored_by_their_rules():
    from ireasoner_core.evaluation.minibench import BUILDERS, MINI_SEED

    rows = list(BUILDERS["ireasoner_ai2d_mini"](5, MINI_SEED))
    items = mini_items("ireasoner_ai2d_mini", 5)
    for row, it in zip(rows, items):
        gold = "ABCD"[int(row["answer"])]
        assert it.context.startswith(row["question"] + "\nA. ")
        assert it.score(gold) and not it.score("ABCD"[(int(row["answer"]) + 1) % len(row["options"])])
    chart = mini_items("ireasoner_chartqa_mini", 3)
    rows = list(BUILDERS["ireasoner_chartqa_mini"](3, MINI_SEED))
    assert all(it.score(r["answer"]) for it, r in zip(chart, rows))


def test_solver_targets_vary_but_keep_the_answer():
    item, _ = make_item(0, "bar", seed=1)
    qa = item.qa[0]  # "What is the value of the tallest bar?": listing + 2 steps
    rng = random.Random(0)
    variants = {solver_target(qa, rng) for _ in range(30)}
    assert len(variants) >= 3
    assert all(v.endswith(f"<answer>{qa.answer}</answer>") for v in variants)
    # A listing keeps its entries when reordered, and is only ever dropped, never altered otherwise.
    for _ in range(30):
        steps = vary_steps(qa.steps, rng)
        assert steps[-2:] == qa.steps[-2:]
        if len(steps) == len(qa.steps):
            assert sorted(steps[0][:-1].split(" show ")[1].split(", ")) == sorted(
                qa.steps[0][:-1].split(" show ")[1].split(", "))


def test_build_json_records_what_the_model_can_do(embedded_model_dir):
    """BUILD.json carries the build's own measurements (docs/embedded_model.md): greedy under both
    protocols and avg@5 under the Solver's per mini task, and single-sample vs majority-of-5
    accuracy on the training distribution."""
    import json

    ws = json.loads((embedded_model_dir / "BUILD.json").read_text())["warm_start"]
    mini = ws["mini_benchmarks"]
    for task in ("ireasoner_chartqa_mini", "ireasoner_ai2d_mini", "ireasoner_geometry_mini"):
        assert set(mini[task]["lmms_eval"]) == {"greedy"} and set(mini[task]["solver"]) == {"greedy", "avg@5"}
        for protocol in ("lmms_eval", "solver"):
            assert all(0.0 <= v <= 100.0 for v in mini[task][protocol].values())
    # The shipped build reads ChartQA-mini 35.0 (lmms_eval) and 36.7 (solver). With patch 14,
    # lmms-eval's 256-token view scored 13.3 and 10.0 in two builds (v2), so a build whose
    # lmms-eval view is not the one it trained on fails here. These are the shipped file's figures;
    # test_embedded_shipped.py re-measures them on this machine.
    assert mini["ireasoner_chartqa_mini"]["lmms_eval"]["greedy"] >= 20.0
    assert mini["ireasoner_chartqa_mini"]["solver"]["greedy"] >= 25.0
    td = ws["training_distribution"]
    assert td["answer_tag_fraction"] >= 0.9
    assert td["majority_of_5_accuracy"] - td["single_sample_accuracy"] == pytest.approx(td["majority_gain_points"],
                                                                                         abs=0.11)
    assert td["mean_distinct_step_chains"] > 1.5  # the 5 reasoning chains of a question differ
