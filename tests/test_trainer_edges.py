"""The trainer at its edges (issue 10): opt-in paths and corner cases that a user meets.

Every test drives the real embedded Qwen2.5-VL or the real Trainer; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from ireasoner_core.callbacks import JsonlLogger, read_jsonl
from ireasoner_core.config import ConfigError, build_config
from ireasoner_core.data.pool import load_image
from ireasoner_core.data.synthetic import generate_synthetic
from ireasoner_core.rewards import kl_controller
from ireasoner_core.trainer import Trainer, image_slot


def _images(tmp_path, n=1):
    items = generate_synthetic(tmp_path / "imgs", n, seed=3)
    return [load_image(tmp_path / "imgs" / it.image) for it in items]


def _visual_lora_b(pol, role):
    return {n: p.detach().clone() for n, p in pol.model.named_parameters()
            if "visual" in n and "lora_B" in n and f".{role}." in n}


# ----------------------------------------------------------------------------- 1. lora.train_vision
@pytest.mark.parametrize("extra", [
    {"schedule.proposer_update_every": 1},
    {"schedule.update_mode": "per_rollout", "schedule.proposer_update_every": 1},
    {"schedule.rollout_batch_size": 2, "schedule.proposer_update_every": 1},
], ids=["proposer_every_1", "per_rollout", "rollout_batch_2"])
def test_train_vision_updates_each_role_through_its_own_vision_lora(tiny_cfg, extra):
    cfg = tiny_cfg(**{"lora.train_vision": True, "sampling.solver_max_new_tokens": 12,
                      "sampling.proposer_max_new_tokens": 12, **extra})
    tr = Trainer(cfg)
    before = {r: _visual_lora_b(tr.policy, r) for r in ("solver", "proposer")}
    assert before["solver"] and before["proposer"]
    tr.iteration(1)        # crashed with "backward through the graph a second time" before the fix
    for role in ("solver", "proposer"):
        after = _visual_lora_b(tr.policy, role)
        # lora_B starts at 0; it only moves if this role's loss reached its own vision adapter
        assert any(not torch.equal(before[role][k], after[k]) for k in after), role


# ----------------------------------------------------------------------------- 3. top-p (temperature: test_learning_rules.py)
def test_top_p_below_one_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="sampling.top_p"):
        build_config({}, {"sampling.top_p": 0.9, "checkpoint.output_dir": str(tmp_path)})


# ----------------------------------------------------------------------------- 4. resume with another world size
def test_image_slots_continue_where_the_last_run_stopped_whatever_the_world_size():
    # 2 iterations on 2 processes x 2 images take slots 0..7; a resume on 3 processes at iteration 3
    # continues at slot 8 (not at (3-1)*3*2 = 12, and not replaying 4..7 as a 1-process run would)
    first = sorted(image_slot(t, r, k, world=2, per_process=2) for t in (1, 2) for r in (0, 1) for k in (0, 1))
    assert first == list(range(8))
    resumed = sorted(image_slot(t, r, k, world=3, per_process=2, start_iteration=2, start_slots=8)
                     for t in (3, 4) for r in range(3) for k in (0, 1))
    assert resumed == list(range(8, 20))


def test_resume_from_another_world_size_continues_the_image_order_and_warns(tiny_cfg):
    cfg = tiny_cfg(**{"sampling.solver_max_new_tokens": 8, "sampling.proposer_max_new_tokens": 8,
                      "schedule.iterations": 4, "checkpoint.every": 2})
    tr = Trainer(cfg)
    tr._resume()
    for t in (1, 2):
        tr.iteration(t)
    path = tr._save_checkpoint(2)
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    assert state["slots_consumed"] == 2
    # As if the checkpoint had been written by a 3-process run (iterations 1-2 took slots 0..5).
    state.update(world=3, slots_consumed=6)
    torch.save(state, path / "trainer_state.pt")
    marker = json.loads((path / "COMPLETE").read_text())   # the edit is deliberate: record its checksum
    marker["sha256"]["trainer_state.pt"] = hashlib.sha256((path / "trainer_state.pt").read_bytes()).hexdigest()
    (path / "COMPLETE").write_text(json.dumps(marker))
    tr2 = Trainer(cfg)
    with pytest.warns(RuntimeWarning, match="random-number states"):
        assert tr2._resume() == 2
    assert tr2._slot(3, 0) == 6
    images, _, paths = tr2._images_for(3)
    assert paths == [tr2._image_path(6)]


# ----------------------------------------------------------------------------- 5. torn metrics line
def test_resume_truncation_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i}) + "\n" for i in (1, 2, 3)) + '{"iteration": 4, "lo')
    JsonlLogger(path).truncate_after(2)
    assert [r["iteration"] for r in read_jsonl(path)] == [1, 2]
    assert path.read_text().endswith("}\n")


# ----------------------------------------------------------------------------- 8. small ones
def test_controller_sees_the_mean_kl_over_completion_tokens(tiny_cfg, tmp_path):
    tr = Trainer(tiny_cfg(**{"lora.dropout": 0.0}))
    pol = tr.policy
    imgs = _images(tmp_path)
    feats = pol.image_features(pol.encode_images(imgs))
    torch.manual_seed(1)
    b = pol.generate("solver", imgs, ["What is shown?"], num_return_sequences=3, max_new_tokens=16,
                     temperature=1.0, top_p=1.0)[0]
    # rollouts of different lengths, so token mean != mean of per-rollout means
    b.completion_mask[0, 3:] = 0
    b.completion_mask[1, 9:] = 0
    tr._step("solver", [b], [1.0, 1.0, 1.0], feats, feats)        # move away from the reference
    with torch.no_grad():
        _, kl = pol.completion_logprobs("solver", b, feats, feats)
    m = b.completion_mask.bool()
    token_mean = kl[m].mean().item()
    rollout_mean = ((kl * m).sum(1) / m.sum(1)).mean().item()
    assert abs(token_mean - rollout_mean) > 1e-3 * token_mean
    beta0 = tr.state["solver"].beta
    _, kl_used, _ = tr._step("solver", [b], [0.0, 0.0, 0.0], feats, feats)
    assert kl_used == pytest.approx(token_mean, rel=1e-5)
    assert tr.state["solver"].beta == pytest.approx(kl_controller(beta0, token_mean, tr.cfg.kl), rel=1e-5)


def test_an_unreadable_image_is_replaced_by_one_the_run_never_sees(tiny_cfg):
    tr = Trainer(tiny_cfg(**{"schedule.iterations": 3, "data.synthetic_images": 8}))
    bad = tr._image_path(1)
    with open(bad, "wb") as f:
        f.write(b"not an image")
    seen = []
    for t in (1, 2, 3):
        _, skipped, paths = tr._images_for(t)
        assert skipped == (1 if t == 2 else 0)
        seen += paths
    assert bad not in seen
    assert len(set(seen)) == 3, seen


# ----------------------------------------------------------------------------- 7. the paper's schedule
def test_paper_config_is_the_papers_schedule_and_the_8_gpu_config_is_not(tmp_path):
    from pathlib import Path

    from ireasoner_core.config import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    images = {"data.image_dir": str(tmp_path)}
    p = load_config(configs / "paper.yaml", images)
    assert p.model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct" and p.model.dtype == "bfloat16"
    assert (p.schedule.iterations, p.schedule.images_per_iteration, p.schedule.update_mode) == (2500, 1, "per_rollout")
    assert (p.schedule.proposer_update_every, p.sampling.num_rollouts, p.optim.lr) == (5, 5, 1e-6)
    assert p.data.pool_size == 2500 and p.kl.estimator == "exact"
    # one process: iterations 1..2500 take pool slots 0..2499, each once
    slots = [image_slot(t, 0, 0, world=1, per_process=1) for t in range(1, 2501)]
    assert slots == list(range(2500))
    fast = load_config(configs / "qwen2.5-vl-7b.yaml", images)
    assert fast.schedule.update_mode == "batched"


# ----------------------------------------------------------------------------- undefined signals (issue 28)
def test_an_image_that_compared_no_steps_has_no_mean_step_cos_rather_than_a_zero(tiny_cfg, monkeypatch):
    """mean_step_cos of an image whose dominant group is below min_group is undefined: the iteration's
    mean runs over the images that have it, an iteration where none has it writes null to metrics.jsonl,
    and the figures get no point there. (Before: such images counted as 0.0, drawn as collapses to 0.)"""
    import math

    import ireasoner_core.trainer as trainer_module
    from ireasoner_core.reports.figures import history_from_records
    from ireasoner_core.trainer import defined_mean, train

    real, seen = trainer_module.solver_rewards, []

    def solver_rewards(parsed, embeds, lam, rules):
        # The real rewards; image 0 of iteration 1 and both images of iteration 2 are scored with a
        # min_group that no group reaches, so they compare no steps (as |G| = 1 does).
        if len(seen) != 1:
            rules = rules.model_copy(update={"min_group": len(parsed) + 1})
        seen.append(real(parsed, embeds, lam, rules))
        return seen[-1]

    monkeypatch.setattr(trainer_module, "solver_rewards", solver_rewards)
    result = train(tiny_cfg(**{"schedule.iterations": 2, "schedule.images_per_iteration": 2,
                               "sampling.solver_max_new_tokens": 24, "sampling.proposer_max_new_tokens": 12}))
    assert len(seen) == 4 and math.isnan(seen[0].mean_step_cos) and math.isnan(seen[2].mean_step_cos)
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    # iteration 1: image 1's value alone (or nothing, if it compared no steps either); never (0 + v) / 2
    only = seen[1].mean_step_cos
    expected = None if math.isnan(only) else pytest.approx(only)
    assert records[0]["mean_step_cos"] == expected
    # iteration 2: no image compared steps: null (JSON has no NaN), not 0.0, and no point in the figures
    assert records[1]["mean_step_cos"] is None and '"mean_step_cos": null' in lines[1]
    points = history_from_records(records).get("mean_step_cos", [])
    assert all(it != 2 for it, _ in points)
    assert defined_mean([0.8, math.nan, 0.6]) == (pytest.approx(0.7), 2)
    assert math.isnan(defined_mean([math.nan])[0]) and defined_mean([])[1] == 0
