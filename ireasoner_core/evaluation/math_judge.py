"""MathVista's and MathVerse's scoring without an LLM judge (``math_judge=local``, the default).

lmms-eval 0.7.3 extracts MathVista's answer from the response with its own rules (an exact
choice, an integer or float that parses, ``The answer is "x".`` when ``quick_extract``) and
otherwise asks an OpenAI judge; its module even builds the judge's client when it is imported,
so without an API key the task cannot load. ``local`` keeps lmms-eval's rules, drops the judge
call, and falls back to a rule of ours: for a multiple-choice question the last standalone option
letter (else the response, which lmms-eval maps to the most similar choice), for a numeric one the
last number. lmms-eval's normalisation and scoring then run unchanged. ``llm`` leaves lmms-eval as
it is (configure ``OPENAI_API_KEY``, or ``API_TYPE=azure`` with ``AZURE_API_KEY``).

MathVerse: lmms-eval 0.7.3 asks the judge whether the response matches the answer (its only
rule-based path, ``quick_match``, is string equality of the whole response). ``local`` replaces
that call by a rule: the response's final answer (the text after its last "answer"/"is", else its
last line) is the option letter for a letter answer, or equals the answer as a number (fractions
``\\frac{a}{b}`` and ``a/b`` included), or as a normalised string. lmms-eval's aggregation runs unchanged.
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


_ANSWER_TAIL = re.compile(r"(?:answer|is)\s*[:：]?\s*(.+)$", re.IGNORECASE | re.DOTALL)
_FRAC = re.compile(r"^\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$|^(-?[\d.]+)\s*/\s*(-?[\d.]+)$")


def _as_number(text: str) -> float | None:
    """A plain number, ``a/b`` or ``\\frac{a}{b}`` as a float (None otherwise)."""
    t = text.strip().strip("$ .").replace(",", "")
    m = _FRAC.match(t)
    try:
        if m:
            a, b = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            return float(a) / float(b)
        return float(t)
    except (ValueError, ZeroDivisionError):
        return None


def _normalise(text: str) -> str:
    return re.sub(r"[\s$]", "", text).strip(".").lower()


def local_mathverse_match(answer: str, prediction: str) -> bool:
    """MathVerse without a judge: does the response's final answer equal ``answer`` (letter, number or text)?"""
    answer, prediction = str(answer).strip(), str(prediction or "").strip()
    if not answer or not prediction:
        return False
    tail = _ANSWER_TAIL.search(prediction)
    final = (tail.group(1) if tail else prediction.splitlines()[-1]).strip()
    if re.fullmatch(r"[A-Z]", answer):
        letters = _LETTER.findall(final) or _LETTER.findall(prediction)
        return bool(letters) and letters[-1] == answer
    gold = _as_number(answer)
    if gold is not None:
        found = _as_number(final)
        if found is None:
            numbers = _NUMBER.findall(final) or _NUMBER.findall(prediction)
            found = _as_number(numbers[-1]) if numbers else None
        return found is not None and abs(found - gold) <= 1e-6 * max(1.0, abs(gold))
    return _normalise(final) == _normalise(answer)


def _local_score_answer(self, question, answer, model_response, quick_match=False):
    return local_mathverse_match(answer, model_response)


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
        # Only for the imports: the clients their classes build are never called. Removed again,
        # so that math_judge=llm without a key still fails clearly.
        os.environ["OPENAI_API_KEY"] = "unused-by-math-judge-local"
    try:
        from lmms_eval.tasks.mathverse.mathverse_evals import MathVerseEvaluator
        from lmms_eval.tasks.mathvista.mathvista_evals import MathVistaEvaluator
    except Exception:   # noqa: BLE001 - without the judge's key, llm mode leaves the error to the task loader
        if judge == "local":
            raise
        return
    finally:
        if judge == "local" and not had_key:
            os.environ.pop("OPENAI_API_KEY", None)
    _original.setdefault("extract_answer", MathVistaEvaluator.extract_answer)
    _original.setdefault("score_answer", MathVerseEvaluator.score_answer)
    local = judge == "local"
    MathVistaEvaluator.extract_answer = _local_extract_answer if local else _original["extract_answer"]
    MathVerseEvaluator.score_answer = _local_score_answer if local else _original["score_answer"]
