"""Paper tables 1-3 from per-run scores: methods x benchmarks, best and second best marked,
Δ vs the untrained baseline with a paired bootstrap CI, mean +- std over seeds.

Input is a list of ``VariantRun`` (one evaluated model: a variant name, a seed, its headline
scores and per-item scores); where it came from (MLflow, files) is the caller's business. A
table is a list of long-format ``Cell`` records, rendered as Markdown (wide, for reading) or
CSV / ``mlflow.log_table`` rows (long, for analysis). Every number shown is one of a cell's
fields, so a report rebuilt from the same runs gives the same numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from ..config import TABLE2_ABLATIONS, TABLE3_ABLATIONS
from ..evaluation.benchmarks import BENCHMARKS, split_sampled
from ..evaluation.benchmarks import label as task_label
from .bootstrap import mean_over_seeds, pair_items, paired_bootstrap, summarize_seeds

BASELINE = "baseline"
AVERAGE = "avg"

METHOD_LABELS = {
    BASELINE: "Base model",
    "soft_only": "Answer-only (soft_only, EvoLMM-style)",
    "full": "iReasoner (full)",
    "negated": "Control: rewards negated",
    "random_reward": "Control: random rewards",
}
CONTROL_VARIANTS = ["negated", "random_reward"]   # config.CONTROLS; table 1 shows them below the methods
ENTROPY_TABLE = "answer_entropy"
PAPER_BASELINE = "paper: Qwen2.5-VL-7B"
PAPER_IREASONER = "paper: iReasoner"
PAPER_PROTOCOL = "lmms_eval"   # the paper evaluates with lmms-eval's Qwen2.5-VL protocol (docs/evaluation.md)
PROTOCOL_CAPTIONS = {
    "lmms_eval": "lmms_eval (lmms-eval's own Qwen2.5-VL prompting and decoding, as the paper's table 1)",
    "solver": "solver (the Solver's training prompt with reasoning; not comparable with the paper's numbers)",
}


class VariantRun(BaseModel):
    """One evaluated model: a training variant (or the baseline) at one seed."""

    run_id: str = ""
    variant: str
    seed: int = 0
    scores: dict[str, float] = Field(
        default_factory=dict, description="task -> headline score, 0-100; '<task>@avg<k>' -> its avg@k (sampled)")
    items: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="task -> doc_id -> per-item score on the headline's 0-100 scale")
    answer_entropy: dict[str, float] = Field(
        default_factory=dict, description="task (or '<task>@avg<k>') -> entropy (nats) of the answers across items")
    protocol: str = PAPER_PROTOCOL
    """Evaluation protocol that produced ``scores`` (``lmm.py``)."""


class Cell(BaseModel):
    """One (method, benchmark) entry of a table, in long format."""

    table: str
    method: str
    method_label: str
    benchmark: str
    benchmark_label: str
    mean: float | None = None
    std: float | None = None
    n_seeds: int = 0
    rank: int | None = None
    """1 = best, 2 = second best among the table's run rows (not the reference rows)."""
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_items: int | None = None
    reference: bool = False
    protocol: str = PAPER_PROTOCOL
    """Evaluation protocol of the row's runs (the paper's for reference rows)."""


