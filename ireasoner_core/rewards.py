"""SPEC.md "Rewards" and "Updates" (eq. 1-8) as pure functions, plus figure 7's diagnostics.

Inputs are parsed rollouts (``parsing.ParsedRollout``) and per-rollout step embeddings; the
outputs are Python floats, so the trainer can log them as they are. Every reward is a finite
number on empty input (no rollouts, rollouts without steps). Diagnostics with nothing to measure
are NaN, never 0: ``mean_step_cos`` when no step position has ``min_group`` members of G (|G| below
it, or rollouts without steps), and the undefined entries of ``leave_one_out``. A 0 there would read
as "the steps disagree".

Choices SPEC.md leaves open, pinned by tests/test_rewards.py:

* An empty normalised answer "" means "no answer". It still counts in N and in p(a) (eq. 1),
  so the entropy sees it, but it is never the dominant answer while a non-empty answer
  exists; when every answer is empty there is no dominant group (G = {}), and an empty answer
  earns r^ans = 0 (otherwise a Solver could collect full answer agreement by answering nothing).
* ``answer_reward="discrete"`` is r^ans = 1[i in G] with no length factor: SPEC.md defines the
  discrete reward as the bare indicator, and the length penalty as part of the soft reward.
* Cosines are computed in float64 on the CPU; a zero-length prototype (members that cancel
  out) has cosine 0 with every step.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ireasoner_core.config import KLConfig, RewardConfig
from ireasoner_core.parsing import ParsedRollout

_EPS = 1e-12


def answer_distribution(answers: Sequence[str]) -> dict[str, float]:
    """Eq. 1: p(a) = (1/N) sum_i 1[a_i = a], keys in first-seen order."""
    n = len(answers)
    return {a: c / n for a, c in Counter(answers).items()} if n else {}


def answer_entropy(p: dict[str, float]) -> float:
    """Answer entropy H = -sum_a p(a) ln p(a), in nats (0 for an empty distribution)."""
    return float(-sum(q * math.log(q) for q in p.values() if q > 0.0))


def dominant_group(answers: Sequence[str]) -> tuple[str, list[int]]:
    """Eq. 2: dominant answer a^ = argmax_a p(a) (ties: seen first; never "" unless all are) and G."""
    counts = Counter(a for a in answers if a)
    if not counts:
        return "", []
    top = max(counts.values())
    # Counter keeps first-seen order, so the first answer reaching the top count wins ties.
    dominant = next(a for a, c in counts.items() if c == top)
    return dominant, [i for i, a in enumerate(answers) if a == dominant]


def density_factor(group_size: int, n: int, gamma: float) -> float:
    """Eq. 2: rho = (|G| / N)^gamma_density (0 when N = 0)."""
    if n < 0 or not 0 <= group_size <= n:
        raise ValueError(f"group_size={group_size} must be between 0 and n={n}")
    if n == 0:
        return 0.0
    return float((group_size / n) ** gamma)


def position_weights(num_positions: int, decay: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Eq. 4: w_j = exp(-decay (j - 1)) for j = 1..num_positions."""
    if num_positions < 0:
        raise ValueError(f"num_positions must be >= 0, got {num_positions}")
    return torch.exp(-decay * torch.arange(num_positions, dtype=dtype))


