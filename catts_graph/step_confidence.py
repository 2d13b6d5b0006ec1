"""Step-level confidence (MMBoundary): four signals per reasoning step, fused, cut into five levels.

MMBoundary (ACL 2025) scores every reasoning step ``z_t`` of a response with four signals; its code
was never released, so the choices marked *ours* are this project's, documented here and measured
on the organism (``docs/organism.md``).

Signals of a step with tokens ``k = 1..K`` (log-probabilities ``lp_k`` under the raw distribution,
full-vocabulary entropies ``H_k``):

- ``probability``: ``exp(mean_k lp_k)``, the length-normalised probability (``exp(-NMLP)``);
- ``entropy``: ``mean_k H_k`` in nats (lower is surer);
- ``tokensar``: ``sum_k R_k * (-lp_k)`` with ``R_k = max(0, 1 - sim(z, z without token k))``
  normalised to sum 1 (uniform when every ``R_k`` is 0): SAR's relevance-weighted NLL, with ``sim``
  any sentence similarity (a cross-encoder in SAR; a bi-encoder here by default);
- ``clipscore``: ``max(cos(image, z), 0)`` from any image-text model.

Each signal is turned into a confidence in [0, 1] (:func:`as_confidence`: ``exp(-entropy)``,
``exp(-tokensar)``, the other two as they are) and then normalised by its empirical distribution
on validation steps (*ours*: the mid-rank CDF, so signals on different scales become comparable and
monotone transformations of a signal do not matter). The fused confidence is the weighted mean of
the available normalised signals, the weights renormalised over those present (a signal a
deployment cannot compute, e.g. CLIPScore without an image-text model, is dropped and said so).
Weights are fitted on validation steps with correctness labels (*ours*: L2-regularised logistic
regression of correctness on the normalised signals, negative coefficients set to 0, normalised to
sum 1), equal without labels. Five levels are cut at the fused validation quintiles; each level's
measured validation accuracy is its calibrated confidence (histogram binning, so the level-mapped
confidence is calibrated on validation by construction and on test to the extent the signals
generalise).

Numpy only: similarity and image-text models are passed in as callables.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from catts_graph.confidence import CLAUSE_CUT, split_steps, step_tokens

__all__ = [
    "LEVELS",
    "SIGNALS",
    "StepCalibrator",
    "StepSignals",
    "as_confidence",
    "fit_fusion_weights",
    "logistic_coefficients",
    "step_signals",
    "token_relevance",
    "token_sar",
]

SIGNALS: tuple[str, ...] = ("probability", "entropy", "tokensar", "clipscore")
"""The four step signals, in a fixed order."""

LEVELS = 5
"""Confidence levels, 1 (least sure) to 5 (surest)."""

Similarity = Callable[[str, Sequence[str]], Sequence[float]]
"""``similarity(text, variants)``: the similarity of ``text`` with each variant (cosine, in [-1, 1])."""


@dataclass(frozen=True)
class StepSignals:
    """One step of a response and its raw signals (None where a signal could not be computed)."""

    index: int
    text: str
    start: int
    end: int
    n_tokens: int
    probability: float
    entropy: float | None = None
    tokensar: float | None = None
    clipscore: float | None = None

    def signals(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in SIGNALS}


def token_relevance(text: str, pieces: Sequence[str], similarity: Similarity) -> np.ndarray:
    """``R_k = max(0, 1 - sim(text, text without piece k))``, normalised to sum 1.

    ``pieces`` are the step's tokens in order; they concatenate to ``text`` (whitespace may differ
    at the ends). All-zero relevance gives uniform weights.
    """
    if not pieces:
        raise ValueError("pieces: expected at least one token")
    offsets = np.cumsum([0, *(len(p) for p in pieces)])
    joined = "".join(pieces)
    variants = [joined[: offsets[k]] + joined[offsets[k + 1] :] for k in range(len(pieces))]
    sims = np.asarray(similarity(text, variants), dtype=np.float64)
    if sims.shape != (len(pieces),) or not np.isfinite(sims).all():
        raise ValueError(f"similarity: expected {len(pieces)} finite values, got shape {sims.shape}")
    relevance = np.maximum(0.0, 1.0 - sims)
    total = relevance.sum()
    return relevance / total if total > 0 else np.full(len(pieces), 1.0 / len(pieces))


def token_sar(logprobs: Sequence[float], relevance: Sequence[float]) -> float:
    """``sum_k R_k * (-lp_k)`` with ``R`` normalised to sum 1 (TokenSAR's relevance-weighted NLL)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    weights = np.asarray(relevance, dtype=np.float64)
    if lp.shape != weights.shape or lp.size == 0:
        raise ValueError(
            f"logprobs and relevance: expected equal non-empty lengths, got {lp.size} and {weights.size}"
        )
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("relevance: expected non-negative weights with a positive sum")
    return float(np.dot(weights / weights.sum(), -lp))


def step_signals(
    tokens: Sequence[str],
    logprobs: Sequence[float],
    entropies: Sequence[float] | None = None,
    *,
    similarity: Similarity | None = None,
    clip: Callable[[str], float] | None = None,
    cut: re.Pattern[str] = CLAUSE_CUT,
) -> list[StepSignals]:
    """The steps of the response ``"".join(tokens)`` (:func:`~catts_graph.confidence.split_steps`
    with ``cut``) and their signals. ``entropies``: per-token full-vocabulary entropies (nats);
    ``similarity`` gives TokenSAR; ``clip(step_text)`` the image-text cosine. A signal without its
    input is None."""
    if len(tokens) != len(logprobs):
        raise ValueError(f"tokens and logprobs: got {len(tokens)} and {len(logprobs)} values")
    if entropies is not None and len(entropies) != len(tokens):
        raise ValueError(f"entropies: got {len(entropies)} values for {len(tokens)} tokens")
    text = "".join(tokens)
    spans = split_steps(text, cut)
    out = []
    for step, members in step_tokens(tokens, spans).items():
        start, end = spans[step]
        lp = [float(logprobs[i]) for i in members]
        step_text = text[start:end]
        sar = None
        if similarity is not None:
            sar = token_sar(lp, token_relevance(step_text, [tokens[i] for i in members], similarity))
        out.append(
            StepSignals(
                index=step,
                text=step_text,
                start=start,
                end=end,
                n_tokens=len(members),
                probability=math.exp(sum(lp) / len(lp)),
                entropy=None if entropies is None else float(np.mean([entropies[i] for i in members])),
                tokensar=sar,
                clipscore=None if clip is None else max(float(clip(step_text)), 0.0),
            )
        )
    return out


def as_confidence(name: str, value: float) -> float:
    """A raw signal as a confidence in [0, 1], higher = surer: ``exp(-entropy)``, ``exp(-tokensar)``;
    ``probability`` and ``clipscore`` as they are."""
    if name not in SIGNALS:
        raise ValueError(f"signal {name!r}: expected one of {', '.join(SIGNALS)}")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: expected a finite number")
    return math.exp(-value) if name in ("entropy", "tokensar") else float(value)


def logistic_coefficients(
    x: np.ndarray, y: Sequence[bool], *, l2: float = 1.0, iterations: int = 50
) -> np.ndarray:
    """Coefficients ``(w_1..w_S, b)`` maximising ``sum log sigmoid(+-(w . (x_i - 0.5) + b)) - l2/2 |w|^2``
    (the intercept is not penalised), by Newton's method."""
    design = np.column_stack([np.asarray(x, dtype=np.float64) - 0.5, np.ones(len(x))])
    labels = np.asarray(y, dtype=np.float64)
    penalty = np.diag([l2] * (design.shape[1] - 1) + [0.0])
    beta = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ beta))
        gradient = design.T @ (labels - p) - penalty @ beta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(beta)), gradient)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def fit_fusion_weights(normalised: np.ndarray, correct: Sequence[bool], *, l2: float = 1.0) -> np.ndarray:
    """Non-negative weights summing to 1: the :func:`logistic_coefficients` of ``correct`` on the
    columns of ``normalised``, negative ones set to 0 (equal weights when none is positive or the
    labels hold one class only)."""
    x = np.asarray(normalised, dtype=np.float64)
    y = np.asarray(correct, dtype=bool)
    if x.ndim != 2 or x.shape[0] != y.size or x.shape[0] == 0:
        raise ValueError(f"normalised: expected (steps, signals) matching {y.size} labels, got {x.shape}")
    equal = np.full(x.shape[1], 1.0 / x.shape[1])
    if y.min() == y.max():
        return equal
    weights = np.maximum(logistic_coefficients(x, y, l2=l2)[:-1], 0.0)
    return weights / weights.sum() if weights.sum() > 0 else equal


