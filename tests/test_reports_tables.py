"""Tables 1-3 from per-run scores: seed mean ± std, best/second marks, Δ with paired CIs (worked by hand)."""

from __future__ import annotations

import csv
import io
import math

import pytest

from ireasoner_core.reports.tables import (
    AVERAGE,
    PAPER_BASELINE,
    PAPER_IREASONER,
    VariantRun,
    build_table,
    paper_tables,
)

A, B = "ireasoner_chartqa_mini", "ireasoner_geometry_mini"


def _run(variant, seed, a_items, b_items):
    items = {A: {str(i): v for i, v in enumerate(a_items)}, B: {str(i): v for i, v in enumerate(b_items)}}
    return VariantRun(run_id=f"{variant}-{seed}", variant=variant, seed=seed,
                      scores={t: sum(v.values()) / len(v) for t, v in items.items()}, items=items)


RUNS = [
    _run("baseline", 0, [100, 0, 0, 100], [0, 0, 100, 0]),        # A 50,  B 25
    _run("soft_only", 0, [100, 0, 0, 100], [100, 0, 100, 0]),     # A 50,  B 50
    _run("full", 0, [100, 100, 0, 100], [0, 100, 100, 0]),        # A 75,  B 50
    _run("full", 1, [100, 0, 100, 100], [100, 100, 100, 0]),      # A 75,  B 75
]


@pytest.fixture(scope="module")
def table1():
    return build_table("table1", "Table 1", RUNS, ["baseline", "soft_only", "full"], n_resamples=20_000)


def test_seed_mean_and_std(table1):
    a = table1.cell("full", A)
    assert (a.mean, a.std, a.n_seeds) == (75.0, 0.0, 2)
    b = table1.cell("full", B)
    # seeds 50 and 75: mean 62.5, sample variance (12.5² + 12.5²) / 1 = 312.5
    assert b.mean == 62.5 and b.std == pytest.approx(math.sqrt(312.5))
    assert table1.cell("baseline", A).std is None   # one seed: no spread to show


def test_delta_and_paired_interval(table1):
    c = table1.cell("full", A)
    # per item, mean over seeds: [100, 50, 50, 100]; baseline [100, 0, 0, 100]; d = [0, 50, 50, 0]
    assert c.delta == 25.0 and c.n_items == 4
    # resample mean = 12.5 k, k ~ Binomial(4, 1/2): CDF at 0 is 1/16 >= .025 -> low 0; at 37.5 it is
    # 15/16 = .9375 < .975 -> high 50.
    assert (c.ci_low, c.ci_high) == (0.0, 50.0)
    assert table1.cell("baseline", A).delta is None


def test_best_and_second_best(table1):
    assert table1.cell("full", A).rank == 1
    # soft_only and baseline tie at 50 on A: both second best
    assert table1.cell("soft_only", A).rank == 2 and table1.cell("baseline", A).rank == 2
    assert [table1.cell(m, B).rank for m in ("full", "soft_only", "baseline")] == [1, 2, None]


def test_average_column(table1):
    avg = table1.cell("full", AVERAGE)
    # per seed: (75 + 50)/2 = 62.5 and (75 + 75)/2 = 75 -> mean 68.75; baseline (50 + 25)/2 = 37.5
    assert avg.mean == 68.75 and avg.delta == 31.25
    assert avg.std == pytest.approx(math.sqrt(2 * 6.25 ** 2))


def test_markdown_and_csv_show_the_same_numbers(table1):
    md = table1.to_markdown()
    assert "**75.00 ± 0.00**" in md and "_50.00_" in md
    assert "+25.00 [+0.00, +50.00]" in md
    rows = list(csv.DictReader(io.StringIO(table1.to_csv())))
    full_a = next(r for r in rows if r["method"] == "full" and r["benchmark"] == A)
    assert float(full_a["mean"]) == 75.0 and float(full_a["delta"]) == 25.0 and full_a["rank"] == "1"
    assert len(rows) == 3 * 3   # 3 methods x (2 benchmarks + Avg)


def test_runs_without_items_get_a_delta_but_no_interval():
    runs = [VariantRun(variant="baseline", scores={A: 40.0}), VariantRun(variant="full", scores={A: 43.0})]
    c = build_table("t", "t", runs, ["baseline", "full"]).cell("full", A)
    assert c.delta == 3.0 and c.ci_low is None and c.ci_high is None


