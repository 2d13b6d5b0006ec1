"""Evaluation metrics: accuracy, calibration, discrimination, perturbation drop, scaling slope, and
the bootstrap intervals around them (paired differences, drop ratios).

Pure functions of plain sequences (numpy only). Each validates its input and raises ValueError
naming the argument that is wrong: empty, of mismatched length, not finite, out of range.

An *undefined* metric is NaN, decided here once, inside the metric (as scikit-learn's
``zero_division=``), never by a guard in the caller: an AUROC over items of one class
(:func:`auroc`), a drop ratio with no drop before (:func:`drop_ratio`). NaN propagates through
means and is skipped by ``bootstrap_rows(..., skip_undefined=True)``; a report writes it as ``n/a``
(:func:`~catts_graph.formatting.number`) and JSON as ``null``
(:func:`~catts_graph.formatting.json_ready`).

Notation: ``c_i`` is the confidence of item i, ``y_i`` is 1 if the item was answered correctly and
0 otherwise, ``n`` the number of items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Bin",
    "accuracy",
    "auroc",
    "bootstrap_interval",
    "bootstrap_rows",
    "brier_score",
    "confidence_drop",
    "drop_ratio",
    "drop_ratio_interval",
    "expected_calibration_error",
    "maximum_calibration_error",
    "paired_difference",
    "reliability_bins",
    "scaling_slope",
]


@dataclass(frozen=True)
class Bin:
    """One equal-width confidence bin of a reliability diagram.

    Covers ``[lower, upper)`` (the last bin also holds a confidence of exactly 1.0). An empty bin
    has ``count == 0`` and NaN means.
    """

    lower: float
    upper: float
    count: int
    mean_confidence: float
    accuracy: float


def _values(values: Sequence[float], name: str) -> np.ndarray:
    """``values`` as a non-empty 1-d float array of finite numbers."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; at least one value is needed")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {array[bad[0]]}, expected a finite number")
    return array


def _correct(correct: Sequence[bool], name: str = "correct") -> np.ndarray:
    """``correct`` as a non-empty 1-d array of 0.0 / 1.0 (bools or the integers 0 and 1)."""
    array = _values(correct, name)
    bad = np.flatnonzero((array != 0) & (array != 1))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {array[bad[0]]}, expected a bool (or 0 / 1)")
    return array


def _probabilities(confidences: Sequence[float], name: str = "confidences") -> np.ndarray:
    array = _values(confidences, name)
    bad = np.flatnonzero((array < 0) | (array > 1))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {array[bad[0]]}, expected a probability in [0, 1]")
    return array


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.size != b.size:
        raise ValueError(f"{name_a} has {a.size} values but {name_b} has {b.size}; expected one per item")


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of items answered correctly: ``(1/n) * sum_i y_i``, in [0, 1]."""
    return float(np.mean(_correct(correct)))


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15) -> list[Bin]:
    """Equal-width bins on [0, 1] with each bin's count, mean confidence and accuracy.

    Bin k (0-based) covers ``[k / n_bins, (k + 1) / n_bins)``; item i goes to bin
    ``min(floor(c_i * n_bins), n_bins - 1)``, so a confidence of exactly 1.0 lands in the last bin.
    For a bin B with ``n_B > 0`` items: ``mean_confidence = (1/n_B) sum_{i in B} c_i`` and
    ``accuracy = (1/n_B) sum_{i in B} y_i``; an empty bin has count 0 and NaN for both.
    """
    _check_n_bins(n_bins)
    conf = _probabilities(confidences)
    hits = _correct(correct)
    _same_length(conf, hits, "confidences", "correct")
    index = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)
    bins = []
    for k in range(n_bins):
        members = index == k
        count = int(members.sum())
        bins.append(
            Bin(
                lower=k / n_bins,
                upper=(k + 1) / n_bins,
                count=count,
                mean_confidence=float(conf[members].mean()) if count else math.nan,
                accuracy=float(hits[members].mean()) if count else math.nan,
            )
        )
    return bins


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15
) -> float:
    """ECE = ``sum_B (n_B / n) * |acc_B - conf_B|`` over the equal-width bins of
    :func:`reliability_bins` (empty bins contribute nothing). In [0, 1]; 0 is perfectly calibrated.
    """
    bins = reliability_bins(confidences, correct, n_bins)
    n = sum(b.count for b in bins)
    return float(sum(b.count / n * abs(b.accuracy - b.mean_confidence) for b in bins if b.count))


def maximum_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15
) -> float:
    """MCE = ``max_B |acc_B - conf_B|`` over the non-empty bins of :func:`reliability_bins`."""
    bins = reliability_bins(confidences, correct, n_bins)
    return float(max(abs(b.accuracy - b.mean_confidence) for b in bins if b.count))


def brier_score(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Brier score = ``(1/n) * sum_i (c_i - y_i)^2``, in [0, 1]; lower is better."""
    conf = _probabilities(confidences)
    hits = _correct(correct)
    _same_length(conf, hits, "confidences", "correct")
    return float(np.mean((conf - hits) ** 2))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    mean_rank = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size)
    ranks[order] = mean_rank[run_of]
    return ranks


