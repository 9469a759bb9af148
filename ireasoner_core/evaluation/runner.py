"""``run_evaluation``: one model (base, or base + Solver adapter) on a list of lmms-eval tasks.

What it returns (``EvalResult``) is what the flow logs and the reports read: a headline score per
task on 0-100 (``benchmarks.py`` says which lmms-eval key and scale), every numeric lmms-eval
metric under an MLflow-safe name, and a per-item JSONL per task
(``{"doc_id", "score", "prediction", "target", "generation"}``, ``score`` on the headline's
scale so that the mean of the items is the headline) for the paired bootstrap.

Sampled accuracy (avg@k, ``sampled_k``; 5 for the mini tasks by default, off for the others): each
item is also answered k times at temperature 1 (``lmm.py``), each answer scored as lmms-eval scores
the greedy one (the headline's filter, then the task's ``process_results``), and the item's avg@k
is the mean of its k scores. It is ``sampled_scores[task]`` (0-100) and, per item, the JSONL's
``sampled_score`` beside ``sampled_item_scores``/``sampled_predictions``: same doc_ids as the
greedy ``score``, so the reports bootstrap both the same way.

Mini tasks are built locally on demand and never touch the network. Any other task is run
unchanged from lmms-eval's registry; its dataset is loaded before the model is built, and if it
cannot be reached the error names the task (never a silent skip).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..config import ModelConfig
from . import tasks_include_path
from .benchmarks import BENCHMARKS, MINI_TASKS, Benchmark
from .minibench import ensure_mini_dataset

DEFAULT_SAMPLED_K = 5
"""avg@k's k for the mini tasks when none is given; the table-1 tasks get 0 (GPU cost unchanged)."""

_METRIC_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


class EvaluationError(RuntimeError):
    """Evaluation cannot run as asked; the message names the task or argument."""


class BenchmarkUnavailableError(EvaluationError):
    """A benchmark's dataset could not be loaded (no network, no local copy, gated dataset)."""


FETCH_COMMAND = "ireasoner benchmarks fetch"


class EvalResult(BaseModel):
    """Scores of one model on a list of tasks (the contract between evaluation and reporting)."""

    model: str
    adapter: str | None = None
    tasks: list[str]
    scores: dict[str, float] = Field(default_factory=dict, description="task -> headline score in 0-100")
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict,
                                                 description="task -> sanitised lmms-eval metric -> value")
    samples: dict[str, Path] = Field(default_factory=dict, description="task -> per-item JSONL")
    n_items: dict[str, int] = Field(default_factory=dict)
    results_path: Path | None = None
    seconds: float = 0.0
    is_main_process: bool = True
    """False on the non-zero ranks of an ``accelerate launch`` (lmms-eval gathers results on rank 0)."""
    notes: list[str] = Field(default_factory=list)
    protocol: str = "lmms_eval"
    """How the model was prompted and decoded (``lmm.py``: lmms_eval = lmms-eval's Qwen2.5-VL protocol)."""
    answer_extractor: str = "evolmm"
    """How the scored answer was cut from each generation (``lmm.extract_answer``)."""
    math_judge: str = "local"
    """MathVista's answer extraction: lmms-eval's rules without its LLM judge, or the judge (``math_judge.py``)."""
    sampled_k: int = 0
    """Samples per item behind ``sampled_scores`` (0: greedy only)."""
    sample_seed: int = 0
    """Seed of those samples (a sweep passes the variant's seed, so its seeds are independent draws)."""
    sampled_scores: dict[str, float] = Field(default_factory=dict,
                                             description="task -> avg@k: mean accuracy of k samples at T=1, 0-100")


def metric_name(name: str) -> str:
    """MLflow-safe metric name: lmms-eval's 'relaxed_overall,none' -> 'relaxed_overall'.

    Same rule as ``tasks.conventions.metric_name`` (the core may not import ``tasks``).
    """
    return _METRIC_BAD.sub("_", name.replace(",none", "").replace(",", "_"))