@dataclass
class StepCalibrator:
    """Normalisation, fusion weights, level cut points and level accuracies fitted on validation steps.

    ``reference[name]``: the sorted validation confidences of each signal; ``weights[name]``;
    ``cuts``: the four fused quintiles; ``level_accuracy[level - 1]`` (the overall validation
    accuracy for a level no validation step reached; NaN when no labels were given); ``level_counts``.
    """

    reference: dict[str, list[float]]
    weights: dict[str, float]
    cuts: list[float]
    level_accuracy: list[float]
    level_counts: list[int]

    @classmethod
    def fit(
        cls, rows: Sequence[Mapping[str, float | None]], correct: Sequence[bool] | None = None
    ) -> StepCalibrator:
        """Fit on validation steps: ``rows`` of raw signals (:meth:`StepSignals.signals`), ``correct``
        the step labels where known. Signals missing from every row are left out of the fusion."""
        if not rows:
            raise ValueError("rows: expected at least one validation step")
        if correct is not None and len(correct) != len(rows):
            raise ValueError(f"correct: got {len(correct)} labels for {len(rows)} steps")
        reference = {}
        for name in SIGNALS:
            values = [as_confidence(name, row[name]) for row in rows if row.get(name) is not None]
            if values:
                reference[name] = sorted(values)
        if not reference:
            raise ValueError("rows: no step carries any signal")
        names = list(reference)
        calibrator = cls(reference, dict.fromkeys(names, 1.0 / len(names)), [], [], [])
        if correct is not None:
            complete = [i for i, row in enumerate(rows) if all(row.get(n) is not None for n in names)]
            if complete:
                matrix = np.array([[calibrator.normalise(n, rows[i][n]) for n in names] for i in complete])
                fitted = fit_fusion_weights(matrix, [bool(correct[i]) for i in complete])
                calibrator.weights = dict(zip(names, (float(w) for w in fitted), strict=True))
        fused = np.array([calibrator.fuse(row)[0] for row in rows])
        calibrator.cuts = [float(c) for c in np.quantile(fused, [0.2, 0.4, 0.6, 0.8])]
        levels = np.array([calibrator.level(f) for f in fused])
        calibrator.level_counts = [int((levels == k).sum()) for k in range(1, LEVELS + 1)]
        labels = None if correct is None else np.asarray(correct, dtype=np.float64)
        # A level no validation step reached (ties at a cut) takes the overall validation accuracy.
        calibrator.level_accuracy = [
            math.nan
            if labels is None
            else float(labels[levels == k].mean() if (levels == k).any() else labels.mean())
            for k in range(1, LEVELS + 1)
        ]
        return calibrator

    def normalise(self, name: str, value: float) -> float:
        """The mid-rank empirical CDF of the signal's confidence among the validation steps."""
        reference = self.reference[name]
        x = as_confidence(name, value)
        below = np.searchsorted(reference, x, side="left")
        at_or_below = np.searchsorted(reference, x, side="right")
        return float((below + at_or_below) / (2 * len(reference)))

    def fuse(self, row: Mapping[str, float | None]) -> tuple[float, list[str]]:
        """The weighted mean of the available normalised signals, and the fitted signals it lacked."""
        present = [n for n in self.weights if row.get(n) is not None]
        missing = [n for n in self.weights if n not in present]
        if not present:
            raise ValueError(f"step has none of the signals {', '.join(self.weights)}")
        total = sum(self.weights[n] for n in present)
        if total <= 0:
            return float(np.mean([self.normalise(n, row[n]) for n in present])), missing  # type: ignore[arg-type]
        fused = sum(self.weights[n] * self.normalise(n, row[n]) for n in present) / total  # type: ignore[arg-type]
        return float(fused), missing

    def level(self, fused: float) -> int:
        """1..5: one plus the number of cut points strictly below ``fused``."""
        return 1 + int(np.searchsorted(self.cuts, fused, side="left"))

    def assess(self, row: Mapping[str, float | None]) -> dict[str, Any]:
        """``{"fused", "level", "confidence", "dropped"}`` for one step: ``confidence`` is the level's
        validation accuracy (NaN when unknown), ``dropped`` the fitted signals the step lacked."""
        fused, dropped = self.fuse(row)
        level = self.level(fused)
        return {
            "fused": fused,
            "level": level,
            "confidence": self.level_accuracy[level - 1] if self.level_accuracy else math.nan,
            "dropped": dropped,
        }

    def check(self) -> StepCalibrator:
        """This calibrator, checked whole (a ValueError names the first field that is wrong):
        ``reference`` maps known signals to non-empty ascending lists of confidences in [0, 1];
        ``weights`` maps signals that have reference values to finite weights >= 0 (at least one);
        ``cuts`` are :data:`LEVELS` - 1 ascending numbers in [0, 1]; ``level_accuracy`` has
        :data:`LEVELS` accuracies in [0, 1] or NaN (unknown); ``level_counts`` :data:`LEVELS`
        counts >= 0. :meth:`from_dict` and the graph check a calibrator before any model call."""
        if not isinstance(self.reference, Mapping) or not self.reference:
            raise ValueError(f"reference={_shown(self.reference)}: expected an object from signal to values")
        for name, values in self.reference.items():
            _check_signal(name, "reference")
            _check_numbers(
                values, f"reference[{name!r}]", 0.0, 1.0, "the validation steps' confidences in [0, 1]"
            )
            if any(b < a for a, b in zip(values, values[1:], strict=False)):
                raise ValueError(f"reference[{name!r}]: expected the values in ascending order")
        if not isinstance(self.weights, Mapping) or not self.weights:
            raise ValueError(f"weights={_shown(self.weights)}: expected an object from signal to weight")
        for name, weight in self.weights.items():
            _check_signal(name, "weights")
            if name not in self.reference:
                raise ValueError(
                    f"weights[{name!r}]: the signal has no reference values to normalise it with "
                    f"(reference has {', '.join(self.reference)})"
                )
            _check_number(weight, f"weights[{name!r}]", 0.0, math.inf, "a finite weight >= 0")
        _check_numbers(self.cuts, "cuts", 0.0, 1.0, "fused confidences in [0, 1]", count=LEVELS - 1)
        if any(b < a for a, b in zip(self.cuts, self.cuts[1:], strict=False)):
            raise ValueError(f"cuts={self.cuts}: expected them in ascending order")
        accuracy = "accuracies in [0, 1], or NaN (None in JSON) where unknown"
        _check_numbers(self.level_accuracy, "level_accuracy", 0.0, 1.0, accuracy, count=LEVELS, nan=True)
        _check_numbers(self.level_counts, "level_counts", 0, math.inf, "step counts >= 0", count=LEVELS)
        if not all(isinstance(c, int) for c in self.level_counts):
            raise ValueError(f"level_counts={self.level_counts}: expected {LEVELS} whole step counts >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "weights": self.weights,
            "cuts": self.cuts,
            "level_accuracy": [None if math.isnan(a) else a for a in self.level_accuracy],
            "level_counts": self.level_counts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepCalibrator:
        """A calibrator from :meth:`to_dict`'s JSON form (``None`` for an unknown level accuracy),
        checked whole (:meth:`check`); a ValueError naming the field that is wrong otherwise."""
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, Mapping):
            raise ValueError(f"step calibrator: expected an object with {', '.join(fields)}")
        missing = [f for f in fields if f not in data]
        unknown = sorted(str(k) for k in data if k not in fields)
        wrong = [f"missing {', '.join(missing)}"] if missing else []
        wrong += [f"unknown {', '.join(unknown)}"] if unknown else []
        if wrong:
            raise ValueError(
                f"step calibrator: malformed data ({'; '.join(wrong)}); expected {', '.join(fields)}"
            )
        accuracy = data["level_accuracy"]
        given = cls(
            reference=data["reference"],
            weights=data["weights"],
            cuts=data["cuts"],
            level_accuracy=[math.nan if a is None else a for a in accuracy]
            if isinstance(accuracy, list)
            else accuracy,
            level_counts=data["level_counts"],
        )
        try:
            given.check()
        except ValueError as error:
            raise ValueError(f"step calibrator: {error}") from None
        return cls(
            reference={name: [float(v) for v in values] for name, values in given.reference.items()},
            weights={name: float(w) for name, w in given.weights.items()},
            cuts=[float(c) for c in given.cuts],
            level_accuracy=[float(a) for a in given.level_accuracy],
            level_counts=list(given.level_counts),
        )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...<{len(text)} characters>"


def _check_signal(name: Any, field: str) -> None:
    if name not in SIGNALS:
        raise ValueError(f"{field}: unknown signal {name!r}; expected {', '.join(SIGNALS)}")


def _check_numbers(
    values: Any,
    field: str,
    low: float,
    high: float,
    expected: str,
    *,
    count: int | None = None,
    nan: bool = False,
) -> None:
    """That ``values`` is a non-empty list (of ``count`` entries, when given) of numbers in
    [``low``, ``high``] (finite; NaN too with ``nan``); a ValueError naming ``field`` otherwise."""
    size = f"{count} " if count is not None else "a non-empty list of "
    if not isinstance(values, list) or not values or (count is not None and len(values) != count):
        raise ValueError(f"{field}={_shown(values)}: expected {size}{expected}")
    for i, value in enumerate(values):
        _check_number(value, f"{field}[{i}]", low, high, expected, nan=nan)


def _check_number(
    value: Any, field: str, low: float, high: float, expected: str, *, nan: bool = False
) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and nan and math.isnan(value):
        return
    if not number or not (low <= value <= high and (isinstance(value, int) or math.isfinite(value))):
        raise ValueError(f"{field}={_shown(value)}: expected {expected}")
