"""Which lmms-eval number is a benchmark's headline score, and on which scale.

lmms-eval reports each task's metrics under keys such as ``relaxed_overall,none`` (metric,
filter), some on a 0-1 scale and some on 0-100. Tables compare methods on one scale, 0-100,
so every task the project evaluates is listed here with the key that is its headline and the
factor that brings it to 0-100. The mini tasks are the offline stand-ins of the embedded
default; the others are paper table 1 (SPEC.md "Benchmarks"), with the paper's published
Qwen2.5-VL-7B numbers kept for the reference rows of the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Benchmark:
    """One lmms-eval task as a column of the paper's tables."""

    task: str
    label: str
    metric: str
    """Key in lmms-eval's ``results[result_task]``: 'metric,filter'."""
    scale: float
    """Multiplies the metric (and the per-item scores) to put it on 0-100."""
    group: Literal["general", "math", "mini"]
    result_task: str | None = None
    """Where the headline lives when ``task`` is a group (default: ``task`` itself)."""
    paper_baseline: float | None = None
    paper_ireasoner: float | None = None

    @property
    def results_key(self) -> str:
        return self.result_task or self.task


MINI_BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("ireasoner_chartqa_mini", "ChartQA-mini", "relaxed_overall,none", 100.0, "mini"),
    Benchmark("ireasoner_ai2d_mini", "AI2D-mini", "exact_match,flexible-extract", 100.0, "mini"),
    Benchmark("ireasoner_geometry_mini", "Geometry-mini", "numeric_match,none", 100.0, "mini"),
    Benchmark("ireasoner_pie_extreme_mini", "PieExtreme-mini", "relaxed_overall,none", 100.0, "mini"),
    Benchmark("ireasoner_count_mini", "Count-mini", "relaxed_overall,none", 100.0, "mini"),
    Benchmark("ireasoner_shape_mini", "Shape-mini", "relaxed_overall,none", 100.0, "mini"),
)

# Paper table 1 in its column order. The scales follow each task's aggregation in lmms-eval
# 0.7.3 (mean of 0/1 items, or an accuracy already multiplied by 100). MathVista and MathVerse
# are scored by an LLM judge inside lmms-eval, which needs that judge's API to be reachable.
TABLE1_BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("infovqa_val", "InfoVQA", "anls,none", 100.0, "general", None, 80.44, 81.56),
    Benchmark("ai2d", "AI2D", "exact_match,flexible-extract", 100.0, "general", None, 82.61, 83.89),
    Benchmark("scienceqa_img", "ScienceQA", "exact_match,none", 100.0, "general", None, 88.30, 89.92),
    Benchmark("mmmu_val", "MMMU", "mmmu_acc,none", 100.0, "general", None, 51.11, 52.37),
    Benchmark("chartqa", "ChartQA", "relaxed_overall,none", 100.0, "math", None, 84.00, 85.78),
    Benchmark("mathvista_testmini", "MathVista", "llm_as_judge_eval,none", 1.0, "math",
              "mathvista_testmini_format", 68.47, 69.74),
    Benchmark("mathvision_testmini", "MathVision", "mathvision_standard_eval,none", 1.0, "math", None, 23.91, 25.29),
    Benchmark("mathvision_test", "MathVision (test)", "mathvision_standard_eval,none", 1.0, "math", None, 23.91, 25.29),
    Benchmark("mathverse_testmini", "MathVerse", "gpt_eval_score,none", 100.0, "math", None, 43.78, 45.91),
)

BENCHMARKS: dict[str, Benchmark] = {b.task: b for b in (*MINI_BENCHMARKS, *TABLE1_BENCHMARKS)}
MINI_TASKS: list[str] = [b.task for b in MINI_BENCHMARKS]
TABLE1_TASKS: list[str] = [b.task for b in TABLE1_BENCHMARKS if b.task != "mathvision_test"]


SAMPLED_MARK = "@avg"


def sampled_key(task: str, k: int) -> str:
    """Name of a task's avg@k column in the tables: 'ireasoner_ai2d_mini@avg5'."""
    return f"{task}{SAMPLED_MARK}{k}"


def split_sampled(key: str) -> tuple[str, int | None]:
    """(task, k) of an avg@k column; (key, None) for a greedy one."""
    task, mark, k = key.rpartition(SAMPLED_MARK)
    return (task, int(k)) if mark and task and k.isdigit() else (key, None)


def label(task: str) -> str:
    """Column title for a task; unknown tasks keep their lmms-eval name; avg@k columns say so."""
    base, k = split_sampled(task)
    if k is not None:
        return f"{label(base)} avg@{k}"
    return BENCHMARKS[task].label if task in BENCHMARKS else task
