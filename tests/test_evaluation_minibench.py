"""Offline mini-benchmarks: deterministic, cached, in the real benchmarks' formats, scored as they are."""

from __future__ import annotations

import datasets
import pytest
from lmms_eval.tasks.ai2d.utils import ai2d_doc_to_target, ai2d_doc_to_text
from lmms_eval.tasks.chartqa.utils import chartqa_process_results

from ireasoner_core.data.synthetic import make_item
from ireasoner_core.evaluation import MINI_TASKS, tasks_include_path
from ireasoner_core.evaluation.minibench import (
    COMPLETE_FILE,
    MINI_SEED,
    MiniBenchmarkError,
    ensure_mini_dataset,
    mini_dataset_dir,
    mini_size,
    numeric_match,
)

N = 12


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-cache")
    return {t: datasets.load_from_disk(str(ensure_mini_dataset(t, n=N, cache_dir=root)))["test"] for t in MINI_TASKS}


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_every_mini_task_has_a_yaml_in_the_shipped_include_path():
    names = {p.stem for p in tasks_include_path().glob("*.yaml")}
    assert set(MINI_TASKS) <= names
    for t in MINI_TASKS:
        text = (tasks_include_path() / f"{t}.yaml").read_text()
        assert "load_from_disk: true" in text and f"task: {t}" in text


def test_build_is_deterministic_and_cached(built, tmp_path):
    again = datasets.load_from_disk(str(ensure_mini_dataset("ireasoner_chartqa_mini", n=N, cache_dir=tmp_path)))["test"]
    first = built["ireasoner_chartqa_mini"]
    assert again["question"] == first["question"] and again["answer"] == first["answer"]
    assert [_png(i) for i in again["image"]] == [_png(i) for i in first["image"]]
    path = mini_dataset_dir("ireasoner_chartqa_mini", n=N, cache_dir=tmp_path)
    stamp = (path / COMPLETE_FILE).stat().st_mtime_ns
    assert ensure_mini_dataset("ireasoner_chartqa_mini", n=N, cache_dir=tmp_path) == path
    assert (path / COMPLETE_FILE).stat().st_mtime_ns == stamp   # second call reuses, no rebuild


def test_images_are_not_the_training_images(built):
    # Training draws synthetic item i from seed cfg.seed (0 by default); the mini sets use MINI_SEED.
    ai2d = built["ireasoner_ai2d_mini"]
    for i in range(N):
        _, train_img = make_item(i, "diagram", seed=0, occurrence=i)
        assert _png(ai2d[i]["image"]) != _png(train_img)
    assert MINI_SEED > 1000


def test_sizes_and_one_question_per_image(built):
    for t, ds in built.items():
        assert len(ds) == N, t
        assert len(set(ds["id"])) == N, t


def test_ai2d_format_marks_the_correct_option(built):
    ds = built["ireasoner_ai2d_mini"]
    for i, row in enumerate(ds):
        item, _ = make_item(i, "diagram", seed=MINI_SEED, occurrence=i)
        qa = next(q for q in item.qa if q.question.startswith(row["question"]))
        options, answer = row["options"], int(row["answer"])
        assert 2 <= len(options) <= 4 and len(set(options)) == len(options)
        correct = qa.choices["ABCD".index(qa.answer)] if qa.answer_type == "choice" else qa.answer
        assert options[answer] == correct
        # lmms-eval's own AI2D prompt and target work on our rows unchanged
        kwargs = {"prompt_format": "mcq", "pre_prompt": "", "post_prompt": ""}
        assert f"{'ABCD'[answer]}. {correct}" in ai2d_doc_to_text(row, kwargs)
        assert ai2d_doc_to_target(row, "mcq") == "ABCD"[answer]


def test_chartqa_rows_score_with_lmms_eval_relaxed_accuracy(built):
    row = next(r for r in built["ireasoner_chartqa_mini"] if r["answer"].isdigit() and int(r["answer"]) >= 20)
    gold = float(row["answer"])
    assert chartqa_process_results(row, [row["answer"]])["relaxed_overall"] == 1.0
    assert chartqa_process_results(row, [str(gold * 1.04)])["relaxed_overall"] == 1.0   # within 5 %
    assert chartqa_process_results(row, [str(gold * 1.06)])["relaxed_overall"] == 0.0   # beyond 5 %


def test_geometry_rows_have_numeric_answers(built):
    for row in built["ireasoner_geometry_mini"]:
        float(row["answer"])
        assert row["shape"] in ("triangle", "rectangle", "circle")


def test_numeric_match():
    assert numeric_match("60", "60")
    assert numeric_match("60°", "60") and numeric_match("x = 60 cm", "60")
    assert numeric_match("180 - 50 - 70 = 60", "60")       # the last number is the result
    assert numeric_match("100.5", "100")                   # 0.5 % off
    assert not numeric_match("102", "100")                 # 2 % off
    assert not numeric_match("sixty", "60")
    assert numeric_match("1,200", "1200")


def test_bad_names_and_sizes_are_named(monkeypatch):
    with pytest.raises(MiniBenchmarkError, match="unknown mini task 'chartqa'"):
        mini_dataset_dir("chartqa")
    monkeypatch.setenv("IREASONER_MINI_SIZE", "lots")
    with pytest.raises(MiniBenchmarkError, match="IREASONER_MINI_SIZE='lots'"):
        mini_size()


def test_ai2d_answer_by_letter_or_by_option_text():
    from ireasoner_core.evaluation.minibench import ai2d_process_results, chosen_option

    options = ["grass", "owl", "snake"]
    assert [chosen_option(p, options) for p in ("B", "B.", "(B)", "B) owl", " owl ", "Owl.")] == [1] * 6
    assert chosen_option("D", options) is None          # no fourth option
    assert chosen_option("A fox", options) is None      # an article, not a letter
    assert chosen_option("hawk", options) is None
    doc = {"options": options, "answer": "1"}
    assert ai2d_process_results(doc, ["owl"]) == {"exact_match": 1.0}
    assert ai2d_process_results(doc, ["C"]) == {"exact_match": 0.0}
