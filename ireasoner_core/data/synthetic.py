"""Synthetic chart, diagram and geometry images with their ground truth on the side.

The embedded default trains on these instead of a real unlabeled pool: the images look like the
benchmarks' domains (charts, food-chain diagrams, geometry figures) and every question's answer is
computable from what is drawn, so small models can be warm-started on the QA pairs and mini-benchmarks
can be scored exactly. Each item draws from its own ``random.Random`` seeded by (seed, index), so the
first k items of a run do not depend on how many are generated, and the same arguments always write
byte-identical PNGs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

KINDS: tuple[str, ...] = ("bar", "line", "pie", "diagram", "geometry")
GROUND_TRUTH_FILE = "ground_truth.jsonl"
ANSWER_TYPES = ("number", "text", "choice")
CHOICE_LETTERS = "ABCD"

# Series are named by their colour: the label is drawn next to the mark and the answer space stays
# small (six words shared by bar, line and pie questions).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (214, 48, 49),
    "blue": (40, 104, 204),
    "green": (46, 150, 70),
    # Not a pure grey: anti-aliased black text produces those, and tests count pixels by colour.
    "gray": (128, 128, 140),
    "pink": (232, 110, 170),
    "brown": (140, 86, 40),
}
PRODUCERS = ("grass", "algae", "plant")
HERBIVORES = ("rabbit", "mouse", "insect", "deer")
PREDATORS = ("snake", "frog", "fox")
TOP_PREDATORS = ("hawk", "owl", "eagle")
SHAPES = ("triangle", "rectangle", "circle")
SHAPE_CHOICES = ("triangle", "rectangle", "circle", "square")

_BLACK = (20, 20, 20)
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class QA:
    """One ground-truth question about an image, with a short worked solution."""

    question: str
    answer: str
    steps: list[str]
    answer_type: str
    choices: list[str] | None = None


@dataclass(frozen=True)
class SyntheticItem:
    """One generated image (file name relative to the output folder) and its QA pairs."""

    id: str
    kind: str
    image: str
    qa: list[QA]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticItem:
        return cls(
            id=d["id"], kind=d["kind"], image=d["image"],
            qa=[QA(**q) for q in d["qa"]], meta=d["meta"],
        )


# --------------------------------------------------------------------------- drawing helpers


@lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


class _Canvas:
    """A square white image with text helpers scaled to its size (layouts are designed at 224 px)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.k = size / 224.0
        self.image = Image.new("RGB", (size, size), _WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font(max(8, round(13 * self.k)))
        self.big_font = _font(max(9, round(15 * self.k)))

    def text(self, xy: tuple[float, float], s: str, anchor: str = "mm", fill=_BLACK, big: bool = False) -> None:
        self.draw.text(xy, s, fill=fill, font=self.big_font if big else self.font, anchor=anchor)

    def arrow(self, p: tuple[float, float], q: tuple[float, float], width: int = 2) -> None:
        """A line from p to q with a filled head at q."""
        (x0, y0), (x1, y1) = p, q
        ang = math.atan2(y1 - y0, x1 - x0)
        head = 8 * self.k
        base = (x1 - head * math.cos(ang), y1 - head * math.sin(ang))
        self.draw.line([p, base], fill=_BLACK, width=max(1, round(width * self.k)))
        left = (base[0] + head * 0.5 * math.sin(ang), base[1] - head * 0.5 * math.cos(ang))
        right = (base[0] - head * 0.5 * math.sin(ang), base[1] + head * 0.5 * math.cos(ang))
        self.draw.polygon([q, left, right], fill=_BLACK)


def _distinct_ints(rng: random.Random, n: int, lo: int, hi: int, step: int = 1) -> list[int]:
    # Distinct values keep "tallest"/"smallest" questions free of ties.
    return rng.sample(range(lo, hi + 1, step), n)


def _listing(labels: Sequence[str], values: Sequence[int], suffix: str = "") -> str:
    return ", ".join(f"{l}={v}{suffix}" for l, v in zip(labels, values))


def _choice_qa(rng: random.Random, question: str, correct: str, distractors: Sequence[str], steps: list[str]) -> QA:
    """Multiple choice over `correct` and up to three distractors; the answer is the correct letter."""
    options = [correct] + list(distractors)[:3]
    rng.shuffle(options)
    letter = CHOICE_LETTERS[options.index(correct)]
    listed = " ".join(f"{CHOICE_LETTERS[i]}) {o}" for i, o in enumerate(options))
    return QA(
        question=f"{question} {listed}",
        answer=letter,
        steps=steps + [f"Option {letter} is {correct}."],
        answer_type="choice",
        choices=options,
    )


# --------------------------------------------------------------------------- kinds


def _bar(rng: random.Random, c: _Canvas, occurrence: int) -> tuple[list[QA], dict]:
    n = rng.randint(3, 5)
    labels = rng.sample(list(PALETTE), n)
    values = _distinct_ints(rng, n, 5, 50)
    s, k = c.size, c.k
    left, right, base, top = 6 * k, s - 6 * k, s - 28 * k, 26 * k
    c.draw.line([(left, base), (right, base)], fill=_BLACK, width=max(1, round(2 * k)))
    slot = (right - left) / n
    for i, (lab, v) in enumerate(zip(labels, values)):
        cx = left + slot * (i + 0.5)
        h = (base - top) * v / 50
        c.draw.rectangle([cx - 0.3 * slot, base - h, cx + 0.3 * slot, base], fill=PALETTE[lab])
        c.text((cx, base - h - 9 * k), str(v))
        c.text((cx, base + 13 * k), lab)

    listing = f"The bars show {_listing(labels, values)}."
    hi, lo = values.index(max(values)), values.index(min(values))
    pick = rng.randrange(n)
    qa = [
        QA("What is the value of the tallest bar?", str(values[hi]),
           [listing, f"The tallest bar is {labels[hi]}.", f"Its value is {values[hi]}."], "number"),
        QA("Which bar is the shortest?", labels[lo],
           [listing, f"The smallest value is {values[lo]}.", f"So the shortest bar is {labels[lo]}."], "text"),
        QA(f"What is the value of the {labels[pick]} bar?", str(values[pick]),
           [f"The {labels[pick]} bar is labelled {values[pick]}.", f"So its value is {values[pick]}."], "number"),
        QA("What is the difference between the tallest and the shortest bar?", str(values[hi] - values[lo]),
           [listing, f"The tallest is {values[hi]} and the shortest is {values[lo]}.",
            f"{values[hi]} - {values[lo]} = {values[hi] - values[lo]}."], "number"),
        QA("How many bars are there?", str(n), [listing, f"There are {n} bars."], "number"),
        _choice_qa(rng, "Which bar is the tallest?", labels[hi], [l for l in labels if l != labels[hi]],
                   [listing, f"The tallest bar is {labels[hi]}."]),
    ]
    return qa, {"labels": labels, "values": values}


def _line(rng: random.Random, c: _Canvas, occurrence: int) -> tuple[list[QA], dict]:
    n = rng.randint(4, 6)
    values = _distinct_ints(rng, n, 0, 50)
    xs = [str(i + 1) for i in range(n)]
    color = rng.choice(list(PALETTE))
    s, k = c.size, c.k
    left, right, base, top = 16 * k, s - 16 * k, s - 28 * k, 26 * k
    c.draw.line([(left - 6 * k, base), (right + 6 * k, base)], fill=_BLACK, width=max(1, round(2 * k)))
    step = (right - left) / (n - 1)
    # Zero sits above the axis so that a label under a low valley still fits.
    floor = base - 18 * k
    pts = [(left + i * step, floor - (floor - top) * v / 50) for i, v in enumerate(values)]
    c.draw.line(pts, fill=PALETTE[color], width=max(1, round(3 * k)))
    r = 3.5 * k
    for i, ((x, y), v, lab) in enumerate(zip(pts, values, xs)):
        c.draw.ellipse([x - r, y - r, x + r, y + r], fill=PALETTE[color])
        lx, ly = _value_label_xy(values, i, x, y, k)
        c.text((min(max(lx, 12 * k), s - 12 * k), ly), str(v))
        c.text((x, base + 12 * k), lab)

    listing = f"The points show {_listing(xs, values)}."
    hi = values.index(max(values))
    pick = rng.randrange(n)
    change = values[-1] - values[0]
    direction = "up" if values[1] > values[0] else "down"
    qa = [
        QA("What is the highest value on the line?", str(values[hi]),
           [listing, f"The largest value is {values[hi]}."], "number"),
        QA("At which point is the line highest?", xs[hi],
           [listing, f"The largest value is {values[hi]}.", f"It is at point {xs[hi]}."], "number"),
        QA(f"What is the value at point {xs[pick]}?", str(values[pick]),
           [f"Point {xs[pick]} is labelled {values[pick]}.", f"So the value is {values[pick]}."], "number"),
        QA(f"What is the change from point 1 to point {n}?", str(change),
           [f"Point 1 is {values[0]} and point {n} is {values[-1]}.",
            f"{values[-1]} - {values[0]} = {change}."], "number"),
        QA("Does the line go up or down from point 1 to point 2?", direction,
           [f"Point 1 is {values[0]} and point 2 is {values[1]}.",
            f"{values[1]} is {'more' if direction == 'up' else 'less'} than {values[0]}.",
            f"So the line goes {direction}."], "text"),
        QA("How many points are there?", str(n), [listing, f"There are {n} points."], "number"),
    ]
    return qa, {"x_labels": xs, "values": values, "color": color}


def _value_label_xy(values: Sequence[int], i: int, x: float, y: float, k: float) -> tuple[float, float]:
    """Where point i's value label goes so that the line through it does not cross the text."""
    prev_up = i > 0 and values[i - 1] > values[i]
    next_up = i + 1 < len(values) and values[i + 1] > values[i]
    if prev_up and next_up:  # a valley: both segments leave upwards, below is free
        return x, y + 12 * k
    if next_up:  # rising through the point: the upper-left quadrant is free
        return x - 10 * k, y - 10 * k
    if prev_up:  # falling through the point: the upper-right quadrant is free
        return x + 10 * k, y - 10 * k
    return x, y - 11 * k


def _pie_percents(rng: random.Random, n: int) -> list[int]:
    # Multiples of 5, at least 15 % each (legible slices), distinct (no ties), summing to 100.
    while True:
        cuts = sorted(rng.sample(range(1, 20), n - 1))
        parts = [5 * (b - a) for a, b in zip([0] + cuts, cuts + [20])]
        if min(parts) >= 15 and len(set(parts)) == n:
            return parts


def _pie(rng: random.Random, c: _Canvas, occurrence: int) -> tuple[list[QA], dict]:
    n = rng.randint(3, 4)
    labels = rng.sample(list(PALETTE), n)
    percents = _pie_percents(rng, n)
    s, k = c.size, c.k
    cx, cy, r = 72 * k, s / 2, 62 * k
    start = -90.0
    for lab, p in zip(labels, percents):
        end = start + 360.0 * p / 100
        c.draw.pieslice([cx - r, cy - r, cx + r, cy + r], start, end, fill=PALETTE[lab], outline=_WHITE)
        start = end
    row = 24 * k
    y0 = cy - row * (n - 1) / 2
    for i, (lab, p) in enumerate(zip(labels, percents)):
        y = y0 + i * row
        sq = 6 * k
        x = 146 * k
        c.draw.rectangle([x - sq, y - sq, x + sq, y + sq], fill=PALETTE[lab])
        c.text((x + 11 * k, y), f"{lab} {p}%", anchor="lm")

    listing = f"The slices are {_listing(labels, percents, '%')}."
    hi, lo = percents.index(max(percents)), percents.index(min(percents))
    pick = rng.randrange(n)
    a, b = rng.sample(range(n), 2)
    qa = [
        QA("Which slice is the largest?", labels[hi],
           [listing, f"The largest share is {percents[hi]}%.", f"So the largest slice is {labels[hi]}."], "text"),
        QA(f"What percentage is the {labels[pick]} slice?", str(percents[pick]),
           [f"The legend shows {labels[pick]} {percents[pick]}%.", f"So it is {percents[pick]}."], "number"),
        QA("What percentage is the smallest slice?", str(percents[lo]),
           [listing, f"The smallest slice is {labels[lo]}.", f"It is {percents[lo]}."], "number"),
        QA(f"What is the total percentage of {labels[a]} and {labels[b]}?", str(percents[a] + percents[b]),
           [f"The {labels[a]} slice is {percents[a]}% and the {labels[b]} slice is {percents[b]}%.",
            f"{percents[a]} + {percents[b]} = {percents[a] + percents[b]}."], "number"),
        QA("How many slices are there?", str(n), [listing, f"There are {n} slices."], "number"),
        _choice_qa(rng, "Which slice is the smallest?", labels[lo], [l for l in labels if l != labels[lo]],
                   [listing, f"The smallest slice is {labels[lo]}."]),
    ]
    return qa, {"labels": labels, "percents": percents}


def _diagram(rng: random.Random, c: _Canvas, occurrence: int) -> tuple[list[QA], dict]:
    n = rng.randint(3, 4)
    chain = [rng.choice(PRODUCERS), rng.choice(HERBIVORES)]
    if n == 4:
        chain.append(rng.choice(PREDATORS))
    chain.append(rng.choice(TOP_PREDATORS))
    s, k = c.size, c.k
    c.text((s / 2, 12 * k), "Food chain", big=True)
    # Arrows follow the flow of energy: from the eaten to the eater, top to bottom.
    top, bottom, bh, bw = 28 * k, s - 8 * k, 26 * k, 84 * k
    gap = (bottom - top - n * bh) / (n - 1)
    # A slight zig-zag makes it look like a diagram rather than a list.
    centres = [(s / 2 + (-18 if i % 2 == 0 else 18) * k, top + bh / 2 + i * (bh + gap)) for i in range(n)]
    for (x, y), name in zip(centres, chain):
        c.draw.rounded_rectangle([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], radius=6 * k,
                                 fill=(236, 244, 236), outline=_BLACK, width=max(1, round(2 * k)))
        c.text((x, y), name)
    for (x0, y0), (x1, y1) in itertools.pairwise(centres):
        c.arrow((x0, y0 + bh / 2), (x1, y1 - bh / 2))

    i = rng.randrange(n - 1)
    j = rng.randrange(1, n)
    edges = [[a, b] for a, b in itertools.pairwise(chain)]
    others = [o for o in HERBIVORES + PREDATORS + TOP_PREDATORS if o not in chain]
    distractors = chain[1:] + rng.sample(others, 3)
    qa = [
        QA(f"What does {chain[i]} point to?", chain[i + 1],
           [f"The arrow from {chain[i]} goes to {chain[i + 1]}.", f"So {chain[i]} points to {chain[i + 1]}."],
           "text"),
        QA(f"What points to {chain[j]}?", chain[j - 1],
           [f"The arrow into {chain[j]} comes from {chain[j - 1]}.", f"So {chain[j - 1]} points to {chain[j]}."],
           "text"),
        QA("How many organisms are in the food chain?", str(n),
           [f"The boxes are {', '.join(chain)}.", f"There are {n} organisms."], "number"),
        QA("Which organism is the top predator?", chain[-1],
           [f"The chain is {' -> '.join(chain)}.", f"No arrow goes out of {chain[-1]}.",
            f"So the top predator is {chain[-1]}."], "text"),
        _choice_qa(rng, "Which organism is a producer?", chain[0], distractors[:3],
                   [f"The chain starts at {chain[0]}.", f"Nothing points to {chain[0]}, so it is the producer."]),
    ]
    return qa, {"chain": chain, "edges": edges}


def _fit(points: list[tuple[float, float]], size: int, margin: float) -> list[tuple[float, float]]:
    """Scale and centre points (y up) into the square canvas (y down) with the given margin."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    scale = (size - 2 * margin) / max(w, h)
    ox = (size - w * scale) / 2 - min(xs) * scale
    oy = (size - h * scale) / 2 + max(ys) * scale
    return [(ox + x * scale, oy - y * scale) for x, y in points]


def _shape_choice(rng: random.Random, shape: str) -> QA:
    return _choice_qa(rng, "What shape is shown?", shape, [x for x in SHAPE_CHOICES if x != shape],
                      [f"The figure is a {shape}."])


def _triangle(rng: random.Random, c: _Canvas) -> tuple[list[QA], dict]:
    while True:
        a, b = rng.randrange(30, 95, 5), rng.randrange(30, 95, 5)
        if 180 - a - b >= 30:
            break
    g = 180 - a - b
    # Law of sines with AB = 1 puts C where the drawn angles are the labelled ones.
    ac = math.sin(math.radians(b)) / math.sin(math.radians(g))
    raw = [(0.0, 0.0), (1.0, 0.0), (ac * math.cos(math.radians(a)), ac * math.sin(math.radians(a)))]
    k = c.k
    pts = _fit(raw, c.size, 30 * k)
    c.draw.polygon(pts, outline=_BLACK, width=max(1, round(2 * k)))
    centroid = (sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3)
    for (x, y), name, label in zip(pts, "ABC", [f"{a}°", f"{b}°", "?"]):
        dx, dy = centroid[0] - x, centroid[1] - y
        d = math.hypot(dx, dy)
        c.text((x - dx / d * 13 * k, y - dy / d * 13 * k), name, big=True)
        c.text((x + dx / d * 34 * k, y + dy / d * 34 * k), label)
    qa = [
        QA("What is angle C?", str(g),
           [f"Angle A is {a} and angle B is {b}.", "The angles of a triangle add up to 180.",
            f"180 - {a} - {b} = {g}."], "number"),
        QA("What is angle A?", str(a), [f"Angle A is labelled {a}.", f"So angle A is {a}."], "number"),
        QA("What is the sum of angles A and B?", str(a + b),
           [f"Angle A is {a} and angle B is {b}.", f"{a} + {b} = {a + b}."], "number"),
        QA("What shape is shown?", "triangle", ["The figure has three sides.", "So it is a triangle."], "text"),
        _shape_choice(rng, "triangle"),
    ]
    return qa, {"shape": "triangle", "angle_a": a, "angle_b": b}


def _rectangle(rng: random.Random, c: _Canvas) -> tuple[list[QA], dict]:
    w, h = rng.sample(range(2, 13), 2)
    k = c.k
    pts = _fit([(0.0, 0.0), (float(w), float(h))], c.size, 44 * k)
    # Shifted left to leave room for the height label on the right.
    (x0, y1), (x1, y0) = [(x - 12 * k, y) for x, y in pts]
    c.draw.rectangle([x0, y0, x1, y1], outline=_BLACK, width=max(1, round(2 * k)))
    c.text(((x0 + x1) / 2, y1 + 12 * k), f"{w} cm")
    c.text((x1 + 8 * k, (y0 + y1) / 2), f"{h} cm", anchor="lm")
    area, per = w * h, 2 * (w + h)
    qa = [
        QA("What is the area of the rectangle?", str(area),
           [f"The sides are {w} and {h}.", "Area is width times height.", f"{w} x {h} = {area}."], "number"),
        QA("What is the perimeter of the rectangle?", str(per),
           [f"The sides are {w} and {h}.", "Perimeter is two times width plus height.",
            f"2 x ({w} + {h}) = {per}."], "number"),
        QA("What is the length of the longer side?", str(max(w, h)),
           [f"The sides are {w} and {h}.", f"The longer side is {max(w, h)}."], "number"),
        QA("What shape is shown?", "rectangle",
           ["The figure has four sides and four right angles.", f"Its sides {w} and {h} differ, so it is a rectangle."],
           "text"),
        _shape_choice(rng, "rectangle"),
    ]
    return qa, {"shape": "rectangle", "width": w, "height": h}


def _circle(rng: random.Random, c: _Canvas) -> tuple[list[QA], dict]:
    r = rng.randint(2, 20)
    s, k = c.size, c.k
    cx, cy, R = s / 2, s / 2 + 6 * k, 78 * k
    c.draw.ellipse([cx - R, cy - R, cx + R, cy + R], outline=_BLACK, width=max(1, round(2 * k)))
    dot = 3 * k
    c.draw.ellipse([cx - dot, cy - dot, cx + dot, cy + dot], fill=_BLACK)
    c.draw.line([(cx, cy), (cx + R, cy)], fill=_BLACK, width=max(1, round(2 * k)))
    c.text((cx + R / 2, cy - 11 * k), f"r = {r}")
    qa = [
        QA("What is the diameter of the circle?", str(2 * r),
           [f"The radius is {r}.", "The diameter is two times the radius.", f"2 x {r} = {2 * r}."], "number"),
        QA("What is the radius of the circle?", str(r), [f"The label shows r = {r}.", f"So the radius is {r}."],
           "number"),
        QA("What shape is shown?", "circle", ["The figure is round with a centre.", "So it is a circle."], "text"),
        _shape_choice(rng, "circle"),
    ]
    return qa, {"shape": "circle", "radius": r}


def _geometry(rng: random.Random, c: _Canvas, occurrence: int) -> tuple[list[QA], dict]:
    # Cycle the shapes over this kind's occurrences so every shape appears in small runs.
    shape = SHAPES[occurrence % len(SHAPES)]
    return {"triangle": _triangle, "rectangle": _rectangle, "circle": _circle}[shape](rng, c)


_BUILDERS: dict[str, Callable[[random.Random, _Canvas, int], tuple[list[QA], dict]]] = {
    "bar": _bar, "line": _line, "pie": _pie, "diagram": _diagram, "geometry": _geometry,
}


# --------------------------------------------------------------------------- public API


def _item_rng(seed: int, index: int) -> random.Random:
    # An integer seed (not a tuple/str) keeps the stream identical across Python processes.
    return random.Random(seed * 1_000_003 + index)


def make_item(index: int, kind: str, seed: int = 0, size: int = 224, occurrence: int = 0) -> tuple[SyntheticItem, Image.Image]:
    """Draw one item in memory: the image and its ground truth (no file is written)."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown synthetic kind {kind!r}; expected one of {KINDS}")
    canvas = _Canvas(size)
    qa, meta = _BUILDERS[kind](_item_rng(seed, index), canvas, occurrence)
    item_id = f"{kind}-{index:05d}"
    return SyntheticItem(id=item_id, kind=kind, image=f"{item_id}.png", qa=qa, meta=meta), canvas.image


