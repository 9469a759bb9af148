"""Chat messages for the two roles. Training, the embedded warm-start and evaluation all use
these, so a model sees the same text at every stage."""

from __future__ import annotations

FALLBACK_QUESTION = "What is the main quantity shown in this image?"

PROPOSER_INSTRUCTION = (
    "Look at the image and ask one question about it that needs a few steps of visual reasoning "
    "and has a short answer. Reply as <question>...</question><rationale>...</rationale>."
)

SOLVER_INSTRUCTION = (
    "Answer the question about the image. Reason inside <think> </think> in numbered steps "
    "(Step 1: ..., Step 2: ...), then give only the final short answer inside <answer> </answer>."
)


def proposer_messages() -> list[dict]:
    """User turn for the Proposer: the image and the question-writing instruction."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROPOSER_INSTRUCTION}]}]


def solver_messages(question: str) -> list[dict]:
    """User turn for the Solver: the image, the question, and the output-format instruction."""
    text = f"{question}\n{SOLVER_INSTRUCTION}"
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
