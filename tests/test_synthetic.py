"""Synthetic images: determinism, coverage of kinds, and ground truth that matches what is drawn."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ireasoner_core.data.synthetic import (
    GROUND_TRUTH_FILE,
    KINDS,
    PALETTE,
    QA,
    SyntheticItem,
    generate_synthetic,
    read_ground_truth,
)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def items_dir(tmp_path_factory) -> tuple[list[SyntheticItem], Path]:
    # 30 items = 6 of each kind, i.e. every geometry shape twice.
    out = tmp_path_factory.mktemp("syn")
    return generate_synthetic(out, 30, seed=7), out


def test_same_seed_gives_identical_bytes(tmp_path):
    a = generate_synthetic(tmp_path / "a", 10, seed=3)
    b = generate_synthetic(tmp_path / "b", 10, seed=3)
    assert a == b
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(fa) == 11  # 10 PNGs + ground truth
    assert fa == fb


def test_different_seed_gives_different_images_and_truth(tmp_path):
    generate_synthetic(tmp_path / "a", 10, seed=3)
    generate_synthetic(tmp_path / "b", 10, seed=4)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa.keys() == fb.keys()  # names depend on index and kind only
    differing = [name for name in fa if fa[name] != fb[name]]
    assert len(differing) >= 9  # ground truth + (nearly) every image


def test_rerun_is_idempotent_and_prefix_stable(tmp_path):
    first = generate_synthetic(tmp_path, 10, seed=1)
    before = _files(tmp_path)
    again = generate_synthetic(tmp_path, 10, seed=1)
    assert again == first and _files(tmp_path) == before
    # Item i depends on (seed, i) only, so a longer run starts with the same items.
    longer = generate_synthetic(tmp_path / "long", 20, seed=1)
    assert longer[:10] == first
    assert (tmp_path / "long" / "bar-00005.png").read_bytes() == before["bar-00005.png"]


def test_every_kind_cycles_in_order(items_dir):
    items, out = items_dir
    assert [it.kind for it in items[:5]] == list(KINDS)
    assert Counter(it.kind for it in items) == {k: 6 for k in KINDS}
    assert items[12].id == "pie-00012" and items[12].image == "pie-00012.png"
    shapes = [it.meta["shape"] for it in items if it.kind == "geometry"]
    assert shapes == ["triangle", "rectangle", "circle"] * 2
    for it in items:
        with Image.open(out / it.image) as im:
            assert im.size == (224, 224) and im.mode == "RGB"


def test_kinds_subset_and_size(tmp_path):
    items = generate_synthetic(tmp_path, 4, seed=0, kinds=["pie", "geometry"], size=128)
    assert [it.id for it in items] == ["pie-00000", "geometry-00001", "pie-00002", "geometry-00003"]
    with Image.open(tmp_path / "pie-00000.png") as im:
        assert im.size == (128, 128)


def test_ground_truth_round_trip(items_dir):
    items, out = items_dir
    assert read_ground_truth(out) == items
    lines = (out / GROUND_TRUTH_FILE).read_text().splitlines()
    assert len(lines) == 30
    assert json.loads(lines[3])["id"] == "diagram-00003"


def test_qa_shape(items_dir):
    items, _ = items_dir
    for it in items:
        assert 3 <= len(it.qa) <= 6, it.id
        for qa in it.qa:
            assert qa.answer_type in ("number", "text", "choice")
            assert 2 <= len(qa.steps) <= 4, (it.id, qa)
            assert not any(s.lower().startswith("step") for s in qa.steps)
            if qa.answer_type == "number":
                int(qa.answer)  # integers only
            if qa.answer_type == "choice":
                assert qa.choices and 3 <= len(qa.choices) <= 4
                assert qa.answer in "ABCD"[: len(qa.choices)]
                for letter, option in zip("ABCD", qa.choices):
                    assert f"{letter}) {option}" in qa.question
            else:
                assert qa.choices is None


def _choice(qa: QA) -> str:
    return qa.choices["ABCD".index(qa.answer)]


def _expected_bar(meta: dict, qa: QA) -> str:
    labels, values = meta["labels"], meta["values"]
    by_label = dict(zip(labels, values))
    tallest, shortest = labels[values.index(max(values))], labels[values.index(min(values))]
    q = qa.question
    if q == "What is the value of the tallest bar?":
        return str(max(values))
    if q == "Which bar is the shortest?":
        return shortest
    if m := re.fullmatch(r"What is the value of the (\w+) bar\?", q):
        return str(by_label[m[1]])
    if q.startswith("What is the difference between the tallest and the shortest"):
        return str(max(values) - min(values))
    if q == "How many bars are there?":
        return str(len(values))
    if q.startswith("Which bar is the tallest?"):
        return "ABCD"[qa.choices.index(tallest)]
    raise AssertionError(f"unchecked bar question {q!r}")


def _expected_line(meta: dict, qa: QA) -> str:
    xs, values = meta["x_labels"], meta["values"]
    q = qa.question
    if q == "What is the highest value on the line?":
        return str(max(values))
    if q == "At which point is the line highest?":
        return xs[values.index(max(values))]
    if m := re.fullmatch(r"What is the value at point (\d+)\?", q):
        return str(values[xs.index(m[1])])
    if m := re.fullmatch(r"What is the change from point 1 to point (\d+)\?", q):
        return str(values[xs.index(m[1])] - values[0])
    if q == "Does the line go up or down from point 1 to point 2?":
        return "up" if values[1] > values[0] else "down"
    if q == "How many points are there?":
        return str(len(values))
    raise AssertionError(f"unchecked line question {q!r}")


def _expected_pie(meta: dict, qa: QA) -> str:
    labels, pct = meta["labels"], meta["percents"]
    by_label = dict(zip(labels, pct))
    q = qa.question
    if q == "Which slice is the largest?":
        return labels[pct.index(max(pct))]
    if m := re.fullmatch(r"What percentage is the (\w+) slice\?", q):
        return str(min(pct)) if m[1] == "smallest" else str(by_label[m[1]])
    if m := re.fullmatch(r"What is the total percentage of (\w+) and (\w+)\?", q):
        assert m[1] != m[2]
        return str(by_label[m[1]] + by_label[m[2]])
    if q == "How many slices are there?":
        return str(len(pct))
    if q.startswith("Which slice is the smallest?"):
        return "ABCD"[qa.choices.index(labels[pct.index(min(pct))])]
    raise AssertionError(f"unchecked pie question {q!r}")


def _expected_diagram(meta: dict, qa: QA) -> str:
    edges = meta["edges"]
    sources, targets = {a for a, _ in edges}, {b for _, b in edges}
    q = qa.question
    if m := re.fullmatch(r"What does (\w+) point to\?", q):
        return next(b for a, b in edges if a == m[1])
    if m := re.fullmatch(r"What points to (\w+)\?", q):
        return next(a for a, b in edges if b == m[1])
    if q == "How many organisms are in the food chain?":
        return str(len(sources | targets))
    if q == "Which organism is the top predator?":
        (top,) = targets - sources  # nothing goes out of it
        return top
    if q.startswith("Which organism is a producer?"):
        (producer,) = sources - targets  # nothing points to it
        assert sum(c == producer for c in qa.choices) == 1
        return "ABCD"[qa.choices.index(producer)]
    raise AssertionError(f"unchecked diagram question {q!r}")


def _expected_geometry(meta: dict, qa: QA) -> str:
    shape, q = meta["shape"], qa.question
    if q.startswith("What shape is shown?"):
        return "ABCD"[qa.choices.index(shape)] if qa.choices else shape
    if shape == "triangle":
        a, b = meta["angle_a"], meta["angle_b"]
        return {"What is angle C?": str(180 - a - b), "What is angle A?": str(a),
                "What is the sum of angles A and B?": str(a + b)}[q]
    if shape == "rectangle":
        w, h = meta["width"], meta["height"]
        return {"What is the area of the rectangle?": str(w * h),
                "What is the perimeter of the rectangle?": str(2 * w + 2 * h),
                "What is the length of the longer side?": str(max(w, h))}[q]
    r = meta["radius"]
    return {"What is the diameter of the circle?": str(r + r), "What is the radius of the circle?": str(r)}[q]


EXPECTED = {"bar": _expected_bar, "line": _expected_line, "pie": _expected_pie,
            "diagram": _expected_diagram, "geometry": _expected_geometry}


def test_answers_recomputable_from_meta(tmp_path):
    items = generate_synthetic(tmp_path, 100, seed=11)
    checked = Counter()
    for it in items:
        for qa in it.qa:
            assert qa.answer == EXPECTED[it.kind](it.meta, qa), (it.id, qa)
            checked[it.kind] += 1
    assert set(checked) == set(KINDS)


def test_hand_worked_triangle_and_rectangle(items_dir):
    items, _ = items_dir
    tri = next(it for it in items if it.meta.get("shape") == "triangle")
    a, b = tri.meta["angle_a"], tri.meta["angle_b"]
    assert a % 5 == 0 and b % 5 == 0 and 180 - a - b >= 30
    third = next(q for q in tri.qa if q.question == "What is angle C?")
    assert int(third.answer) + a + b == 180
    assert third.steps[-1] == f"180 - {a} - {b} = {third.answer}."


def _color_pixels(path: Path, box: tuple[int, int, int, int] | None = None) -> Counter:
    with Image.open(path) as im:
        region = im.crop(box) if box else im
        counts = Counter({rgb: n for n, rgb in region.getcolors(maxcolors=1 << 16)})
    return Counter({name: counts[rgb] for name, rgb in PALETTE.items()})


def _color_rows(path: Path) -> Counter:
    """Per palette colour, how many pixel rows contain it (a bar's drawn height)."""
    with Image.open(path) as im:
        w, h = im.size
        px = im.load()
        rows = Counter()
        for name, rgb in PALETTE.items():
            rows[name] = sum(any(px[x, y] == rgb for x in range(w)) for y in range(h))
    return rows


def test_bar_heights_in_pixels_follow_meta(items_dir):
    # Heights share one scale, so the tallest bar fixes it and every other bar must match within rounding.
    items, out = items_dir
    for it in (i for i in items if i.kind == "bar"):
        rows = _color_rows(out / it.image)
        labels, values = it.meta["labels"], it.meta["values"]
        scale = rows[labels[values.index(max(values))]] / max(values)
        for label, v in zip(labels, values):
            assert abs(rows[label] - scale * v) <= 2, (it.id, label, v, rows[label])
        assert sum(rows[c] for c in PALETTE if c not in labels) == 0


def test_pie_areas_in_pixels_follow_meta(items_dir):
    items, out = items_dir
    for it in (i for i in items if i.kind == "pie"):
        px = _color_pixels(out / it.image, box=(0, 0, 140, 224))  # the pie, not the legend
        labels, pct = it.meta["labels"], it.meta["percents"]
        total = sum(px[l] for l in labels)
        for label, p in zip(labels, pct):
            assert abs(100 * px[label] / total - p) < 1.0, (it.id, label, p)


def test_bad_arguments_and_missing_truth(tmp_path):
    with pytest.raises(ValueError, match="'hexagon'"):
        generate_synthetic(tmp_path, 3, kinds=["bar", "hexagon"])
    with pytest.raises(ValueError, match="n must be"):
        generate_synthetic(tmp_path, 0)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / GROUND_TRUTH_FILE))):
        read_ground_truth(tmp_path)
    (tmp_path / GROUND_TRUTH_FILE).write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=":1: not a synthetic item"):
        read_ground_truth(tmp_path)