def generate_synthetic(out_dir: Path, n: int, seed: int = 0, kinds: Sequence[str] | None = None,
                       size: int = 224) -> list[SyntheticItem]:
    """Write n PNGs and out_dir/ground_truth.jsonl; kinds cycle in order so every kind is represented."""
    kinds = tuple(KINDS if kinds is None else kinds)
    if not kinds:
        raise ValueError("kinds must name at least one synthetic kind")
    unknown = [k for k in kinds if k not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown synthetic kind(s) {unknown}; expected some of {KINDS}")
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels for legible text, got {size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        item, image = make_item(i, kinds[i % len(kinds)], seed=seed, size=size, occurrence=i // len(kinds))
        image.save(out_dir / item.image, format="PNG")
        items.append(item)
    # Written via a temporary file so a reader never sees a half-written ground truth.
    tmp = out_dir / (GROUND_TRUTH_FILE + ".tmp")
    tmp.write_text("".join(item.to_json() + "\n" for item in items), encoding="utf-8")
    os.replace(tmp, out_dir / GROUND_TRUTH_FILE)
    return items


def read_ground_truth(out_dir: Path) -> list[SyntheticItem]:
    """Read the items written by ``generate_synthetic`` from out_dir/ground_truth.jsonl."""
    path = Path(out_dir) / GROUND_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"synthetic ground truth not found: {path}")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(SyntheticItem.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: not a synthetic item ({e})") from e
    return items



# --------------------------------------------------------------------------- question families

# The generator's question templates grouped by the skill a question asks for. Chart extremes are
# split by chart kind (a bar's height, a line's peak and a slice's share are read differently), and
# multiple choice by what the options name. ``question_family`` maps every template to one of these.
FAMILIES: tuple[str, ...] = (
    "extreme_bar", "extreme_line", "extreme_pie", "count", "trend", "value_lookup", "chart_arithmetic",
    "diagram_relation", "option_chart", "option_diagram", "option_shape", "shape_name", "geometry",
)
# Which image kinds ask each family's questions.
FAMILY_KINDS: dict[str, tuple[str, ...]] = {
    "extreme_bar": ("bar",), "extreme_line": ("line",), "extreme_pie": ("pie",),
    "count": ("bar", "line", "pie", "diagram"), "trend": ("line",),
    "value_lookup": ("bar", "line", "pie"), "chart_arithmetic": ("bar", "line", "pie"),
    "diagram_relation": ("diagram",), "option_chart": ("bar", "pie"), "option_diagram": ("diagram",),
    "option_shape": ("geometry",), "shape_name": ("geometry",), "geometry": ("geometry",),
}


def question_family(qa: QA) -> str:
    """The family of one generated question, from its text (and whether it is multiple choice).

    * ``extreme_bar`` / ``extreme_line`` / ``extreme_pie``: the largest or smallest mark of a chart,
      asked openly ("What is the value of the tallest bar?", "Which bar is the shortest?", "What is
      the highest value on the line?", "At which point is the line highest?", "Which slice is the
      largest?", "What percentage is the smallest slice?").
    * ``count``: "How many bars / points / slices / organisms ...?".
    * ``trend``: "Does the line go up or down from point 1 to point 2?".
    * ``value_lookup``: one named mark's value ("What is the value of the red bar?", "... at point 3?",
      "What percentage is the blue slice?").
    * ``chart_arithmetic``: two values combined (tallest minus shortest bar, change from the first to
      the last point, total of two slices).
    * ``diagram_relation``: food-chain arrows ("What does X point to?", "What points to X?", the top
      predator).
    * ``option_chart`` / ``option_diagram`` / ``option_shape``: multiple choice answered by a letter
      (the tallest bar or smallest slice; the producer; the shape), AI2D's format.
    * ``shape_name``: "What shape is shown?" answered with the word.
    * ``geometry``: a number from a figure (angles, area, perimeter, sides, radius, diameter).

    Raises ``ValueError`` for a question no template of this module asks.
    """
    q = qa.question
    if qa.answer_type == "choice":
        if q.startswith(("Which bar is the tallest?", "Which slice is the smallest?")):
            return "option_chart"
        if q.startswith("Which organism is a producer?"):
            return "option_diagram"
        if q.startswith("What shape is shown?"):
            return "option_shape"
    elif q.startswith("How many "):
        return "count"
    elif q in ("What is the value of the tallest bar?", "Which bar is the shortest?"):
        return "extreme_bar"
    elif q in ("What is the highest value on the line?", "At which point is the line highest?"):
        return "extreme_line"
    elif q in ("Which slice is the largest?", "What percentage is the smallest slice?"):
        return "extreme_pie"
    elif q.startswith("Does the line go up or down"):
        return "trend"
    elif q.startswith(("What is the difference between", "What is the change from", "What is the total percentage")):
        return "chart_arithmetic"
    elif (q.startswith("What is the value of the ") and q.endswith(" bar?")) or q.startswith(
            ("What is the value at point", "What percentage is the ")):
        return "value_lookup"
    elif q.startswith(("What does ", "What points to ", "Which organism is the top predator")):
        return "diagram_relation"
    elif q == "What shape is shown?":
        return "shape_name"
    elif q.startswith(("What is angle", "What is the sum of angles", "What is the area", "What is the perimeter",
                       "What is the length of", "What is the diameter", "What is the radius")):
        return "geometry"
    raise ValueError(f"no question family for {q!r}")