def headline(task: str, task_results: dict[str, Any]) -> tuple[Benchmark, list[str]]:
    """The benchmark entry for ``task``; unknown tasks get their first metric, scaled by a guess."""
    if task in BENCHMARKS:
        return BENCHMARKS[task], []
    numeric = {k: v for k, v in task_results.items() if _is_metric(k, v)}
    if not numeric:
        raise EvaluationError(f"task {task!r}: lmms-eval returned no numeric metric ({sorted(task_results)})")
    key = next(iter(numeric))
    scale = 100.0 if 0.0 <= float(numeric[key]) <= 1.0 else 1.0
    note = (f"{task}: no headline registered in ireasoner_core/evaluation/benchmarks.py; using {key!r} x {scale:g}")
    return Benchmark(task, task, key, scale, "general"), [note]


def _is_metric(key: str, value: Any) -> bool:
    return ("," in key and "_stderr" not in key and not isinstance(value, bool)
            and isinstance(value, (int, float)) and math.isfinite(float(value)))


def _task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager(verbosity="WARNING", include_path=str(tasks_include_path()), model_name="ireasoner")


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextmanager
def _single_download_attempt_when_offline():
    """Offline, a dataset missing from the cache stays missing: lmms-eval's download retries
    (5 attempts, 2 s apart, per task) would only make a worker without the data wait minutes
    before the error that names the fetch command."""
    from lmms_eval.api.task import ConfigurableTask
    from tenacity import stop_after_attempt  # lmms-eval's own retry library

    download = ConfigurableTask.download
    if not _hub_offline() or not hasattr(download, "retry_with"):
        yield
        return
    ConfigurableTask.download = download.retry_with(stop=stop_after_attempt(1))
    try:
        yield
    finally:
        ConfigurableTask.download = download


@cache
def _registered_task_names() -> frozenset[str]:
    # Indexing lmms-eval's task folders takes seconds: at most once per process.
    return frozenset(_task_manager().all_tasks)


def check_task_names(tasks: list[str], known: Callable[[], set[str] | frozenset[str]] | None = None) -> None:
    """Duplicate names and names that are no lmms-eval task or group fail here (EvaluationError)."""
    dupes = sorted({t for t in tasks if tasks.count(t) > 1})
    if dupes:
        raise EvaluationError(f"tasks: listed more than once: {dupes}")
    # benchmarks.py's tasks need no index: tests/test_evaluation_runner.py checks them against it.
    rest = [t for t in tasks if t not in BENCHMARKS]
    names = (known or _registered_task_names)() if rest else set()
    for task in rest:
        if task not in names:
            raise EvaluationError(
                f"task {task!r}: not an lmms-eval task or group (mini tasks: {', '.join(MINI_TASKS)}; "
                "`python -m lmms_eval --tasks list` prints the rest)")


def check_tasks(tasks: list[str], task_manager) -> None:
    """Unknown names and unreachable datasets fail here, before any model is loaded."""
    from lmms_eval.tasks import get_task_dict

    if not tasks:
        raise EvaluationError("tasks: at least one lmms-eval task name is required")
    check_task_names(tasks, lambda: set(task_manager.all_tasks))
    missing: dict[str, str] = {}
    with _single_download_attempt_when_offline():
        for task in tasks:
            if task in MINI_TASKS:
                ensure_mini_dataset(task)
                continue
            try:
                get_task_dict([task], task_manager)
            except Exception as err:  # datasets / hub / network errors all mean "cannot evaluate this task"
                missing[task] = f"{type(err).__name__}: {err}"
    if missing:
        # Every missing benchmark at once, so one fetch command fixes the worker. MathVista's and
        # MathVerse's lmms-eval modules build their LLM judge's client when imported, so without its
        # API key they fail before their dataset is even looked for: fetch them too, and say so.
        judged = [t for t, c in missing.items() if "api_key" in c.lower() or "OpenAIError" in c]
        judge = (f" {', '.join(judged)}: lmms-eval scores them with an LLM judge whose API is not configured "
                 "(OPENAI_API_KEY, or API_TYPE=azure with AZURE_API_KEY; docs/evaluation.md)." if judged else "")
        causes = "; ".join(f"{t}: {cause[:300]}" for t, cause in missing.items())
        raise BenchmarkUnavailableError(
            f"benchmark dataset(s) not in the Hugging Face cache and not downloadable here: {', '.join(missing)}. "
            f"Fetch them once on a machine with network, into the cache this worker reads (HF_HOME): "
            f"`{FETCH_COMMAND} {' '.join(missing)}`.{judge} "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}; causes: {causes})")


