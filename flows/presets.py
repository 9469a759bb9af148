"""Presets of the ``ireasoner`` flow: the parameters of its five deployments (a sixth deployment,
``ireasoner-variant/variant``, runs one variant of a sweep and has no preset).

deployments/prefect.yaml carries the same values (a test checks they agree), so the Prefect
UI shows, and lets a person edit, exactly what each deployment runs.

- ``smoke``: the embedded tiny model on synthetic images, minutes on a CPU.
- ``mini``: paper table 1 in miniature on a laptop, on the model organism: baseline, ``soft_only``,
  ``full`` and two reward controls (negated, random) trained on the synthetic charts and food chains
  whose counts Count-mini asks, over 3 seeds, scored on Count-mini, greedy and avg@5, with paired
  95 % intervals and answer entropy (docs/evaluation.md has its measured table).
- ``main``: paper table 1, the untrained baseline and the full method.
- ``ablations``: every variant of paper tables 2 and 3.
- ``retrain``: the full method on the current image folder (scheduled, off by default).

The 7B presets read the image folder from ``$IREASONER_IMAGES`` on the machine that runs the
flow (a worker), so one deployment serves any node that mounts its images there.
"""

from __future__ import annotations

from typing import Any

from ireasoner_core.data.synthetic import FAMILY_KINDS
from ireasoner_core.evaluation.benchmarks import TABLE1_TASKS

PAPER_MODEL_CONFIG = "configs/qwen2.5-vl-7b.yaml"
IMAGES_ENV = "$IREASONER_IMAGES"
SEVEN_B_RESOURCES = {"devices_per_variant": 8, "max_parallel_training": 1}
# main, ablations and retrain evaluate paper table 1 (SPEC.md; lmms-eval task names). Their datasets
# come from the Hugging Face cache: `ireasoner benchmarks fetch` once, on a machine with network.

# The CPU sweep, on the model organism (docs/embedded_model.md, "The model organism"): counts, where the
# shipped model's majority of 5 beats its single sample by +12 points and the constant answer by 16;
# trained on the image kinds Count-mini asks about and scored on Count-mini (400 items), with two
# reward controls. One organism task, not two: a second 400-item task would take the sweep past 30
# minutes. Sized for 2 cores within 30 minutes: 3 seeds x 4 trained variants of 50 iterations, two
# trainings at once on one thread each (docs/evaluation.md, "The mini sweep", has the measured time).
MINI_IMAGES = 64
MINI_KINDS = list(FAMILY_KINDS["count"])   # bar, line, pie, diagram
MINI_ITERATIONS = 50
MINI_SEEDS = [0, 1, 2]
# lr 3e-4: with the Proposer's own questions (16 % of them counts), 1e-3 took Count-mini down by 32
# points greedy in one seed; 3e-4 by 7, and avg@5 did not move (docs/evaluation.md, "The mini sweep").
# N = 8 rollouts, as the organism learning test (tests/test_organism_learning.py).
MINI_OVERRIDES = {"optim.lr": 3e-4, "schedule.images_per_iteration": 2, "sampling.num_rollouts": 8,
                  "checkpoint.every": 25}
MINI_TASKS = ["ireasoner_count_mini"]
MINI_RESOURCES = {"max_parallel_training": 2, "launcher": "subprocess", "threads_per_variant": 1}
MINI_PROTOCOL = "solver"

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "name": "smoke",
        "base_config": "configs/tiny.yaml",
        "images": {"synthetic_images": 32},
        "iterations": 20,
        # diagnostics every iteration so figure 7 finds an iteration with a dominant group of >= 2
        "overrides": {"checkpoint.every": 5, "log_diagnostics_every": 1},
        "variants": ["baseline", "full"],
        "seeds": [0],
        # The Solver's prompt: what the run trains (the embedded model also answers lmms-eval's
        # direct prompts, docs/embedded_model.md, but the effect of training shows in the format it trains).
        "evaluation": {"tasks": ["ireasoner_chartqa_mini", "ireasoner_ai2d_mini", "ireasoner_geometry_mini"],
                       "limit": 100, "protocol": "solver"},
    },
    "mini": {
        "name": "mini",
        "base_config": "configs/tiny.yaml",
        "images": {"synthetic_images": MINI_IMAGES, "synthetic_kinds": list(MINI_KINDS)},
        "iterations": MINI_ITERATIONS,
        "overrides": dict(MINI_OVERRIDES),
        # the method, its answer-only ablation, and two reward controls (config.CONTROLS)
        "variants": ["baseline", "soft_only", "full", "negated", "random_reward"],
        "seeds": list(MINI_SEEDS),
        "evaluation": {"tasks": list(MINI_TASKS), "protocol": MINI_PROTOCOL, "sampled_k": 5},
        "resources": dict(MINI_RESOURCES),
    },
    "main": {
        "name": "main",
        "base_config": PAPER_MODEL_CONFIG,
        "images": {"sources": [IMAGES_ENV]},
        "variants": ["baseline", "full"],
        "seeds": [0],
        "evaluation": {"tasks": list(TABLE1_TASKS)},
        "resources": dict(SEVEN_B_RESOURCES),
    },
    "ablations": {
        "name": "ablations",
        "base_config": PAPER_MODEL_CONFIG,
        "images": {"sources": [IMAGES_ENV]},
        "variants": ["table2", "table3"],
        "seeds": [0],
        "evaluation": {"tasks": list(TABLE1_TASKS)},
        "resources": dict(SEVEN_B_RESOURCES),
    },
    "retrain": {
        "name": "retrain",
        "base_config": PAPER_MODEL_CONFIG,
        "images": {"sources": [IMAGES_ENV]},
        "variants": ["full"],
        "seeds": [0],
        "evaluation": {"tasks": list(TABLE1_TASKS)},
        "resources": dict(SEVEN_B_RESOURCES),
    },
}