def _as_steps(e: torch.Tensor, i: int) -> torch.Tensor:
    """Rollout i's step embeddings as a float64 [J_i, d] matrix (an empty tensor of any shape = no steps)."""
    if not isinstance(e, torch.Tensor):
        raise TypeError(f"step_embeddings[{i}] must be a torch.Tensor, got {type(e).__name__}")
    if e.numel() == 0:
        return torch.zeros(0, e.shape[-1] if e.dim() == 2 else 0, dtype=torch.float64)
    if e.dim() != 2:
        raise ValueError(f"step_embeddings[{i}] must be [J_i, d], got shape {tuple(e.shape)}")
    return e.detach().to(device="cpu", dtype=torch.float64)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine clipped to [-1, 1]; 0 when either vector has (near) zero length."""
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na < _EPS or nb < _EPS:
        return 0.0
    return float(torch.clamp(torch.dot(a, b) / (na * nb), -1.0, 1.0))


def _group_steps(step_embeddings: Sequence[torch.Tensor], group: Sequence[int], n: int) -> dict[int, torch.Tensor]:
    if len(step_embeddings) != n:
        raise ValueError(f"step_embeddings has {len(step_embeddings)} rollouts, expected n={n}")
    bad = [i for i in group if not 0 <= i < n]
    if bad:
        raise ValueError(f"group indices {bad} out of range for n={n}")
    steps = {i: _as_steps(step_embeddings[i], i) for i in group}
    dims = {i: e.shape[1] for i, e in steps.items() if e.shape[0] > 0}
    if len(set(dims.values())) > 1:
        raise ValueError(f"step embeddings of the group have different sizes d: {dims}")
    return steps


@dataclass
class StepAgreement:
    """Eq. 3-4 results for one (image, question)."""

    r_step: list[float]
    positions_used: int
    """Step positions j with at least min_group members in G (the figure 5 signal)."""
    mean_step_cos: float
    """Mean raw cosine cos(e_i,j, mu_j) over the used (i, j) with i in G; NaN if none (nothing measured)."""
    rho: float


def step_agreement(step_embeddings: Sequence[torch.Tensor], group: Sequence[int], n: int,
                   cfg: RewardConfig) -> StepAgreement:
    """Eq. 3-4: step reward r_i^step = rho * weighted mean over used positions of (cos(e_i,j, mu_j) + 1) / 2."""
    steps = _group_steps(step_embeddings, group, n)
    rho = density_factor(len(group), n, cfg.gamma_density)
    r_step = [0.0] * n
    if len(group) < cfg.min_group or not group:
        return StepAgreement(r_step, 0, math.nan, rho)
    depth = max(e.shape[0] for e in steps.values())
    w = position_weights(depth, cfg.position_decay).tolist()
    weighted = dict.fromkeys(group, 0.0)
    weight_sum = dict.fromkeys(group, 0.0)
    cosines: list[float] = []
    positions_used = 0
    for j in range(depth):
        members = [i for i in group if steps[i].shape[0] > j]
        if len(members) < cfg.min_group:
            continue
        positions_used += 1
        prototype = torch.stack([steps[i][j] for i in members]).mean(dim=0)
        for i in members:
            c = _cos(steps[i][j], prototype)
            cosines.append(c)
            weighted[i] += w[j] * (c + 1.0) / 2.0
            weight_sum[i] += w[j]
    for i in group:
        if weight_sum[i] > 0.0:
            r_step[i] = rho * weighted[i] / weight_sum[i]
    mean_cos = sum(cosines) / len(cosines) if cosines else math.nan
    return StepAgreement(r_step, positions_used, mean_cos, rho)


def length_penalty(words: int, L: int) -> float:
    """Eq. 5: l_i = clip((words before <answer> - L) / L, 0, 1)."""
    if L <= 0:
        raise ValueError(f"length target L must be > 0, got {L}")
    return min(max((words - L) / L, 0.0), 1.0)


def answer_rewards(answers: Sequence[str], words_before_answer: Sequence[int], cfg: RewardConfig) -> list[float]:
    """Eq. 5: r_i^ans = p(a_i)^alpha (1 - eta l_i); discrete mode 1[i in G] with no length factor.

    An empty answer "" earns 0 in both modes (see the module docstring).
    """
    if len(answers) != len(words_before_answer):
        raise ValueError(f"{len(answers)} answers but {len(words_before_answer)} word counts")
    if cfg.answer_reward == "discrete":
        in_group = set(dominant_group(answers)[1])
        return [1.0 if i in in_group else 0.0 for i in range(len(answers))]
    p = answer_distribution(answers)
    return [
        (p[a] ** cfg.alpha) * (1.0 - cfg.eta * length_penalty(words, cfg.length_target_words)) if a else 0.0
        for a, words in zip(answers, words_before_answer)
    ]


def warmup_lambda(t: int, total: int, cfg: RewardConfig) -> float:
    """Eq. 6 warm-up: lambda_start while u = t/T <= f, then linear to lambda_end at u = 1."""
    if total <= 0:
        raise ValueError(f"total iterations T must be > 0, got {total}")
    u = min(max(t / total, 0.0), 1.0)
    f = cfg.warmup_fraction
    if u <= f:  # also covers f = 1: no ramp, so no division by 1 - f = 0
        return cfg.lambda_start
    return cfg.lambda_start + (cfg.lambda_end - cfg.lambda_start) * (u - f) / (1.0 - f)


def mix(r_ans: Sequence[float], r_step: Sequence[float], lam: float) -> list[float]:
    """Eq. 6: r_i^sol = (1 - lambda) r_i^ans + lambda r_i^step."""
    if len(r_ans) != len(r_step):
        raise ValueError(f"r_ans has {len(r_ans)} entries but r_step has {len(r_step)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return [(1.0 - lam) * a + lam * s for a, s in zip(r_ans, r_step)]


def proposer_reward(H: float, mu: float, sigma: float) -> float:
    """Proposer reward r^p = exp(-(H - mu_H)^2 / (2 sigma_H^2))."""
    if sigma <= 0:
        raise ValueError(f"proposer sigma_H must be > 0, got {sigma}")
    return math.exp(-((H - mu) ** 2) / (2.0 * sigma**2))


def reward_control(rewards: Sequence[float], control: str, key: str) -> list[float]:
    """The rewards a role trains on under ``rewards.control`` (not SPEC.md): as computed, -r, or U[0, 1).

    ``key`` seeds the random control (run seed, iteration, process, role), so a resumed run draws the same.
    """
    if control == "none":
        return list(rewards)
    if control == "negated":
        return [-r for r in rewards]
    if control == "random":
        rng = random.Random(key)
        return [rng.random() for _ in rewards]
    raise ValueError(f"rewards.control: unknown control {control!r}; known: none, negated, random")


def update_baseline(b: float, r: float, m: float) -> float:
    """Eq. 7 baseline: EMA b <- m b + (1 - m) r."""
    return m * b + (1.0 - m) * r


def kl_controller(beta: float, kl: float, cfg: KLConfig) -> float:
    """Eq. 8: beta <- clip(beta exp(k (KL - tau) / tau), beta_min, beta_max)."""
    if math.isnan(kl):
        raise ValueError("kl is NaN: the KL estimate of the last update is broken")
    if beta <= 0.0:
        return cfg.beta_min
    # In log space: a large KL would overflow exp() long before beta reaches beta_max.
    log_beta = math.log(beta) + cfg.gain * (kl - cfg.target) / cfg.target
    if log_beta >= math.log(cfg.beta_max):
        return cfg.beta_max
    return max(math.exp(log_beta), cfg.beta_min)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


@dataclass
class SolverRewards:
    """All Solver-side rewards and training-dynamics signals for one (image, question)."""

    p: dict[str, float]
    entropy: float
    dominant: str
    group: list[int]
    group_size: int
    majority_density: float
    rho: float
    r_ans: list[float]
    r_step: list[float]
    r_sol: list[float]
    positions_used: int
    mean_step_cos: float
    """NaN when no step pair was compared (``StepAgreement.mean_step_cos``)."""
    mean_steps_per_rollout: float
    lam: float
    tagged_fraction: float = 0.0
    """Fraction of rollouts with an <answer> tag."""
    answers: list[str] = field(default_factory=list)

    @property
    def r_ans_mean(self) -> float:
        return _mean(self.r_ans)

    @property
    def r_step_mean(self) -> float:
        return _mean(self.r_step)

    @property
    def r_sol_mean(self) -> float:
        return _mean(self.r_sol)


def solver_rewards(parsed: Sequence[ParsedRollout], step_embeddings: Sequence[torch.Tensor], lam: float,
                   cfg: RewardConfig) -> SolverRewards:
    """Eq. 1-6: answer distribution, dominant group, step agreement and mixed Solver reward r^sol."""
    n = len(parsed)
    if len(step_embeddings) != n:
        raise ValueError(f"step_embeddings has {len(step_embeddings)} rollouts but parsed has {n}")
    for i, (rollout, e) in enumerate(zip(parsed, step_embeddings)):
        if e.shape[0] != len(rollout.steps) and not (e.numel() == 0 and not rollout.steps):
            raise ValueError(f"step_embeddings[{i}] has {e.shape[0]} rows but rollout {i} has {len(rollout.steps)} steps")
    answers = [r.answer for r in parsed]
    p = answer_distribution(answers)
    dominant, group = dominant_group(answers)
    agreement = step_agreement(step_embeddings, group, n, cfg)
    r_ans = answer_rewards(answers, [r.words_before_answer for r in parsed], cfg)
    return SolverRewards(
        p=p,
        entropy=answer_entropy(p),
        dominant=dominant,
        group=group,
        group_size=len(group),
        majority_density=len(group) / n if n else 0.0,
        rho=agreement.rho,
        r_ans=r_ans,
        r_step=agreement.r_step,
        r_sol=mix(r_ans, agreement.r_step, lam),
        positions_used=agreement.positions_used,
        mean_step_cos=agreement.mean_step_cos,
        mean_steps_per_rollout=_mean([len(r.steps) for r in parsed]),
        lam=lam,
        tagged_fraction=_mean([1.0 if r.has_answer_tag else 0.0 for r in parsed]),
        answers=answers,
    )


def leave_one_out(step_embeddings: Sequence[torch.Tensor], group: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Figure 7: S_i,j = cos(e_i,j, mean of e_k,j over k in G, k != i) and D_j = 1 - mean_i S_i,j.

    S is [|G| x J] (rows in the order of ``group``, J = the longest trace in G), float64. An
    entry is NaN where rollout i has no step j or no other member of G has one; D_j averages
    the defined entries of column j and is NaN when there are none.
    """
    steps = _group_steps(step_embeddings, group, len(step_embeddings))
    depth = max((e.shape[0] for e in steps.values()), default=0)
    S = torch.full((len(group), depth), float("nan"), dtype=torch.float64)
    for row, i in enumerate(group):
        for j in range(min(steps[i].shape[0], depth)):
            others = [steps[k][j] for k in group if k != i and steps[k].shape[0] > j]
            if others:
                S[row, j] = _cos(steps[i][j], torch.stack(others).mean(dim=0))
    defined = ~torch.isnan(S)
    counts = defined.sum(dim=0)
    sums = torch.where(defined, S, torch.zeros_like(S)).sum(dim=0)
    D = torch.where(counts > 0, 1.0 - sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    return S, D
