"""Training text of the embedded model: the synthetic QA pairs rendered as the two roles' targets.

The same functions give the tokenizer's corpus and the warm-start's targets, so every string the
warm-start teaches is made of merges the tokenizer learnt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

from ireasoner_core import prompts
from ireasoner_core.data.synthetic import QA, SyntheticItem
from ireasoner_core.embedded.formats import benchmark_formats
from ireasoner_core.embedded.tokenizer import DEFAULT_SYSTEM_PROMPT, FORMAT_TAGS

_KIND_NOUN = {"bar": "bar chart", "line": "line chart", "pie": "pie chart", "diagram": "diagram",
              "geometry": "figure"}


# A first step that lists everything drawn ("The bars show red=5, blue=9.") is optional when
# the question needs only some of it.
_LISTING = re.compile(r"^(The (?:bars show|points show|slices are|boxes are) )(.*)\.$")


def vary_steps(steps: list[str], rng: random.Random) -> list[str]:
    """A paraphrase of a worked solution: the listing step dropped or its entries reordered.

    Several correct solutions per question make the Solver's sampled reasoning vary, which is
    what the step-agreement reward (eq. 3) has to work on.
    """
    out = list(steps)
    m = _LISTING.match(out[0]) if out else None
    if m and len(out) >= 3 and rng.random() < 0.35:
        return out[1:]
    if m and rng.random() < 0.5:
        entries = m.group(2).split(", ")
        rng.shuffle(entries)
        out[0] = f"{m.group(1)}{', '.join(entries)}."
    return out


def solver_target(qa: QA, rng: random.Random | None = None, *, steps: list[str] | None = None,
                  answer: str | None = None) -> str:
    """Solver completion: one "Step k: ..." line per worked step, then the short answer.

    One step per line so that step extraction's rule "a line that starts with Step k:" applies.
    With ``rng`` the steps are paraphrased (``vary_steps``); ``steps``/``answer`` override the
    QA's own (a benchmark-formatted question answers with an option letter).
    """
    worked = list(qa.steps if steps is None else steps)
    if rng is not None:
        worked = vary_steps(worked, rng)
    lines = "\n".join(f"Step {k}: {s}" for k, s in enumerate(worked, start=1))
    return f"<think>\n{lines}\n</think>\n<answer>{qa.answer if answer is None else answer}</answer>"


DESCRIBE_PROMPT = "Describe the image."


def describe_target(item: SyntheticItem) -> str:
    """A transcript of everything drawn: labels and numbers, in reading order.

    Nothing in it can be guessed from the question, so it is the warm-start's densest signal that
    the answer lies in the image (the other targets are partly predictable from the text alone).
    """
    m = item.meta
    if item.kind == "bar":
        return "Bars: " + ", ".join(f"{l}={v}" for l, v in zip(m["labels"], m["values"])) + "."
    if item.kind == "line":
        return f"A {m['color']} line: " + ", ".join(f"{x}={v}" for x, v in zip(m["x_labels"], m["values"])) + "."
    if item.kind == "pie":
        return "Slices: " + ", ".join(f"{l}={v}%" for l, v in zip(m["labels"], m["percents"])) + "."
    if item.kind == "diagram":
        return "Food chain: " + " -> ".join(m["chain"]) + "."
    if m["shape"] == "triangle":
        return f"A triangle with angle A={m['angle_a']} and angle B={m['angle_b']}."
    if m["shape"] == "rectangle":
        return f"A rectangle of {m['width']} cm by {m['height']} cm."
    return f"A circle with radius r={m['radius']}."


def proposer_target(item: SyntheticItem, qa: QA) -> str:
    """Proposer completion: a ground-truth question and a one-sentence reason it needs reasoning."""
    noun = _KIND_NOUN.get(item.kind, "image")
    n = len(qa.steps)
    rationale = f"It needs reading the {noun} and {n} step{'s' if n != 1 else ''} of reasoning."
    return f"<question>{qa.question}</question>\n<rationale>{rationale}</rationale>"


def corpus_texts(items: Iterable[SyntheticItem]) -> Iterator[str]:
    """Every string the embedded model is shown: prompts, questions, both roles' targets."""
    yield DEFAULT_SYSTEM_PROMPT
    yield prompts.FALLBACK_QUESTION
    for _ in range(8):  # instructions repeat in every prompt: make them cheap to encode
        yield prompts.PROPOSER_INSTRUCTION
        yield prompts.SOLVER_INSTRUCTION
    yield " ".join(FORMAT_TAGS)
    rng = random.Random(0)
    for item in items:
        for qa in item.qa:
            yield qa.question
            yield solver_target(qa)
            yield proposer_target(item, qa)
        yield DESCRIBE_PROMPT
        yield describe_target(item)
        for f in benchmark_formats(item, rng):
            yield f.context
            yield f.answer