def auroc(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Area under the ROC curve of confidence as a detector of correct answers.

    ``AUROC = P(c_i > c_j) + 0.5 * P(c_i = c_j)`` for a random correct item i and wrong item j,
    computed with the Mann-Whitney rank sum: ``(R_+ - n_+ (n_+ + 1) / 2) / (n_+ * n_-)``, where
    ``R_+`` sums the (tie-averaged) ranks of the correct items. Only the order of confidences matters,
    so any real-valued score works (exp(-NMLP), -NMLP, ...). 0.5 is chance, 1.0 perfect.
    Undefined, and NaN, when every item is correct or every item is wrong (no pair to rank).

    >>> auroc([0.9, 0.8, 0.3], [True, False, False])
    1.0
    >>> auroc([0.9, 0.8], [True, True])
    nan
    """
    scores = _values(confidences, "confidences")
    hits = _correct(correct)
    _same_length(scores, hits, "confidences", "correct")
    n_pos = int(hits.sum())
    n_neg = hits.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(_average_ranks(scores)[hits == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def confidence_drop(clean: Sequence[float], perturbed: Sequence[float]) -> float:
    """Mean confidence change under perturbation: ``mean(perturbed) - mean(clean)``.

    The two sequences hold the same items, clean and perturbed, in the same order. The unit is the
    caller's: pass a confidence where higher means more confident (exp(-NMLP), or -NMLP, the mean
    token log-probability, as the paper reports), and a negative result means confidence fell when
    the image was degraded. (Passing NMLP itself flips the sign.)
    """
    before = _values(clean, "clean")
    after = _values(perturbed, "perturbed")
    _same_length(before, after, "clean", "perturbed")
    return float(np.mean(after) - np.mean(before))


def drop_ratio(
    clean_before: Sequence[float],
    perturbed_before: Sequence[float],
    clean_after: Sequence[float],
    perturbed_after: Sequence[float],
) -> float:
    """How much further confidence falls under perturbation after training than before it:
    ``confidence_drop(clean_after, perturbed_after) / confidence_drop(clean_before, perturbed_before)``
    (the paper's CDRL figure, 4.3x for noise). Above 1: the drop grew. Each pair of sequences holds
    the same items in the same order; the unit is the caller's, as in :func:`confidence_drop` (pass
    -NMLP for the drop in NMLP units). Undefined, and NaN, when there was no drop before.

    >>> round(drop_ratio([0.9, 0.9], [0.8, 0.8], [0.9, 0.9], [0.6, 0.6]), 6)
    3.0
    >>> drop_ratio([0.9], [0.9], [0.9], [0.5])
    nan
    """
    return _ratio_of_drops(_drop_columns(clean_before, perturbed_before, clean_after, perturbed_after))


def drop_ratio_interval(
    clean_before: Sequence[float],
    perturbed_before: Sequence[float],
    clean_after: Sequence[float],
    perturbed_after: Sequence[float],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`drop_ratio`, the items resampled jointly: an item's
    clean and perturbed confidences before training and after it stay together, and every resample
    recomputes both drops and their ratio (:func:`bootstrap_rows`; the four sequences hold the same
    items in the same order).

    >>> low, high = drop_ratio_interval([0.9] * 4, [0.8, 0.7, 0.8, 0.7], [0.9] * 4, [0.6, 0.5, 0.6, 0.5])
    >>> bool(low <= 2.7 <= high)
    True
    """
    rows = _drop_columns(clean_before, perturbed_before, clean_after, perturbed_after)
    return bootstrap_rows(rows, _ratio_of_drops, n_boot=n_boot, level=level, seed=seed)


def _drop_columns(*columns: Sequence[float]) -> np.ndarray:
    """The four sequences of a drop ratio, validated, as the columns of one array."""
    names = ("clean_before", "perturbed_before", "clean_after", "perturbed_after")
    arrays = [_values(values, name) for values, name in zip(columns, names, strict=True)]
    for array, name in zip(arrays[1:], names[1:], strict=True):
        _same_length(arrays[0], array, names[0], name)
    return np.column_stack(arrays)


def _ratio_of_drops(rows: np.ndarray) -> float:
    drop_before = rows[:, 1].mean() - rows[:, 0].mean()
    drop_after = rows[:, 3].mean() - rows[:, 2].mean()
    return float(drop_after / drop_before) if drop_before else math.nan


