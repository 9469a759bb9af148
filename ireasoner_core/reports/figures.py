"""Paper figures 3, 5, 6 (per-iteration training signals) and 7 (step-agreement diagnostics).

Inputs are plain data: ``history`` maps a metrics.jsonl key (docs/architecture.md, e.g.
``proposer_reward``) to its (iteration, value) points, as logged under ``train/<key>`` in
MLflow; figure 7 takes one record of the run's ``diagnostics.jsonl``. Each function writes one
PNG and returns its path. Curves are drawn raw (faint) with a centred moving average on top,
since single-image iterations are noisy; the window is about 5 % of the run. A signal that was not
measured at an iteration (no point in MLflow, null in metrics.jsonl, NaN) has no point there, and
its curve breaks across the gap rather than drawing a line through it (``mean_step_cos`` is
undefined where no dominant group had two rollouts with a step to compare: it is not 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written headless (CI, workers)
import matplotlib.pyplot as plt
import numpy as np

History = Mapping[str, Sequence[tuple[int, float]]]

FIGURE_PANELS: dict[str, list[tuple[str, list[str]]]] = {
    # Figure 3: question shaping (top) and Solver agreement (bottom).
    "figure3": [("Proposer reward and answer entropy", ["proposer_reward", "answer_entropy"]),
                ("Majority density and mean step similarity", ["majority_density", "mean_step_cos"])],
    # Figure 5: reward components (top), group size and step positions (bottom).
    "figure5": [("Solver reward components", ["r_sol_mean", "r_ans_mean", "r_step_mean", "lambda"]),
                ("Dominant group size and step positions used", ["group_size", "step_positions_used"])],
    # Figure 6: reasoning steps per rollout.
    "figure6": [("Extracted reasoning steps per rollout", ["mean_steps_per_rollout"])],
}
FIGURE_TITLES = {
    "figure3": "Figure 3: question shaping and Solver reasoning over training",
    "figure5": "Figure 5: reward components and step structure over training",
    "figure6": "Figure 6: reasoning step usage over training",
}


def history_from_records(records: Iterable[Mapping]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl records -> key -> [(iteration, value)], numeric finite values only."""
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        it = rec.get("iteration")
        if it is None:
            continue
        for k, v in rec.items():
            if k == "iteration" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                out.setdefault(k, []).append((int(it), float(v)))
    return {k: sorted(v) for k, v in out.items()}


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-empty line; a bad line is an error naming the file and line."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err})") from None
    return rows


