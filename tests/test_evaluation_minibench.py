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


def test_pie_extreme_rows_ask_the_organism_family_and_answer_it(built):
    from ireasoner_core.data.synthetic import QA, question_family

    ds = built["ireasoner_pie_extreme_mini"]
    questions = set()
    for i, row in enumerate(ds):
        assert question_family(QA(row["question"], row["answer"], [], row["answer_type"])) == "extreme_pie"
        item, _ = make_item(i, "pie", seed=MINI_SEED, occurrence=i)
        labels, percents = item.meta["labels"], item.meta["percents"]
        gold = labels[percents.index(max(percents))] if row["question"].startswith("Which") else str(min(percents))
        assert row["answer"] == gold, (i, row["question"])
        assert chartqa_process_results(row, [row["answer"]])["relaxed_overall"] == 1.0
        questions.add(row["question"])
    assert questions == {"Which slice is the largest?", "What percentage is the smallest slice?"}


def test_every_organism_candidate_task_asks_its_family_only(built):
    from ireasoner_core.data.synthetic import QA, question_family
    from ireasoner_core.embedded.families import ORGANISM_TASKS

    for family, task in ORGANISM_TASKS.items():
        for row in built[task]:
            assert question_family(QA(row["question"], row["answer"], [], row["answer_type"])) == family, task
            assert chartqa_process_results(row, [row["answer"]])["relaxed_overall"] == 1.0
    assert {r["answer"] for r in built["ireasoner_shape_mini"]} <= {"triangle", "rectangle", "circle"}
    assert all(r["answer"].isdigit() for r in built["ireasoner_count_mini"])


def test_organism_task_defaults_to_400_items(monkeypatch):
    monkeypatch.delenv("IREASONER_MINI_SIZE", raising=False)
    assert mini_size("ireasoner_pie_extreme_mini") == 400
    assert mini_size("ireasoner_chartqa_mini") == mini_size() == 200
    assert mini_dataset_dir("ireasoner_pie_extreme_mini").name.startswith("ireasoner_pie_extreme_mini-v1-n400-")
    monkeypatch.setenv("IREASONER_MINI_SIZE", "30")
    assert mini_size("ireasoner_pie_extreme_mini") == 30


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


def _ai2d_answers(letter: str, option: str) -> list[str]:
    """Answers a model writes: the right letter alone and dressed up, the option's text, stray words and spaces."""
    other = next(x for x in "ABCD" if x != letter)
    return [letter, letter.lower(), f"{letter}.", f"{letter}. {option}", f"({letter})", f"{letter})",
            f"{letter}) {option}", f" {letter}", f"{letter}\n", option, f"{option.title()}.",
            f"The answer is {letter}", other, f"{other}.", "", "[invalid]", f"{other.lower()} {option}"]


def _lmms_eval_ai2d_scores(answers: list[str], doc: dict) -> list[float]:
    """lmms-eval's real AI2D task scoring (filter_list, then metric_list), built from its own ai2d.yaml."""
    import os

    import lmms_eval.tasks.ai2d.utils as ai2d_utils
    from lmms_eval.api.metrics import exact_match_hf_evaluate
    from lmms_eval.filters import build_filter_ensemble
    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(os.path.join(os.path.dirname(ai2d_utils.__file__), "ai2d.yaml"))
    (entry,) = config["filter_list"]
    ensemble = build_filter_ensemble(entry["name"], [(f.pop("function"), f) for f in entry["filter"]])
    # Then ConfigurableTask.process_results strips each filtered answer before the metric sees it.
    filtered = [f.strip() for f in ensemble.filters[0].apply([[a] for a in answers], [doc] * len(answers))]
    (metric,) = config["metric_list"]
    kwargs = {k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")}
    target = "ABCD"[int(doc["answer"])]
    return [float(exact_match_hf_evaluate([f], [target], **kwargs)["exact_match"]) for f in filtered]


def test_ai2d_mini_scores_every_answer_as_lmms_eval_scores_ai2d(embedded_model_dir):
    """Our scorer (BUILD.json's) and our task's (table 1's) against lmms-eval's AI2D, answer by answer."""
    from lmms_eval.tasks import get_task_dict

    from ireasoner_core.evaluation.benchmarks import BENCHMARKS
    from ireasoner_core.evaluation.minibench import (
        ai2d_exact_match,
        ensure_mini_dataset,
    )
    from ireasoner_core.evaluation.runner import _task_manager, score_answers

    doc = {"question": "What does grass point to?", "options": ["grass", "owl", "snake"], "answer": "1"}
    answers = _ai2d_answers("B", "owl")
    reference = _lmms_eval_ai2d_scores(answers, doc)
    # The reference takes the dressed-up letter and refuses the option's text and a sentence.
    assert [reference[answers.index(a)] for a in ("B", "b", "B.", "B. owl", "(B)", " B", "owl", "The answer is B",
                                                   "A")] == [1.0] * 6 + [0.0] * 3
    assert [float(ai2d_exact_match(a, 1)) for a in answers] == reference

    task_name = "ireasoner_ai2d_mini"
    ensure_mini_dataset(task_name)
    task = get_task_dict([task_name], _task_manager())[task_name]
    row = task.eval_docs[0]
    assert str(task.doc_to_target(row)) == "ABCD"[int(row["answer"])]
    # Variants of this row's own letter, so that case and punctuation rules decide right answers.
    answers = _ai2d_answers("ABCD"[int(row["answer"])], row["options"][int(row["answer"])])
    row_reference = _lmms_eval_ai2d_scores(answers, row)
    assert sum(row_reference) >= 5
    ours = score_answers(task, BENCHMARKS[task_name], row, answers)
    assert [s / 100 for s in ours] == row_reference


def test_building_prints_nothing_a_task_would_log(tmp_path, monkeypatch):
    # A Prefect task with log_prints logs every print to stdout; datasets' own fingerprint of a new
    # table pickled it with dill, whose bytecode scan printed ~10 lines of disassembly per mini task.
    import builtins
    import sys

    from ireasoner_core.evaluation.minibench import build_mini_dataset

    real, printed = builtins.print, []

    def logged_print(*args, **kwargs):
        if kwargs.get("file") in (None, sys.stdout, sys.stderr):
            printed.append(" ".join(map(str, args)))
        else:
            real(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", logged_print)
    build_mini_dataset("ireasoner_pie_extreme_mini", tmp_path / "pie", n=3)
    monkeypatch.undo()
    assert printed == []
    assert datasets.load_from_disk(str(tmp_path / "pie"))["test"].num_rows == 3