def paired_difference(
    values: Sequence[float],
    other: Sequence[float],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """``mean(values - other)`` over the same items (in the same order), with its paired percentile
    bootstrap interval: a resample draws items, and each drawn item keeps both its values, so what
    the two sides share (an item that is easy for both) cancels (:func:`bootstrap_rows`).

    >>> difference, (low, high) = paired_difference([1, 1, 1, 0], [1, 0, 1, 0], n_boot=200)
    >>> difference, bool(low <= difference <= high)
    (0.25, True)
    """
    ours = _values(values, "values")
    theirs = _values(other, "other")
    _same_length(ours, theirs, "values", "other")
    rows = np.column_stack([ours, theirs])
    interval = bootstrap_rows(
        rows, lambda r: float(np.mean(r[:, 0] - r[:, 1])), n_boot=n_boot, level=level, seed=seed
    )
    return float(np.mean(ours - theirs)), interval


def scaling_slope(ns: Sequence[int], accuracies: Sequence[float]) -> float:
    """Least-squares slope of accuracy against log2(N): accuracy gained per doubling of N.

    With ``x_k = log2(N_k)`` and ``y_k`` the accuracy at ``N_k`` (in the caller's unit, usually
    points): ``beta = sum_k (x_k - x_mean)(y_k - y_mean) / sum_k (x_k - x_mean)^2``.
    Needs at least two distinct N, each a positive integer.
    """
    sizes = _values(ns, "ns")
    acc = _values(accuracies, "accuracies")
    _same_length(sizes, acc, "ns", "accuracies")
    bad = np.flatnonzero((sizes < 1) | (sizes != np.round(sizes)))
    if bad.size:
        raise ValueError(f"ns[{bad[0]}] is {sizes[bad[0]]:g}, expected a positive integer")
    x = np.log2(sizes)
    dx = x - x.mean()
    spread = float(np.sum(dx**2))
    if spread == 0:
        raise ValueError(f"ns must hold at least two distinct values, got {sizes.astype(int).tolist()}")
    return float(np.sum(dx * (acc - acc.mean())) / spread)


def bootstrap_interval(
    values: Sequence[float],
    *,
    statistic: Callable[[np.ndarray], Any] = np.mean,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)``.

    Draws ``n_boot`` resamples of ``values`` with replacement (``numpy.random.default_rng(seed)``,
    so the same seed gives the same interval), computes ``statistic`` on each, and returns the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear interpolation) of those statistics.
    """
    data = _values(values, "values")
    return _percentile_bootstrap(data.size, lambda rows: statistic(data[rows]), n_boot, level, seed)


def bootstrap_rows(
    rows: Sequence[Sequence[float]] | np.ndarray,
    statistic: Callable[[np.ndarray], Any],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    skip_undefined: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(rows)`` with the *rows* resampled jointly.

    ``skip_undefined``: resamples on which the statistic is undefined (NaN: an AUROC with one class,
    an ECE over no rows) are left out of the quantiles instead of making the interval NaN; NaN only
    when every resample is undefined.

    ``rows`` is a 2-d array whose row ``i`` holds everything measured on item ``i`` (its accuracy at
    each N, its confidence before and after training, ...). A resample draws item indices with
    replacement and keeps each drawn row whole, so a statistic that compares columns (a slope
    across N, a ratio of drops) sees the items' pairing intact. Seeded and quantiled as
    :func:`bootstrap_interval` (the same seed draws the same item indices for the same row count).
    """
    if isinstance(rows, (str, bytes)):
        raise ValueError(f"rows must be a 2-d array of numbers, got {type(rows).__name__}")
    try:
        data = np.asarray(rows, dtype=float)
    except (TypeError, ValueError):
        raise ValueError("rows must be a 2-d array of numbers") from None
    if data.ndim != 2:
        raise ValueError(f"rows must be two-dimensional (items x measurements), got shape {data.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"rows is empty (shape {data.shape}); at least one item and one column are needed")
    bad = np.argwhere(~np.isfinite(data))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"rows[{i}, {j}] is {data[i, j]}, expected a finite number")
    return _percentile_bootstrap(
        data.shape[0], lambda picked: statistic(data[picked]), n_boot, level, seed, skip_undefined
    )


def _percentile_bootstrap(
    size: int,
    statistic_of: Callable[[np.ndarray], Any],
    n_boot: int,
    level: float,
    seed: int,
    skip_undefined: bool = False,
) -> tuple[float, float]:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, size, size=(n_boot, size))
    stats = np.array([float(statistic_of(picked)) for picked in draws])
    if skip_undefined:
        stats = stats[np.isfinite(stats)]
        if stats.size == 0:
            return math.nan, math.nan
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)
