"""Offline mini-benchmarks: ChartQA-, AI2D- and geometry-format test sets drawn by the synthetic
generator, so the embedded default can be evaluated with no network at all.

Each set is a ``datasets.DatasetDict`` with one ``test`` split, built on first use from a fixed
seed (``MINI_SEED``, far from the training seeds: the generator's per-item stream is seeded by
``seed * 1_000_003 + index``) and saved with ``save_to_disk`` under the cache directory
(``$IREASONER_EVAL_CACHE`` or ``~/.cache/ireasoner/eval``). The lmms-eval task YAMLs in
``tasks/`` declare ``dataset_kwargs: {load_from_disk: true}`` and name the set by its task name;
``MiniBenchmarkTask`` resolves that name to the cached directory (building it if needed) before
lmms-eval loads it, so ``python -m lmms_eval --include_path ...`` works on a fresh machine.

Formats follow the real benchmarks so that lmms-eval's own scorers run unchanged:

* ``ireasoner_chartqa_mini``: ChartQA rows {question, answer, type, image}, scored by lmms-eval's
  ChartQA relaxed accuracy (5 % tolerance on numbers, exact match otherwise). Bar, line and pie
  charts; one open (number or word) question per chart.
* ``ireasoner_ai2d_mini``: AI2D rows {question, options, answer (index), image}: food-chain
  diagrams, one multiple-choice question each (the generator's own choice question, or an open
  one given distractors from the same chain first, then from the other organisms). Prompted by
  lmms-eval's AI2D ``doc_to_text`` and scored by lmms-eval's AI2D rule (its ``flexible-extract``
  filter, then case- and punctuation-blind exact match on the letter; ``ai2d_exact_match``).
* ``ireasoner_geometry_mini``: {question, answer, image}: triangles, rectangles and circles
  with one numeric question each, scored by ``numeric_match``.
* ``ireasoner_pie_extreme_mini``, ``ireasoner_count_mini``, ``ireasoner_shape_mini``: the organism
  candidates' families, 400 items each by default, ChartQA rows scored like ChartQA-mini: pie extremes
  ("Which slice is the largest?", "What percentage is the smallest slice?"); counts of bars, points,
  slices or organisms; "What shape is shown?".

One question per image keeps the items independent, which the paired bootstrap assumes.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..data.synthetic import (
    FAMILY_KINDS,
    QA,
    make_item,
    question_family,
)
from ..embedded.formats import mc_from_open
from ..locks import file_lock

MINI_SEED = 20_260_105
MINI_SIZE = 200
BUILDER_VERSION = 1
CACHE_ENV = "IREASONER_EVAL_CACHE"
SIZE_ENV = "IREASONER_MINI_SIZE"
COMPLETE_FILE = "MINI_BENCHMARK.json"


class MiniBenchmarkError(ValueError):
    """An unknown mini task name or an unusable size; the message names it."""


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ireasoner" / "eval"


def mini_size(task: str | None = None) -> int:
    """Items per mini task: ``$IREASONER_MINI_SIZE``, else the task's default (``DEFAULT_SIZES`` or ``MINI_SIZE``)."""
    raw = os.environ.get(SIZE_ENV)
    if raw is None:
        return DEFAULT_SIZES.get(task or "", MINI_SIZE)
    try:
        n = int(raw)
    except ValueError:
        raise MiniBenchmarkError(f"{SIZE_ENV}={raw!r} is not an integer") from None
    if n < 1:
        raise MiniBenchmarkError(f"{SIZE_ENV}={raw!r} must be a positive number of items")
    return n


# ----------------------------------------------------------------------------- row builders


def _item_rng(seed: int, index: int) -> random.Random:
    # Which question of an image is asked: its own stream, separate from the drawing's.
    return random.Random((seed + 7_919) * 1_000_003 + index)