def test_paper_reference_rows_only_for_real_benchmarks_and_unranked():
    runs = [VariantRun(variant="baseline", scores={"chartqa": 10.0, A: 5.0}),
            VariantRun(variant="full", scores={"chartqa": 12.0, A: 6.0})]
    t = build_table("table1", "t", runs, ["baseline", "full"], reference_rows=True)
    assert t.cell(PAPER_BASELINE, "chartqa").mean == 84.00
    assert t.cell(PAPER_IREASONER, "chartqa").mean == 85.78
    assert t.cell(PAPER_IREASONER, "chartqa").rank is None
    assert t.cell(PAPER_BASELINE, A) is None
    assert t.cell("full", "chartqa").rank == 1


def test_tables_name_their_protocol_and_show_paper_rows_only_beside_lmms_eval_runs():
    def runs(protocol):
        return [VariantRun(variant="baseline", scores={"chartqa": 10.0}, protocol=protocol),
                VariantRun(variant="full", scores={"chartqa": 12.0}, protocol=protocol)]

    paper = build_table("table1", "t", runs("lmms_eval"), ["baseline", "full"], reference_rows=True)
    assert paper.protocols == ["lmms_eval"] and paper.cell(PAPER_BASELINE, "chartqa").mean == 84.00
    assert "Evaluation protocol: lmms_eval" in paper.to_markdown()
    assert {r["protocol"] for r in paper.records() if not r["reference"]} == {"lmms_eval"}

    solver = build_table("table1", "t", runs("solver"), ["baseline", "full"], reference_rows=True)
    assert solver.cell(PAPER_BASELINE, "chartqa") is None and PAPER_BASELINE not in solver.methods
    md = solver.to_markdown()
    assert "Evaluation protocol: solver" in md and "paper rows not shown" in md and "84.00" not in md
    assert {r["protocol"] for r in solver.records()} == {"solver"}

    mixed = build_table("table1", "t", runs("solver")[:1] + runs("lmms_eval")[1:], ["baseline", "full"],
                        reference_rows=True)
    assert mixed.cell(PAPER_BASELINE, "chartqa") is None
    assert mixed.protocols == ["lmms_eval", "solver"] and any("not comparable" in n for n in mixed.notes)


def test_paper_tables_split_methods_ablations_and_step_budgets():
    runs = RUNS + [_run("max_steps_4", 0, [0, 0, 0, 100], [0, 0, 0, 0]), _run("no_warmup", 0, [0] * 4, [0] * 4)]
    tables = {t.name: t for t in paper_tables(runs, n_resamples=200)}
    assert tables["table1"].methods[:3] == ["baseline", "soft_only", "full"]
    assert "no_warmup" in tables["table2"].methods and "no_warmup" not in tables["table1"].methods
    t3 = tables["table3"]
    assert t3.methods == ["baseline", "max_steps_4", "max_steps_8"]
    # max_steps_8 is the full method's default: shown from the full runs, with a note saying so
    assert t3.cell("max_steps_8", A).mean == 75.0
    assert any("max_steps_8" in n for n in t3.notes)


def test_tables_without_runs_of_their_own_are_left_out():
    only_main = [r for r in RUNS if r.variant in ("baseline", "full")]
    assert [t.name for t in paper_tables(only_main, n_resamples=100)] == ["table1"]
    assert paper_tables([r for r in RUNS if r.variant == "baseline"], n_resamples=100) == []


def test_avg_at_k_columns_sit_beside_their_task_with_their_own_paired_interval():
    from ireasoner_core.evaluation.benchmarks import sampled_key

    S = sampled_key(A, 5)

    def run(variant, greedy, sampled):
        r = _run(variant, 0, greedy, [0, 0, 100, 0])
        r.items[S] = {str(i): v for i, v in enumerate(sampled)}
        r.scores[S] = sum(sampled) / len(sampled)
        return r

    # Greedy unchanged on A (50 -> 50) while sampled accuracy sharpens: d = [20, 40, 20, 40]
    runs = [run("baseline", [100, 0, 0, 100], [60, 20, 0, 40]), run("full", [100, 0, 0, 100], [80, 60, 20, 80])]
    t = build_table("table1", "Table 1", runs, ["baseline", "full"], n_resamples=5000)
    assert t.benchmarks == [A, S, B, AVERAGE]
    greedy, sampled = t.cell("full", A), t.cell("full", S)
    assert greedy.delta == 0.0 and sampled.mean == 60.0 and sampled.delta == 30.0 and sampled.n_items == 4
    # every resample of d lies in [20, 40], and not all at one end
    assert 20.0 <= sampled.ci_low < 30.0 < sampled.ci_high <= 40.0
    # Avg stays over the greedy columns: (50 + 25) / 2 for both rows
    assert t.cell("full", AVERAGE).mean == 37.5 and t.cell("full", AVERAGE).delta == 0.0
    md = t.to_markdown()
    assert "ChartQA-mini avg@5" in md and f"+30.00 [{sampled.ci_low:+.2f}, {sampled.ci_high:+.2f}]" in md
    assert "temperature 1" in md
    # asked for by task name, the avg@k column still comes along
    assert build_table("table1", "T", runs, ["baseline", "full"], tasks=[A], n_resamples=100).benchmarks == [
        A, S, AVERAGE]
    assert any(n.startswith("avg@5:") for n in t.notes)


