"""Configuration: SPEC.md defaults, ablation presets, and load-time errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ireasoner_core.config import (
    ABLATIONS,
    ConfigError,
    TrainConfig,
    apply_ablation,
    build_config,
    load_config,
)


def test_defaults_are_specs():
    c = TrainConfig()
    assert c.sampling.num_rollouts == 5
    assert (c.rewards.gamma_density, c.rewards.min_group, c.rewards.step_embed_max_tokens) == (0.7, 2, 64)
    assert (c.rewards.position_decay, c.rewards.length_target_words, c.rewards.alpha, c.rewards.eta) == (0.15, 64, 0.7, 0.05)
    assert (c.rewards.lambda_start, c.rewards.lambda_end, c.rewards.warmup_fraction) == (0.0, 0.7, 0.3)
    assert (c.rewards.proposer_mu_h, c.rewards.proposer_sigma_h, c.rewards.max_reasoning_steps) == (0.90, 0.35, 8)
    assert (c.kl.beta_init, c.kl.target, c.kl.gain, c.kl.beta_min, c.kl.beta_max) == (1e-3, 0.02, 0.10, 1e-8, 100.0)
    assert c.kl.estimator == "exact" and c.optim.baseline_momentum == 0.9
    assert (c.optim.lr, c.optim.weight_decay, c.optim.grad_clip) == (1e-6, 0.01, 1.0)
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.train_vision) == (16, 32, 0.05, False)
    assert set(c.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (c.sampling.temperature, c.sampling.top_p) == (1.0, 1.0)
    assert (c.sampling.solver_max_new_tokens, c.sampling.proposer_max_new_tokens) == (256, 128)
    assert (c.schedule.iterations, c.schedule.proposer_update_every) == (2500, 5)


@pytest.mark.parametrize("override, field, value", [
    ({"sampling.num_rollouts": -5}, "sampling.num_rollouts", "-5"),
    ({"rewards.warmup_fraction": 1.5}, "rewards.warmup_fraction", "1.5"),
    ({"schedule.iterations": 0}, "schedule.iterations", "0"),
    ({"ablation": "no_such_thing"}, "ablation", "no_such_thing"),
    ({"data.image_dir": "/nonexistent/images"}, "data.image_dir", "/nonexistent/images"),
    ({"kl.estimator": "magic"}, "kl.estimator", "magic"),
    ({"rewards.typo_field": 1}, "rewards.typo_field", "1"),
])
def test_wrong_values_fail_at_load_naming_field_and_value(override, field, value):
    with pytest.raises(ConfigError) as err:
        build_config({}, override)
    msg = str(err.value)
    assert field in msg or field.split(".")[-1] in msg
    assert value in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = build_config({}, {"sampling.num_rollouts": 7, "checkpoint.output_dir": str(tmp_path)})
    cfg.to_yaml(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.hash() == cfg.hash()
    assert load_config(tmp_path / "c.yaml", {"sampling.num_rollouts": 3}).hash() != cfg.hash()


# SPEC.md's ablation table, written out here rather than read from ``ABLATIONS``, so that a wrong
# entry there (λ of soft_only not 0, a wrong α) fails: (λ at the first iteration, λ at the last,
# then the reward settings each ablation leaves or changes).
SPEC_TABLE = {
    #                     λ(1)  λ(T)  decay gamma eta  alpha answer_reward K
    "full":               (0.0, 0.7, 0.15, 0.7, 0.05, 0.7, "soft", 8),
    "soft_only":          (0.0, 0.0, 0.15, 0.7, 0.05, 0.7, "soft", 8),
    "step_only":          (1.0, 1.0, 0.15, 0.7, 0.05, 0.7, "soft", 8),
    "no_warmup":          (0.7, 0.7, 0.15, 0.7, 0.05, 0.7, "soft", 8),
    "no_position_decay":  (0.0, 0.7, 0.0, 0.7, 0.05, 0.7, "soft", 8),
    "no_density":         (0.0, 0.7, 0.15, 0.0, 0.05, 0.7, "soft", 8),
    "no_length_penalty":  (0.0, 0.7, 0.15, 0.7, 0.0, 0.7, "soft", 8),
    "soft_gamma_0.5":     (0.0, 0.7, 0.15, 0.7, 0.05, 0.5, "soft", 8),
    "soft_gamma_1.0":     (0.0, 0.7, 0.15, 0.7, 0.05, 1.0, "soft", 8),
    "discrete":           (0.0, 0.0, 0.15, 0.7, 0.05, 0.7, "discrete", 8),
    "discrete_plus_step": (0.0, 0.7, 0.15, 0.7, 0.05, 0.7, "discrete", 8),
    "max_steps_4":        (0.0, 0.7, 0.15, 0.7, 0.05, 0.7, "soft", 4),
    "max_steps_6":        (0.0, 0.7, 0.15, 0.7, 0.05, 0.7, "soft", 6),
    "max_steps_8":        (0.0, 0.7, 0.15, 0.7, 0.05, 0.7, "soft", 8),
    "max_steps_10":       (0.0, 0.7, 0.15, 0.7, 0.05, 0.7, "soft", 10),
}


def test_ablations_compute_what_specs_table_says():
    from ireasoner_core.rewards import warmup_lambda

    assert set(ABLATIONS) == set(SPEC_TABLE)
    for name, expected in SPEC_TABLE.items():
        r = apply_ablation(TrainConfig(), name).rewards
        total = 100
        got = (warmup_lambda(1, total, r), warmup_lambda(total, total, r), r.position_decay, r.gamma_density,
               r.eta, r.alpha, r.answer_reward, r.max_reasoning_steps)
        assert got == pytest.approx(expected), name


def test_every_ablation_applies_its_change():
    full = TrainConfig()
    for name, changes in ABLATIONS.items():
        cfg = apply_ablation(full, name)
        assert cfg.ablation == name
        flat = cfg.flat()
        for key, value in changes.items():
            assert flat[key] == value, (name, key)
    assert apply_ablation(full, "no_warmup").rewards.lambda_start == full.rewards.lambda_end
    assert apply_ablation(full, "full").hash() == full.hash()
    assert apply_ablation(full, "soft_only").hash() != full.hash()


def test_the_qwen_config_requires_an_image_folder():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(ConfigError, match="data.image_dir"):
        load_config(repo / "configs" / "qwen2.5-vl-7b.yaml")
    assert load_config(repo / "configs" / "tiny.yaml").model.name_or_path == "embedded"


def test_an_explicit_override_that_contradicts_the_ablation_is_an_error_naming_both():
    with pytest.raises(ConfigError) as err:
        build_config({}, {"ablation": "no_warmup", "rewards.lambda_end": 0.3})
    msg = str(err.value)
    assert "rewards.lambda_end=0.3" in msg and "no_warmup" in msg and "0.7" in msg
    # Agreeing with the ablation, or touching a field it leaves alone, is fine.
    assert build_config({}, {"ablation": "no_warmup", "rewards.lambda_end": 0.7}).rewards.lambda_end == 0.7
    assert build_config({}, {"ablation": "no_warmup", "rewards.alpha": 0.4}).rewards.alpha == 0.4


@pytest.mark.parametrize("modules, bad", [(["q_proj", "qproj"], "qproj"), ([], "empty"), (["qkv"], "qkv")])
def test_unknown_lora_target_modules_fail_at_validation(modules, bad):
    with pytest.raises(ConfigError) as err:
        build_config({}, {"lora.target_modules": modules})
    assert "lora.target_modules" in str(err.value) and bad in str(err.value)


def test_vision_projections_are_valid_targets_only_with_train_vision():
    cfg = build_config({}, {"lora.target_modules": ["q_proj", "qkv"], "lora.train_vision": True})
    assert cfg.lora.target_modules == ["q_proj", "qkv"]


def test_a_bad_config_is_reported_without_importing_torch(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  num_rollouts: -5\n")
    probe = ("import sys\nfrom ireasoner_core.cli import main\n"
             f"rc = main(['train', '--config', {str(bad)!r}])\n"
             "print('torch imported' if 'torch' in sys.modules else 'no torch', rc)")
    r = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "no torch 2", r.stdout + r.stderr
    assert "sampling.num_rollouts" in r.stderr and "-5" in r.stderr


def test_an_image_folder_that_is_a_file_is_called_a_file(tmp_path):
    f = tmp_path / "images.png"
    f.write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"data.image_dir: is a file, not a folder: {f}"):
        build_config({}, {"data.image_dir": str(f)})


@pytest.mark.parametrize("case", ["empty_folder", "missing_model", "output_dir_is_a_file"])
def test_train_cli_names_the_problem_without_a_traceback(case, tmp_path, capsys, embedded_model_dir):
    from ireasoner_core.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    sets = {"empty_folder": ["data.image_dir=" + str(tmp_path / "empty")],
            "missing_model": ["model.name_or_path=" + str(tmp_path / "no-model"), "data.image_dir=" + str(tmp_path)],
            "output_dir_is_a_file": []}[case]
    out = tmp_path / "a-file" if case == "output_dir_is_a_file" else tmp_path / "run"
    argv = ["train", "--config", "configs/tiny.yaml", "--output-dir", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    expected = {"empty_folder": f"no readable images in {tmp_path / 'empty'}",
                "missing_model": f"model.name_or_path: directory not found: {tmp_path / 'no-model'}",
                "output_dir_is_a_file": f"checkpoint.output_dir {tmp_path / 'a-file'} is a file"}[case]
    assert "error: " + expected in err and "Traceback" not in err, err


# --- issue 29: no silent section replacement, duplicate YAML keys, non-finite numbers ---------------

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_a_section_valued_override_changes_only_the_fields_it_names():
    # tiny.yaml sets 96/48 new tokens; a nested override used to replace the whole sampling section.
    cfg = load_config(TINY, {"sampling": {"temperature": 0.7}, "schedule": {}})
    assert cfg.sampling.temperature == 0.7
    assert (cfg.sampling.solver_max_new_tokens, cfg.sampling.proposer_max_new_tokens) == (96, 48)
    assert cfg.schedule.iterations == 20  # an empty section changes nothing
    assert cfg == load_config(TINY, {"sampling.temperature": 0.7})
    with pytest.raises(ConfigError, match=r"sampling\.temperature is given twice, as 0\.5 and as 0\.7"):
        load_config(TINY, {"sampling.temperature": 0.5, "sampling": {"temperature": 0.7}})
    # A nested override the ablation contradicts is caught as the dotted one is.
    with pytest.raises(ConfigError, match="contradicts ablation 'no_warmup'"):
        build_config({"ablation": "no_warmup"}, {"rewards": {"lambda_end": 0.3}})


def test_duplicate_yaml_keys_are_refused_naming_the_key_and_the_line(tmp_path):
    twice = tmp_path / "twice.yaml"
    # A second schedule block (as pasted from the defaults) used to win: iterations 2500, not 20.
    twice.write_text(TINY.read_text() + "schedule:\n  proposer_update_every: 5\n")
    first = 1 + TINY.read_text().splitlines().index("schedule:")
    last = len(TINY.read_text().splitlines()) + 1
    with pytest.raises(ConfigError) as err:
        load_config(twice)
    msg = str(err.value)
    assert msg == (f"config file {twice}, line {last}: key 'schedule' is given twice (first on line {first}); "
                   "YAML would keep only the last; merge the two"), msg
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  lr: 1.0e-4\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'lr' is given twice \(first on line 2\)"):
        load_config(nested)
    merged = tmp_path / "merged.yaml"  # a YAML merge key may be overridden: that is no duplicate
    merged.write_text("base: &b {lr: 1.0e-4}\noptim:\n  <<: *b\n  lr: 1.0e-3\n")
    from ireasoner_core.config import load_yaml

    assert load_yaml(merged.read_text())["optim"] == {"lr": 1.0e-3}
    # the same rule for an inline mapping given to `ireasoner train --set`
    from ireasoner_core import cli

    with pytest.raises(ConfigError, match=r"--set optim: .*key 'lr' is given twice"):
        cli._parse_sets(["optim={lr: 1, lr: 2}"])


@pytest.mark.parametrize("override, field", [
    ({"optim.lr": float("inf")}, "optim.lr"),
    ({"rewards.proposer_mu_h": float("nan")}, "rewards.proposer_mu_h"),
    ({"kl.beta_max": float("inf")}, "kl.beta_max"),
    ({"sampling.temperature": float("-inf")}, "sampling.temperature"),
])
def test_non_finite_numbers_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        build_config({}, override)
    assert f"  {field}: Input should be a finite number" in str(err.value), str(err.value)


def test_non_finite_numbers_in_a_yaml_file_are_refused(tmp_path):
    path = tmp_path / "inf.yaml"
    path.write_text("optim:\n  lr: .inf\nrewards:\n  proposer_mu_h: .nan\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "optim.lr: Input should be a finite number (got inf)" in str(err.value)
    assert "rewards.proposer_mu_h: Input should be a finite number (got nan)" in str(err.value)
