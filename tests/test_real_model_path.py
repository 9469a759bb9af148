"""The pipeline off the embedded path: every 7B preset plans on a real model, named by hub id or
given as a local Qwen2.5-VL folder (the code path the 7B takes), with images from $IREASONER_IMAGES;
a model folder that is not there fails the spec, not every variant one by one; and a folder model
evaluates under lmms-eval's protocol as the embedded one does.

The end-to-end run of `ablations` on such a folder through a Prefect deployment and a worker is
tests/test_orchestration_integration.py::test_ablations_on_a_local_model_folder_runs_to_completed_with_its_mlflow_rows.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from pydantic import ValidationError

from flows.ireasoner import with_changes
from flows.presets import PRESETS
from flows.run import preset_spec
from flows.spec import ExperimentSpec, plan_variants
from ireasoner_core.config import build_config
from ireasoner_core.data.pool import sample_pool
from ireasoner_core.data.synthetic import generate_synthetic

SEVEN_B_PRESETS = ("main", "ablations", "retrain")
HUB_7B = "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.fixture
def images(tmp_path, monkeypatch):
    folder = tmp_path / "unlabeled"
    generate_synthetic(folder, 4, seed=1)
    monkeypatch.setenv("IREASONER_IMAGES", str(folder))
    return folder


@pytest.fixture
def local_model(tmp_path, embedded_model_dir):
    """A real Qwen2.5-VL checkpoint folder: the shipped weights, loaded by path like any other."""
    folder = tmp_path / "Qwen2.5-VL-local"
    shutil.copytree(embedded_model_dir, folder)
    return folder


def _plan(spec: ExperimentSpec, images, tmp_path):
    # As the flow plans: against the manifest its pool task has just written.
    manifest = sample_pool([images], None, 0).write(tmp_path / "pool" / "manifest.json")
    return plan_variants(spec, manifest, "d" * 16, "s" * 16), manifest


@pytest.mark.parametrize("preset", SEVEN_B_PRESETS)
def test_each_7b_preset_plans_as_registered(preset, images, tmp_path):
    plans, _ = _plan(ExperimentSpec.model_validate(PRESETS[preset]), images, tmp_path)
    assert plans and all(p.model["name_or_path"] == HUB_7B for p in plans)
    if preset == "ablations":
        assert len(plans) == 15  # tables 2 and 3


@pytest.mark.parametrize("preset", SEVEN_B_PRESETS)
def test_each_7b_preset_plans_on_a_local_model_folder(preset, images, local_model, tmp_path):
    spec = with_changes(ExperimentSpec.model_validate(PRESETS[preset]), {"model": str(local_model)})
    plans, manifest = _plan(spec, images, tmp_path)
    assert plans
    for plan in plans:
        assert plan.model["name_or_path"] == str(local_model)
        if plan.baseline:
            continue
        cfg = build_config(plan.config)  # each variant's config validates as the trainer will load it
        assert cfg.model.name_or_path == str(local_model) and cfg.model == cfg.model.model_validate(plan.model)
        assert str(cfg.data.manifest) == str(manifest) and cfg.data.image_dir is None
    assert ("baseline" in {p.ablation for p in plans}) == (preset == "main")


def test_model_overrides_reach_the_baselines_model_section(images, local_model, tmp_path):
    spec = with_changes(ExperimentSpec.model_validate(PRESETS["main"]),
                        {"model": str(local_model), "overrides": {"model.dtype": "float32"}})
    plans, _ = _plan(spec, images, tmp_path)
    (baseline,) = [p for p in plans if p.baseline]
    (full,) = [p for p in plans if not p.baseline]
    assert baseline.model["dtype"] == "float32" and baseline.model["name_or_path"] == str(local_model)
    assert baseline.model == full.model   # the baseline is the untrained model the variant starts from


def test_the_base_configs_model_is_the_model_when_no_model_is_given(images, tmp_path):
    """model None: the base config's model.name_or_path (the 7B's hub id), or a model.name_or_path override."""
    spec = with_changes(ExperimentSpec.model_validate(PRESETS["main"]), {"model": None})
    plans, _ = _plan(spec, images, tmp_path)
    assert {p.model["name_or_path"] for p in plans} == {HUB_7B}
    spec = with_changes(spec, {"overrides": {"model.name_or_path": "embedded"}})
    plans, _ = _plan(spec, images, tmp_path)
    assert {p.model["name_or_path"] for p in plans} == {"embedded"}


def test_flows_run_set_model_to_a_folder_plans_on_that_folder(images, local_model, tmp_path):
    """`python -m flows.run smoke --set model=<dir> --set images.sources=[<dir>]`, as far as planning."""
    spec = ExperimentSpec.model_validate(preset_spec("smoke", [f"model={local_model}", f"images.sources=[{images}]"]))
    plans, _ = _plan(spec, images, tmp_path)
    assert [p.variant for p in plans] == ["baseline", "full"]
    assert {p.model["name_or_path"] for p in plans} == {str(local_model)}
    with pytest.raises(ValueError, match="--set expects FIELD=VALUE"):
        preset_spec("smoke", ["model"])


def test_a_model_folder_without_images_is_refused_naming_the_model(local_model, tmp_path):
    # Synthetic images are for the embedded model; a base config's model counts as much as `model`.
    with pytest.raises(ValidationError, match=rf"images.sources: required unless model is 'embedded'.*{local_model.name}"):
        ExperimentSpec.model_validate(preset_spec("smoke", [f"model={local_model}"]))
    with pytest.raises(ValidationError, match=rf"images.sources: required.*model is '{HUB_7B}'"):
        ExperimentSpec.model_validate({**PRESETS["main"], "images": {}, "variants": ["baseline"]})


@pytest.mark.parametrize("make, reason", [
    (lambda d: d / "typo", "model folder not found"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"") or d / "weights.safetensors", "is a file, not a model folder"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "has no config.json"),
])
def test_a_model_folder_that_is_not_one_fails_the_spec_before_any_task(make, reason, images, tmp_path):
    """Checked at validation, where the flow runs: else the pool is sampled, then the baseline and
    every variant fail on their own, each after its retries."""
    bad = make(tmp_path)
    with pytest.raises(ValidationError, match=f"model: {reason}" if "config.json" not in reason else reason):
        with_changes(ExperimentSpec.model_validate(PRESETS["ablations"]), {"model": str(bad)})
    # The same through the base config's model section, for a baseline-only sweep (no run config built).
    with pytest.raises(ValidationError, match=reason):
        with_changes(ExperimentSpec.model_validate(PRESETS["main"]),
                     {"variants": ["baseline"], "overrides": {"model.name_or_path": str(bad)}})


def test_a_bad_model_override_fails_a_baseline_only_sweep_at_validation(images):
    with pytest.raises(ValidationError, match="model.dtype|dtype"):
        with_changes(ExperimentSpec.model_validate(PRESETS["main"]),
                     {"variants": ["baseline"], "overrides": {"model.dtype": "int3"}})


def test_an_unset_images_variable_is_named(monkeypatch):
    monkeypatch.delenv("IREASONER_IMAGES", raising=False)
    with pytest.raises(ValueError, match=r"IREASONER_IMAGES, which is unset on this machine; set IREASONER_IMAGES") as err:
        ExperimentSpec.model_validate(PRESETS["ablations"])
    line = [m for m in str(err.value).splitlines() if "IREASONER_IMAGES" in m]
    assert len(line) == 1 and "image folder not found" not in str(err.value)


@pytest.mark.slow
def test_a_model_folder_named_with_a_tilde_evaluates_item_by_item_as_embedded(embedded_model_dir, tmp_path,
                                                                               monkeypatch):
    """The baseline evaluation of a path model (main's baseline on the 7B) under lmms-eval's protocol,
    which builds its processor and tokenizer from the checkpoint folder itself: `~/…` as the trainer
    reads it, and the same generations and scores as `embedded` at the same batch size."""
    from ireasoner_core.config import ModelConfig
    from ireasoner_core.evaluation.runner import run_evaluation

    # Caches stay where they are; only `~` moves.
    monkeypatch.setenv("IREASONER_EVAL_CACHE", os.environ.get("IREASONER_EVAL_CACHE",
                                                              os.path.expanduser("~/.cache/ireasoner/eval")))
    monkeypatch.setenv("HF_HOME", os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shutil.copytree(embedded_model_dir, tmp_path / "home" / "models" / "qwen2.5-vl")

    def items(name: str, out: str) -> list[tuple]:
        res = run_evaluation(ModelConfig(name_or_path=name), None, ["ireasoner_chartqa_mini"], tmp_path / out,
                             limit=6, batch_size=3, device="cpu", sampled_k=0)
        rows = [json.loads(line) for line in res.samples["ireasoner_chartqa_mini"].read_text().splitlines()]
        assert res.model == name and len(rows) == 6
        return [(r["doc_id"], r["generation"], r["prediction"], r["score"]) for r in sorted(rows, key=lambda r: r["doc_id"])]

    folder = items("~/models/qwen2.5-vl", "folder")
    assert folder == items("embedded", "embedded")
    assert len({str(i[1]) for i in folder}) > 1   # not vacuous: the model answers, and not all alike
