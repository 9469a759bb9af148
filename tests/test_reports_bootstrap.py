"""Paired bootstrap CI and seed spread, on cases small enough to work out by hand."""

from __future__ import annotations

import math

import pytest

from ireasoner_core.reports.bootstrap import (
    mean_over_seeds,
    pair_items,
    paired_bootstrap,
    summarize_seeds,
)


def test_three_items_interval_matches_the_exact_bootstrap_distribution():
    # method = [1, 0, 1], baseline = [0, 0, 1] -> differences d = [1, 0, 0], mean 1/3.
    # A resample draws 3 items with replacement; its mean is k/3 where k ~ Binomial(3, 1/3):
    #   P(0) = 8/27 = .296, P(1/3) = 12/27 = .444, P(2/3) = 6/27 = .222, P(1) = 1/27 = .037.
    # CDF: .296, .741, .963, 1. The 2.5 % quantile is 0 (.296 >= .025). The 97.5 % quantile is 1
    # (.963 < .975), and the 95 % quantile of a 90 % interval is 2/3 (.963 >= .95).
    ci95 = paired_bootstrap([1, 0, 1], [0, 0, 1], n_resamples=20_000, confidence=0.95, seed=1)
    assert ci95.delta == pytest.approx(1 / 3)
    assert (ci95.low, ci95.high) == (0.0, 1.0)
    assert ci95.n_items == 3
    ci90 = paired_bootstrap([1, 0, 1], [0, 0, 1], n_resamples=20_000, confidence=0.90, seed=1)
    assert ci90.low == 0.0
    assert ci90.high == pytest.approx(2 / 3)
    assert not ci95.excludes_zero


def test_constant_difference_gives_a_point_interval_that_excludes_zero():
    # Every item is exactly 2 points better: every resample mean is 2.
    ci = paired_bootstrap([52.0, 62.0, 72.0, 82.0], [50.0, 60.0, 70.0, 80.0], n_resamples=500)
    assert (ci.delta, ci.low, ci.high) == (2.0, 2.0, 2.0)
    assert ci.excludes_zero


def test_pairing_removes_item_difficulty():
    # Items differ wildly in difficulty but the method is +1 on each: an unpaired comparison
    # would see huge spread, the paired one sees none.
    base = [0.0, 90.0, 10.0, 60.0]
    ci = paired_bootstrap([b + 1 for b in base], base, n_resamples=1000)
    assert ci.low == ci.high == 1.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="at least one item"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1], [0], confidence=1.5)


def test_pair_items_uses_only_common_items_in_numeric_order():
    a, b = pair_items({"10": 1.0, "2": 0.0, "3": 1.0}, {"2": 1.0, "10": 0.0, "7": 1.0})
    assert (a, b) == ([0.0, 1.0], [1.0, 0.0])   # items 2 and 10, in that order


def test_seed_mean_and_sample_std():
    s = summarize_seeds([50.0, 52.0, 54.0])
    # mean 52; squared deviations 4 + 0 + 4 = 8, over n - 1 = 2 -> variance 4 -> std 2
    assert (s.mean, s.std, s.n_seeds) == (52.0, 2.0, 3)
    one = summarize_seeds([61.5])
    assert (one.mean, one.std, one.n_seeds) == (61.5, None, 1)


def test_mean_over_seeds_averages_each_item_over_the_seeds_that_scored_it():
    m = mean_over_seeds([{"0": 100.0, "1": 0.0}, {"0": 0.0, "1": 0.0, "2": 100.0}])
    assert m == {"0": 50.0, "1": 0.0, "2": 100.0}
    assert math.isclose(sum(m.values()), 150.0)


# --- what mutation testing found unpinned (docs/testing.md) -----------------------------------

DIFFS = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]   # against a baseline of zeros


def test_the_interval_is_reproducible_and_its_defaults_are_documented_ones():
    # docs/evaluation.md: 10,000 resamples, seed 0; a table rebuilt from MLflow shows the same interval.
    rng_data = [((k * 37) % 101) / 10 for k in range(50)]
    zeros = [0.0] * 50
    default = paired_bootstrap(rng_data, zeros)
    assert default == paired_bootstrap(rng_data, zeros, n_resamples=10_000, seed=0)
    assert default != paired_bootstrap(rng_data, zeros, seed=1)


def test_every_interval_end_is_a_resampled_mean_even_with_few_resamples():
    # Ten items with differences 0..9: every resample mean is a multiple of 0.1, and so must be
    # the ends ("inverted CDF", never interpolated), including when one resample is all there is.
    for n in (1, 2, 7):
        ci = paired_bootstrap(DIFFS, [0.0] * 10, n_resamples=n, seed=3)
        for end in (ci.low, ci.high):
            assert 0.0 <= end <= 9.0 and abs(end * 10 - round(end * 10)) < 1e-9, (n, end)
    one = paired_bootstrap(DIFFS, [0.0] * 10, n_resamples=1, seed=3)
    assert one.low == one.high


def test_resamples_drawn_in_several_chunks_fill_every_slot():
    # 100,001 items: chunks of 19 resamples, so 40 resamples take three chunks.
    n = 100_001
    ci = paired_bootstrap([1.0] * n, [0.0] * n, n_resamples=40)
    assert (ci.low, ci.high, ci.n_items) == (1.0, 1.0, n)


def test_scores_given_as_correct_or_not_are_numbers():
    ci = paired_bootstrap([True, True, False], [False, True, False], n_resamples=200)
    assert ci.delta == pytest.approx(1 / 3)


def test_the_bounds_of_the_settings():
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="confidence"):
            paired_bootstrap([1], [0], confidence=bad)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([1], [0], n_resamples=0)
    assert paired_bootstrap([1], [0], n_resamples=1).delta == 1.0
    with pytest.raises(ValueError, match="no values"):
        summarize_seeds([])


def test_item_ids_sort_numerically_negative_ones_first_and_names_last():
    # value = expected position: -20, -3, 2, 10 (numbers, by value), then "a", "b" (names)
    ids = {"b": 5.0, "10": 3.0, "-3": 1.0, "2": 2.0, "a": 4.0, "-20": 0.0}
    a, b = pair_items(ids, dict(ids))
    assert a == b == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
