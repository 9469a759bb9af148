"""Figures 3, 5, 6, 7: drawn from a real (tiny) training run's files, opening as PNG images."""

from __future__ import annotations

import pytest
from PIL import Image

from ireasoner_core.reports.figures import (
    FIGURE_PANELS,
    depth_profile,
    figures_from_run_dir,
    history_from_records,
    pick_diagnostic,
    plot_training_figure,
    read_jsonl,
)


def test_depth_profile_by_hand():
    # D_j = 1 - mean_i S_ij over the rollouts that have a step j
    S = [[0.9, 0.5, None], [0.7, 0.1, 0.6]]
    D = depth_profile(S)
    assert D[0] == pytest.approx(1 - 0.8) and D[1] == pytest.approx(1 - 0.3) and D[2] == pytest.approx(1 - 0.6)
    assert depth_profile([[None], [None]]) == [None]


def test_history_keeps_numeric_signals_per_iteration():
    h = history_from_records([{"iteration": 2, "lambda": 0.1, "question": "q", "proposer_updated": True},
                              {"iteration": 1, "lambda": 0.0, "answers": ["a"]}])
    assert h == {"lambda": [(1, 0.0), (2, 0.1)]}
    # an unmeasured signal (null in metrics.jsonl) is no point, not a 0
    h = history_from_records([{"iteration": 1, "mean_step_cos": 0.5}, {"iteration": 2, "mean_step_cos": None}])
    assert h == {"mean_step_cos": [(1, 0.5)]}


def test_an_unmeasured_iteration_has_no_point_and_the_curve_breaks_there(tmp_path, monkeypatch):
    """Issue 28: mean_step_cos is undefined where no dominant group compared steps; figure 3 drew a line
    through such iterations (and, before, a point at 0)."""
    import math

    import matplotlib.axes

    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def plot(self, x, y, *args, **kwargs):
        drawn.append((list(x), list(y), kwargs.get("label")))
        return real_plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    history = {"majority_density": [(t, 0.5) for t in range(1, 6)],
               "mean_step_cos": [(1, 0.9), (2, 0.8), (4, 0.7), (5, float("nan"))]}
    plot_training_figure("figure3", history, tmp_path / "figure3.png")
    raw = [(x, y) for x, y, label in drawn if label is None]
    step_cos_x, step_cos_y = raw[-1]            # drawn in panel order: majority_density, then mean_step_cos
    defined = [(x, y) for x, y in zip(step_cos_x, step_cos_y) if not math.isnan(x)]
    assert defined == [(1, 0.9), (2, 0.8), (4, 0.7)]            # no point at 3 (missing) nor at 5 (NaN)
    gap = step_cos_x.index(4) - 1
    assert math.isnan(step_cos_x[gap]) and math.isnan(step_cos_y[gap])   # the pen lifts between 2 and 4
    smooth = [(x, y, label) for x, y, label in drawn if label == "mean_step_cos"]
    assert len(smooth) == 1 and all(math.isnan(y) for x, y in zip(*smooth[0][:2]) if math.isnan(x))
    assert not any(math.isnan(x) for x in raw[0][0])             # a signal measured throughout: one piece


def test_pick_diagnostic_names_what_is_missing():
    recs = [{"iteration": 5, "S": [[None]]}, {"iteration": 10, "S": [[0.5, 0.4]]}]
    assert pick_diagnostic(recs)["iteration"] == 10
    with pytest.raises(ValueError, match="iteration 7.*\\[5, 10\\]"):
        pick_diagnostic(recs, iteration=7)
    with pytest.raises(ValueError, match="no diagnostics record"):
        pick_diagnostic(recs[:1])
    with pytest.raises(ValueError, match="unknown figure 'figure4'"):
        plot_training_figure("figure4", {}, __import__("pathlib").Path("x.png"))


@pytest.mark.slow
def test_figures_from_a_tiny_training_run_open_as_images(tiny_cfg, tmp_path):
    from ireasoner_core.trainer import train

    cfg = tiny_cfg(**{"schedule.iterations": 4, "log_diagnostics_every": 1, "sampling.num_rollouts": 4,
                      "rewards.min_group": 2})
    result = train(cfg)
    paths = figures_from_run_dir(result.output_dir, tmp_path / "figs")
    names = [p.name for p in paths]
    assert names[:3] == ["figure3.png", "figure5.png", "figure6.png"]
    assert set(FIGURE_PANELS) == {"figure3", "figure5", "figure6"}
    for p in paths:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and im.width > 300 and im.height > 300
    # figure 7 exists when some logged iteration had a dominant group with comparable steps
    diags = read_jsonl(result.output_dir / "diagnostics.jsonl")
    assert [d["iteration"] for d in diags] == [1, 2, 3, 4]
    usable = any(v is not None for d in diags for row in d["S"] for v in row)
    assert ("figure7.png" in names) == usable


def test_no_figure7_when_no_iteration_had_a_defined_similarity(tmp_path):
    from ireasoner_core.reports.figures import training_figures

    history = {"lambda": [(1, 0.0), (2, 0.1)]}
    paths = training_figures(history, [{"iteration": 2, "group": [], "S": [], "D": []}], tmp_path)
    assert [p.name for p in paths] == ["figure3.png", "figure5.png", "figure6.png"]
