"""deployments/prefect.yaml: the four presets of the `ireasoner` flow, registered by one command."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect.cli.deploy._models import PrefectYamlModel

from flows.presets import PRESETS
from flows.spec import ExperimentSpec

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


def _doc() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in _doc()["deployments"]}


def test_prefect_yaml_is_what_prefect_deploy_reads():
    model = PrefectYamlModel.model_validate(_doc())  # the CLI's own schema for prefect.yaml
    assert model.pull == []  # no pull step: nothing pins the deploying machine's directory
    assert {d.name for d in model.deployments} == {"smoke", "mini", "main", "ablations", "retrain", "variant"}
    for d in model.deployments:
        assert d.work_pool.name == "ireasoner-pool"
        assert d.enforce_parameter_schema is False


def test_entrypoints_import_to_the_named_flows():
    names = {}
    for d in _deployments().values():
        module, attr = d["entrypoint"].split(":")
        names[d["name"]] = getattr(importlib.import_module(module), attr).name
    # `prefect deployment run ireasoner/<preset>` resolves flow-name/deployment-name.
    assert names == {"smoke": "ireasoner", "mini": "ireasoner", "main": "ireasoner", "ablations": "ireasoner", "retrain": "ireasoner",
                     "variant": "ireasoner-variant"}


def test_parameters_mirror_the_presets_and_validate(tmp_path, monkeypatch):
    monkeypatch.setenv("IREASONER_IMAGES", str(tmp_path))
    deps = _deployments()
    for name, preset in PRESETS.items():
        assert deps[name]["parameters"] == {"spec": preset}, name
        ExperimentSpec.model_validate(deps[name]["parameters"]["spec"])


def test_retrain_has_an_inactive_editable_schedule_and_others_none():
    deps = _deployments()
    (schedule,) = deps["retrain"]["schedules"]
    assert schedule["active"] is False and schedule["cron"] == "0 3 * * 1"
    for name in ("smoke", "mini", "main", "ablations", "variant"):
        assert deps[name]["schedules"] == []  # explicit: `prefect deploy` would otherwise prompt


def test_ablations_covers_tables_two_and_three():
    spec = ExperimentSpec.model_validate(PRESETS["ablations"] | {"images": {"sources": [str(ROOT)]}})
    names = {v.name for v in spec.variant_specs()}
    assert {"full", "soft_only", "step_only", "discrete_plus_step", "max_steps_4", "max_steps_10"} <= names
    assert "baseline" not in names


def test_mini_is_the_organism_sweep_with_its_controls_as_measured():
    # The configuration docs/evaluation.md's "The mini sweep" measured (table and timing).
    spec = ExperimentSpec.model_validate(PRESETS["mini"])
    assert [v.name for v in spec.variant_specs()] == ["baseline", "soft_only", "full", "negated", "random_reward"]
    assert spec.seeds == [0, 1, 2] and spec.images.synthetic_kinds == ["bar", "line", "pie", "diagram"]
    assert spec.evaluation.limit is None and spec.evaluation.sampled_k == 5
    assert spec.evaluation.protocol == "solver" and spec.evaluation.tasks == ["ireasoner_count_mini"]
    # the kinds trained on are the kinds the organism task asks about
    from ireasoner_core.data.synthetic import FAMILY_KINDS
    assert tuple(spec.images.synthetic_kinds) == FAMILY_KINDS["count"]
    assert (spec.resources.max_parallel_training, spec.resources.threads_per_variant) == (2, 1)
    controls = {v.name: spec.train_config(v, 0, None).rewards.control for v in spec.variant_specs()
                if v.name != "baseline"}
    assert controls == {"soft_only": "none", "full": "none", "negated": "negated", "random_reward": "random"}
    (full,) = [v for v in spec.variant_specs() if v.name == "full"]
    cfg = spec.train_config(full, 0, manifest=None)
    assert cfg.model.name_or_path == "embedded" and cfg.ablation == "full"
    assert (cfg.schedule.iterations, cfg.schedule.images_per_iteration, cfg.optim.lr) == (50, 2, 3e-4)
    assert cfg.sampling.num_rollouts == 8


def test_what_the_presets_and_deployments_say_of_themselves_is_true():
    """Issue 28: presets.py said four deployments for five presets, and mini's description said under
    25 minutes where its measured run (README, docs/evaluation.md) took about 10."""
    import re

    import flows.presets

    words = {"four": 4, "five": 5, "six": 6, "seven": 7}
    said = re.search(r"parameters of its (\w+) deployments", flows.presets.__doc__)
    assert said and words[said.group(1)] == len(PRESETS)
    assert set(PRESETS) <= set(_deployments())
    mini = _deployments()["mini"]["description"]
    minutes = re.search(r"about (\d+) min", mini)
    # the bound for the mini sweep on 2 cores; docs/evaluation.md quotes the measured run
    assert minutes and int(minutes.group(1)) <= 30


def test_register_script_creates_the_pool_then_deploys_everything():
    script = (ROOT / "deployments" / "register.sh").read_text()
    assert "work-pool create \"$POOL\" --type process" in script and "POOL=ireasoner-pool" in script
    assert "deploy --all --prefect-file deployments/prefect.yaml" in script
