"""Re-measure BUILD.json's evaluation figures on this machine, beside the shipped figures.

The shipped weights are the same everywhere, but a forward pass's floats still differ in the last
bits between CPU kernels and thread counts, and a greedy decode or a sampled token can flip where
two logits nearly tie. ``ireasoner measure-embedded`` shows how far that moves each figure here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from ireasoner_core.embedded.build import BUILD_FILE
from ireasoner_core.embedded.measure import MINI_TASKS
from ireasoner_core.embedded.warmstart import WarmStartConfig, measure_build

# (label, path into BUILD.json's warm_start record): the figures the docs and tests quote.
FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((f"{t.removeprefix('ireasoner_').removesuffix('_mini')} {proto} {stat}", ("mini_benchmarks", t, proto, stat))
      for t in MINI_TASKS for proto, stat in (("lmms_eval", "greedy"), ("solver", "greedy"), ("solver", "avg@5"))),
    ("training single-sample accuracy", ("training_distribution", "single_sample_accuracy")),
    ("training majority-of-5 accuracy", ("training_distribution", "majority_of_5_accuracy")),
    ("training majority gain (points)", ("training_distribution", "majority_gain_points")),
    ("training distinct step chains", ("training_distribution", "mean_distinct_step_chains")),
    ("answer tag fraction", ("training_distribution", "answer_tag_fraction")),
    ("proposer question tag fraction", ("proposer_question_tag_fraction",)),
)


def figure(record: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record if isinstance(record, int | float) else None


def remeasure(model_dir: Path, *, threads: int | None = None) -> dict:
    """Load the build in float32 (as the build measured it) and run BUILD.json's measurements again."""
    if threads:
        torch.set_num_threads(threads)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    build = json.loads((Path(model_dir) / BUILD_FILE).read_text())
    recorded = (build.get("warm_start") or {}).get("config", {})
    fields = WarmStartConfig.__dataclass_fields__
    cfg = WarmStartConfig(**{k: tuple(v) if k == "mix" else v for k, v in recorded.items() if k in fields})
    return measure_build(model, processor, cfg)


def comparison(shipped: dict, here: dict, threads: int) -> str:
    """A markdown table: each figure as BUILD.json records it and as measured here, and the difference."""
    lines = [f"| figure | shipped (BUILD.json) | this machine ({threads} threads) | difference |",
             "|---|---:|---:|---:|"]
    for label, path in FIGURES:
        a, b = figure(shipped, path), figure(here, path)
        diff = "" if a is None or b is None else f"{b - a:+.3g}"
        lines.append(f"| {label} | {'—' if a is None else a} | {'—' if b is None else b} | {diff} |")
    return "\n".join(lines)
