"""SPEC.md eq. 1-8 and figure 7's diagnostics, with numbers worked out by hand.

Step embeddings are 2-D unit vectors at 0 and 90 degrees, so every cosine is checkable:
a prototype of (1,0), (0,1), (1,0) points along (2,1)/sqrt(5), giving cos 2/sqrt(5) = 0.894427
with (1,0) and 1/sqrt(5) = 0.447214 with (0,1); mapped to [0,1] these are
(1 + 0.894427)/2 = 0.947214 and (1 + 0.447214)/2 = 0.723607.
"""

from __future__ import annotations

import math

import pytest
import torch

from ireasoner_core.config import KLConfig, RewardConfig
from ireasoner_core.parsing import ParsedRollout, parse_rollout
from ireasoner_core.policy import Policy
from ireasoner_core.rewards import (
    answer_distribution,
    answer_entropy,
    answer_rewards,
    density_factor,
    dominant_group,
    kl_controller,
    leave_one_out,
    length_penalty,
    mix,
    position_weights,
    proposer_reward,
    solver_rewards,
    step_agreement,
    update_baseline,
    warmup_lambda,
)

X = [1.0, 0.0]  # 0 degrees
Y = [0.0, 1.0]  # 90 degrees
HI = 0.947214  # (1 + 2/sqrt(5)) / 2
LO = 0.723607  # (1 + 1/sqrt(5)) / 2
W1 = 0.860708  # exp(-0.15)


def emb(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32) if rows else torch.zeros(0, 2)


def approx(x: float | list[float]) -> object:
    return pytest.approx(x, abs=1e-6)


# --- eq. 1-2 ----------------------------------------------------------------------------------

def test_answer_distribution_and_entropy() -> None:
    p = answer_distribution(["a", "b", "a", "c", "a"])
    assert p == approx({"a": 0.6, "b": 0.2, "c": 0.2})
    assert list(p) == ["a", "b", "c"]
    # H = -(0.6 ln 0.6 + 2 * 0.2 ln 0.2) = 0.6 * 0.510826 + 0.4 * 1.609438 = 0.306495 + 0.643775
    assert answer_entropy(p) == approx(0.950271)
    assert answer_entropy(answer_distribution(list("abcde"))) == approx(1.609438)  # all distinct: ln 5
    assert answer_entropy(answer_distribution(["a"] * 5)) == 0.0
    assert answer_distribution([]) == {}
    assert answer_entropy({}) == 0.0


def test_dominant_group() -> None:
    assert dominant_group(["b", "a", "a", "b", "c"]) == ("b", [0, 3])  # tie 2-2: "b" was seen first
    assert dominant_group(["x", "y", "z"]) == ("x", [0])  # all distinct: a group of one
    assert dominant_group(["", "", "", "x", "y"]) == ("x", [3])  # "" is never dominant over an answer
    assert dominant_group(["", ""]) == ("", [])  # nobody answered: no group
    assert dominant_group([]) == ("", [])


def test_density_factor() -> None:
    assert density_factor(3, 5, 0.7) == approx(0.699368)  # 0.6^0.7 = exp(0.7 ln 0.6) = exp(-0.357578)
    assert density_factor(3, 5, 0.0) == 1.0  # no_density ablation: rho = 1
    assert density_factor(0, 0, 0.7) == 0.0
    with pytest.raises(ValueError, match="group_size=6"):
        density_factor(6, 5, 0.7)


# --- eq. 3-4 ----------------------------------------------------------------------------------

