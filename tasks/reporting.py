"""`ireasoner report`: the paper's tables and figures rebuilt from MLflow alone.

Reads the variant runs of a sweep (the newest one by default), their ``eval/<task>`` scores,
per-item ``eval_samples/<task>.jsonl`` and ``train/*`` histories plus ``train/diagnostics.jsonl``,
and writes, under ``out_dir``: ``tables/table{1,2,3}.{md,csv}``, ``report.md`` and
``figures/<variant>-seed<k>/figure{3,5,6,7}.png``. When there is a parent (sweep) run, the
same files are logged on it under ``report/`` (figures in ``report/figures/``) together with one
row per table cell as ``mlflow.log_table`` (``report/tables.json``: table, method, benchmark,
protocol, score, delta, ci_low, ci_high, n). The logged ``report/report.md`` links its figures
as absolute ``<MLflow UI>/get-artifact?...`` addresses (the UI the flow's run links use): MLflow
3.17's Markdown viewer draws an image only when its address has a scheme, and prints a relative
one as ``[alt](path)`` text.

``--compare A B`` writes its own folder (``reports/<experiment>-compare-A-vs-B`` by default), and
refuses sweeps evaluated with different protocols unless ``--allow-mixed-protocols``.
All numbers and drawings come from ``ireasoner_core.reports``; this module only moves data between
MLflow and those functions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, Field

from ireasoner_core.evaluation.benchmarks import sampled_key
from ireasoner_core.reports.figures import (
    read_jsonl,
    training_figures,
    usable_diagnostics,
)
from ireasoner_core.reports.tables import (AVERAGE, Cell, Table, VariantRun, answer_entropy_across_items,
                                           paper_tables)
from tasks.conventions import (
    EVAL_PREFIX,
    EVAL_SAMPLED_K_PARAM,
    EVAL_SAMPLED_PREFIX,
    EVAL_SAMPLES_DIR,
    EXPERIMENT,
    FIGURES_DIR,
    KIND_SWEEP,
    KIND_VARIANT,
    TAG_KIND,
    TAG_REUSED_RUNS,
    TAG_SEED,
    TAG_STATUS,
    TAG_VARIANT,
    TRAIN_PREFIX,
    metric_name,
)
from tasks.runs import tracking_uri as default_tracking_uri
from tasks.runs import ui_base_url
from tasks.tracking import log_table_replacing

REPORT_DIR = "report"
REPORT_TABLE = "report/tables.json"          # mlflow.log_table, one row per table cell (Table.summary_records)
REPORT_FIGURES = f"{REPORT_DIR}/{FIGURES_DIR}"  # beside report.md, so a downloaded report/ folder is whole
DIAGNOSTICS_ARTIFACT = "train/diagnostics.jsonl"
PARENT_TAG = "mlflow.parentRunId"
EXCLUDED_STATUS = {"failed", "skipped"}


class ReportError(RuntimeError):
    """The report cannot be built (no such experiment/run, nothing evaluated); the message says which."""


class ReportResult(BaseModel):
    out_dir: Path
    parent_run_id: str | None = None
    tables: dict[str, list[Path]] = Field(default_factory=dict, description="table name -> [markdown, csv]")
    figures: list[Path] = Field(default_factory=list)
    report_path: Path | None = None
    runs_used: list[str] = Field(default_factory=list)
    runs_excluded: dict[str, str] = Field(default_factory=dict, description="run id -> why")
    notes: list[str] = Field(default_factory=list)
    logged_to_mlflow: bool = False


# ----------------------------------------------------------------------------- reading MLflow


def select_runs(client: MlflowClient, experiment: str, parent_run_id: str | None,
                all_runs: bool = False) -> tuple[str | None, list[Run]]:
    """(parent run id, its variant runs): the given parent, else the newest sweep, else every variant run.

    A sweep's variant runs are its child runs plus the finished runs of earlier sweeps it re-used
    (tag ``ireasoner.reused_runs``), so a skipped variant keeps its row.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"experiment {experiment!r} not found in the MLflow store {client.tracking_uri}")
    ids = [exp.experiment_id]
    if parent_run_id is None and not all_runs:
        sweeps = client.search_runs(ids, filter_string=f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        parent_run_id = sweeps[0].info.run_id if sweeps else None
    if parent_run_id is not None and not all_runs:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException:
            raise ReportError(f"parent run {parent_run_id!r} not found in the MLflow store {client.tracking_uri}; "
                              "leave out --parent-run-id to report the newest sweep") from None
        runs = client.search_runs(ids, filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10_000)
        runs += [client.get_run(r) for r in json.loads(parent.data.tags.get(TAG_REUSED_RUNS, "{}")).values()]
    else:
        runs = client.search_runs(ids, filter_string=f"tags.`{TAG_KIND}` = '{KIND_VARIANT}'", max_results=10_000)
    return parent_run_id, [r for r in runs if TAG_VARIANT in r.data.tags]


def sweep_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """Every sweep (parent) run of the experiment, oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"experiment {experiment!r} not found in the MLflow store {client.tracking_uri}")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'",
                              order_by=["attributes.start_time ASC"], max_results=10_000)


def resolve_sweep(client: MlflowClient, experiment: str, ref: str) -> Run:
    """A sweep named by its parent run id, or by its name (the newest sweep of that name)."""
    sweeps = sweep_runs(client, experiment)
    for s in sweeps:
        if s.info.run_id == ref:
            return s
    named = [s for s in sweeps if s.info.run_name == ref]
    if not named:
        known = sorted({s.info.run_name for s in sweeps})
        raise ReportError(f"--compare {ref!r}: no sweep run with that id or name in experiment {experiment!r} "
                          f"(sweeps: {', '.join(known) or 'none'})")
    return named[-1]


def _artifact_names(client: MlflowClient, run_id: str, path: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


def read_variant_run(client: MlflowClient, run: Run, scratch: Path) -> VariantRun:
    """Scores from ``eval/<task>`` metrics, per-item scores from ``eval_samples/<task>.jsonl``.

    Where avg@k was measured (``eval_sampled/<task>``), it joins the scores as column
    ``<task>@avg<k>`` with the JSONL's ``sampled_score`` as its items.
    """
    run_id = run.info.run_id
    scores = {k[len(EVAL_PREFIX):]: float(v) for k, v in run.data.metrics.items()
              if k.startswith(EVAL_PREFIX) and "/" not in k[len(EVAL_PREFIX):]}
    k = run.data.params.get(EVAL_SAMPLED_K_PARAM)
    sampled = {sampled_key(name[len(EVAL_SAMPLED_PREFIX):], int(k)): (name[len(EVAL_SAMPLED_PREFIX):], float(v))
               for name, v in run.data.metrics.items() if k and name.startswith(EVAL_SAMPLED_PREFIX)}
    items: dict[str, dict[str, float]] = {}
    entropy: dict[str, float] = {}
    available = _artifact_names(client, run_id, EVAL_SAMPLES_DIR) if scores else set()
    for task in scores:
        if f"{task}.jsonl" not in available:
            continue
        local = client.download_artifacts(run_id, f"{EVAL_SAMPLES_DIR}/{task}.jsonl", str(scratch))
        rows = read_jsonl(Path(local))
        for key, field in ((task, "score"), *((s, "sampled_score") for s, (t, _) in sampled.items() if t == task)):
            if rows and all(r.get(field) is not None for r in rows):
                items[key] = {str(r["doc_id"]): float(r[field]) for r in rows}
        if rows and all("prediction" in r for r in rows):
            entropy[task] = answer_entropy_across_items([r["prediction"] for r in rows])
        for s, (t, _) in sampled.items():
            if t == task and rows and all(isinstance(r.get("sampled_predictions"), list) for r in rows):
                entropy[s] = answer_entropy_across_items([a for r in rows for a in r["sampled_predictions"]])
    scores.update({key: value for key, (_, value) in sampled.items()})
    seed = run.data.tags.get(TAG_SEED, "0")
    # Runs evaluated before the protocol was recorded used the Solver's prompt (then the only one).
    protocol = run.data.params.get("eval_protocol", "solver")
    return VariantRun(run_id=run_id, variant=run.data.tags[TAG_VARIANT], seed=int(float(seed)),
                      scores=scores, items=items, answer_entropy=entropy, protocol=protocol)


def read_history(client: MlflowClient, run: Run) -> dict[str, list[tuple[int, float]]]:
    """``train/<key>`` metric histories as key -> [(iteration, value)]."""
    out = {}
    for key in run.data.metrics:
        if key.startswith(TRAIN_PREFIX):
            hist = client.get_metric_history(run.info.run_id, key)
            out[key[len(TRAIN_PREFIX):]] = sorted((int(m.step), float(m.value)) for m in hist)
    return out


def read_diagnostics(client: MlflowClient, run: Run, scratch: Path) -> list[dict]:
    folder, name = DIAGNOSTICS_ARTIFACT.rsplit("/", 1)
    if name not in _artifact_names(client, run.info.run_id, folder):
        return []
    return read_jsonl(Path(client.download_artifacts(run.info.run_id, DIAGNOSTICS_ARTIFACT, str(scratch))))


# ----------------------------------------------------------------------------- the report


def _report_markdown(tables: list[Table], figures: list[Path], out_dir: Path, excluded: dict[str, str],
                     notes: list[str], link: Callable[[str], str] | None = None) -> str:
    """The report; ``link`` turns a figure's path relative to ``out_dir`` into its address (default: that path)."""
    link = link or (lambda rel: rel)
    lines = ["# iReasoner report", ""]
    for t in tables:
        lines += [t.to_markdown(), ""]
    if figures or notes:
        lines += ["## Figures", ""] + [f"![{p.parent.name}/{p.stem}]({link(p.relative_to(out_dir).as_posix())})"
                                       for p in figures] + [""] + [f"- {n}" for n in notes] + [""]
    if excluded:
        lines += ["## Runs left out", ""] + [f"- `{r}`: {why}" for r, why in excluded.items()] + [""]
    return "\n".join(lines)


def build_report(experiment: str, tracking_uri: str | None, out_dir: Path | str,
                 parent_run_id: str | None = None, *, all_runs: bool = False, log_to_mlflow: bool = True,
                 reference_rows: bool = True, n_resamples: int = 10_000) -> ReportResult:
    """Tables 1-3 (Markdown + CSV), figures 3/5/6/7 (PNG), and their MLflow copies on the parent run."""
    client = MlflowClient(tracking_uri)
    out_dir = Path(out_dir)
    if all_runs:
        return _report_every_sweep(client, experiment, out_dir, log_to_mlflow=log_to_mlflow,
                                   reference_rows=reference_rows, n_resamples=n_resamples)
    parent_run_id, runs = select_runs(client, experiment, parent_run_id, all_runs)
    result = ReportResult(out_dir=out_dir, parent_run_id=parent_run_id)
    variant_runs: list[VariantRun] = []
    with tempfile.TemporaryDirectory(prefix="ireasoner-report-") as scratch:
        for run in runs:
            status = run.data.tags.get(TAG_STATUS)
            if status in EXCLUDED_STATUS:
                result.runs_excluded[run.info.run_id] = f"{run.data.tags[TAG_VARIANT]}: status {status}"
                continue
            vr = read_variant_run(client, run, Path(scratch) / run.info.run_id)
            if vr.scores:
                variant_runs.append(vr)
                result.runs_used.append(run.info.run_id)
            history = read_history(client, run)
            if history:
                diagnostics = read_diagnostics(client, run, Path(scratch) / run.info.run_id)
                name = f"{vr.variant}-seed{vr.seed}"
                result.figures += training_figures(history, diagnostics, out_dir / FIGURES_DIR / name,
                                                   subtitle=f"{name} (run {run.info.run_id[:8]})")
                if not diagnostics:
                    result.notes.append(f"{name}: no figure 7; the run has no {DIAGNOSTICS_ARTIFACT} artifact")
                elif not usable_diagnostics(diagnostics):
                    logged = [d.get("iteration") for d in diagnostics]
                    result.notes.append(
                        f"{name}: no figure 7; no logged iteration {logged} had a dominant group of >= 2 rollouts "
                        "sharing a step (log diagnostics more often: log_diagnostics_every)")
    if not variant_runs and not result.figures:
        where = f"parent run {parent_run_id}" if parent_run_id else f"experiment {experiment!r}"
        raise ReportError(f"{where}: no variant run has eval/<task> scores or train/* metrics to report")

    tables = paper_tables(variant_runs, reference_rows=reference_rows, n_resamples=n_resamples) if variant_runs else []
    for t in tables:
        result.tables[t.name] = list(t.write(out_dir / "tables"))
    result.report_path = out_dir / "report.md"
    result.report_path.write_text(_report_markdown(tables, result.figures, out_dir, result.runs_excluded,
                                                    result.notes))

    if log_to_mlflow and parent_run_id is not None:
        if tables:
            log_table_replacing(client, parent_run_id, [r for t in tables for r in t.summary_records()],
                                REPORT_TABLE)
            log_cell_metrics(client, parent_run_id, tables)
        with tempfile.TemporaryDirectory(prefix="ireasoner-report-md-") as tmp:
            in_mlflow = Path(tmp) / result.report_path.name
            in_mlflow.write_text(_report_markdown(tables, result.figures, out_dir, result.runs_excluded, result.notes,
                                                  link=lambda rel: artifact_link(client.tracking_uri, parent_run_id,
                                                                                 f"{REPORT_DIR}/{rel}")))
            client.log_artifact(parent_run_id, str(in_mlflow), REPORT_DIR)
        if (out_dir / "tables").is_dir():
            client.log_artifacts(parent_run_id, str(out_dir / "tables"), REPORT_DIR)
        if (out_dir / FIGURES_DIR).is_dir():
            client.log_artifacts(parent_run_id, str(out_dir / FIGURES_DIR), REPORT_FIGURES)
        result.logged_to_mlflow = True
    return result


def artifact_link(tracking_uri: str, run_id: str, path: str) -> str:
    """An artifact's address on the MLflow server, as its UI fetches it (``get-artifact``), under the
    UI address the flow's links use (``IREASONER_MLFLOW_UI_URL``, else an http(s) tracking URI, else
    http://127.0.0.1:5000). Absolute, because MLflow's Markdown viewer shows an image whose address
    has no scheme as text."""
    return f"{ui_base_url(tracking_uri)}/get-artifact?path={quote(path, safe='')}&run_uuid={run_id}"


def cell_metric_key(table: str, method: str, benchmark: str) -> str:
    """The MLflow metric of one table cell: the same key on every sweep run, so compare-runs lines sweeps up."""
    return metric_name(f"{table}/{method}/{benchmark}")


def log_cell_metrics(client: MlflowClient, run_id: str, tables: list[Table]) -> None:
    """Every measured cell as ``<table>/<method>/<benchmark>`` (mean) and ``.../delta`` metrics of the sweep run."""
    now = int(time.time() * 1000)
    metrics = []
    for t in tables:
        for c in t.cells:
            if c.reference or c.mean is None:
                continue
            key = cell_metric_key(t.name, c.method, c.benchmark)
            metrics.append(Metric(key, float(c.mean), now, 0))
            if c.delta is not None:
                metrics.append(Metric(f"{key}/delta", float(c.delta), now, 0))
    for i in range(0, len(metrics), 1000):   # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i:i + 1000], synchronous=True)


def _sweep_label(run: Run, all_sweeps: list[Run]) -> str:
    """The sweep's name, with its run id's start when several sweeps share that name."""
    name = run.info.run_name or run.info.run_id[:8]
    if sum(s.info.run_name == run.info.run_name for s in all_sweeps) > 1:
        name = f"{name}@{run.info.run_id[:8]}"
    return name


def _variant_runs(client: MlflowClient, runs: list[Run], scratch: Path) -> list[VariantRun]:
    out = []
    for run in runs:
        if run.data.tags.get(TAG_STATUS) in EXCLUDED_STATUS:
            continue
        vr = read_variant_run(client, run, scratch / run.info.run_id)
        if vr.scores:
            out.append(vr)
    return out


def _report_every_sweep(client: MlflowClient, experiment: str, out_dir: Path, **kw) -> ReportResult:
    """``--all-runs``: one report per sweep (runs of different sweeps are never pooled as seeds)."""
    sweeps = sweep_runs(client, experiment)
    result = ReportResult(out_dir=out_dir)
    sections = ["# iReasoner report: every sweep", ""]
    for s in sweeps:
        label = _sweep_label(s, sweeps)
        sub = out_dir / re.sub(r"[^A-Za-z0-9_.@-]+", "_", label)
        try:
            r = build_report(experiment, client.tracking_uri, sub, s.info.run_id, **kw)
        except ReportError as err:
            result.notes.append(f"sweep {label}: {err}")
            continue
        result.tables.update({f"{label}/{k}": v for k, v in r.tables.items()})
        result.figures += r.figures
        result.runs_used += r.runs_used
        result.runs_excluded.update(r.runs_excluded)
        result.logged_to_mlflow |= r.logged_to_mlflow
        sections += [f"## Sweep {label} (run {s.info.run_id})", "",
                     r.report_path.read_text().replace("# iReasoner report", "", 1).strip(), ""]
    if not result.runs_used:
        raise ReportError(f"experiment {experiment!r}: no sweep has evaluated variant runs to report"
                          + "".join(f"; {n}" for n in result.notes))
    sections += [f"- {n}" for n in result.notes]
    out_dir.mkdir(parents=True, exist_ok=True)
    result.report_path = out_dir / "report.md"
    result.report_path.write_text("\n".join(sections))
    return result


def compare_dir(experiment: str, sweeps: Sequence[str]) -> Path:
    """``--compare``'s own folder: never ``reports/<experiment>``, which ``ireasoner report`` writes."""
    safe = [re.sub(r"[^A-Za-z0-9_.@-]+", "_", ref) for ref in sweeps]
    return Path("reports") / f"{experiment}-compare-{'-vs-'.join(safe)}"


def compare_sweeps(experiment: str, tracking_uri: str | None, sweeps: Sequence[str], out_dir: Path | str,
                   n_resamples: int = 10_000, allow_mixed_protocols: bool = False) -> ReportResult:
    """Tables 1-3 across sweeps: one row per sweep × method, the same benchmark columns (``--compare``).

    Every cell carries the protocol its sweep was evaluated with. Scores of different protocols are
    not comparable, so sweeps that mix them are refused unless ``allow_mixed_protocols``; each row
    then names its protocol.
    """
    client = MlflowClient(tracking_uri)
    out_dir = Path(out_dir)
    every = sweep_runs(client, experiment)
    chosen = [resolve_sweep(client, experiment, ref) for ref in sweeps]
    result = ReportResult(out_dir=out_dir)
    merged: dict[str, tuple[str, list[str], list[str], list[Cell]]] = {}
    protocols: dict[str, dict[str, list[str]]] = {}   # table -> sweep label -> its protocols
    with tempfile.TemporaryDirectory(prefix="ireasoner-compare-") as scratch:
        for s in chosen:
            label = _sweep_label(s, every)
            _, runs = select_runs(client, experiment, s.info.run_id)
            vruns = _variant_runs(client, runs, Path(scratch))
            if not vruns:
                result.notes.append(f"sweep {label}: no evaluated variant run")
                continue
            result.runs_used += [v.run_id for v in vruns]
            for t in paper_tables(vruns, reference_rows=False, n_resamples=n_resamples):
                title, methods, benchmarks, cells = merged.setdefault(t.name, (t.title, [], [], []))
                methods += [f"{label}/{m}" for m in t.methods]
                benchmarks += [b for b in t.benchmarks if b not in benchmarks and b != AVERAGE]
                cells += [c.model_copy(update={"method": f"{label}/{c.method}",
                                               "method_label": f"{label}: {c.method_label}"}) for c in t.cells]
                protocols.setdefault(t.name, {})[label] = t.protocols
    if not merged:
        raise ReportError(f"--compare {' '.join(sweeps)}: no chosen sweep has evaluated variant runs")
    for name, by_sweep in protocols.items():
        if len({p for ps in by_sweep.values() for p in ps}) > 1 and not allow_mixed_protocols:
            used = "; ".join(f"{label}: {', '.join(ps)}" for label, ps in by_sweep.items())
            raise ReportError(f"--compare {' '.join(sweeps)}: {name} would mix evaluation protocols ({used}), whose "
                              "scores are not comparable; pass --allow-mixed-protocols to show them with the "
                              "protocol on every row")
    tables = []
    for name, (title, methods, benchmarks, cells) in merged.items():
        used = sorted({p for ps in protocols[name].values() for p in ps})
        notes = ["rows are <sweep>/<method>; ranks are within each sweep; a blank cell: that sweep did not "
                 "evaluate the benchmark"]
        if len(used) > 1:
            notes.append(f"evaluation protocols {', '.join(used)} are mixed in this table (each row says its own); "
                         "scores of different protocols are not comparable.")
        tables.append(Table(name=name, title=f"{title} (sweeps {', '.join(_sweep_label(s, every) for s in chosen)})",
                            methods=methods, benchmarks=[*benchmarks, AVERAGE], cells=cells, notes=notes,
                            protocols=used))
    for t in tables:
        result.tables[t.name] = list(t.write(out_dir / "tables"))
    result.report_path = out_dir / "report.md"
    result.report_path.write_text(_report_markdown(tables, [], out_dir, {}, result.notes))
    return result


def missing_store(uri: str) -> str | None:
    """Why a local tracking store does not exist (None when it does, or is not local).

    MLflow creates a missing SQLite file or file-store folder when it opens one, so a mistyped
    ``--tracking-uri`` would leave an empty store behind and then report "experiment not found".
    """
    from urllib.parse import urlparse

    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if not database or database == ":memory:":
            return None
        return None if Path(database).is_file() else f"the MLflow store {uri} does not exist (no file {database})"
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        return None if folder.is_dir() else f"the MLflow store {uri} does not exist (no folder {folder})"
    return None   # a server or a database: it answers for itself


def main(argv: Sequence[str] | None = None) -> int:
    """`ireasoner report --experiment ireasoner [--parent-run-id ID] [--out-dir DIR]`."""
    # A report downloads every variant's per-item scores: one progress bar per artifact (15 for a
    # two-sweep --compare) is noise, not progress.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(prog="ireasoner report",
                                     description="Rebuild the paper's tables and figures from MLflow.")
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default {EXPERIMENT})")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the flow's store, <repo>/mlflow.db)")
    parser.add_argument("--parent-run-id", default=None, help="the sweep run to report (default: the newest)")
    parser.add_argument("--all-runs", action="store_true",
                        help="report every sweep of the experiment, each on its own (sweeps are never pooled)")
    parser.add_argument("--compare", nargs="+", metavar="SWEEP", default=None,
                        help="one table 1/2/3 across these sweeps (sweep run ids or names; a name means its "
                             "newest run): rows are <sweep>/<method>")
    parser.add_argument("--allow-mixed-protocols", action="store_true",
                        help="with --compare: put sweeps evaluated with different protocols in one table, each "
                             "row naming its protocol (refused otherwise: their scores are not comparable)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write (default reports/<experiment>; with --compare "
                             "reports/<experiment>-compare-<A>-vs-<B>)")
    parser.add_argument("--no-log", action="store_true", help="write files only; log nothing to MLflow")
    parser.add_argument("--no-paper-rows", action="store_true", help="leave out the paper's reference rows")
    parser.add_argument("--resamples", type=int, default=10_000, help="paired bootstrap resamples (default 10000)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    out_dir = args.out_dir or (compare_dir(args.experiment, args.compare) if args.compare
                               else Path("reports") / args.experiment)
    # The same store the flow writes to when nothing is configured.
    uri = args.tracking_uri or default_tracking_uri()
    if args.resamples < 1:
        print(f"ireasoner report: --resamples must be at least 1 (paired bootstrap resamples), got {args.resamples}",
              file=sys.stderr)
        return 2
    missing = missing_store(uri)
    if missing:
        print(f"ireasoner report: {missing}; check --tracking-uri or MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    try:
        if args.compare:
            res = compare_sweeps(args.experiment, uri, args.compare, out_dir, n_resamples=args.resamples,
                                 allow_mixed_protocols=args.allow_mixed_protocols)
        else:
            res = build_report(args.experiment, uri, out_dir, args.parent_run_id, all_runs=args.all_runs,
                               log_to_mlflow=not args.no_log, reference_rows=not args.no_paper_rows,
                               n_resamples=args.resamples)
    except ReportError as err:
        print(f"ireasoner report: {err}", file=sys.stderr)
        return 2
    print(res.report_path.read_text() if res.report_path else "")
    print(json.dumps({"report": str(res.report_path), "tables": sorted(res.tables), "figures": len(res.figures),
                      "runs_used": len(res.runs_used), "runs_excluded": res.runs_excluded,
                      "parent_run_id": res.parent_run_id, "logged_to_mlflow": res.logged_to_mlflow}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
