"""A report rebuilt from MLflow alone shows exactly what the evaluation logged on the runs.

Runs are written with the evaluation layer's own logger (``tasks.evaluate.log_eval_result``) into
a temporary SQLite store, then ``build_report`` reads them back.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from ireasoner_core.evaluation.runner import EvalResult
from tasks.conventions import (
    EXPERIMENT,
    KIND_SWEEP,
    KIND_VARIANT,
    TAG_KIND,
    TAG_SEED,
    TAG_STATUS,
    TAG_VARIANT,
)
from tasks.evaluate import log_eval_result
from tasks.reporting import REPORT_TABLE, build_report, main

A, B = "ireasoner_chartqa_mini", "ireasoner_ai2d_mini"
# variant, seed, status, per-item 0/100 scores on A and B
RUNS = [
    ("baseline", 0, "finished", [100, 0, 0, 0, 100], [0, 100, 0, 0, 0]),
    ("full", 0, "finished", [100, 100, 0, 0, 100], [100, 100, 0, 0, 0]),
    ("full", 1, "finished", [100, 100, 100, 0, 100], [0, 100, 0, 0, 0]),
    ("soft_only", 0, "finished", [100, 0, 0, 100, 100], [0, 100, 100, 0, 0]),
    ("no_warmup", 0, "failed", [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
]


def sampled_items(variant, a):
    """avg@5 per item of task A: a made-up sharpening, 20 points higher per item for the trained variants."""
    return [s / 2 + (0 if variant == "baseline" else 20) for s in a]


def _log_variant(client, exp_id, parent, tmp_path, variant, seed, status, a, b):
    run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, TAG_KIND: KIND_VARIANT,
                                          TAG_VARIANT: variant, TAG_SEED: str(seed), TAG_STATUS: status})
    rid = run.info.run_id
    folder = tmp_path / "eval" / rid
    folder.mkdir(parents=True)
    samples = {}
    for task, items in ((A, a), (B, b)):
        samples[task] = folder / f"{task}.jsonl"
        sampled = sampled_items(variant, items) if task == A else [None] * len(items)
        # answers: the baseline one constant, a trained variant two (greedy) and one per item (sampled)
        samples[task].write_text("".join(json.dumps({"doc_id": i, "score": float(s), "target": "y",
                                                     "prediction": "x" if variant == "baseline" else str(i % 2),
                                                     **({"sampled_score": x, "sampled_predictions": [
                                                         "x" if variant == "baseline" else f"a{i}"] * 5}
                                                        if x is not None else {})})
                                         + "\n" for i, (s, x) in enumerate(zip(items, sampled))))
    scores = {A: sum(a) / len(a), B: sum(b) / len(b)}
    log_eval_result(client, rid, EvalResult(model="embedded", tasks=[A, B], scores=scores,
                                            metrics={t: {"relaxed_overall": s / 100} for t, s in scores.items()},
                                            samples=samples, sampled_k=5,
                                            sampled_scores={A: sum(sampled_items(variant, a)) / len(a)}))
    return rid, scores


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
    parent = client.create_run(exp_id, tags={TAG_KIND: KIND_SWEEP}).info.run_id
    logged = {}
    for variant, seed, status, a, b in RUNS:
        rid, scores = _log_variant(client, exp_id, parent, tmp, variant, seed, status, a, b)
        logged[(variant, seed)] = (rid, scores)
    # training signals of full/seed 0, for the figures
    rid = logged[("full", 0)][0]
    keys = ["proposer_reward", "answer_entropy", "majority_density", "mean_step_cos", "r_sol_mean", "r_ans_mean",
            "r_step_mean", "lambda", "group_size", "step_positions_used", "mean_steps_per_rollout"]
    client.log_batch(rid, metrics=[Metric(f"train/{k}", math.sin(t / 5 + j), 0, t)
                                   for j, k in enumerate(keys) for t in range(1, 41)])
    diag = tmp / "diagnostics.jsonl"
    diag.write_text(json.dumps({"iteration": 40, "group": [0, 2, 3], "S": [[0.9, 0.5, None], [0.8, 0.1, 0.7],
                                                                            [0.95, 0.6, 0.65]],
                                "D": [0.1167, 0.6, 0.325], "question": "What is angle C?",
                                "answers": ["60", "60", "60"]}) + "\n")
    client.log_artifact(rid, str(diag), "train")
    return uri, client, parent, logged, tmp


@pytest.fixture(scope="module")
def report(store):
    uri, _, _, _, tmp = store
    return build_report(EXPERIMENT, uri, tmp / "report", n_resamples=2000)


def test_table1_equals_the_logged_metrics(store, report):
    _, client, parent, logged, _ = store
    assert report.parent_run_id == parent
    rows = list(csv.DictReader(io.StringIO(report.tables["table1"][1].read_text())))
    cell = {(r["method"], r["benchmark"]): r for r in rows}
    for variant in ("baseline", "soft_only"):
        rid, scores = logged[(variant, 0)]
        metrics = client.get_run(rid).data.metrics
        for task in (A, B):
            assert float(cell[(variant, task)]["mean"]) == metrics[f"eval/{task}"] == scores[task]
    # full has two seeds: mean and sample std of the two logged values
    for task in (A, B):
        v0 = client.get_run(logged[("full", 0)][0]).data.metrics[f"eval/{task}"]
        v1 = client.get_run(logged[("full", 1)][0]).data.metrics[f"eval/{task}"]
        assert float(cell[("full", task)]["mean"]) == pytest.approx((v0 + v1) / 2)
        assert float(cell[("full", task)]["std"]) == pytest.approx(abs(v0 - v1) / math.sqrt(2))
        assert cell[("full", task)]["n_seeds"] == "2"
    # Δ over the same items: full per item (mean over seeds) minus baseline per item
    # A: full [100, 100, 50, 0, 100] - base [100, 0, 0, 0, 100] = [0, 100, 50, 0, 0] -> mean 30
    assert float(cell[("full", A)]["delta"]) == pytest.approx(30.0)
    assert float(cell[("full", A)]["ci_low"]) <= 30.0 <= float(cell[("full", A)]["ci_high"])


def test_avg_at_k_is_logged_and_table1_shows_it_with_a_paired_interval(store, report):
    _, client, _, logged, _ = store
    run = client.get_run(logged[("baseline", 0)][0]).data
    assert run.params["eval_sampled_k"] == "5"
    assert run.metrics[f"eval_sampled/{A}"] == pytest.approx(sum(sampled_items("baseline", RUNS[0][3])) / 5)
    assert f"eval_sampled/{B}" not in run.metrics
    rows = list(csv.DictReader(io.StringIO(report.tables["table1"][1].read_text())))
    cell = {(r["method"], r["benchmark"]): r for r in rows}
    assert float(cell[("baseline", f"{A}@avg5")]["mean"]) == pytest.approx(run.metrics[f"eval_sampled/{A}"])
    # full per item: mean over seeds of a/2 + 20 = [70, 70, 45, 20, 70]; baseline a/2 = [50, 0, 0, 0, 50]
    # d = [20, 70, 45, 20, 20] -> mean 35, every resample's mean within [20, 70]
    full = cell[("full", f"{A}@avg5")]
    assert float(full["delta"]) == pytest.approx(35.0) and full["n_items"] == "5"
    assert 20.0 <= float(full["ci_low"]) < 35.0 < float(full["ci_high"]) <= 70.0
    assert (("full", f"{B}@avg5")) not in cell
    assert "ChartQA-mini avg@5" in report.tables["table1"][0].read_text()


def test_failed_runs_are_left_out_and_said_so(store, report):
    _, _, _, logged, _ = store
    assert logged[("no_warmup", 0)][0] in report.runs_excluded
    assert logged[("no_warmup", 0)][0] not in report.runs_used
    assert "no_warmup" not in report.report_path.read_text().split("## Runs left out")[0]


def _logged_table(client, run_id, tmp):
    local = client.download_artifacts(run_id, REPORT_TABLE, str(tmp))
    table = json.loads(Path(local).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]], table["columns"]


def test_log_table_on_the_parent_has_one_row_per_cell_as_the_csv(store, report):
    _, client, parent, _, tmp = store
    logged, columns = _logged_table(client, parent, tmp / "dl")
    # The columns MLflow's table view filters and sorts on, in this order.
    assert columns[:9] == ["table", "method", "benchmark", "protocol", "score", "delta", "ci_low", "ci_high", "n"]
    assert {"path": REPORT_TABLE, "type": "table"} in json.loads(
        client.get_run(parent).data.tags["mlflow.loggedArtifacts"])
    csv_rows = [r for t in report.tables.values() for r in csv.DictReader(io.StringIO(t[1].read_text()))]
    assert len(logged) == len(csv_rows)

    def num(v):
        return None if v == "" else float(v)
    for lg, cr in zip(logged, csv_rows):
        assert (lg["table"], lg["method"], lg["benchmark"], lg["protocol"]) == (
            cr["table"], cr["method"], cr["benchmark"], cr["protocol"])
        for col, field in (("score", "mean"), ("delta", "delta"), ("ci_low", "ci_low"), ("ci_high", "ci_high"),
                           ("n", "n_items")):
            assert lg[col] == (None if num(cr[field]) is None else pytest.approx(num(cr[field]))), (col, lg)
    full = next(r for r in logged if (r["table"], r["method"], r["benchmark"]) == ("table1", "full", A))
    assert full["delta"] == pytest.approx(30.0) and full["n"] == 5 and full["ci_low"] <= 30.0 <= full["ci_high"]
    names = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/table1.md", "report/table1.csv"} <= names


def test_the_report_in_mlflow_shows_its_figures(store, report, monkeypatch):
    """MLflow 3.17's Markdown viewer draws an image only when its address has a scheme (a relative one
    is printed as `[alt](path)` text), so each figure link must be an absolute address of the MLflow
    UI that its server answers with that PNG."""
    import re

    from mlflow.server import app, handlers
    from mlflow.tracking._tracking_service.utils import _get_store

    from tasks.runs import ui_base_url

    uri, client, parent, _, tmp = store
    md = Path(client.download_artifacts(parent, "report/report.md", str(tmp / "md"))).read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(report.figures) == 4
    monkeypatch.setattr(handlers, "_tracking_store", _get_store(uri))   # the server `mlflow ui` would run
    server = app.test_client()
    for link in links:
        assert re.match(r"[a-z][a-z0-9+.-]*:", link)   # the test MLflow's img renderer applies
        assert link.startswith(f"{ui_base_url(uri)}/get-artifact?path=report%2Ffigures%2F")
        assert link.endswith(f"&run_uuid={parent}")
        reply = server.get(link)
        assert reply.status_code == 200 and reply.mimetype == "image/png" and reply.data[:4] == b"\x89PNG"
    # The local report links the local files.
    local = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.report_path.read_text())
    assert sorted(local) == sorted(p.relative_to(report.out_dir).as_posix() for p in report.figures)
    assert all((report.out_dir / rel).is_file() for rel in local)


def test_a_report_rebuilt_on_the_same_sweep_replaces_its_table(store, report):
    uri, client, parent, _, tmp = store
    before, _ = _logged_table(client, parent, tmp / "before")
    build_report(EXPERIMENT, uri, tmp / "again", parent, n_resamples=200)
    after, _ = _logged_table(client, parent, tmp / "after")
    assert len(after) == len(before)   # log_table alone would have appended a second copy of every cell


def test_figures_are_pngs_that_open(report):
    names = sorted(p.name for p in report.figures)
    assert names == ["figure3.png", "figure5.png", "figure6.png", "figure7.png"]
    for p in report.figures:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and im.width > 300 and im.height > 300
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10   # not a blank canvas


def test_cli_entry_writes_the_report_without_logging(store, capsys):
    uri, _, parent, _, tmp = store
    rc = main(["--experiment", EXPERIMENT, "--tracking-uri", uri, "--out-dir", str(tmp / "cli"), "--no-log",
               "--resamples", "200"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and parent in out
    assert (tmp / "cli" / "tables" / "table1.md").is_file()


def test_unknown_experiment_is_a_clear_error(store, capsys):
    uri, _, _, _, tmp = store
    assert main(["--experiment", "nope", "--tracking-uri", uri, "--out-dir", str(tmp / "x")]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err


def test_unknown_parent_run_id_is_a_clear_error(store, capsys):
    uri, _, _, _, tmp = store
    assert main(["--tracking-uri", uri, "--parent-run-id", "0123456789abcdef", "--out-dir", str(tmp / "y")]) == 2
    err = capsys.readouterr().err
    assert "parent run '0123456789abcdef' not found" in err and uri in err and "Traceback" not in err


def test_answer_entropy_across_items_comes_from_the_logged_answers(report):
    rows = list(csv.DictReader(io.StringIO(report.tables["answer_entropy"][1].read_text())))
    cell = {(r["method"], r["benchmark"]): float(r["mean"]) for r in rows if r["mean"]}
    assert cell[("baseline", A)] == 0.0 and cell[("baseline", f"{A}@avg5")] == 0.0      # one constant answer
    assert cell[("full", A)] == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)))  # "0" x3, "1" x2
    assert cell[("full", f"{A}@avg5")] == pytest.approx(math.log(5))                    # a0..a4, 5 each
    assert ("full", f"{B}@avg5") not in cell                                            # no samples there