# --- what mutation testing found unpinned (docs/testing.md) -----------------------------------

def test_the_interval_uses_the_tables_resamples_and_seed():
    from ireasoner_core.reports.bootstrap import pair_items, paired_bootstrap

    # 40 items with distinct differences, so that another seed moves the interval's ends
    method = _run("full", 0, [(k * 37) % 101 for k in range(40)], [0] * 40)
    base = _run("baseline", 0, [(k * 53) % 97 for k in range(40)], [0] * 40)
    a, b = pair_items(method.items[A], base.items[A])
    for kwargs, expected in (({}, {"n_resamples": 10_000, "seed": 0}), ({"seed": 5, "n_resamples": 7},) * 2):
        c = build_table("t", "t", [base, method], ["baseline", "full"], **kwargs).cell("full", A)
        ci = paired_bootstrap(a, b, **expected)   # docs/evaluation.md: 10,000 resamples, seed 0
        assert (c.ci_low, c.ci_high) == (ci.low, ci.high), kwargs
    assert (paired_bootstrap(a, b, seed=1).low, paired_bootstrap(a, b, seed=1).high) != \
        (paired_bootstrap(a, b, seed=0).low, paired_bootstrap(a, b, seed=0).high)   # the data can tell seeds apart
    real = [VariantRun(variant="baseline", scores={"chartqa": 10.0}), VariantRun(variant="full", scores={"chartqa": 12.0})]
    assert PAPER_BASELINE not in build_table("table1", "t", real, ["baseline", "full"]).methods   # paper rows: opt-in


def test_a_method_whose_seeds_are_not_all_itemised_gets_no_interval():
    # Pairing one seed's items with a two-seed mean would compare different things.
    itemised = _run("full", 0, [100, 100, 0, 100], [0] * 4)
    bare = VariantRun(variant="full", seed=1, scores={A: 25.0, B: 0.0})
    c = build_table("t", "t", [RUNS[0], itemised, bare], ["baseline", "full"]).cell("full", A)
    assert c.delta == (75.0 + 25.0) / 2 - 50.0 and c.ci_low is None and c.n_items is None


def test_without_a_baseline_there_is_no_delta_and_no_error():
    t = build_table("t", "t", [r for r in RUNS if r.variant != "baseline"], ["soft_only", "full"], n_resamples=50)
    for bench in (A, B, AVERAGE):
        assert t.cell("full", bench).delta is None and t.cell("full", bench).mean is not None
    assert t.cell("full", AVERAGE).benchmark_label == "Avg"


def test_the_average_skips_a_run_that_misses_a_task():
    partial = VariantRun(variant="full", seed=2, scores={A: 0.0})
    t = build_table("t", "t", [*RUNS, partial], ["baseline", "full"], n_resamples=50)
    assert t.cell("full", AVERAGE).mean == 68.75 and t.cell("full", AVERAGE).n_seeds == 2
    assert t.cell("baseline", AVERAGE).delta is None


def test_each_cell_carries_its_own_rows_protocol_and_notes_only_what_applies():
    base = VariantRun(variant="baseline", scores={A: 10.0, B: 1.0}, protocol="solver")
    full = VariantRun(variant="full", scores={A: 12.0, B: 2.0}, protocol="lmms_eval")
    t = build_table("t", "t", [base, full], ["baseline", "full"])
    assert {(c.method, c.protocol) for c in t.cells} == {("baseline", "solver"), ("full", "lmms_eval")}
    two = build_table("t", "t", [base, full, full.model_copy(update={"seed": 1, "protocol": "solver"})],
                      ["baseline", "full"])
    assert two.cell("full", A).protocol == "lmms_eval,solver"   # a row whose seeds used two protocols says so
    same = build_table("t", "t", [full, base.model_copy(update={"protocol": "lmms_eval"})], ["baseline", "full"])
    assert same.notes == []   # one protocol, no avg@k column: nothing to warn about