def _chartqa_rows(n: int, seed: int) -> Iterator[dict]:
    kinds = ("bar", "line", "pie")
    for i in range(n):
        item, image = make_item(i, kinds[i % 3], seed=seed, occurrence=i // 3)
        open_qa = [q for q in item.qa if q.answer_type in ("number", "text")]
        qa = _item_rng(seed, i).choice(open_qa)
        # ChartQA's "augmented" split holds machine-generated questions, as these are.
        yield {"id": item.id, "question": qa.question, "answer": qa.answer, "type": "augmented_test",
               "answer_type": qa.answer_type, "image": image}


def _mc_from_open(qa: QA, chain: list[str], rng: random.Random) -> tuple[str, list[str], int]:
    options, answer = mc_from_open(qa, chain, rng)
    return qa.question, options, answer


def _ai2d_rows(n: int, seed: int) -> Iterator[dict]:
    for i in range(n):
        item, image = make_item(i, "diagram", seed=seed, occurrence=i)
        rng = _item_rng(seed, i)
        qa = rng.choice(item.qa)
        if qa.answer_type == "choice":
            # The generator writes the options into the question ("... A) x B) y"); AI2D lists them apart.
            question = re.split(r"\s+A\)\s", qa.question, maxsplit=1)[0]
            options, answer = list(qa.choices or []), "ABCD".index(qa.answer)
        else:
            question, options, answer = _mc_from_open(qa, list(item.meta["chain"]), rng)
        yield {"id": item.id, "question": question, "options": options, "answer": str(answer), "image": image}


def _geometry_rows(n: int, seed: int) -> Iterator[dict]:
    for i in range(n):
        item, image = make_item(i, "geometry", seed=seed, occurrence=i)
        numeric = [q for q in item.qa if q.answer_type == "number"]
        qa = _item_rng(seed, i).choice(numeric)
        yield {"id": item.id, "question": qa.question, "answer": qa.answer, "shape": item.meta["shape"],
               "image": image}


def _family_rows(family: str, n: int, seed: int) -> Iterator[dict]:
    """ChartQA-format rows asking one question of ``family`` per image (``synthetic.question_family``),
    the images cycling over the kinds that family is asked of (``synthetic.FAMILY_KINDS``)."""
    kinds = FAMILY_KINDS[family]
    for i in range(n):
        item, image = make_item(i, kinds[i % len(kinds)], seed=seed, occurrence=i // len(kinds))
        asked = [q for q in item.qa if question_family(q) == family]
        qa = _item_rng(seed, i).choice(asked)
        yield {"id": item.id, "question": qa.question, "answer": qa.answer, "type": "augmented_test",
               "answer_type": qa.answer_type, "image": image}


BUILDERS: dict[str, Callable[[int, int], Iterator[dict]]] = {
    "ireasoner_chartqa_mini": _chartqa_rows,
    "ireasoner_ai2d_mini": _ai2d_rows,
    "ireasoner_geometry_mini": _geometry_rows,
    # Organism candidates (docs/embedded_model.md, "The model organism"): families where a majority
    # of 5 can beat one sample, each scored as ChartQA is scored.
    "ireasoner_pie_extreme_mini": functools.partial(_family_rows, "extreme_pie"),
    "ireasoner_count_mini": functools.partial(_family_rows, "count"),
    "ireasoner_shape_mini": functools.partial(_family_rows, "shape_name"),
}
# Default items per task where 200 is too few: an organism task's Δ of a few points needs >= 400 items.
DEFAULT_SIZES: dict[str, int] = {"ireasoner_pie_extreme_mini": 400, "ireasoner_count_mini": 400,
                                  "ireasoner_shape_mini": 400}


# ----------------------------------------------------------------------------- build and cache




def mini_dataset_dir(task: str, *, n: int | None = None, seed: int = MINI_SEED,
                     cache_dir: Path | None = None) -> Path:
    """Where the saved dataset of ``task`` lives (whether or not it has been built yet)."""
    if task not in BUILDERS:
        raise MiniBenchmarkError(f"unknown mini task {task!r}; known: {', '.join(BUILDERS)}")
    n = mini_size(task) if n is None else n
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / f"{task}-v{BUILDER_VERSION}-n{n}-s{seed}"


def build_mini_dataset(task: str, out_dir: Path, *, n: int, seed: int = MINI_SEED) -> Path:
    """Generate the rows of ``task`` and ``save_to_disk`` them (one ``test`` split) into ``out_dir``."""
    import datasets  # heavy; only needed when building
    import pyarrow as pa
    from datasets.table import InMemoryTable

    rows = list(BUILDERS[task](n, seed))
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    features = {k: datasets.Value("string") for k in columns if k not in ("image", "options")}
    features["image"] = datasets.Image()
    if "options" in columns:
        features["options"] = datasets.Sequence(datasets.Value("string"))
    features = datasets.Features(features)
    # Built with a fingerprint of its own: the one `from_dict` would compute pickles the table with dill,
    # whose bytecode scan prints through `print`, which a Prefect task with log_prints turns into log lines.
    table = pa.Table.from_pydict(features.encode_batch(columns), schema=features.arrow_schema)
    ds = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features),
                          fingerprint=f"{task}-v{BUILDER_VERSION}-n{n}-s{seed}")
    datasets.DatasetDict({"test": ds}).save_to_disk(str(out_dir))
    return out_dir