class Table(BaseModel):
    name: str
    title: str
    methods: list[str]
    benchmarks: list[str]
    cells: list[Cell]
    notes: list[str] = Field(default_factory=list)
    protocols: list[str] = Field(default_factory=list)
    """Evaluation protocols of the table's runs; reference rows appear only beside the paper's."""
    legend: str | None = None
    """What the numbers are, under the table; None = the scores' legend (ranks, seeds, paired Δ)."""

    def cell(self, method: str, benchmark: str) -> Cell | None:
        for c in self.cells:
            if c.method == method and c.benchmark == benchmark:
                return c
        return None

    def records(self) -> list[dict]:
        return [c.model_dump() for c in self.cells]

    def summary_records(self) -> list[dict]:
        """One row per cell with the columns a reader filters and sorts on (MLflow's table view):
        table, method, benchmark, protocol, score, delta, ci_low, ci_high, n (items in the paired
        interval), then std and seeds. The CSV keeps every field of a cell."""
        return [{"table": c.table, "method": c.method, "benchmark": c.benchmark, "protocol": c.protocol,
                 "score": c.mean, "delta": c.delta, "ci_low": c.ci_low, "ci_high": c.ci_high, "n": c.n_items,
                 "std": c.std, "seeds": c.n_seeds} for c in self.cells]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(Cell.model_fields), lineterminator="\n")
        writer.writeheader()
        for rec in self.records():
            writer.writerow({k: "" if v is None else v for k, v in rec.items()})
        return buf.getvalue()

    def to_markdown(self) -> str:
        headers = ["method", "seeds", *(_col_label(b) for b in self.benchmarks)]
        caption = ", ".join(PROTOCOL_CAPTIONS.get(p, p) for p in self.protocols) or "—"
        lines = [f"### {self.title}", "", f"Evaluation protocol: {caption}.", "",
                 "| " + " | ".join(headers) + " |",
                 "|" + "|".join(["---"] * 2 + ["---:"] * len(self.benchmarks)) + "|"]
        for m in self.methods:
            cells = [self.cell(m, b) for b in self.benchmarks]
            first = next((c for c in cells if c is not None), None)
            name = first.method_label if first else m
            if first is not None and len(self.protocols) > 1:   # mixed protocols: every row says its own
                name += f" [{first.protocol}]"
            seeds = "" if first is None or first.reference else str(max(c.n_seeds for c in cells if c) or "")
            lines.append("| " + " | ".join([name, seeds, *(_fmt_score(c) for c in cells)]) + " |")
            if any(c is not None and c.delta is not None for c in cells):
                label = "  Δ vs baseline [95% CI]" if any(c and c.ci_low is not None for c in cells) else "  Δ vs baseline"
                lines.append("| " + " | ".join([label, "", *(_fmt_delta(c) for c in cells)]) + " |")
        lines.append("")
        lines.append(self.legend or (
            "Best in **bold**, second best in _italics_ (among this project's runs). Scores are "
            "mean ± sample std over seeds where several exist. Δ: mean paired difference to the "
            "baseline over the same items, with a 95 % paired bootstrap interval over items."))
        lines.extend(f"- {n}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        md, csv_path = out_dir / f"{self.name}.md", out_dir / f"{self.name}.csv"
        md.write_text(self.to_markdown())
        csv_path.write_text(self.to_csv())
        return md, csv_path


def _col_label(b: str) -> str:
    return "Avg" if b == AVERAGE else task_label(b)


def _fmt_score(c: Cell | None) -> str:
    if c is None or c.mean is None:
        return "—"
    s = f"{c.mean:.2f}" + (f" ± {c.std:.2f}" if c.std is not None else "")
    return f"**{s}**" if c.rank == 1 else f"_{s}_" if c.rank == 2 else s


def _fmt_delta(c: Cell | None) -> str:
    if c is None or c.delta is None:
        return ""
    s = f"{c.delta:+.2f}"
    if c.ci_low is not None and c.ci_high is not None:
        s += f" [{c.ci_low:+.2f}, {c.ci_high:+.2f}]"
    return s


def method_label(variant: str) -> str:
    return METHOD_LABELS.get(variant, variant)


def build_table(
    name: str,
    title: str,
    runs: Sequence[VariantRun],
    methods: Sequence[str],
    *,
    tasks: Sequence[str] | None = None,
    aliases: dict[str, str] | None = None,
    reference_rows: bool = False,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Table:
    """Cells for ``methods`` (row order) x ``tasks`` (column order, default: every task scored).

    ``aliases`` maps a method that has no runs to a variant whose runs stand in for it (table 3's
    max_steps_8 is the full method's default). Rows with no runs are dropped.
    """
    aliases = aliases or {}
    by_variant: dict[str, list[VariantRun]] = {}
    for r in runs:
        by_variant.setdefault(r.variant, []).append(r)
    notes: list[str] = []
    rows: list[tuple[str, list[VariantRun]]] = []
    for m in methods:
        found = by_variant.get(m) or by_variant.get(aliases.get(m, ""), [])
        if found and m not in by_variant:
            notes.append(f"{m}: no runs of its own; shows the runs of '{aliases[m]}' (identical configuration).")
        if found:
            rows.append((m, sorted(found, key=lambda r: r.seed)))
    scored = {t for _, rs in rows for r in rs for t in r.scores}
    if tasks is None:
        tasks = _ordered_tasks(scored)
    else:   # each asked-for task keeps its avg@k column beside it
        tasks = [c for t in tasks for c in _ordered_tasks({t} | {s for s in scored if split_sampled(s)[0] == t})]
    tasks = list(tasks)
    baseline_runs = by_variant.get(BASELINE, [])

    protocols = sorted({r.protocol for _, rs in rows for r in rs})
    if len(protocols) > 1:
        notes.append(f"runs of different evaluation protocols ({', '.join(protocols)}) are in this table; "
                     "their scores are not comparable with each other.")
    cells: list[Cell] = []
    for m, rs in rows:
        row_protocol = ",".join(sorted({r.protocol for r in rs}))
        for t in tasks:
            cells.append(_cell(name, m, t, rs, baseline_runs, n_resamples, seed))
        # Avg: over the greedy columns, as the paper's; avg@k columns stand beside their task.
        cells.append(_average_cell(name, m, [t for t in tasks if split_sampled(t)[1] is None], rs, baseline_runs))
        for c in cells[-(len(tasks) + 1):]:
            c.protocol = row_protocol
    ks = sorted({k for t in tasks if (k := split_sampled(t)[1]) is not None})
    if ks:
        notes.append(f"avg@{'/'.join(map(str, ks))}: mean accuracy of that many answers per item sampled at "
                     "temperature 1 (the other columns: the greedy answer); Δ and interval paired over the same "
                     "items; Avg is over the greedy columns.")
    benchmarks = [*tasks, AVERAGE]
    _mark_best(cells, benchmarks)
    methods_out = [m for m, _ in rows]
    if reference_rows and protocols and protocols != [PAPER_PROTOCOL]:
        # The paper's numbers are lmms-eval's protocol; beside other protocols they would mislead.
        notes.append(f"paper rows not shown: they were measured with protocol {PAPER_PROTOCOL}, these runs with "
                     f"{', '.join(protocols)}.")
        reference_rows = False
    if reference_rows:
        ref = _reference_cells(name, benchmarks)
        if ref:
            cells.extend(ref)
            methods_out.extend([PAPER_BASELINE, PAPER_IREASONER])
            notes.append("paper rows: published Qwen2.5-VL-7B numbers (SPEC.md); they are not ranked.")
    return Table(name=name, title=title, methods=methods_out, benchmarks=benchmarks, cells=cells, notes=notes,
                 protocols=protocols)


def _cell(table: str, method: str, task: str, runs: list[VariantRun], baseline_runs: list[VariantRun],
          n_resamples: int, seed: int) -> Cell:
    cell = Cell(table=table, method=method, method_label=method_label(method), benchmark=task,
                benchmark_label=task_label(task))
    scored = [r for r in runs if task in r.scores]
    if not scored:
        return cell
    summary = summarize_seeds([r.scores[task] for r in scored])
    cell.mean, cell.std, cell.n_seeds = summary.mean, summary.std, summary.n_seeds
    base = [r for r in baseline_runs if task in r.scores]
    if method == BASELINE or not base:
        return cell
    mine = [r.items[task] for r in scored if r.items.get(task)]
    theirs = [r.items[task] for r in base if r.items.get(task)]
    if len(mine) == len(scored) and len(theirs) == len(base):
        a, b = pair_items(mean_over_seeds(mine), mean_over_seeds(theirs))
        if a:
            ci = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
            cell.delta, cell.ci_low, cell.ci_high, cell.n_items = ci.delta, ci.low, ci.high, ci.n_items
            return cell
    # No per-item scores (e.g. a task whose aggregation is not a mean over items): the
    # difference of headline means, without an interval.
    cell.delta = summary.mean - summarize_seeds([r.scores[task] for r in base]).mean
    return cell


def _average_cell(table: str, method: str, tasks: list[str], runs: list[VariantRun],
                  baseline_runs: list[VariantRun]) -> Cell:
    """Unweighted mean over the table's benchmarks, per run, then over seeds."""
    cell = Cell(table=table, method=method, method_label=method_label(method), benchmark=AVERAGE,
                benchmark_label="Avg")
    complete = [r for r in runs if tasks and all(t in r.scores for t in tasks)]
    if not complete:
        return cell
    summary = summarize_seeds([sum(r.scores[t] for t in tasks) / len(tasks) for r in complete])
    cell.mean, cell.std, cell.n_seeds = summary.mean, summary.std, summary.n_seeds
    base = [r for r in baseline_runs if all(t in r.scores for t in tasks)]
    if method != BASELINE and base:
        cell.delta = summary.mean - summarize_seeds([sum(r.scores[t] for t in tasks) / len(tasks) for r in base]).mean
    return cell


def _mark_best(cells: list[Cell], benchmarks: list[str]) -> None:
    """rank 1 / 2 on the best and second-best distinct means per column (ties share a rank)."""
    for b in benchmarks:
        col = [c for c in cells if c.benchmark == b and c.mean is not None and not c.reference]
        distinct = sorted({round(c.mean, 9) for c in col}, reverse=True)
        if len(col) < 2:
            continue
        for c in col:
            pos = distinct.index(round(c.mean, 9))
            c.rank = pos + 1 if pos < 2 else None


def _reference_cells(table: str, benchmarks: list[str]) -> list[Cell]:
    cells = []
    for method, attr in ((PAPER_BASELINE, "paper_baseline"), (PAPER_IREASONER, "paper_ireasoner")):
        for b in benchmarks:
            value = getattr(BENCHMARKS[b], attr) if b in BENCHMARKS else None
            if value is not None:
                cells.append(Cell(table=table, method=method, method_label=method, benchmark=b,
                                  benchmark_label=task_label(b), mean=value, reference=True))
    return cells


def _ordered_tasks(tasks: set[str]) -> list[str]:
    """Benchmarks in paper order, others by name; each avg@k column right after its greedy one."""
    greedy = {split_sampled(t)[0] for t in tasks}
    known = [t for t in BENCHMARKS if t in greedy]
    order = known + sorted(greedy - set(known))
    sampled = sorted((t for t in tasks if split_sampled(t)[1] is not None), key=lambda t: split_sampled(t)[1] or 0)
    return [c for g in order for c in ([g] if g in tasks else []) + [s for s in sampled if split_sampled(s)[0] == g]]


def answer_entropy_across_items(answers: Sequence[str]) -> float:
    """H = -sum_a p(a) ln p(a) over the answers given to different items (nats): 0 when a model gives one
    constant answer to every question, so a collapse shows beside an accuracy that hides it."""
    from ..parsing import normalize_answer
    from ..rewards import answer_distribution, answer_entropy

    return answer_entropy(answer_distribution([normalize_answer(str(a)) for a in answers]))


def entropy_table(runs: Sequence[VariantRun], methods: Sequence[str]) -> Table | None:
    """Answer entropy across items per method and task (mean ± std over seeds; Δ vs baseline, no interval)."""
    as_scores = [r.model_copy(update={"scores": dict(r.answer_entropy), "items": {}}) for r in runs if r.answer_entropy]
    if not as_scores:
        return None
    table = build_table(ENTROPY_TABLE, "Answer entropy across items (nats)", as_scores, methods)
    keep = [c for c in table.cells if c.benchmark != AVERAGE]
    for c in keep:
        c.rank = None   # higher is not better: a collapse is low, a scatter of guesses high
    table.cells, table.benchmarks = keep, [b for b in table.benchmarks if b != AVERAGE]
    table.notes = []
    table.legend = ("Entropy (nats) of the normalised answers given across a task's items: the greedy answers, "
                    "and in avg@k columns every sampled answer pooled. 0 is one constant answer to every question. "
                    "Mean ± sample std over seeds; Δ: difference of the means to the baseline's, no interval.")
    return table


def paper_tables(runs: Sequence[VariantRun], *, tasks: Sequence[str] | None = None,
                 reference_rows: bool = True, n_resamples: int = 10_000) -> list[Table]:
    """Tables 1 (methods and reward controls), 2 (ablations) and 3 (step budgets), then answer entropy; a
    table without runs of its own is left out."""
    table1 = [BASELINE, "soft_only", "full", *CONTROL_VARIANTS]
    specs = [
        ("table1", "Table 1: benchmark results", table1, {}, reference_rows),
        ("table2", "Table 2: ablations of the intrinsic rewards", [BASELINE, *TABLE2_ABLATIONS], {}, False),
        ("table3", "Table 3: step budget (max reasoning steps)", [BASELINE, *TABLE3_ABLATIONS],
         {"max_steps_8": "full"}, False),
    ]
    variants = {r.variant for r in runs}
    tables = []
    for name, title, methods, aliases, ref in specs:
        # A table earns its place with a run of its own beyond the baseline and the full method
        # (table 1 needs only full); otherwise it would repeat table 1's rows.
        own = set(methods) - {BASELINE} - ({"full"} if name != "table1" else set())
        if not own & variants:
            continue
        tables.append(build_table(name, title, runs, methods, tasks=tasks, aliases=aliases, reference_rows=ref,
                                  n_resamples=n_resamples))
    if any(t.name == "table1" for t in tables):
        entropy = entropy_table(runs, table1)
        if entropy is not None:
            tables.append(entropy)
    return tables
