"""Reports across sweeps, from MLflow alone.

Two sweeps are logged into a temporary SQLite store with the evaluation layer's own logger
(``tasks.evaluate.log_eval_result``): each has a baseline and a ``full`` run at seed 0, on
different items, so pooling them would give "2 seeds" of numbers that are not seeds of one
experiment. Then:
- each sweep's report logs every table cell as a ``<table>/<method>/<benchmark>`` metric of its
  sweep run, so MLflow's compare-runs view lines the sweeps up; the test reads that cross-sweep
  table 1 back from MLflow (search_runs on the sweep runs) and checks it cell by cell;
- ``ireasoner report --compare A B`` writes one table 1 with a row per sweep × method;
- ``ireasoner report --all-runs`` reports each sweep on its own and never pools them as seeds;
- a sweep that re-used a finished run of an earlier sweep (tag ``ireasoner.reused_runs``) still
  has that variant's row.
"""

from __future__ import annotations

import csv
import json

import pytest
from mlflow.tracking import MlflowClient

from ireasoner_core.evaluation.runner import EvalResult
from tasks.conventions import (
    EXPERIMENT,
    KIND_SWEEP,
    KIND_VARIANT,
    TAG_KIND,
    TAG_REUSED_RUNS,
    TAG_SEED,
    TAG_STATUS,
    TAG_VARIANT,
)
from tasks.evaluate import log_eval_result
from tasks.reporting import build_report, cell_metric_key, main

A = "ireasoner_chartqa_mini"
# sweep -> variant -> per-item 0/100 scores on A (sweep "wide" on 5 items, "narrow" on 4)
pytestmark = pytest.mark.slow  # ~1 min on a loaded 2-core machine (MLflow store per test)

SWEEPS = {
    "wide": {"baseline": [0, 0, 100, 0, 0], "full": [100, 100, 100, 0, 100]},
    "narrow": {"baseline": [100, 0, 0, 0], "full": [100, 0, 0, 100]},
}


def _log_variant(client, exp_id, parent, tmp, variant, items):
    rid = client.create_run(exp_id, run_name=f"{variant}-s0", tags={
        "mlflow.parentRunId": parent, TAG_KIND: KIND_VARIANT, TAG_VARIANT: variant, TAG_SEED: "0",
        TAG_STATUS: "finished"}).info.run_id
    path = tmp / f"{rid}-{A}.jsonl"
    path.write_text("".join(json.dumps({"doc_id": i, "score": float(s)}) + "\n" for i, s in enumerate(items)))
    log_eval_result(client, rid, EvalResult(model="embedded", tasks=[A], scores={A: sum(items) / len(items)},
                                            metrics={}, samples={A: path}))
    client.set_terminated(rid, "FINISHED")
    return rid


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    parents, children = {}, {}
    for name, variants in SWEEPS.items():
        parent = client.create_run(exp_id, run_name=name, tags={TAG_KIND: KIND_SWEEP}).info.run_id
        parents[name] = parent
        for variant, items in variants.items():
            children[(name, variant)] = _log_variant(client, exp_id, parent, tmp_path, variant, items)
    return {"uri": uri, "client": client, "exp": exp_id, "parents": parents, "children": children, "tmp": tmp_path}


def _mean(items):
    return sum(items) / len(items)