def test_position_weights() -> None:
    assert position_weights(3, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert position_weights(3, 0.15).tolist() == approx([1.0, 0.860708, 0.740818])  # exp(0), exp(-.15), exp(-.3)
    assert position_weights(0, 0.15).numel() == 0


# Four rollouts, G = {0, 1, 2}; rollout 3 is outside G. Position 1 has members 0, 1, 2 (prototype
# along (2,1)); position 2 has members 0, 1, both (1,0), so the prototype is (1,0) and both cosines are 1.
SCENE = [emb(X, X), emb(Y, X), emb(X), emb([-1.0, 0.0])]
GROUP = [0, 1, 2]
RHO = 0.75**0.7  # = 0.817604


def test_step_agreement_with_position_decay() -> None:
    a = step_agreement(SCENE, GROUP, 4, RewardConfig(position_decay=0.15, min_group=2))
    assert a.rho == approx(0.817604)
    assert a.positions_used == 2
    # r_0 = rho (1 * HI + W1 * 1) / (1 + W1) = rho (0.947214 + 0.860708) / 1.860708 = rho * 0.971631
    # r_1 = rho (1 * LO + W1 * 1) / (1 + W1) = rho (0.723607 + 0.860708) / 1.860708 = rho * 0.851458
    # r_2 = rho * HI (only position 1 is its own); r_3 = 0 (not in G)
    assert a.r_step == approx([RHO * 0.971631, RHO * 0.851458, RHO * HI, 0.0])
    # mean raw cosine over (0,1) (1,1) (2,1) (0,2) (1,2) = (0.894427 + 0.447214 + 0.894427 + 1 + 1) / 5
    assert a.mean_step_cos == approx(0.847214)


def test_step_agreement_without_position_decay() -> None:
    a = step_agreement(SCENE, GROUP, 4, RewardConfig(position_decay=0.0, min_group=2))
    # uniform weights: r_0 = rho (HI + 1) / 2 = rho * 0.973607, r_1 = rho (LO + 1) / 2 = rho * 0.861803
    assert a.r_step == approx([RHO * 0.973607, RHO * 0.861803, RHO * HI, 0.0])


def test_step_agreement_min_group_skips_thin_positions() -> None:
    a = step_agreement(SCENE, GROUP, 4, RewardConfig(min_group=3))
    # position 2 has only 2 members < 3: skipped, so each reward is position 1 alone
    assert a.positions_used == 1
    assert a.r_step == approx([RHO * HI, RHO * LO, RHO * HI, 0.0])
    assert a.mean_step_cos == approx(0.745356)  # (0.894427 * 2 + 0.447214) / 3

    a = step_agreement(SCENE, GROUP, 4, RewardConfig(min_group=4))  # |G| = 3 < 4: nothing
    assert (a.r_step, a.positions_used) == ([0.0] * 4, 0)
    assert math.isnan(a.mean_step_cos)  # nothing compared: undefined, not a cosine of 0
    assert a.rho == approx(RHO)  # still reported as a signal


def test_step_agreement_group_of_one() -> None:
    a = step_agreement(SCENE, [1], 4, RewardConfig(min_group=2))
    assert a.r_step == [0.0] * 4 and a.positions_used == 0 and math.isnan(a.mean_step_cos)
    # with min_group = 1 the single member is its own prototype: cos 1 -> r01 1 -> r = rho = 0.25^0.7
    a = step_agreement(SCENE, [1], 4, RewardConfig(min_group=1))
    assert a.r_step == approx([0.0, 0.378929, 0.0, 0.0])


def test_step_agreement_opposite_steps_zero_prototype() -> None:
    # (1,0) and (-1,0) average to the zero vector: cosine 0 by convention, r01 = 0.5, rho = (2/2)^0.7 = 1
    a = step_agreement([emb(X), emb([-1.0, 0.0])], [0, 1], 2, RewardConfig())
    assert a.r_step == approx([0.5, 0.5])
    assert a.mean_step_cos == 0.0


def test_step_agreement_density_zero_means_rho_one() -> None:
    a = step_agreement(SCENE, GROUP, 4, RewardConfig(gamma_density=0.0, position_decay=0.0))
    assert a.rho == 1.0
    assert a.r_step == approx([0.973607, 0.861803, HI, 0.0])


def test_step_agreement_empty_inputs_give_finite_rewards_and_no_cosine() -> None:
    a = step_agreement([], [], 0, RewardConfig())
    assert (a.r_step, a.positions_used, a.rho) == ([], 0, 0.0) and math.isnan(a.mean_step_cos)
    a = step_agreement([torch.zeros(0, 2), torch.empty(0), torch.zeros(0, 2)], [0, 1, 2], 3, RewardConfig())
    assert (a.r_step, a.positions_used) == ([0.0, 0.0, 0.0], 0) and math.isnan(a.mean_step_cos)
    assert a.rho == 1.0


def test_step_agreement_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected n=3"):
        step_agreement(SCENE, GROUP, 3, RewardConfig())
    with pytest.raises(ValueError, match="different sizes d"):
        step_agreement([emb(X), torch.ones(1, 3)], [0, 1], 2, RewardConfig())


# --- eq. 5-6 ----------------------------------------------------------------------------------

def test_length_penalty() -> None:
    assert length_penalty(10, 64) == 0.0
    assert length_penalty(64, 64) == 0.0
    assert length_penalty(96, 64) == 0.5  # (96 - 64) / 64
    assert length_penalty(500, 64) == 1.0
    with pytest.raises(ValueError, match="L must be > 0"):
        length_penalty(10, 0)


ANSWERS = ["a", "a", "b", "a", ""]
WORDS = [64, 96, 10, 200, 0]


def test_answer_rewards_soft() -> None:
    r = answer_rewards(ANSWERS, WORDS, RewardConfig())
    # p(a) = 0.6, p(b) = 0.2; 0.6^0.7 = 0.699368, 0.2^0.7 = 0.324131; eta = 0.05
    # r_1: l = 0.5 -> 0.699368 * (1 - 0.025); r_3: l = 1 -> 0.699368 * 0.95; the empty answer earns 0
    assert r == approx([0.699368, 0.699368 * 0.975, 0.324131, 0.699368 * 0.95, 0.0])
    assert answer_rewards(ANSWERS, WORDS, RewardConfig(alpha=1.0, eta=0.0)) == approx([0.6, 0.6, 0.2, 0.6, 0.0])


def test_answer_rewards_discrete_has_no_length_factor() -> None:
    assert answer_rewards(ANSWERS, WORDS, RewardConfig(answer_reward="discrete")) == [1.0, 1.0, 0.0, 1.0, 0.0]
    # all answers empty: no dominant group, so nobody gets the indicator
    assert answer_rewards(["", ""], [0, 0], RewardConfig(answer_reward="discrete")) == [0.0, 0.0]
    assert answer_rewards([], [], RewardConfig()) == []


def test_warmup_lambda() -> None:
    cfg = RewardConfig()  # lambda 0 -> 0.7, f = 0.3
    assert warmup_lambda(0, 100, cfg) == 0.0  # u = 0
    assert warmup_lambda(30, 100, cfg) == 0.0  # u = f: still held
    assert warmup_lambda(65, 100, cfg) == approx(0.35)  # u = 0.65: 0.7 * (0.65 - 0.3) / 0.7
    assert warmup_lambda(100, 100, cfg) == approx(0.7)  # u = 1
    assert warmup_lambda(250, 100, cfg) == approx(0.7)  # past the end: clamped
    assert warmup_lambda(100, 100, RewardConfig(warmup_fraction=1.0)) == 0.0  # f = 1: never ramps
    assert warmup_lambda(50, 100, RewardConfig(warmup_fraction=0.0)) == approx(0.35)  # f = 0: 0.7 * 0.5
    assert warmup_lambda(0, 100, RewardConfig(lambda_start=0.7)) == 0.7  # no_warmup preset
    with pytest.raises(ValueError, match="T must be > 0"):
        warmup_lambda(0, 0, cfg)


def test_mix() -> None:
    assert mix([1.0, 0.5], [0.0, 1.0], 0.25) == approx([0.75, 0.625])  # 0.75*1 + 0.25*0; 0.75*0.5 + 0.25*1
    assert mix([], [], 0.5) == []
    with pytest.raises(ValueError, match="lambda"):
        mix([1.0], [1.0], 1.5)


# --- proposer, baseline, eq. 8 ----------------------------------------------------------------

def test_proposer_reward() -> None:
    assert proposer_reward(0.9, 0.9, 0.35) == 1.0
    assert proposer_reward(0.55, 0.9, 0.35) == approx(0.606531)  # one sigma off: exp(-1/2)
    assert proposer_reward(0.0, 0.9, 0.35) == approx(0.036658)  # exp(-0.81 / 0.245) = exp(-3.306122)


def test_update_baseline() -> None:
    b = update_baseline(0.0, 1.0, 0.9)
    assert b == approx(0.1)  # 0.9 * 0 + 0.1 * 1
    assert update_baseline(b, 1.0, 0.9) == approx(0.19)  # 0.9 * 0.1 + 0.1


def test_kl_controller() -> None:
    cfg = KLConfig()  # tau 0.02, k 0.1, [1e-8, 100]
    assert kl_controller(1e-3, 0.02, cfg) == approx(1e-3)  # on target: unchanged
    assert kl_controller(1e-3, 0.04, cfg) == pytest.approx(1.105171e-3)  # exp(0.1 * 1)
    assert kl_controller(1e-3, 0.0, cfg) == pytest.approx(0.904837e-3)  # exp(0.1 * -1)
    assert kl_controller(90.0, 2.0, cfg) == 100.0  # 90 exp(9.9) clipped at beta_max
    assert kl_controller(90.0, 1e12, cfg) == 100.0  # no overflow on a huge KL
    assert kl_controller(1e-8, 0.0, cfg) == 1e-8  # 0.905e-8 clipped at beta_min
    assert kl_controller(0.0, 0.0, cfg) == 1e-8
    with pytest.raises(ValueError, match="kl is NaN"):
        kl_controller(1e-3, float("nan"), cfg)


# --- solver_rewards ---------------------------------------------------------------------------

def test_solver_rewards_composes_everything() -> None:
    texts = [
        "<think>Step 1: x\nStep 2: y</think><answer>A</answer>",
        "<think>Step 1: x\nStep 2: y</think><answer>a.</answer>",
        "<answer>B</answer>",
        "<think>Step 1: z</think><answer>a</answer>",
        "<think>Step 1: q</think><answer></answer>",
    ]
    parsed = [parse_rollout(t, 8) for t in texts]
    embeddings = [emb(X, X), emb(Y, X), emb(), emb(X), emb(Y)]
    s = solver_rewards(parsed, embeddings, 0.35, RewardConfig())
    assert s.p == approx({"a": 0.6, "b": 0.2, "": 0.2})
    assert s.entropy == approx(0.950271)
    assert (s.dominant, s.group, s.group_size) == ("a", [0, 1, 3], 3)
    assert s.majority_density == approx(0.6)
    rho = 0.699368  # 0.6^0.7
    assert s.rho == approx(rho)
    assert s.r_ans == approx([rho, rho, 0.324131, rho, 0.0])  # all under 64 words: no length penalty
    # Same geometry as SCENE with rollout 3 in the role of rollout 2 (see test_step_agreement_with_position_decay)
    r_step = [rho * 0.971631, rho * 0.851458, 0.0, rho * HI, 0.0]
    assert s.r_step == approx(r_step)
    assert s.r_sol == approx([0.65 * a + 0.35 * b for a, b in zip(s.r_ans, r_step)])
    assert (s.positions_used, s.lam) == (2, 0.35)
    assert s.mean_step_cos == approx(0.847214)
    assert s.mean_steps_per_rollout == approx(1.2)  # (2 + 2 + 0 + 1 + 1) / 5
    assert s.tagged_fraction == 1.0
    assert s.r_sol_mean == approx(sum(s.r_sol) / 5)


def test_solver_rewards_all_distinct_answers() -> None:
    parsed = [parse_rollout(f"<think>Step 1: s</think><answer>{a}</answer>", 8) for a in "xyz"]
    s = solver_rewards(parsed, [emb(X), emb(X), emb(X)], 0.5, RewardConfig())
    assert (s.group, s.positions_used) == ([0], 0)  # a group of one < min_group
    assert s.r_step == [0.0, 0.0, 0.0]
    assert s.r_ans == approx([0.463463] * 3)  # (1/3)^0.7
    assert s.entropy == approx(math.log(3))


def test_solver_rewards_empty_inputs_give_finite_rewards_and_no_cosine() -> None:
    s = solver_rewards([], [], 0.5, RewardConfig())
    assert (s.group, s.r_ans, s.r_step, s.r_sol) == ([], [], [], [])
    for value in (s.entropy, s.majority_density, s.rho, s.mean_steps_per_rollout,
                  s.r_ans_mean, s.r_step_mean, s.r_sol_mean, s.tagged_fraction):
        assert value == 0.0
    assert math.isnan(s.mean_step_cos)  # a diagnostic with nothing to measure is undefined, not 0

    parsed = [parse_rollout("<answer>7</answer>", 8)] * 3  # agreement but no steps at all
    s = solver_rewards(parsed, [torch.zeros(0, 2)] * 3, 0.5, RewardConfig())
    assert s.r_step == [0.0] * 3 and s.positions_used == 0 and math.isnan(s.mean_step_cos)
    assert s.r_sol == approx([0.5] * 3)  # 0.5 * 1^0.7 + 0.5 * 0
    assert all(math.isfinite(v) for v in s.r_sol)


def test_solver_rewards_checks_embedding_rows() -> None:
    parsed = [parse_rollout("<think>Step 1: a\nStep 2: b</think><answer>1</answer>", 8)]
    with pytest.raises(ValueError, match=r"step_embeddings\[0\] has 1 rows but rollout 0 has 2 steps"):
        solver_rewards(parsed, [emb(X)], 0.0, RewardConfig())
    with pytest.raises(ValueError, match="parsed has 1"):
        solver_rewards(parsed, [], 0.0, RewardConfig())


def test_solver_rewards_accepts_parsed_rollout_objects() -> None:
    r = ParsedRollout("5", "5", "", [], 100, True, False)  # 100 words: l = (100 - 64) / 64 = 0.5625
    s = solver_rewards([r, r], [emb(), emb()], 0.0, RewardConfig())
    assert s.r_sol == approx([1 - 0.05 * 0.5625] * 2)  # p = 1, so r_ans = 1 - eta * l = 0.971875


# --- figure 7 diagnostics ---------------------------------------------------------------------

def test_leave_one_out() -> None:
    S, D = leave_one_out([emb(X, X), emb(Y, X), emb(X)], [0, 1, 2])
    # row 0, step 1: others (0,1), (1,0) -> mean (.5,.5) -> cos 1/sqrt(2); step 2: other is (1,0) -> 1
    # row 1, step 1: others (1,0), (1,0) -> cos((0,1), (1,0)) = 0; step 2: other (1,0) -> 1
    # row 2, step 1: others (1,0), (0,1) -> 1/sqrt(2); step 2: rollout 2 has none -> NaN
    expected = torch.tensor([[0.707107, 1.0], [0.0, 1.0], [0.707107, float("nan")]], dtype=torch.float64)
    torch.testing.assert_close(S, expected, atol=1e-6, rtol=0, equal_nan=True)
    # D_1 = 1 - (0.707107 + 0 + 0.707107) / 3 = 0.528595; D_2 = 1 - (1 + 1) / 2 = 0
    torch.testing.assert_close(D, torch.tensor([0.528595, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)


def test_leave_one_out_undefined_entries() -> None:
    S, D = leave_one_out([emb(X, Y), emb(X), emb([-1.0, 0.0])], [0, 1])
    # step 2 exists only in rollout 0: nobody to compare with -> NaN, and D_2 has no defined entry
    assert S[0, 0].item() == 1.0 and S[1, 0].item() == 1.0
    assert math.isnan(S[0, 1].item()) and math.isnan(S[1, 1].item()) and math.isnan(D[1].item())
    assert D[0].item() == 0.0
    S, D = leave_one_out([emb(X)], [])
    assert S.shape == (0, 0) and D.shape == (0,)


# --- boundaries and validation that mutation testing found unpinned ------------------------------

def test_boundaries_are_accepted_and_invalid_values_named() -> None:
    cfg = RewardConfig()
    assert warmup_lambda(1, 1, cfg) == cfg.lambda_end                      # T = 1 is a valid schedule
    assert length_penalty(3, 1) == 1.0 and length_penalty(1, 1) == 0.0     # L = 1 word is valid
    assert mix([0.2], [0.9], 1.0) == approx([0.9])                          # lambda = 1 (step_only)
    with pytest.raises(ValueError, match="sigma_H must be > 0, got 0"):
        proposer_reward(0.9, 0.9, 0.0)
    with pytest.raises(ValueError, match="num_positions must be >= 0"):
        position_weights(-1, 0.15)
    with pytest.raises(ValueError, match="r_ans has 1 entries but r_step has 2"):
        mix([0.1], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="2 answers but 1 word counts"):
        answer_rewards(["a", "b"], [1], cfg)
    with pytest.raises(ValueError, match=r"group indices \[2\] out of range for n=2"):
        step_agreement([emb(X), emb(X)], [0, 2], 2, cfg)
    with pytest.raises(ValueError, match="total iterations T must be > 0"):
        warmup_lambda(1, 0, cfg)
    with pytest.raises(TypeError, match=r"step_embeddings\[1\] must be a torch.Tensor, got list"):
        step_agreement([emb(X), [1.0, 0.0]], [0, 1], 2, cfg)
    with pytest.raises(ValueError, match=r"step_embeddings\[0\] must be \[J_i, d\], got shape \(2, 1, 2\)"):
        step_agreement([torch.zeros(2, 1, 2), emb(X)], [0, 1], 2, cfg)


def test_warmup_ramps_from_a_nonzero_start() -> None:
    cfg = RewardConfig(lambda_start=0.2, lambda_end=0.6, warmup_fraction=0.5)
    assert warmup_lambda(5, 10, cfg) == approx(0.2)
    assert warmup_lambda(8, 10, cfg) == approx(0.2 + 0.4 * 0.6)
    assert warmup_lambda(10, 10, cfg) == approx(0.6)


def test_position_weights_are_float64() -> None:
    assert position_weights(3, 0.15).dtype == torch.float64


def test_solver_rewards_rejects_embeddings_of_a_rollout_without_steps_and_reports_tags() -> None:
    no_steps = ParsedRollout("5", "5", "", [], 3, True, False)
    untagged = ParsedRollout("5", "5", "", [], 3, False, False)
    with pytest.raises(ValueError, match=r"step_embeddings\[0\] has 2 rows but rollout 0 has 0 steps"):
        solver_rewards([no_steps, untagged], [emb(X, Y), emb()], 0.0, RewardConfig())
    s = solver_rewards([no_steps, untagged], [torch.zeros(0), emb()], 0.0, RewardConfig())
    assert s.tagged_fraction == 0.5 and s.answers == ["5", "5"]


def test_leave_one_out_has_one_column_per_step_position() -> None:
    S, D = leave_one_out([emb(X, Y, X), emb(Y, Y), emb(X)], [0, 1, 2])
    assert S.shape == (3, 3) and D.shape == (3,)        # J = 3 steps, not the embedding size d = 2
    assert D[1].item() == approx(0.0) and math.isnan(D[2].item())


def test_embedding_rows_must_match_steps_whatever_the_tensor_shape() -> None:
    two_steps = parse_rollout("<think>Step 1: a\nStep 2: b</think><answer>1</answer>", 8)
    no_steps = ParsedRollout("1", "1", "", [], 3, True, False)
    with pytest.raises(ValueError, match=r"has 0 rows but rollout 0 has 2 steps"):
        solver_rewards([two_steps], [torch.zeros(0)], 0.0, RewardConfig())
    with pytest.raises(ValueError, match=r"has 1 rows but rollout 0 has 0 steps"):
        solver_rewards([no_steps], [torch.zeros(1, 1)], 0.0, RewardConfig())
    # a member without steps may carry any embedding size; only members with steps must agree on d
    agreement = step_agreement([torch.zeros(0, 5), emb(X), emb(X)], [0, 1, 2], 3, RewardConfig())
    assert agreement.r_step[1] == approx(agreement.r_step[2]) and agreement.r_step[0] == 0.0


def test_step_embedding_of_a_padded_step_leaves_the_pad_row_out(tiny_cfg) -> None:
    """Eq. 3 on the real tokenizer and table: a step shorter than its batch-mates is padded, and the pad row
    must not enter its mean. The embedded model's pad row is exactly zero (padding would only rescale the
    mean, which the L2 normalisation hides); in Qwen2.5-VL-7B `<|endoftext|>` is a trained token."""
    cfg = tiny_cfg()
    pol = Policy(cfg.model, cfg.lora, cfg.perf, torch.device("cpu"), torch.float32)
    table = pol.backbone.get_input_embeddings().weight
    pad = pol.tokenizer.pad_token_id
    with torch.no_grad():      # a trained-looking pad row: non-zero and parallel to no step's mean
        table[pad] = torch.linspace(-1.0, 1.0, table.shape[1])
    short, long_ = "Its value is 42.", "The tallest bar is B, and the shortest bar is D with a value of 7."
    ids = {s: pol.tokenizer(s, add_special_tokens=False)["input_ids"] for s in (short, long_)}
    assert pad not in ids[short] and len(ids[short]) < len(ids[long_])       # the short step gets padded

    def by_hand(token_ids: list[int]) -> torch.Tensor:
        mean = table.detach()[token_ids].double().mean(0)
        return mean / mean.norm()

    e = pol.step_embeddings([[long_, short], [short]], 64)
    assert torch.allclose(e[0][1].double(), by_hand(ids[short]), atol=1e-6)     # padded in its batch
    assert torch.allclose(e[1][0].double(), by_hand(ids[short]), atol=1e-6)
    assert torch.allclose(e[0][0].double(), by_hand(ids[long_]), atol=1e-6)
    # truncated to step_embed_max_tokens: the first k tokens only, the short step padded up to k
    k = len(ids[short]) + 2
    e = pol.step_embeddings([[long_, short]], k)
    assert torch.allclose(e[0][0].double(), by_hand(ids[long_][:k]), atol=1e-6)
    assert torch.allclose(e[0][1].double(), by_hand(ids[short]), atol=1e-6)


def test_reward_control_none_negated_and_random() -> None:
    from ireasoner_core.rewards import reward_control

    r = [0.9, 0.1, 0.5]
    assert reward_control(r, "none", "k") == r
    assert reward_control(r, "negated", "k") == [-0.9, -0.1, -0.5]
    drawn = reward_control(r, "random", "0/3/0/solver")
    assert drawn == reward_control(r, "random", "0/3/0/solver")          # same key, same draws (resume)
    assert drawn != reward_control(r, "random", "0/4/0/solver")          # another iteration, other draws
    assert all(0.0 <= x < 1.0 for x in drawn) and drawn != r
    many = reward_control([1.0] * 4000, "random", "k")
    assert abs(sum(many) / len(many) - 0.5) < 0.02                       # uniform, whatever the rewards were
    with pytest.raises(ValueError, match="rewards.control"):
        reward_control(r, "shuffled", "k")


@pytest.mark.parametrize("control", ["negated", "random"])
def test_the_trainer_updates_on_the_controlled_rewards(tiny_cfg, control) -> None:
    """Same seed, same rollouts: the Solver's update sees -r or U[0, 1), the Proposer's too, and the logged
    signals stay the method's own."""
    from ireasoner_core.rewards import reward_control
    from ireasoner_core.trainer import Trainer

    seen: dict[str, list] = {}

    def run(ctrl: str) -> dict:
        tr = Trainer(tiny_cfg(**{"rewards.control": ctrl, "schedule.proposer_update_every": 1}))
        calls = []
        update = tr._update
        tr._update = lambda role, batches, rewards, *a: calls.append((role, list(rewards))) or update(
            role, batches, rewards, *a)
        record = tr.iteration(1)
        seen[ctrl] = calls
        return record

    plain, controlled = run("none"), run(control)
    assert [role for role, _ in seen[control]] == ["solver", "proposer"]
    for (role, r_plain), (_, r_ctrl) in zip(seen["none"], seen[control]):
        assert r_ctrl == reward_control(r_plain, control, f"0/1/0/{role}"), role
    assert controlled["r_sol_mean"] == plain["r_sol_mean"]
    assert controlled["proposer_reward"] == plain["proposer_reward"]
