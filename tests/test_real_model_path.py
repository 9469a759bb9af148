"""The pipeline off the embedded path: every 7B preset plans on a real model, named by hub id or
given as a local Qwen2.5-VL folder (the code path the 7B takes), with images from $IREASONER_IMAGES.

The end-to-end run of `ablations` on such a folder through a Prefect deployment and a worker is
tests/test_orchestration_integration.py::test_ablations_on_a_local_model_folder_runs_to_completed_with_its_mlflow_rows.
"""

from __future__ import annotations

import shutil

import pytest

from flows.ireasoner import with_changes
from flows.presets import PRESETS
from flows.spec import ExperimentSpec, plan_variants
from ireasoner_core.config import build_config
from ireasoner_core.data.synthetic import generate_synthetic
from ireasoner_core.embedded.shipped import SHIPPED_DIR

SEVEN_B_PRESETS = ("main", "ablations", "retrain")


@pytest.fixture
def images(tmp_path, monkeypatch):
    folder = tmp_path / "unlabeled"
    generate_synthetic(folder, 4, seed=1)
    monkeypatch.setenv("IREASONER_IMAGES", str(folder))
    return folder


@pytest.fixture
def local_model(tmp_path):
    """A real Qwen2.5-VL checkpoint folder: the shipped weights, loaded by path like any other."""
    folder = tmp_path / "Qwen2.5-VL-local"
    shutil.copytree(SHIPPED_DIR, folder)
    return folder


def _plan(spec: ExperimentSpec, tmp_path):
    # The pool task writes the manifest just before planning; planning must not need it yet.
    return plan_variants(spec, tmp_path / "pool" / "manifest.json", "d" * 16, "s" * 16)


@pytest.mark.parametrize("preset", SEVEN_B_PRESETS)
def test_each_7b_preset_plans_as_registered(preset, images, tmp_path):
    plans = _plan(ExperimentSpec.model_validate(PRESETS[preset]), tmp_path)
    assert plans and all(p.model["name_or_path"] == "Qwen/Qwen2.5-VL-7B-Instruct" for p in plans)
    if preset == "ablations":
        assert len(plans) == 15  # tables 2 and 3


@pytest.mark.parametrize("preset", SEVEN_B_PRESETS)
def test_each_7b_preset_plans_on_a_local_model_folder(preset, images, local_model, tmp_path):
    spec = with_changes(ExperimentSpec.model_validate(PRESETS[preset]), {"model": str(local_model)})
    plans = _plan(spec, tmp_path)
    assert plans
    for plan in plans:
        assert plan.model["name_or_path"] == str(local_model)
        if plan.baseline:
            continue
        cfg = build_config(plan.config)  # each variant's config validates as the trainer will load it
        assert cfg.model.name_or_path == str(local_model)
        assert str(cfg.data.manifest) == str(tmp_path / "pool" / "manifest.json")
    assert ("baseline" in {p.ablation for p in plans}) == (preset == "main")


def test_model_overrides_reach_the_baselines_model_section(images, local_model, tmp_path):
    spec = with_changes(ExperimentSpec.model_validate(PRESETS["main"]),
                        {"model": str(local_model), "overrides": {"model.dtype": "float32"}})
    (baseline,) = [p for p in _plan(spec, tmp_path) if p.baseline]
    assert baseline.model["dtype"] == "float32" and baseline.model["name_or_path"] == str(local_model)


def test_an_unset_images_variable_is_named(monkeypatch):
    monkeypatch.delenv("IREASONER_IMAGES", raising=False)
    with pytest.raises(ValueError, match=r"IREASONER_IMAGES, which is unset on this machine; set IREASONER_IMAGES"):
        ExperimentSpec.model_validate(PRESETS["ablations"])