def test_a_column_with_one_score_does_not_stop_the_ranking_of_the_next():
    runs = [VariantRun(variant="baseline", scores={B: 1.0}), VariantRun(variant="soft_only", scores={A: 5.0, B: 3.0}),
            VariantRun(variant="full", scores={B: 2.0})]
    t = build_table("t", "t", runs, ["baseline", "soft_only", "full"], tasks=[A, B])
    assert t.cell("soft_only", A).rank is None   # alone in its column
    assert [t.cell(m, B).rank for m in ("soft_only", "full", "baseline")] == [1, 2, None]


def test_a_table_of_mixed_protocols_names_each_rows_protocol_and_lists_its_cells_for_mlflow():
    base = VariantRun(variant="baseline", scores={A: 10.0}, items={A: {"0": 0.0, "1": 20.0}}, protocol="solver")
    full = VariantRun(variant="full", scores={A: 30.0}, items={A: {"0": 20.0, "1": 40.0}}, protocol="lmms_eval")
    mixed = build_table("table1", "t", [base, full], ["baseline", "full"], n_resamples=50)
    md = mixed.to_markdown()
    assert "| Base model [solver] |" in md and "| iReasoner (full) [lmms_eval] |" in md
    one = build_table("table1", "t", [base, full.model_copy(update={"protocol": "solver"})], ["baseline", "full"],
                      n_resamples=50)
    assert "[solver]" not in one.to_markdown() and "Evaluation protocol: solver (" in one.to_markdown()
    rows = {(r["method"], r["benchmark"]): r for r in mixed.summary_records()}
    assert list(rows[("full", A)]) == ["table", "method", "benchmark", "protocol", "score", "delta", "ci_low",
                                       "ci_high", "n", "std", "seeds"]
    assert rows[("full", A)]["protocol"] == "lmms_eval" and rows[("full", A)]["score"] == 30.0
    assert rows[("full", A)]["delta"] == 20.0 and rows[("full", A)]["n"] == 2
    assert rows[("baseline", A)]["delta"] is None and len(rows) == len(mixed.cells)


def test_reward_controls_sit_in_table1_below_the_methods_with_their_paired_delta():
    runs = RUNS + [_run("negated", 0, [0, 0, 0, 100], [0, 0, 100, 0]), _run("random_reward", 0, [100, 0, 0, 100],
                                                                            [0, 0, 100, 0])]
    tables = {t.name: t for t in paper_tables(runs, n_resamples=200)}
    t1 = tables["table1"]
    assert t1.methods == ["baseline", "soft_only", "full", "negated", "random_reward"]
    assert t1.cell("negated", A).delta == -25.0 and t1.cell("negated", A).ci_low is not None
    assert not {"negated", "random_reward"} & set(tables["table2"].methods)   # not ablations of the paper's table 2
    assert "Control: rewards negated" in t1.to_markdown()


def test_answer_entropy_across_items_shows_a_collapse():
    from ireasoner_core.reports.tables import answer_entropy_across_items

    assert answer_entropy_across_items(["red", "Red.", " red"]) == 0.0        # normalised: one answer
    assert answer_entropy_across_items(["red", "blue"]) == pytest.approx(math.log(2))
    runs = [r.model_copy(update={"answer_entropy": {A: 1.0 + r.seed}}) for r in RUNS]
    runs.append(_run("negated", 0, [0] * 4, [0] * 4).model_copy(update={"answer_entropy": {A: 0.0}}))
    entropy = {t.name: t for t in paper_tables(runs, n_resamples=100)}["answer_entropy"]
    assert entropy.benchmarks == [A]
    assert entropy.cell("full", A).mean == 1.5 and entropy.cell("full", A).n_seeds == 2
    assert entropy.cell("negated", A).delta == -1.0 and entropy.cell("negated", A).rank is None
    md = entropy.to_markdown()
    assert "Answer entropy across items" in md and "Best in" not in md and "[95% CI]" not in md
    # without entropies recorded (older runs) there is no such table
    assert "answer_entropy" not in [t.name for t in paper_tables(RUNS, n_resamples=100)]
