"""The experiment spec: bad values fail at validation naming the field; plans are deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.exceptions import ParameterTypeError
from pydantic import ValidationError

from flows.ireasoner import ireasoner
from flows.presets import PRESETS
from flows.spec import ExperimentSpec, VariantSpec, config_identity_hash, plan_variants
from ireasoner_core.config import TABLE2_ABLATIONS, TABLE3_ABLATIONS


def _error(**spec) -> str:
    with pytest.raises(ValidationError) as exc:
        ExperimentSpec.model_validate(spec)
    return str(exc.value)


def test_unknown_variant_names_the_entry_and_the_known_names():
    msg = _error(variants=["full", "warp_drive"])
    assert "variants[1]: unknown variant 'warp_drive'" in msg and "soft_only" in msg


def test_negative_iterations_names_the_field():
    msg = _error(iterations=-3)
    assert "iterations" in msg and "greater than 0" in msg


def test_negative_iterations_in_an_override_is_rejected_by_the_run_config():
    msg = _error(overrides={"schedule.iterations": -1})
    assert "schedule.iterations" in msg and "-1" in msg


def test_missing_image_folder_names_the_field(tmp_path):
    msg = _error(images={"sources": [str(tmp_path / "nope")]})
    assert "images.sources[0]: image folder not found" in msg and "nope" in msg


def test_an_image_source_that_is_a_file_is_called_a_file(tmp_path):
    (tmp_path / "images.zip").write_bytes(b"x")
    msg = _error(images={"sources": [str(tmp_path / "images.zip")]})
    assert "images.sources[0]: is a file, not an image folder" in msg and "images.zip" in msg


def test_unknown_ablation_in_an_explicit_variant():
    msg = _error(variants=[{"name": "mine", "ablation": "no_such"}])
    assert "unknown ablation 'no_such'" in msg


def test_flow_parameter_validation_rejects_before_the_body_runs():
    # Prefect validates the pydantic parameter with the flow's signature; the body never starts.
    with pytest.raises(ParameterTypeError) as exc:
        ireasoner.validate_parameters({"spec": {"variants": ["warp_drive"]}})
    assert "warp_drive" in str(exc.value)


def test_groups_expand_to_the_paper_tables():
    spec = ExperimentSpec(variants=["baseline", "table2", "table3"])
    names = [v.name for v in spec.variant_specs()]
    assert names == ["baseline", *TABLE2_ABLATIONS, *TABLE3_ABLATIONS]
    assert len(names) == 1 + 11 + 4


def test_duplicate_variants_rejected():
    assert "duplicate names ['full']" in _error(variants=["full", "table2"])


def test_plans_are_deterministic_and_ablations_change_the_config(tmp_path):
    spec = ExperimentSpec(variants=["baseline", "full", "soft_only", VariantSpec(name="eta01", overrides={
        "rewards.eta": 0.1})], seeds=[0, 1], iterations=3, runs_dir=str(tmp_path))
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    plans = plan_variants(spec, manifest, "d" * 16, "s" * 16)
    # The baseline does not depend on a training seed: one plan, not two.
    assert [p.key for p in plans] == ["baseline-s0", "full-s0", "full-s1", "soft_only-s0", "soft_only-s1",
                                      "eta01-s0", "eta01-s1"]
    again = plan_variants(spec, manifest, "d" * 16, "s" * 16)
    assert [p.output_dir for p in plans] == [p.output_dir for p in again]
    by_key = {p.key: p for p in plans}
    full, soft, eta = by_key["full-s0"], by_key["soft_only-s0"], by_key["eta01-s0"]
    assert soft.config["rewards"]["lambda_end"] == 0.0 and full.config["rewards"]["lambda_end"] == 0.7
    assert eta.config["rewards"]["eta"] == 0.1
    assert full.config["schedule"]["iterations"] == 3
    assert full.config["data"]["manifest"] == str(manifest)
    assert len({p.config_hash for p in plans}) == len(plans)  # the seed is part of what is trained
    # The run directory is inside runs_dir/<sweep>, and is what the trainer checkpoints into.
    assert Path(full.output_dir).parent == tmp_path / spec.name
    assert full.config["checkpoint"]["output_dir"] == full.output_dir
    # Different data or code: a different directory, so no checkpoint of other data is resumed.
    other = plan_variants(spec, manifest, "e" * 16, "s" * 16)
    assert other[1].output_dir != full.output_dir and other[1].config_hash == full.config_hash


def test_config_hash_ignores_locations_only():
    a = {"seed": 0, "rewards": {"eta": 0.05}, "data": {"manifest": "/a/m.json", "image_dir": None},
         "checkpoint": {"output_dir": "/x"}, "model": {"dtype": "auto"}, "run_name": "a",
         "log_completions_every": 10}
    b = {"seed": 0, "rewards": {"eta": 0.05}, "data": {"manifest": "/b/m.json", "image_dir": "/i"},
         "checkpoint": {"output_dir": "/y"}, "model": {"dtype": "auto"}, "run_name": "b",
         "log_completions_every": 0}  # how often generations are logged trains nothing
    assert config_identity_hash(a) == config_identity_hash(b)
    b["rewards"]["eta"] = 0.06
    assert config_identity_hash(a) != config_identity_hash(b)


def test_every_preset_is_a_valid_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("IREASONER_IMAGES", str(tmp_path))
    for name, preset in PRESETS.items():
        spec = ExperimentSpec.model_validate(preset)
        assert spec.name == name
    assert [v.name for v in ExperimentSpec.model_validate(PRESETS["main"]).variant_specs()] == ["baseline", "full"]
    assert len(ExperimentSpec.model_validate(PRESETS["ablations"]).variant_specs()) == 15


def test_seven_b_presets_need_the_image_folder(monkeypatch, tmp_path):
    # Unset: the variable is named as unset, not read as a folder called '$IREASONER_IMAGES'.
    monkeypatch.delenv("IREASONER_IMAGES", raising=False)
    err = _error(**PRESETS["retrain"])
    assert ("images.sources[0]: '$IREASONER_IMAGES' names the environment variable IREASONER_IMAGES, which is unset "
            "on this machine; set IREASONER_IMAGES to the folder of unlabeled images") in err
    assert "image folder not found" not in err
    # Set to a folder that is not there: that folder, resolved.
    monkeypatch.setenv("IREASONER_IMAGES", str(tmp_path / "gone"))
    assert f"images.sources[0]: image folder not found: '$IREASONER_IMAGES' (resolved to {tmp_path / 'gone'})" in _error(
        **PRESETS["retrain"])


# --- issue 29: overrides merge field by field; duplicate keys, non-finite numbers, unknown benchmarks ---

def _sampling(spec: ExperimentSpec) -> tuple[float, int, int]:
    s = spec.train_config(spec.variant_specs()[-1], seed=0, manifest=None).sampling
    return s.temperature, s.solver_max_new_tokens, s.proposer_max_new_tokens


def test_a_section_valued_override_keeps_the_base_configs_other_fields():
    from flows.ireasoner import with_changes
    from flows.run import preset_spec

    # configs/tiny.yaml's 96/48 new tokens survive every way of writing the override.
    kept = (0.7, 96, 48)
    via_set = ExperimentSpec.model_validate(preset_spec("smoke", ["overrides.sampling.temperature=0.7"]))
    assert _sampling(via_set) == kept
    assert via_set.overrides["checkpoint.every"] == 5  # the preset's own overrides stay
    assert _sampling(ExperimentSpec.model_validate(preset_spec("smoke", ["overrides={sampling: {temperature: 0.7}}"]))) == kept
    assert _sampling(ExperimentSpec(overrides={"sampling": {"temperature": 0.7}})) == kept
    assert _sampling(ExperimentSpec(variants=[VariantSpec(name="t", overrides={"sampling": {"temperature": 0.7}})])) == kept
    # A variant's nested overrides meet the sweep's field by field, not section by section.
    both = ExperimentSpec(overrides={"sampling": {"temperature": 0.7}},
                          variants=[VariantSpec(name="t", overrides={"sampling": {"proposer_max_new_tokens": 40}})])
    assert _sampling(both) == (0.7, 96, 40)
    # The model section a baseline evaluates reads the same nested override as the trained variants.
    assert ExperimentSpec(overrides={"model": {"dtype": "bfloat16"}}).model_config_dict()["dtype"] == "bfloat16"
    # --set of a field the preset already overrides replaces that value (no "given twice").
    assert preset_spec("smoke", ["overrides.checkpoint.every=2"])["overrides"]["checkpoint.every"] == 2
    changed = with_changes(ExperimentSpec.model_validate(PRESETS["smoke"]), {"overrides": {"sampling": {"temperature": 0.7},
                                                                                           "checkpoint": {"every": 2}}})
    assert _sampling(changed) == kept and changed.overrides["checkpoint.every"] == 2
    # A change of a mapping field through --set merges into it, as `changes` does.
    assert preset_spec("smoke", ["evaluation={limit: 3}"])["evaluation"]["tasks"] == PRESETS["smoke"]["evaluation"]["tasks"]
    with pytest.raises(ValueError, match=r"--set iterations: '\[1,' is not a YAML value"):
        preset_spec("smoke", ["iterations=[1,"])


def test_a_base_config_with_a_duplicate_key_names_the_key_and_the_line(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("schedule:\n  iterations: 20\nsampling:\n  num_rollouts: 3\nschedule:\n  iterations: 2500\n")
    msg = _error(base_config=str(base))
    assert f"config file {base}, line 5: key 'schedule' is given twice (first on line 1)" in msg, msg


def test_non_finite_numbers_in_the_spec_are_refused_naming_the_field():
    assert "resources.retry_delay_seconds" in (msg := _error(resources={"retry_delay_seconds": float("inf")}))
    assert "finite number" in msg
    msg = _error(overrides={"rewards": {"proposer_mu_h": float("nan")}})
    assert "rewards.proposer_mu_h: Input should be a finite number (got nan)" in msg, msg


def test_the_projects_benchmarks_are_validated_without_indexing_lmms_eval(monkeypatch):
    from ireasoner_core.evaluation import runner

    def no_index():
        raise RuntimeError("built lmms-eval's task index for benchmarks the project registers")

    monkeypatch.setattr(runner, "_registered_task_names", no_index)
    assert ExperimentSpec.model_validate(PRESETS["smoke"]).evaluation.tasks == PRESETS["smoke"]["evaluation"]["tasks"]
    assert "listed more than once" in _error(evaluation={"tasks": ["ireasoner_ai2d_mini", "ireasoner_ai2d_mini"]})


@pytest.mark.slow
def test_an_unknown_benchmark_fails_at_spec_validation_before_any_task():
    # The real lmms-eval registry: 'mme' is one of its tasks the project does not register itself.
    msg = _error(evaluation={"tasks": ["mme", "ireasoner_chartqa_mini", "chartqa_typo"]})
    assert "evaluation.tasks" in msg and "task 'chartqa_typo': not an lmms-eval task or group" in msg, msg
    assert "task 'mme'" not in msg
    with pytest.raises(ParameterTypeError, match="chartqa_typo"):
        ireasoner.validate_parameters({"spec": {"evaluation": {"tasks": ["chartqa_typo"]}}})


def test_synthetic_kinds_are_checked_and_name_the_entry():
    assert "images.synthetic_kinds[1]: unknown kind 'pies'" in _error(images={"synthetic_kinds": ["bar", "pies"]})
    assert "images.synthetic_kinds: an empty list" in _error(images={"synthetic_kinds": []})


def test_pie_only_pools_hold_pie_charts_only(tmp_path):
    from ireasoner_core.data.synthetic import read_ground_truth
    from tasks.pool import synthetic_folder

    pie = synthetic_folder(tmp_path, 6, 0, ["pie"])
    every = synthetic_folder(tmp_path, 6, 0)
    assert pie != every                                     # one folder per kind set: no stale reuse
    assert {it.kind for it in read_ground_truth(pie)} == {"pie"}
    assert len({it.kind for it in read_ground_truth(every)}) == 5


def test_threads_per_variant_needs_training_subprocesses():
    msg = _error(resources={"threads_per_variant": 1})
    assert "resources.threads_per_variant=1" in msg and "launcher: subprocess" in msg
    ok = ExperimentSpec.model_validate({"resources": {"threads_per_variant": 1, "launcher": "subprocess"}})
    assert ok.resources.threads_per_variant == 1