def test_cross_sweep_table1_reads_back_from_mlflow_cell_by_cell(store):
    client = store["client"]
    for name, parent in store["parents"].items():
        build_report(EXPERIMENT, store["uri"], store["tmp"] / name, parent, n_resamples=200)
    # What MLflow's compare-runs view shows: the sweep runs side by side, one metric per cell.
    sweeps = client.search_runs([store["exp"]], f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'")
    table = {s.info.run_name: s.data.metrics for s in sweeps}
    assert set(table) == {"wide", "narrow"}
    for name, variants in SWEEPS.items():
        for variant, items in variants.items():
            assert table[name][cell_metric_key("table1", variant, A)] == pytest.approx(_mean(items))
            assert table[name][cell_metric_key("table1", variant, "avg")] == pytest.approx(_mean(items))
        delta = _mean(variants["full"]) - _mean(variants["baseline"])
        assert table[name][cell_metric_key("table1", "full", A) + "/delta"] == pytest.approx(delta)
        assert cell_metric_key("table1", "baseline", A) + "/delta" not in table[name]
    # The same keys on both sweep runs: the compare view lines them up by method x benchmark.
    cells = {k for k in table["wide"] if k.startswith("table1/")}
    assert cells == {k for k in table["narrow"] if k.startswith("table1/")} and len(cells) == 6


def test_compare_writes_one_table1_across_the_chosen_sweeps(store, capsys):
    out = store["tmp"] / "cmp"
    assert main(["--tracking-uri", store["uri"], "--compare", "wide", "narrow", "--out-dir", str(out),
                 "--resamples", "200"]) == 0
    rows = list(csv.DictReader((out / "tables" / "table1.csv").open()))
    got = {(r["method"], r["benchmark"]): (float(r["mean"]), int(r["n_seeds"])) for r in rows}
    for name, variants in SWEEPS.items():
        for variant, items in variants.items():
            assert got[(f"{name}/{variant}", A)] == (pytest.approx(_mean(items)), 1)
    assert len({m for m, _ in got}) == 4
    md = (out / "tables" / "table1.md").read_text()
    assert "wide: iReasoner (full)" in md and "narrow: Base model" in md
    # A sweep that does not exist is named in a clear error.
    assert main(["--tracking-uri", store["uri"], "--compare", "wide", "nope", "--out-dir", str(out)]) == 2
    assert "'nope': no sweep run" in capsys.readouterr().err


def test_all_runs_reports_each_sweep_apart_never_as_seeds(store):
    res = build_report(EXPERIMENT, store["uri"], store["tmp"] / "all", all_runs=True, log_to_mlflow=False,
                       n_resamples=200)
    assert sorted(res.tables) == ["narrow/table1", "wide/table1"]
    for name, variants in SWEEPS.items():
        md_path, csv_path = res.tables[f"{name}/table1"]
        rows = {(r["method"], r["benchmark"]): r for r in csv.DictReader(csv_path.open())}
        for variant, items in variants.items():
            cell = rows[(variant, A)]
            assert int(cell["n_seeds"]) == 1 and float(cell["mean"]) == pytest.approx(_mean(items))
            assert cell["std"] == ""  # one seed: no spread made out of two sweeps
    text = res.report_path.read_text()
    assert "## Sweep wide" in text and "## Sweep narrow" in text


def test_a_reused_run_of_an_earlier_sweep_keeps_its_row(store):
    client = store["client"]
    # A third sweep trained only the baseline again and re-used "wide"'s finished full run.
    parent = client.create_run(store["exp"], run_name="again", tags={
        TAG_KIND: KIND_SWEEP, TAG_REUSED_RUNS: json.dumps({"full-s0": store["children"][("wide", "full")]})
    }).info.run_id
    _log_variant(client, store["exp"], parent, store["tmp"], "baseline", SWEEPS["wide"]["baseline"])
    res = build_report(EXPERIMENT, store["uri"], store["tmp"] / "again", parent, n_resamples=200)
    rows = {(r["method"], r["benchmark"]): r for r in csv.DictReader(res.tables["table1"][1].open())}
    assert float(rows[("full", A)]["mean"]) == pytest.approx(_mean(SWEEPS["wide"]["full"]))
    assert store["children"][("wide", "full")] in res.runs_used


def _sweep(store, name, protocol, variants):
    """One more sweep whose runs were evaluated with ``protocol``."""
    client = store["client"]
    parent = client.create_run(store["exp"], run_name=name, tags={TAG_KIND: KIND_SWEEP}).info.run_id
    for variant, items in variants.items():
        rid = client.create_run(store["exp"], run_name=f"{variant}-s0", tags={
            "mlflow.parentRunId": parent, TAG_KIND: KIND_VARIANT, TAG_VARIANT: variant, TAG_SEED: "0",
            TAG_STATUS: "finished"}).info.run_id
        path = store["tmp"] / f"{rid}-{A}.jsonl"
        path.write_text("".join(json.dumps({"doc_id": i, "score": float(s)}) + "\n" for i, s in enumerate(items)))
        log_eval_result(client, rid, EvalResult(model="embedded", tasks=[A], scores={A: _mean(items)}, metrics={},
                                                samples={A: path}, protocol=protocol))
    return parent


def test_compare_writes_its_own_folder_and_names_the_protocol(store, monkeypatch):
    """`report --compare` used to write reports/<experiment>/ over `ireasoner report`'s output, with
    a header saying "Evaluation protocol: —" although every run had one."""
    monkeypatch.chdir(store["tmp"])
    assert main(["--tracking-uri", store["uri"], "--no-log", "--resamples", "50"]) == 0
    report = store["tmp"] / "reports" / EXPERIMENT
    own = (report / "report.md").read_text()
    assert main(["--tracking-uri", store["uri"], "--compare", "wide", "narrow", "--resamples", "50"]) == 0
    assert (report / "report.md").read_text() == own            # `ireasoner report`'s files untouched
    cmp = store["tmp"] / "reports" / f"{EXPERIMENT}-compare-wide-vs-narrow"
    md = (cmp / "tables" / "table1.md").read_text()
    assert "Evaluation protocol: lmms_eval (" in md and "Evaluation protocol: —" not in md
    assert "[lmms_eval]" not in md                                # one protocol: said once, in the header
    assert {r["protocol"] for r in csv.DictReader((cmp / "tables" / "table1.csv").open())} == {"lmms_eval"}


def test_compare_refuses_mixed_protocols_unless_asked_then_names_each_rows(store, capsys):
    _sweep(store, "prompted", "solver", {"baseline": [0, 100, 0, 0, 0], "full": [100, 100, 0, 0, 0]})
    out = store["tmp"] / "mixed"
    assert main(["--tracking-uri", store["uri"], "--compare", "wide", "prompted", "--out-dir", str(out),
                 "--resamples", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "wide: lmms_eval" in err and "prompted: solver" in err and "--allow-mixed-protocols" in err
    assert not out.exists()
    assert main(["--tracking-uri", store["uri"], "--compare", "wide", "prompted", "--out-dir", str(out),
                 "--resamples", "50", "--allow-mixed-protocols"]) == 0
    md = (out / "tables" / "table1.md").read_text()
    assert "Evaluation protocol: lmms_eval (" in md and "solver (" in md
    assert "| wide: iReasoner (full) [lmms_eval] |" in md and "| prompted: Base model [solver] |" in md
    rows = {r["method"]: r["protocol"] for r in csv.DictReader((out / "tables" / "table1.csv").open())}
    assert rows["wide/full"] == "lmms_eval" and rows["prompted/baseline"] == "solver"
