"""Uncertainty for the paper's tables: paired bootstrap intervals and seed spread.

The paper reports gains of about one point per benchmark with no error bars. Two sources of
noise decide whether such a gain is real: which benchmark items happen to be in the test set
(the paired bootstrap resamples items, keeping each item's pair of scores together, so the
interval reflects the *difference* on the same items), and which training seed was used
(mean +- sample standard deviation over seeds, when several were run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel


class BootstrapCI(BaseModel):
    """Mean paired difference (method - baseline) with a percentile confidence interval."""

    delta: float
    low: float
    high: float
    n_items: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def paired_bootstrap(
    method: Sequence[float],
    baseline: Sequence[float],
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of mean(method - baseline), resampling items with replacement.

    ``method[k]`` and ``baseline[k]`` must be the scores of the same item k. The interval
    ends are empirical quantiles of the resampled means ("inverted CDF": each end is one of
    the resampled values, never an interpolation), so a small case can be checked by hand.
    """
    a = np.asarray(method, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two equal-length lists, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired bootstrap needs at least one item scored by both methods")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    diff = a - b
    rng = np.random.default_rng(seed)
    # Resample in chunks so a large test set times many resamples never sits in memory at once.
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // diff.size)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], method="inverted_cdf")
    return BootstrapCI(delta=float(diff.mean()), low=float(low), high=float(high),
                       n_items=int(diff.size), confidence=confidence)


def pair_items(method: Mapping[str, float], baseline: Mapping[str, float]) -> tuple[list[float], list[float]]:
    """The two score lists over the items both were scored on, in a stable (sorted id) order."""
    common = sorted(set(method) & set(baseline), key=_natural_key)
    return [method[k] for k in common], [baseline[k] for k in common]


def mean_over_seeds(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-item score averaged over the seeds that scored the item (paired bootstrap input)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for items in per_seed:
        for k, v in items.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


class SeedSummary(BaseModel):
    """A score over seeds: mean, sample standard deviation (None for one seed), count."""

    mean: float
    std: float | None
    n_seeds: int


def summarize_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean +- sample standard deviation (ddof = 1) of one score over training seeds."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values to summarise")
    mean = math.fsum(vals) / len(vals)
    std = None
    if len(vals) > 1:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return SeedSummary(mean=mean, std=std, n_seeds=len(vals))


def _natural_key(k: str) -> tuple[int, int | str]:
    # doc ids are usually integers written as strings; sort them numerically.
    return (0, int(k)) if k.lstrip("-").isdigit() else (1, k)
