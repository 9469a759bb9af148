"""End-to-end learning on the organism: the method's full Solver reward (answer agreement plus the
step reward at lambda = 0.7, eq. 1-6), the Proposer rewarded and updated every 5 iterations,
trained on pie charts, must raise the Solver's held-out accuracy on counts, a family where the
shipped model's majority of 5 beats its single sample and the constant answer (docs/embedded_model.md
"Majority gain per question family": 50.0 % vs 62.3 %, constant 46.5 %). With the rewards negated,
or with the step reward's sign flipped, it must not.

The learning test beside it (test_learning_end_to_end.py) holds lambda at 0 and checks agreement on
its training images; this one checks what the agreement is for: accuracy on 200 held-out pie charts
asking the trained question (``families.family_items``, the families table's seed), single-sample at
temperature 1, before and after training, scored by ``families.score_samples``. Because the step
reward is 70 % of r^sol here, flipping its sign in ``rewards.step_agreement`` pushes the Solver away
from its dominant group: the normal run then fails (docs/testing.md, "Learning on the organism").

The Solver's question is the family's pie template ("How many slices are there?") instead of parsed
from the Proposer's text, so that every update is on the family. The Proposer still generates, is
rewarded (eq. 9) and is updated; only its question is replaced.

Measured (docs/testing.md), seeds 0, 1, 2: see RISE's comment.
"""

from __future__ import annotations

import random

import pytest
from conftest import normal_and_negated, tiny_overrides

import ireasoner_core.trainer as trainer_mod
from ireasoner_core import prompts
from ireasoner_core.config import build_config
from ireasoner_core.data.synthetic import FAMILY_KINDS, generate_synthetic
from ireasoner_core.embedded.families import FAMILIES_SEED, family_items, score_samples
from ireasoner_core.embedded.measure import SOLVER_MAX_NEW_TOKENS, _generate
from ireasoner_core.trainer import Trainer

FAMILY = "count"
QUESTIONS = ("How many slices are there?",)
KINDS = ("pie",)
KINDS_OF_FAMILY = FAMILY_KINDS[FAMILY]
ITERATIONS = 50
HELD_OUT = 200
SAMPLES = 5
# Points of single-sample accuracy, after minus before (from 75.9; the constant answer "3" scores 52.5).
# Measured (1 thread, 200 items, seeds 0/1/2): rewards as specified +14.6 / +11.7 / +13.7;
# negated -43.5 / +1.0 / +0.5; step reward's sign flipped +3.7 / 0.0 / -9.1. The threshold sits
# between the groups, about 4 points from each.
RISE = 7.5


def _accuracy(policy) -> float:
    """Single-sample accuracy (%) of the Solver adapter on the family's held-out items."""
    import torch

    # The family's held-out items that ask the trained questions (a family may span image kinds).
    pairs = [p for p in family_items(FAMILY, len(KINDS_OF_FAMILY) * HELD_OUT, FAMILIES_SEED)
             if p[1].question in QUESTIONS][:HELD_OUT]
    assert len(pairs) == HELD_OUT, len(pairs)
    policy.activate("solver")
    policy.model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(FAMILIES_SEED)
        sampled = _generate(policy.model, policy.processor, [prompts.solver_messages(qa.question) for _, qa in pairs],
                            [im for im, _ in pairs], samples=SAMPLES, max_new_tokens=SOLVER_MAX_NEW_TOKENS,
                            batch_size=64, stop="</answer>")
    return 100 * sum(score_samples(t, qa.answer)[0] for (_, qa), t in zip(pairs, sampled)) / len(pairs)


def _run(root, *, negate: bool, seed: int = 0) -> tuple[float, float]:
    """(held-out accuracy before training, after training) of one run."""
    cfg = build_config({}, tiny_overrides(root / f"run-{'neg' if negate else 'pos'}-{seed}", **{
        "seed": seed, "data.image_dir": str(root / "images"),
        "sampling.num_rollouts": 8, "sampling.solver_max_new_tokens": 96, "sampling.proposer_max_new_tokens": 24,
        "rewards.min_group": 2, "rewards.lambda_start": 0.7, "rewards.lambda_end": 0.7,
        "schedule.iterations": ITERATIONS, "schedule.images_per_iteration": 2,
        "schedule.proposer_update_every": 5, "optim.lr": 1e-3, "lora.dropout": 0.0,
        "checkpoint.every": ITERATIONS + 1, "log_diagnostics_every": ITERATIONS + 1,
        # the run config's reward control (the mini sweep's "negated" variant): both roles train on -r
        "rewards.control": "negated" if negate else "none",
    }))
    with pytest.MonkeyPatch.context() as mp:
        # The trainer seeds `random`, so the drawn questions are the same for both signs.
        mp.setattr(trainer_mod, "parse_question", lambda text, fallback: random.choice(QUESTIONS))
        trainer = Trainer(cfg)
        # The adapters start at zero (LoRA's B), so this is the shipped model's accuracy; the
        # forked RNG leaves the training run as it would be without it.
        before = _accuracy(trainer.policy)
        for t in range(1, ITERATIONS + 1):
            trainer.iteration(t)
        return before, _accuracy(trainer.policy)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, embedded_model_dir):
    root = tmp_path_factory.mktemp("organism")
    generate_synthetic(root / "images", 32, seed=5, kinds=KINDS)
    return normal_and_negated(_run, root)


@pytest.mark.slow
def test_full_reward_raises_held_out_accuracy_on_the_family(runs):
    before, after = runs["normal"]
    assert after - before > RISE, (before, after)


@pytest.mark.slow
def test_negated_rewards_do_not_raise_it(runs):
    before, after = runs["negated"]
    assert after - before < RISE, (before, after)
    # Same seed, same images, same questions: only the rewards' sign differs.
    assert runs["normal"][1] - after > RISE, (runs["normal"], runs["negated"])
