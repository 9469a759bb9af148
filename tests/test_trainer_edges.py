"""The trainer at its edges (issue 10): opt-in paths and corner cases that a user meets.

Every test drives the real embedded Qwen2.5-VL or the real Trainer; nothing is mocked.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from ireasoner_core.callbacks import JsonlLogger, read_jsonl
from ireasoner_core.config import ConfigError, build_config
from ireasoner_core.data.pool import load_image
from ireasoner_core.data.synthetic import generate_synthetic
from ireasoner_core.model import resolve_dtype
from ireasoner_core.policy import Policy, _sampled_chunk
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


# ----------------------------------------------------------------------------- 2. sampled KL gradient
def test_sampled_kl_gradient_is_unbiased_for_kl_pi_to_ref_on_a_6_way_distribution():
    torch.manual_seed(0)
    V = 6
    theta = torch.randn(V, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(V, dtype=torch.float64)
    head = torch.nn.Identity()

    # E_{y ~ pi}[grad of the per-token loss term at y], enumerated exactly over the 6 outcomes
    h = theta.expand(1, V, V)               # position y scores token y
    ref_h = ref.expand(1, V, V)
    tokens = torch.arange(V).unsqueeze(0)
    _, kl_tok = _sampled_chunk(head, h, ref_h, tokens)
    pi = F.softmax(theta, -1).detach()
    (expected_grad,) = torch.autograd.grad((pi * kl_tok[0]).sum(), theta)

    logp, logq = F.log_softmax(theta, -1), F.log_softmax(ref, -1)
    (exact,) = torch.autograd.grad((logp.exp() * (logp - logq)).sum(), theta)          # KL(pi || pi_ref)
    assert torch.allclose(expected_grad, exact, atol=1e-12)
    # the reported value is k3, an unbiased estimate of the same KL
    k3_mean = (pi * kl_tok[0].detach()).sum()
    assert torch.allclose(k3_mean, (logp.exp() * (logp - logq)).sum().detach(), atol=1e-12)


# ----------------------------------------------------------------------------- 3. temperature / top-p
def test_logprobs_are_those_of_the_tempered_sampling_distribution(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"lora.dropout": 0.0, "sampling.temperature": 0.7})
    pol = Policy(cfg.model, cfg.lora, cfg.perf, torch.device("cpu"), torch.float32)
    imgs = _images(tmp_path)
    q = ["What is shown?"]
    torch.manual_seed(0)
    batch = pol.generate("solver", imgs, q, num_return_sequences=2, max_new_tokens=10, temperature=0.7, top_p=1.0)[0]
    enc = pol.encode_prompts("solver", imgs, q)
    torch.manual_seed(0)
    out = pol.model.generate(**enc, do_sample=True, temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=10,
                             num_return_sequences=2, output_scores=True, return_dict_in_generate=True,
                             suppress_tokens=pol.suppress_ids, pad_token_id=pol.tokenizer.pad_token_id)
    assert torch.equal(out.sequences, batch.sequences)
    sampled = torch.log_softmax(torch.stack(out.scores, 1).float(), -1)      # what sampling drew from
    tokens = batch.sequences[:, batch.prompt_len:]
    want = sampled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    feats = pol.image_features(pol.encode_images(imgs))
    with torch.no_grad():
        lp, _ = pol.completion_logprobs("solver", batch, feats, feats, temperature=0.7)
    mask = batch.completion_mask.bool()
    assert torch.allclose(lp[mask], want[mask], atol=1e-4)


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


# ----------------------------------------------------------------------------- 6. bf16 LM head
def test_bf16_kl_of_a_small_adapter_change_has_no_head_rounding_noise(tiny_cfg, tmp_path):
    """In bf16 the KL must be that of the model's own hidden states, computed without rounding the logits:
    a bf16 head output (3 significant digits) put a noise floor of several times the true KL under beta."""
    imgs = _images(tmp_path)
    cfg = tiny_cfg(**{"model.dtype": "bfloat16", "lora.dropout": 0.0})
    pol = Policy(cfg.model, cfg.lora, cfg.perf, torch.device("cpu"), resolve_dtype("bfloat16", torch.device("cpu")))
    torch.manual_seed(0)
    batch = pol.generate("solver", imgs, ["What is shown?"], num_return_sequences=3, max_new_tokens=16,
                         temperature=1.0, top_p=1.0)[0]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in sorted(pol.model.named_parameters()):
            if "lora_B" in n and ".solver." in n:
                p.copy_(1e-3 * torch.randn(p.shape, generator=g))
    feats = pol.image_features(pol.encode_images(imgs))
    mask = batch.completion_mask.bool()
    with torch.no_grad():
        _, kl = pol.completion_logprobs("solver", batch, feats, feats)
        pol.activate("solver")
        h = pol._hidden(batch, feats)
        with pol.model.disable_adapter():
            ref_h = pol._hidden(batch, feats)
    w = pol.backbone.lm_head.weight.double()

    def logp64(hidden):
        logits = hidden.double() @ w.T
        logits[..., pol.suppress_ids] = float("-inf")
        return torch.log_softmax(logits, -1)

    lp, lq = logp64(h), logp64(ref_h)
    true = torch.where(lp.isfinite(), lp.exp() * (lp - lq), 0.0).sum(-1)[mask].mean().item()
    assert true > 0
    assert kl[mask].mean().item() == pytest.approx(true, rel=1e-2)


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
