"""MathVista's answer extraction without an LLM judge (``math_judge=local``, the default).

lmms-eval 0.7.3 extracts MathVista's answer from the response with its own rules (an exact
choice, an integer or float that parses, ``The answer is "x".`` when ``quick_extract``) and
otherwise asks an OpenAI judge; its module even builds the judge's client when it is imported,
so without an API key the task cannot load. ``local`` keeps lmms-eval's rules, drops the judge
call, and falls back to a rule of ours: for a multiple-choice question the last standalone option
letter (else the response, which lmms-eval maps to the most similar choice), for a numeric one the
last number. lmms-eval's normalisation and scoring then run unchanged. ``llm`` leaves lmms-eval as
it is (configure ``OPENAI_API_KEY``, or ``API_TYPE=azure`` with ``AZURE_API_KEY``).

MathVerse has no local path here: lmms-eval also scores it by matching with the judge.
"""

from __future__ import annotations

import os
import re
from typing import Any

MATH_JUDGES: tuple[str, ...] = ("local", "llm")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")
_original: dict[str, Any] = {}


def local_fallback(response: str, problem: dict) -> str:
    """Our last-resort rule when lmms-eval's rules found nothing: last option letter, or last number."""
    if problem.get("question_type") == "multi_choice":
        letters = [m for m in _LETTER.findall(response) if ord(m) - ord("A") < len(problem.get("choices") or [])]
        return letters[-1] if letters else response
    numbers = _NUMBER.findall(response)
    return numbers[-1].replace(",", "") if numbers else ""


def _local_extract_answer(self, response, problem, quick_extract=False):
    def no_judge(*args, **kwargs):
        raise RuntimeError("math_judge=local: no LLM judge is called")

    self.get_chat_response = no_judge   # lmms-eval's extract_answer catches the error and returns ""
    try:
        extraction = _original["extract_answer"](self, response, problem, True)
    finally:
        del self.get_chat_response
    return extraction if extraction else local_fallback(response or "", problem)


def install(judge: str) -> None:
    """Make MathVista's extraction ``judge`` for this process (a class-level switch in lmms-eval)."""
    if judge not in MATH_JUDGES:
        raise ValueError(f"math_judge must be one of {list(MATH_JUDGES)}, got {judge!r}")
    had_key = "OPENAI_API_KEY" in os.environ
    if judge == "local" and not had_key:
        # Only for the import: the client it builds is never called. Removed again, so that
        # MathVerse (which needs the judge) still fails clearly without a key.
        os.environ["OPENAI_API_KEY"] = "unused-by-math-judge-local"
    try:
        from lmms_eval.tasks.mathvista.mathvista_evals import MathVistaEvaluator
    except Exception:   # noqa: BLE001 - without the judge's key, llm mode leaves the error to the task loader
        if judge == "local":
            raise
        return
    finally:
        if judge == "local" and not had_key:
            os.environ.pop("OPENAI_API_KEY", None)
    _original.setdefault("extract_answer", MathVistaEvaluator.extract_answer)
    MathVistaEvaluator.extract_answer = _local_extract_answer if judge == "local" else _original["extract_answer"]
