"""Training text of the embedded model: the synthetic QA pairs rendered as the two roles' targets.

The same functions give the tokenizer's corpus and the warm-start's targets, so every string the
warm-start teaches is made of merges the tokenizer learnt.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ireasoner_core import prompts
from ireasoner_core.data.synthetic import QA, SyntheticItem
from ireasoner_core.embedded.tokenizer import DEFAULT_SYSTEM_PROMPT, FORMAT_TAGS

_KIND_NOUN = {"bar": "bar chart", "line": "line chart", "pie": "pie chart", "diagram": "diagram",
              "geometry": "figure"}


def solver_target(qa: QA) -> str:
    """Solver completion: one "Step k: ..." line per worked step, then the short answer.

    One step per line so that step extraction's rule "a line that starts with Step k:" applies.
    """
    steps = "\n".join(f"Step {k}: {s}" for k, s in enumerate(qa.steps, start=1))
    return f"<think>\n{steps}\n</think>\n<answer>{qa.answer}</answer>"


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
    for item in items:
        for qa in item.qa:
            yield qa.question
            yield solver_target(qa)
            yield proposer_target(item, qa)
