"""The question formats the embedded model is warm-started on, besides the Solver's own.

Table 1 asks a model the way lmms-eval asks it: the benchmark's question with its post prompt
("Answer the question with a single word.", AI2D's lettered options, ...) and a direct answer.
An instruction-tuned Qwen2.5-VL answers both that and the Solver's ``<think>``/``<answer>``
prompt; the embedded model is taught both, on training images only (seeds far from the mini
benchmarks'). ``tests/test_embedded_formats.py`` checks that these contexts are character for
character what lmms-eval's ``doc_to_text`` functions produce with our task YAMLs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ireasoner_core.data.synthetic import (
    CHOICE_LETTERS,
    HERBIVORES,
    PREDATORS,
    PRODUCERS,
    QA,
    TOP_PREDATORS,
    SyntheticItem,
)

# The post prompts of the mini tasks' YAMLs (lmms-eval's ChartQA and AI2D defaults).
CHARTQA_POST_PROMPT = "\nAnswer the question with a single word."
AI2D_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
GEOMETRY_POST_PROMPT = "\nAnswer the question with a single number."
_ORGANISMS = (*PRODUCERS, *HERBIVORES, *PREDATORS, *TOP_PREDATORS)
_CHART_KINDS = ("bar", "line", "pie")


@dataclass(frozen=True)
class FormattedQA:
    """One question in a benchmark's words: the prompt text, the expected answer and worked steps."""

    context: str
    answer: str
    steps: list[str]


def chartqa_context(question: str) -> str:
    """lmms-eval ``chartqa_doc_to_text``: question, then the post prompt."""
    return f"{question}{CHARTQA_POST_PROMPT}"


def geometry_context(question: str) -> str:
    """``minibench.geometry_doc_to_text``: question, then the post prompt."""
    return f"{question}{GEOMETRY_POST_PROMPT}"


def mcq_context(question: str, options: list[str]) -> str:
    """lmms-eval ``ai2d_doc_to_text`` (mcq): question, one "L. option" line each, post prompt."""
    lines = "\n".join(f"{CHOICE_LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}{AI2D_POST_PROMPT}"


def _split_choice(qa: QA) -> str:
    # The generator writes the options into the question ("... A) x B) y"); AI2D lists them apart.
    return re.split(r"\s+A\)\s", qa.question, maxsplit=1)[0]


def mc_from_open(qa: QA, chain: list[str], rng: random.Random) -> tuple[list[str], int]:
    """Options for an open diagram question, as the AI2D mini benchmark builds them (same chain first)."""
    if qa.answer_type == "number":
        n = int(qa.answer)
        distractors = [str(v) for v in (n + 1, n - 1, n + 2, n + 3) if v > 0][:3]
    else:
        same = [o for o in chain if o != qa.answer]
        other = [o for o in _ORGANISMS if o not in chain]
        rng.shuffle(same)
        rng.shuffle(other)
        distractors = (same + other)[:3]
    options = [qa.answer, *distractors]
    rng.shuffle(options)
    return options, options.index(qa.answer)


def benchmark_formats(item: SyntheticItem, rng: random.Random) -> list[FormattedQA]:
    """Every QA of ``item`` as the mini benchmark of its kind would ask it (choice questions as AI2D)."""
    out = []
    for qa in item.qa:
        if qa.answer_type == "choice":
            options = list(qa.choices or [])
            out.append(FormattedQA(mcq_context(_split_choice(qa), options), qa.answer, list(qa.steps)))
        elif item.kind == "diagram":
            options, idx = mc_from_open(qa, list(item.meta["chain"]), rng)
            letter = CHOICE_LETTERS[idx]
            out.append(FormattedQA(mcq_context(qa.question, options), letter,
                                   [*qa.steps, f"Option {letter} is {qa.answer}."]))
        elif item.kind == "geometry" and qa.answer_type == "number":
            out.append(FormattedQA(geometry_context(qa.question), qa.answer, list(qa.steps)))
        else:
            out.append(FormattedQA(chartqa_context(qa.question), qa.answer, list(qa.steps)))
    return out
