"""Metrics against hand-computed values and against independent, slow implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from catts_graph.metrics import (
    Bin,
    accuracy,
    auroc,
    bootstrap_interval,
    bootstrap_rows,
    brier_score,
    confidence_drop,
    drop_ratio,
    drop_ratio_interval,
    expected_calibration_error,
    maximum_calibration_error,
    paired_difference,
    reliability_bins,
    scaling_slope,
)

# Five items, five bins of width 0.2: 0.1 -> bin 0; 0.2 -> bin 1; 0.8, 0.9, 0.95 -> bin 4.
CONF = [0.1, 0.2, 0.8, 0.9, 0.95]
HITS = [False, True, True, True, False]


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75  # 3 / 4
    assert accuracy([1, 0]) == 0.5  # 0 / 1 integers are accepted as bools


def test_reliability_bins_by_hand():
    bins = reliability_bins(CONF, HITS, n_bins=5)
    assert [b.count for b in bins] == [1, 1, 0, 0, 3]
    assert bins[0] == Bin(lower=0.0, upper=0.2, count=1, mean_confidence=0.1, accuracy=0.0)
    assert bins[1] == Bin(lower=0.2, upper=0.4, count=1, mean_confidence=0.2, accuracy=1.0)
    assert math.isnan(bins[2].mean_confidence) and math.isnan(bins[2].accuracy)
    # bin 4: conf (0.8 + 0.9 + 0.95) / 3 = 2.65 / 3; acc 2 / 3
    assert bins[4].mean_confidence == pytest.approx(2.65 / 3)
    assert bins[4].accuracy == pytest.approx(2 / 3)
    assert bins[4].upper == 1.0


def test_bin_edges_are_half_open_and_one_goes_in_the_last_bin():
    # n_bins = 4: 0.25 and 0.5 are exact in binary, so they open bins 1 and 2; 1.0 joins bin 3.
    bins = reliability_bins([0.0, 0.25, 0.5, 1.0], [True, True, False, False], n_bins=4)
    assert [b.count for b in bins] == [1, 1, 1, 1]
    assert bins[3].mean_confidence == 1.0


def test_ece_and_mce_by_hand():
    # |acc - conf| per bin: bin 0: |0 - 0.1| = 0.1; bin 1: |1 - 0.2| = 0.8;
    # bin 4: |2/3 - 2.65/3| = 0.65/3.
    # ECE = 1/5 * 0.1 + 1/5 * 0.8 + 3/5 * 0.65/3 = 0.02 + 0.16 + 0.13 = 0.31
    assert expected_calibration_error(CONF, HITS, n_bins=5) == pytest.approx(0.31)
    # MCE = max(0.1, 0.8, 0.2167) = 0.8
    assert maximum_calibration_error(CONF, HITS, n_bins=5) == pytest.approx(0.8)


def test_ece_perfect_and_default_bins():
    # Every item at confidence 1.0 and correct: no gap.
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    # Default 15 bins: 0.5 -> floor(7.5) = 7, 0.52 -> floor(7.8) = 7; one bin, conf 0.51, acc 0.5.
    assert expected_calibration_error([0.5, 0.52], [True, False]) == pytest.approx(0.01)


def slow_ece(conf, hits, n_bins):
    """Independent ECE: plain Python loop over bins with explicit interval tests."""
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = [i for i, c in enumerate(conf) if (lo <= c < hi) or (k == n_bins - 1 and c == 1.0)]
        if members:
            acc = sum(hits[i] for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - mean_conf)
    return total


def test_ece_matches_a_hand_loop_on_random_data():
    rng = np.random.default_rng(7)
    # Confidences on a grid that avoids bin edges (k/15 is never a multiple of 1/1000 + 1/2000).
    conf = ((rng.integers(0, 1000, size=300) + 0.5) / 1000).tolist()
    hits = (rng.random(300) < np.asarray(conf)).tolist()
    for n_bins in (1, 10, 15):
        assert expected_calibration_error(conf, hits, n_bins) == pytest.approx(
            slow_ece(conf, hits, n_bins), abs=1e-12
        )


def test_brier_by_hand():
    # (0.1-0)^2 + (0.2-1)^2 + (0.8-1)^2 + (0.9-1)^2 + (0.95-0)^2
    # = 0.01 + 0.64 + 0.04 + 0.01 + 0.9025 = 1.6025; / 5 = 0.3205
    assert brier_score(CONF, HITS) == pytest.approx(0.3205)


def test_auroc_by_hand():
    # Correct {0.2, 0.8, 0.9} vs wrong {0.1, 0.95}: pairs won 3 of 6 -> 0.5
    assert auroc(CONF, HITS) == pytest.approx(0.5)
    # Correct {0.5, 0.7} vs wrong {0.5, 0.3}: 0.5 (tie) + 1 + 1 + 1 = 3.5 of 4 -> 0.875
    assert auroc([0.5, 0.5, 0.7, 0.3], [True, False, True, False]) == pytest.approx(0.875)
    assert auroc([0.9, 0.1], [True, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0


def brute_force_auroc(scores, hits):
    pos = [s for s, h in zip(scores, hits, strict=True) if h]
    neg = [s for s, h in zip(scores, hits, strict=True) if not h]
    won = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return won / (len(pos) * len(neg))


def test_auroc_matches_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(5):
        scores = np.round(rng.normal(size=120), 1).tolist()  # rounding makes many ties
        hits = (rng.random(120) < 0.4).tolist()
        assert auroc(scores, hits) == pytest.approx(brute_force_auroc(scores, hits), abs=1e-12)


def test_auroc_accepts_any_real_score():
    # Only the order matters: -NMLP works as well as exp(-NMLP).
    nmlp = [0.2, 1.5, 0.4, 2.0]
    hits = [True, False, True, False]
    assert auroc([-x for x in nmlp], hits) == auroc([math.exp(-x) for x in nmlp], hits) == 1.0


@pytest.mark.parametrize("hits", [[True, True], [False, False]])
def test_an_auroc_over_one_class_is_undefined_nan(hits):
    """The one rule for an undefined AUROC, decided inside the metric: NaN (no pair to rank), which
    every report writes as n/a and every JSON result as null."""
    assert math.isnan(auroc([0.2, 0.8], hits))


def test_paired_difference_resamples_items_with_both_values():
    difference, (low, high) = paired_difference([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], n_boot=500)
    assert difference == 0.25 and 0.0 <= low <= 0.25 <= high <= 1.0
    # Equal on every item: every resample's difference is 0.
    assert paired_difference([0.3, 0.9], [0.3, 0.9], n_boot=50) == (0.0, (0.0, 0.0))
    # The same pairing as bootstrap_rows over the two columns (an independent spelling of it).
    rows = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0]])
    expected = bootstrap_rows(rows, lambda r: float(np.mean(r[:, 0] - r[:, 1])), n_boot=200, seed=3)
    assert paired_difference(rows[:, 0], rows[:, 1], n_boot=200, seed=3)[1] == expected
    with pytest.raises(ValueError, match="values has 2 values but other has 1"):
        paired_difference([1.0, 0.0], [1.0])


def test_drop_ratio_by_hand_and_its_joint_interval():
    # Every item falls by 0.1 before and 0.3 after: 3 in every resample.
    clean, before, after = [0.9, 0.8, 0.7], [0.8, 0.7, 0.6], [0.6, 0.5, 0.4]
    assert drop_ratio(clean, before, clean, after) == pytest.approx(3.0)
    assert drop_ratio_interval(clean, before, clean, after, n_boot=100) == pytest.approx((3.0, 3.0))
    assert math.isnan(drop_ratio([0.9], [0.9], [0.9], [0.5]))  # no drop before: undefined
    with pytest.raises(ValueError, match="clean_before has 3 values but clean_after has 2"):
        drop_ratio(clean, before, [0.9, 0.8], after[:2])


def test_confidence_drop():
    # mean(perturbed) - mean(clean) = (0.5 + 0.3) / 2 - (0.9 + 0.7) / 2 = 0.4 - 0.8 = -0.4
    assert confidence_drop([0.9, 0.7], [0.5, 0.3]) == pytest.approx(-0.4)
    # In the paper's unit, mean log-prob (-NMLP): -0.2 -> -1.6 is a drop of -1.4.
    assert confidence_drop([-0.2], [-1.6]) == pytest.approx(-1.4)


def test_scaling_slope_is_exact_on_a_known_line():
    ns = [1, 2, 4, 8, 16, 32]
    acc = [30 + 3.65 * math.log2(n) for n in ns]
    assert scaling_slope(ns, acc) == pytest.approx(3.65, abs=1e-12)


def test_scaling_slope_by_hand():
    # x = log2 N = 0, 1, 2 (mean 1); y = 10, 12, 17 (mean 13)
    # sum dx*dy = (-1)(-3) + 0 + (1)(4) = 7; sum dx^2 = 2; slope = 3.5
    assert scaling_slope([1, 2, 4], [10, 12, 17]) == pytest.approx(3.5)
    # Matches numpy's own least-squares fit on unevenly spaced N.
    ns, acc = [1, 3, 4, 10, 32], [20.0, 25.5, 24.0, 31.0, 33.5]
    assert scaling_slope(ns, acc) == pytest.approx(np.polyfit(np.log2(ns), acc, 1)[0])


def test_bootstrap_is_deterministic_for_a_seed():
    values = np.random.default_rng(0).random(40).tolist()
    first = bootstrap_interval(values, seed=5)
    assert bootstrap_interval(values, seed=5) == first
    assert bootstrap_interval(values, seed=6) != first
    low, high = first
    assert low < float(np.mean(values)) < high


def test_bootstrap_known_distributions():
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    # Resampled means of [0, 1] are 0 (p = 1/4), 0.5 (1/2), 1 (1/4): the 95% interval spans
    # both ends, while the 40% interval (quantiles 0.3 and 0.7) sits on 0.5.
    assert bootstrap_interval([0.0, 1.0], n_boot=2000) == (0.0, 1.0)
    assert bootstrap_interval([0.0, 1.0], n_boot=2000, level=0.4) == (0.5, 0.5)
    # Any statistic of a resample: the median of a constant is that constant.
    assert bootstrap_interval([3.0] * 5, statistic=np.median) == (3.0, 3.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: accuracy([]), "correct is empty"),
        (lambda: accuracy([True, 2]), r"correct\[1\] is 2.0, expected a bool"),
        (lambda: brier_score([0.5], [True, False]), "confidences has 1 values but correct has 2"),
        (lambda: brier_score([1.5], [True]), r"confidences\[0\] is 1.5, expected a probability"),
        (lambda: expected_calibration_error([0.5], [True], n_bins=0), "n_bins must be"),
        (lambda: auroc([float("nan"), 0.1], [True, False]), r"confidences\[0\] is nan"),
        (lambda: confidence_drop([0.5], []), "perturbed is empty"),
        (lambda: confidence_drop([0.5, 0.4], [0.3]), "clean has 2 values but perturbed has 1"),
        (lambda: scaling_slope([4, 4], [1.0, 2.0]), "at least two distinct"),
        (lambda: scaling_slope([0, 2], [1.0, 2.0]), r"ns\[0\] is 0, expected a positive integer"),
        (lambda: scaling_slope([1.5, 2], [1.0, 2.0]), r"ns\[0\] is 1.5"),
        (lambda: bootstrap_interval([1.0], level=1.0), "level must be in"),
        (lambda: bootstrap_interval([1.0], n_boot=0), "n_boot must be"),
        (lambda: reliability_bins([[0.5]], [[True]]), "one-dimensional"),
        (lambda: accuracy("TF"), "sequence of numbers"),
    ],
)
def test_errors_name_the_bad_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bootstrap_rows_of_one_column_is_the_plain_bootstrap():
    values = np.random.default_rng(1).random(30)
    rows = values[:, None]
    assert bootstrap_rows(rows, lambda r: r[:, 0].mean(), seed=3) == bootstrap_interval(values, seed=3)


def test_bootstrap_rows_keeps_each_items_columns_together():
    # Column 1 is column 0 plus 2 on every item: any joint resample has a mean difference of
    # exactly 2, so the interval is a point; resampling the columns independently would spread it.
    base = np.random.default_rng(2).random(25)
    rows = np.column_stack([base, base + 2.0])
    low, high = bootstrap_rows(rows, lambda r: float(np.mean(r[:, 1] - r[:, 0])))
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)
    # A slope across columns (N = 1, 2, 4) on items whose accuracies rise by 10 points per doubling
    # plus an item-specific offset: every resample fits the same slope.
    offsets = np.random.default_rng(3).random(20) * 50
    steps = np.column_stack([offsets, offsets + 10, offsets + 20])
    low, high = bootstrap_rows(steps, lambda r: scaling_slope([1, 2, 4], r.mean(axis=0)))
    assert low == pytest.approx(10.0) and high == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("rows", "message"),
    [([1.0, 2.0], "two-dimensional"), (np.zeros((0, 2)), "empty"), ([[1.0, math.nan]], r"rows\[0, 1\]")],
)
def test_bootstrap_rows_names_bad_input(rows, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_rows(rows, lambda r: 0.0)


def test_bootstrap_rows_can_leave_out_resamples_where_the_statistic_is_undefined() -> None:
    from catts_graph.metrics import bootstrap_rows

    rows = np.array([[0.0], [1.0], [1.0]])

    def mean_of_ones_or_nan(picked: np.ndarray) -> float:
        return float(np.mean(picked)) if picked.min() == 0 else math.nan  # undefined without a 0

    assert all(math.isnan(v) for v in bootstrap_rows(rows, mean_of_ones_or_nan, n_boot=200))
    low, high = bootstrap_rows(rows, mean_of_ones_or_nan, n_boot=200, skip_undefined=True)
    assert 0 <= low <= high <= 2 / 3  # a defined resample holds a 0, so its mean is at most 2/3
    never = bootstrap_rows(rows, lambda picked: math.nan, n_boot=20, skip_undefined=True)
    assert all(math.isnan(v) for v in never)