def ensure_mini_dataset(task: str, *, n: int | None = None, seed: int = MINI_SEED,
                        cache_dir: Path | None = None) -> Path:
    """The cached dataset directory of ``task``, built once (atomically, under a file lock)."""
    n = mini_size(task) if n is None else n
    final = mini_dataset_dir(task, n=n, seed=seed, cache_dir=cache_dir)
    if (final / COMPLETE_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Several processes of one `accelerate launch` load the task at once; one builds.
    with file_lock(final.parent / f".{final.name}.lock"):
        if (final / COMPLETE_FILE).is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
        try:
            build_mini_dataset(task, tmp, n=n, seed=seed)
            (tmp / COMPLETE_FILE).write_text(json.dumps(
                {"task": task, "n": n, "seed": seed, "builder_version": BUILDER_VERSION}))
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- scoring

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def numeric_match(prediction: str, target: str, rel_tol: float = 0.01) -> bool:
    """True when the last number in ``prediction`` is within 1 % of ``target`` (units ignored).

    The last number, because a worked answer such as "180 - 50 - 70 = 60" ends on its result.
    """
    found = _NUMBER.findall(str(prediction).replace(",", ""))
    if not found:
        return False
    pred, gold = float(found[-1]), float(target)
    return abs(pred - gold) <= rel_tol * max(abs(gold), 1e-9)


# lmms-eval's ai2d.yaml, filter_list "flexible-extract" and metric_list: ours declare the same.
AI2D_FILTER_KWARGS = {"regex_pattern": r"([A-Z])\.", "group_select": 0, "ignore_case": True, "ignore_punctuation": True}
AI2D_METRIC_KWARGS = {"ignore_case": True, "ignore_punctuation": True}


def ai2d_exact_match(prediction: str, answer: int) -> bool:
    """lmms-eval's AI2D score of one answer: its flexible-extract filter, then exact match on the letter.

    The letter only: an answer naming the option's text ("owl" for "B. owl") scores 0, as in
    lmms-eval, so AI2D-mini's numbers are produced the way the community produces AI2D's. The
    filtered answer is stripped before the match, as lmms-eval's ``ConfigurableTask.process_results`` does.
    """
    from lmms_eval.api.metrics import exact_match_hf_evaluate
    from lmms_eval.tasks.ai2d.utils import MultiChoiceRegexFilter

    (filtered,) = MultiChoiceRegexFilter(**AI2D_FILTER_KWARGS).apply([[str(prediction)]], [{}])
    letter = chr(ord("A") + int(answer))
    return exact_match_hf_evaluate([filtered.strip()], [letter], **AI2D_METRIC_KWARGS)["exact_match"] == 1.0


def geometry_doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def geometry_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def geometry_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"numeric_match": 1.0 if numeric_match(results[0], doc["answer"]) else 0.0}


# ----------------------------------------------------------------------------- lmms-eval task


@functools.cache
def _task_class():
    # Imported lazily: lmms-eval is heavy and only needed when lmms-eval loads our YAMLs.
    from lmms_eval.api.task import ConfigurableTask

    class MiniBenchmarkTask(ConfigurableTask):
        """A YAML-configured task whose ``dataset_path`` names a mini benchmark to build on demand."""

        def __init__(self, config: dict, model_name: str | None = None) -> None:
            config = {k: v for k, v in config.items() if k != "class"}
            super().__init__(config=config, model_name=model_name)

        def download(self, dataset_kwargs=None) -> None:
            self.DATASET_PATH = str(ensure_mini_dataset(self.config.task))
            super().download(dataset_kwargs)

    return MiniBenchmarkTask


def __getattr__(name: str):
    # `class: !function ireasoner_core.evaluation.minibench.MiniBenchmarkTask` in the YAMLs.
    if name == "MiniBenchmarkTask":
        return _task_class()
    raise AttributeError(name)