def sampled_plan(tasks: list[str], sampled_k: int | None) -> tuple[list[str], int]:
    """Which of ``tasks`` get avg@k, and k: ``sampled_k`` None, the mini tasks at ``DEFAULT_SAMPLED_K``;
    0, none; k, every task."""
    if sampled_k is not None and sampled_k < 0:
        raise EvaluationError(f"sampled_k must be >= 0 (0 = greedy only), got {sampled_k}")
    sampled_tasks = [t for t in tasks if sampled_k or (sampled_k is None and t in MINI_TASKS)]
    return sampled_tasks, (DEFAULT_SAMPLED_K if sampled_k is None else sampled_k) if sampled_tasks else 0


def run_evaluation(
    model_cfg: ModelConfig,
    adapter: Path | None,
    tasks: list[str],
    output_dir: Path,
    *,
    limit: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    max_new_tokens: int | None = None,
    protocol: str = "lmms_eval",
    answer_extractor: str | None = None,
    math_judge: str = "local",
    sampled_k: int | None = None,
) -> EvalResult:
    """Evaluate ``model_cfg`` (+ ``adapter``) on ``tasks`` with lmms-eval; files go to ``output_dir``.

    ``batch_size`` None: the plugin's default (64 for the embedded model, 8 otherwise);
    ``max_new_tokens`` None: the task's (protocol lmms_eval) or the plugin's (solver: 96 / 512).
    ``protocol``/``answer_extractor``: see ``lmm.py``; both are recorded in the result and results JSON.
    ``sampled_k`` None: avg@``DEFAULT_SAMPLED_K`` on the mini tasks only; 0: off; k: avg@k on every task.
    """
    from lmms_eval.evaluator import simple_evaluate

    from .lmm import IReasonerLMM

    started = time.perf_counter()
    tasks = list(tasks)
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be a positive number of items, got {limit}")
    output_dir = Path(output_dir)
    from .math_judge import install as install_math_judge

    install_math_judge(math_judge)   # before lmms-eval imports MathVista's module (check_tasks does)
    task_manager = _task_manager()
    check_tasks(tasks, task_manager)
    sampled_tasks, k = sampled_plan(tasks, sampled_k)
    sampled_keys = [BENCHMARKS[t].results_key if t in BENCHMARKS else t for t in sampled_tasks]
    lm = IReasonerLMM(model_cfg=model_cfg, adapter=str(adapter) if adapter else None, batch_size=batch_size,
                      device=device, max_new_tokens=max_new_tokens, protocol=protocol,
                      answer_extractor=answer_extractor, math_judge=math_judge,
                      sampled_k=k, sample_seed=seed, sampled_tasks=sampled_keys)
    results = simple_evaluate(
        model=lm, tasks=tasks, task_manager=task_manager, limit=limit, log_samples=True,
        bootstrap_iters=0,  # lmms-eval's own stderr; the reports bootstrap paired differences instead
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        verbosity="WARNING",
    )
    if k and lm.world_size > 1:
        # lmms-eval gathers the scored requests on rank 0, but each rank drew the samples of its own shard.
        from accelerate.utils import gather_object

        lm.sampled = {key: v for part in gather_object([lm.sampled]) for key, v in part.items()}
    out = EvalResult(model=model_cfg.name_or_path, adapter=str(adapter) if adapter else None, tasks=tasks,
                     protocol=lm.protocol, answer_extractor=lm.answer_extractor, math_judge=lm.math_judge,
                     sampled_k=k, sample_seed=seed)
    if results is None:  # a non-zero rank: rank 0 holds the gathered results
        out.is_main_process = False
        out.seconds = time.perf_counter() - started
        return out
    output_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        scorer = partial(_score_sampled, sampled=lm.sampled, task_manager=task_manager)
        _collect(task, results, lm.generations, output_dir, out, scorer if task in sampled_tasks else None)
    out.results_path = output_dir / "results.json"
    summary = {k: v for k, v in results.items() if k != "samples"}
    summary["ireasoner"] = lm.info   # protocol and answer extractor beside lmms-eval's own config
    out.results_path.write_text(json.dumps(summary, indent=2, default=str))
    out.seconds = time.perf_counter() - started
    return out


