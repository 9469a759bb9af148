"""math_judge=local: MathVista scored by lmms-eval's own process_results with no LLM judge and no
API key (the judge is the boundary that cannot exist here; the test proves it is never called)."""

from __future__ import annotations

import socket

import pytest


def _doc(pid, question_type, answer_type, answer, choices=None, precision=0):
    return {"pid": pid, "question_type": question_type, "answer_type": answer_type, "query": "q", "question": "q",
            "choices": choices, "answer": answer, "precision": precision, "metadata": {}}


def test_mathvista_scores_locally_without_a_judge_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    from ireasoner_core.evaluation.math_judge import install

    install("local")
    import os

    assert "OPENAI_API_KEY" not in os.environ   # the import placeholder is gone again
    from lmms_eval.tasks.mathvista.utils import mathvista_process_results

    cases = [
        (_doc("1", "free_form", "integer", "12"), "The total is 7 + 5 = 12 apples", True),
        (_doc("2", "free_form", "integer", "12"), "so 13", False),
        (_doc("3", "free_form", "float", "2.5", precision=1), "x = 2.50", True),
        (_doc("4", "multi_choice", "text", "owl", ["cat", "owl", "fox"]), "I think (B) is right", True),
        (_doc("5", "multi_choice", "text", "owl", ["cat", "owl", "fox"]), "Answer: C", False),
        (_doc("6", "free_form", "integer", "3"), "3", True),   # lmms-eval's own rule: it parses
    ]
    for doc, response, correct in cases:
        res = mathvista_process_results(doc, [response])["llm_as_judge_eval"]
        assert res["true_false"] is correct, (doc["pid"], response, res)
    install("llm")   # lmms-eval's own extraction is back
    from lmms_eval.tasks.mathvista.mathvista_evals import MathVistaEvaluator

    assert MathVistaEvaluator.extract_answer.__module__.startswith("lmms_eval")
    with pytest.raises(ValueError, match="math_judge must be one of"):
        install("gpt")


def _mathverse_doc(answer, question_type="free-form"):
    return {"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": "q",
            "question_for_eval": "q", "answer": answer, "question_type": question_type, "metadata": {},
            "query_wo": "q", "query_cot": "q"}


def test_mathverse_scores_locally_without_a_judge_key(monkeypatch):
    """lmms-eval's own mathverse_process_results, its judge call replaced by the local match rule."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    from ireasoner_core.evaluation.math_judge import install

    install("local")
    from lmms_eval.tasks.mathverse.utils import mathverse_process_results

    cases = [
        (_mathverse_doc("B", "multi-choice"), "Step by step ... The answer is (B).", 1),
        (_mathverse_doc("B", "multi-choice"), "Answer: A", 0),
        (_mathverse_doc("5"), "x + 2 = 7, so x = 5", 1),
        (_mathverse_doc("5"), "x = 6", 0),
        (_mathverse_doc(r"\frac{1}{2}"), "The answer is 0.5", 1),
        (_mathverse_doc(r"2\sqrt{3}"), r"Answer: 2\sqrt{3}", 1),
        (_mathverse_doc(r"2\sqrt{3}"), "Answer: 2", 0),
    ]
    for doc, response, score in cases:
        assert mathverse_process_results(doc, [response])["gpt_eval_score"] == score, (doc["answer"], response)
    install("llm")   # lmms-eval's judge call is back
    from lmms_eval.tasks.mathverse.mathverse_evals import MathVerseEvaluator

    assert MathVerseEvaluator.score_answer.__module__.startswith("lmms_eval")
    install("local")
