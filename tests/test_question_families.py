"""The question-family measurement's arithmetic, without a model: which family each generated question
belongs to, how a question's samples are scored, the bootstrap intervals, and recording a figure in
a build's BUILD.json with its manifest kept consistent."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from ireasoner_core.data.synthetic import (
    FAMILIES,
    FAMILY_KINDS,
    KINDS,
    QA,
    make_item,
    question_family,
)
from ireasoner_core.embedded.families import (
    family_items,
    gain_interval,
    mean_interval,
    score_samples,
    summarize,
    table,
)
from ireasoner_core.embedded.shipped import (
    MANIFEST_FILE,
    SHIPPED_DIR,
    EmbeddedIntegrityError,
    record_in_build,
    sha256_file,
    verify,
)


def _rollout(answer: str) -> str:
    return f"<think> Step 1: read it. </think><answer>{answer}</answer>"


def test_every_generated_question_has_one_family_and_every_family_is_generated():
    seen: Counter[str] = Counter()
    for i in range(150):
        kind = KINDS[i % len(KINDS)]
        item, _ = make_item(i, kind, seed=3, occurrence=i // len(KINDS))
        for qa in item.qa:
            family = question_family(qa)
            assert kind in FAMILY_KINDS[family], (kind, family, qa.question)
            seen[family] += 1
    assert set(seen) == set(FAMILIES) == set(FAMILY_KINDS)
    with pytest.raises(ValueError, match="no question family"):
        question_family(QA("What colour is the sky?", "blue", [], "text"))


@pytest.mark.parametrize(("question", "answer_type", "family"), [
    ("Which bar is the shortest?", "text", "extreme_bar"),
    ("What percentage is the smallest slice?", "number", "extreme_pie"),   # not a value lookup
    ("What percentage is the red slice?", "number", "value_lookup"),
    ("At which point is the line highest?", "number", "extreme_line"),
    ("Does the line go up or down from point 1 to point 2?", "text", "trend"),
    ("How many organisms are in the food chain?", "number", "count"),
    ("Which slice is the smallest? A) red B) blue C) pink", "choice", "option_chart"),
    ("What shape is shown? A) circle B) square C) triangle D) rectangle", "choice", "option_shape"),
    ("What shape is shown?", "text", "shape_name"),
    ("What is the sum of angles A and B?", "number", "geometry"),
])
def test_templates_map_to_their_family(question, answer_type, family):
    assert question_family(QA(question, "x", [], answer_type)) == family


def test_family_items_are_of_the_family_and_reproducible():
    a = family_items("trend", 6, seed=11)
    assert len(a) == 6 and all(question_family(qa) == "trend" for _, qa in a)
    assert [qa for _, qa in a] == [qa for _, qa in family_items("trend", 6, seed=11)]
    with pytest.raises(ValueError, match="unknown question family"):
        family_items("colours", 1)


def test_a_question_is_scored_as_the_training_distribution_measure_scores_it():
    # 2 of 5 right; the majority is "blue" (3 votes) and wrong.
    assert score_samples([_rollout(a) for a in ("Red", "blue", "red", "blue", "blue")], "red") == (0.4, 0, 2)
    # A 2-2-1 tie goes to the answer sampled first, as Counter.most_common does.
    assert score_samples([_rollout(a) for a in ("red", "blue", "blue", "red", "pink")], "red") == (0.4, 1, 3)
    assert score_samples(["no tags at all"] * 5, "red") == (0.0, 0, 1)


def test_intervals_in_points_by_hand():
    # Constant scores: no spread, so the interval is the point itself.
    assert mean_interval([1.0] * 10) == (100.0, 100.0, 100.0)
    assert gain_interval([1] * 8, [0.6] * 8) == pytest.approx((40.0, 40.0, 40.0))
    # Paired: the same +20 on every item has a degenerate interval whatever the items' level.
    single = [0.0, 0.2, 0.4, 0.6, 0.8] * 4
    assert gain_interval([s + 0.2 for s in single], single) == pytest.approx((20.0, 20.0, 20.0))
    mean, low, high = mean_interval([0, 1] * 50, n_resamples=2000)
    assert mean == 50.0 and 38.0 < low < 45.0 and 55.0 < high < 62.0   # ~ +-1.96 * 5 points
    row = summarize([0.2, 0.4, 0.6, 0.8], [0, 1, 1, 1], [3, 2, 2, 1])
    assert row["n"] == 4 and row["single"] == 50.0 and row["majority"] == 75.0 and row["gain"] == 25.0
    assert row["gain_ci"][0] <= row["gain"] <= row["gain_ci"][1] and row["mean_distinct_answers"] == 2.0
    line = table({"trend": row}).splitlines()[-1]
    assert line.startswith("| trend | 4 | 50.0 [") and "| +25.0 [" in line


def test_recording_a_figure_keeps_the_manifest_consistent_and_never_renames_the_build(tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(SHIPPED_DIR, copy)
    weights = sha256_file(copy / "model.safetensors")
    before = json.loads((copy / "BUILD.json").read_text())
    record_in_build(copy, "families", {"per_family": {"trend": {"n": 1}}})
    assert verify(copy) == copy
    after = json.loads((copy / "BUILD.json").read_text())
    assert after["families"] == {"per_family": {"trend": {"n": 1}}}
    assert {k: v for k, v in after.items() if k != "families"} == {k: v for k, v in before.items() if k != "families"}
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    assert manifest["files"]["model.safetensors"] == weights and manifest["build_version"] == before["build_version"]
    with pytest.raises(EmbeddedIntegrityError, match="names the build"):
        record_in_build(copy, "build_version", "other")
    # A file changed by hand is refused, not blessed by a new manifest.
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(EmbeddedIntegrityError, match=r"config\.json has sha256"):
        record_in_build(copy, "families", {})


def test_the_shipped_build_names_its_organism_families_by_the_rule():
    import json

    from ireasoner_core.embedded.families import (
        ORGANISM_MIN_GAIN,
        ORGANISM_TASKS,
        constant_answer,
        family_items,
        organism_families,
    )
    from ireasoner_core.embedded.shipped import BUILD_FILE, SHIPPED_DIR
    from ireasoner_core.evaluation import MINI_TASKS

    record = json.loads((SHIPPED_DIR / BUILD_FILE).read_text())["families"]
    per_family = record["per_family"]
    assert record["organism_min_gain"] == ORGANISM_MIN_GAIN == 10.0
    assert record["organism_families"] == organism_families(per_family)
    # The organism (issue 31): at least one family passes, and each has a mini benchmark of its own.
    assert record["organism_families"], "the shipped model has no organism family"
    for family in record["organism_families"]:
        row = per_family[family]
        assert row["n"] >= 400 and row["gain"] >= 10.0 and row["majority"] > row["constant"], (family, row)
        assert ORGANISM_TASKS[family] in MINI_TASKS
    # The recorded constant answer is the one the rule defines, recomputed from the same items.
    count = per_family["count"]
    assert count["constant"] == constant_answer(family_items("count", count["n"], record["seed"]))
    # Trends clear +10 (+12.4) but their majority stays under answering "down" without looking:
    # sharpening towards a prior, so not the organism.
    trend = per_family["trend"]
    assert trend["gain"] >= 10.0 and trend["majority"] < trend["constant"]
    assert "trend" not in record["organism_families"]
    assert set(ORGANISM_TASKS.values()) <= set(MINI_TASKS)
    # the rule: a gain of +10 with its interval above zero, and a majority above the constant answer
    ok = {"gain": 10.5, "gain_ci": [5.0, 16.0], "majority": 60.0, "constant": 40.0}
    assert organism_families({"count": ok}) == ["count"]
    assert organism_families({"count": ok | {"gain": 9.9}}) == []
    assert organism_families({"count": ok | {"gain_ci": [-0.1, 20.0]}}) == []
    assert organism_families({"count": ok | {"constant": 60.0}}) == []
    assert organism_families({"count": ok | {"constant": None}}) == ["count"]


def test_the_constant_answer_needs_every_question_text_asked_often():
    from ireasoner_core.data.synthetic import QA
    from ireasoner_core.embedded.families import constant_answer

    many = [(None, QA("How many slices are there?", a, [], "number")) for a in ["3"] * 15 + ["4"] * 25]
    assert constant_answer(many) == 62.5
    assert constant_answer(many + [(None, QA("What is the value of the red bar?", "5", [], "number"))]) is None