def _smooth(y: np.ndarray) -> np.ndarray:
    window = max(1, len(y) // 20)
    if window < 3:
        return y
    kernel = np.ones(window) / window
    padded = np.pad(y, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def _with_gaps(points: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, raw y, smoothed y) of the defined points, with a NaN where iterations are missing.

    The regular spacing is the smallest step between defined iterations (1, or the logging interval);
    a larger step is a gap, where matplotlib then lifts the pen. Smoothing runs within each segment.
    """
    pts = sorted((int(i), float(v)) for i, v in points if v is not None and math.isfinite(v))
    if not pts:
        return np.array([]), np.array([]), np.array([])
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1] for p in pts], dtype=float)
    steps = np.diff(x)
    regular = steps[steps > 0].min() if (steps > 0).any() else 1.0
    cuts = np.flatnonzero(steps > regular) + 1
    xs, ys, ss = [], [], []
    for seg_x, seg_y in zip(np.split(x, cuts), np.split(y, cuts)):
        xs += [seg_x, [np.nan]]
        ys += [seg_y, [np.nan]]
        ss += [_smooth(seg_y), [np.nan]]
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1]), np.concatenate(ss[:-1])


def plot_training_figure(name: str, history: History, out_path: Path, *, subtitle: str = "") -> Path:
    """Figures 3, 5 and 6: one panel per row of ``FIGURE_PANELS[name]``; missing signals are noted."""
    if name not in FIGURE_PANELS:
        raise ValueError(f"unknown figure {name!r}; known: {', '.join(FIGURE_PANELS)}")
    panels = FIGURE_PANELS[name]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3.2 * len(panels)), squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels):
        drawn = False
        missing = []
        for key in keys:
            x, y, smooth = _with_gaps(history.get(key) or [])
            if not x.size:
                missing.append(key)
                continue
            line, = ax.plot(x, y, alpha=0.3, linewidth=0.8)
            ax.plot(x, smooth, color=line.get_color(), linewidth=1.8, label=key)
            drawn = True
        if missing:
            ax.text(0.01, 0.02, "not logged or never measured: " + ", ".join(missing), transform=ax.transAxes,
                    fontsize=7, color="gray")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        if drawn:
            ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(FIGURE_TITLES[name] + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def usable_diagnostics(diagnostics: Sequence[Mapping]) -> list[Mapping]:
    """Records with at least one defined S_ij (a dominant group of >= 2 rollouts sharing a step)."""
    return [d for d in diagnostics if d.get("S") and any(v is not None for row in d["S"] for v in row)]


def pick_diagnostic(diagnostics: Sequence[Mapping], iteration: int | None = None) -> Mapping:
    """The diagnostics record of ``iteration``, or the last one that has a non-empty S matrix."""
    if iteration is not None:
        for d in diagnostics:
            if d.get("iteration") == iteration:
                return d
        logged = [d.get("iteration") for d in diagnostics]
        raise ValueError(f"no diagnostics logged for iteration {iteration}; logged iterations: {logged}")
    usable = usable_diagnostics(diagnostics)
    if not usable:
        raise ValueError("no diagnostics record has a step-similarity matrix S (was the dominant group ever >= 2?)")
    return usable[-1]


def depth_profile(S: Sequence[Sequence[float | None]]) -> list[float | None]:
    """D_j = 1 - mean_i S_ij over the rollouts with a step j (SPEC "Diagnostics")."""
    arr = _as_matrix(S)
    out: list[float | None] = []
    for j in range(arr.shape[1]):
        col = arr[:, j][~np.isnan(arr[:, j])]
        out.append(float(1.0 - col.mean()) if col.size else None)
    return out


def _as_matrix(S: Sequence[Sequence[float | None]]) -> np.ndarray:
    width = max((len(r) for r in S), default=0)
    return np.array([[np.nan if v is None else float(v) for v in r] + [np.nan] * (width - len(r)) for r in S],
                    dtype=float).reshape(len(S), width)


def plot_step_agreement(record: Mapping, out_path: Path) -> Path:
    """Figure 7: depth profile D_j (top) and leave-one-out heatmap S_ij over i in G (bottom)."""
    S = _as_matrix(record.get("S") or [])
    if S.size == 0:
        raise ValueError(f"diagnostics record of iteration {record.get('iteration')} has an empty S matrix")
    D = record.get("D") or depth_profile(record["S"])
    group = list(record.get("group") or range(S.shape[0]))
    steps = np.arange(1, S.shape[1] + 1)
    fig, (ax_d, ax_s) = plt.subplots(2, 1, figsize=(6.5, 6), gridspec_kw={"height_ratios": [1, 1.6]})
    d = np.array([np.nan if v is None else v for v in D], dtype=float)
    ax_d.plot(steps[: len(d)], d, marker="o")
    ax_d.set_ylabel("D_j = 1 - mean_i S_ij")
    ax_d.set_xticks(steps)
    ax_d.set_title("Per-step disagreement", fontsize=10)
    ax_d.grid(alpha=0.3)
    masked = np.ma.masked_invalid(S)
    im = ax_s.imshow(masked, aspect="auto", cmap="viridis", vmin=min(0.0, float(np.nanmin(S))), vmax=1.0)
    ax_s.set_xticks(range(S.shape[1]), [str(s) for s in steps])
    ax_s.set_yticks(range(S.shape[0]), [f"rollout {g}" for g in group])
    ax_s.set_xlabel("step j")
    ax_s.set_title("Leave-one-out step similarity S_ij (blank: no step j)", fontsize=10)
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            if not np.isnan(S[i, j]):
                ax_s.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax_s, fraction=0.04)
    question = str(record.get("question") or "")
    fig.suptitle(f"Figure 7: step agreement in the dominant group (iteration {record.get('iteration')})"
                 + (f"\nQ: {question[:90]}" if question else ""), fontsize=10)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def training_figures(history: History, diagnostics: Sequence[Mapping] | None, out_dir: Path, *,
                     prefix: str = "", subtitle: str = "", iteration: int | None = None) -> list[Path]:
    """All four figures for one run: figure3/5/6 from ``history``; figure7 when some logged
    iteration had a defined S_ij (a short run of an untrained model may have none: no figure 7)."""
    paths = [plot_training_figure(n, history, out_dir / f"{prefix}{n}.png", subtitle=subtitle) for n in FIGURE_PANELS]
    if diagnostics and (iteration is not None or usable_diagnostics(diagnostics)):
        paths.append(plot_step_agreement(pick_diagnostic(diagnostics, iteration), out_dir / f"{prefix}figure7.png"))
    return paths


def figures_from_run_dir(run_dir: Path, out_dir: Path | None = None, iteration: int | None = None) -> list[Path]:
    """Figures 3/5/6/7 straight from a training run directory (metrics.jsonl, diagnostics.jsonl)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: is {run_dir} a training run directory?")
    diag = run_dir / "diagnostics.jsonl"
    diagnostics = read_jsonl(diag) if diag.is_file() else None
    return training_figures(history_from_records(read_jsonl(metrics)), diagnostics, out_dir or run_dir / "figures",
                            subtitle=run_dir.name, iteration=iteration)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ireasoner_core.reports.figures RUN_DIR [--out DIR] [--iteration K]` (no MLflow needed)."""
    import argparse

    parser = argparse.ArgumentParser(description="Draw figures 3, 5, 6 and 7 from a training run directory.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/figures)")
    parser.add_argument("--iteration", type=int, default=None, help="figure 7's iteration (default: last logged)")
    args = parser.parse_args(argv)
    for p in figures_from_run_dir(args.run_dir, args.out, args.iteration):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