def score_answers(task_obj, bench: Benchmark, doc: dict, answers: list[str]) -> list[float | None]:
    """Each answer scored as lmms-eval scores a greedy one: the headline's filter, then ``process_results``."""
    from lmms_eval.api.reasoning import (
        parse_reasoning_tags_config,
        strip_reasoning_tags,
    )

    base_metric, _, filter_name = bench.metric.partition(",")
    resps: Any = [[a] for a in answers]
    ensemble = next((f for f in getattr(task_obj, "_filters", []) if f.name == filter_name), None)
    for flt in ensemble.filters if ensemble else []:
        resps = list(flt.apply(resps, [doc] * len(answers)))
    tags = parse_reasoning_tags_config(cli_value=None, task_value=getattr(task_obj.config, "reasoning_tags", None))
    scores: list[float | None] = []
    for resp in resps:
        if tags is not None and isinstance(resp, str):
            resp = strip_reasoning_tags(resp, tags)
        value = task_obj.process_results(doc, [resp]).get(base_metric)
        numeric = isinstance(value, (int, float)) and math.isfinite(float(value))
        scores.append(float(value) * bench.scale if numeric else None)
    return scores


Sampled = dict[int, tuple[list[float | None], list[str]]]
"""doc_id -> (the score of each of an item's k samples, their answers)."""


def _score_sampled(bench: Benchmark, sampled: dict[tuple[str, int], list[str]], task_manager) -> Sampled:
    """The samples the model drew for ``bench``'s task, each scored on the headline's metric."""
    from lmms_eval.tasks import get_task_dict

    task_obj = get_task_dict([bench.results_key], task_manager)[bench.results_key]
    docs = task_obj.eval_docs
    return {doc_id: (score_answers(task_obj, bench, docs[doc_id], answers), answers)
            for (name, doc_id), answers in sampled.items() if name == bench.results_key}


def _collect(task: str, results: dict, generations: dict, output_dir: Path, out: EvalResult,
             score_sampled: Callable[[Benchmark], Sampled] | None = None) -> None:
    res = results["results"]
    subtasks = list((results.get("group_subtasks") or {}).get(task) or [])
    first = task if task in res else (subtasks[0] if subtasks else task)
    bench, notes = headline(task, res.get(first, {}))
    out.notes.extend(notes)
    task_res = res.get(bench.results_key)
    if task_res is None or bench.metric not in task_res:
        raise EvaluationError(f"task {task!r}: lmms-eval results have no {bench.metric!r} for "
                              f"{bench.results_key!r} (got {sorted(task_res or {})})")
    out.scores[task] = float(task_res[bench.metric]) * bench.scale
    metrics: dict[str, float] = {}
    for key in [task, *subtasks]:
        prefix = "" if key == task else f"{key}/"
        for k, v in (res.get(key) or {}).items():
            if _is_metric(k, v):
                metrics[prefix + metric_name(k)] = float(v)
    out.metrics[task] = metrics

    base_metric, _, filter_name = bench.metric.partition(",")
    sampled = score_sampled(bench) if score_sampled else None
    rows = []
    for s in (results.get("samples") or {}).get(bench.results_key, []):
        if s.get("filter") not in (None, filter_name):
            continue
        value = s.get(base_metric)
        score = float(value) * bench.scale if isinstance(value, (int, float)) and not isinstance(value, bool) else (
            float(value) * bench.scale if isinstance(value, bool) else None)
        pred = s.get("filtered_resps", [None])
        rows.append({
            "doc_id": s.get("doc_id"), "score": score,
            "prediction": pred[0] if isinstance(pred, list) and pred else pred,
            "target": s.get("target"),
            "generation": generations.get((bench.results_key, int(s.get("doc_id", -1)))),
        })
        if sampled is not None:
            item_scores, answers = sampled.get(int(s.get("doc_id", -1)), ([], []))
            known = [x for x in item_scores if x is not None]
            rows[-1].update(sampled_score=sum(known) / len(known) if known and len(known) == len(item_scores)
                            else None, sampled_item_scores=item_scores, sampled_predictions=answers)
    if sampled is not None:
        per_item = [r["sampled_score"] for r in rows]
        if per_item and all(x is not None for x in per_item):
            out.sampled_scores[task] = sum(per_item) / len(per_item)
        else:
            out.notes.append(f"{task}: avg@{out.sampled_k} not scored (an item without samples, or a per-item "
                             f"{base_metric!r} that is not a number)")
    path = output_dir / "samples" / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    out.samples[task] = path
    out.n_items[task] = len(rows)
