"""Voting over samples and the CA-TTS final score: pure functions of answers and weights.

Answers are compared exactly, so canonicalise them first (``answers.canonicalize``). A sample
without an answer (None) never votes. Every dict keeps first-seen order, which is what makes ties
break deterministically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "final_scores",
    "majority_vote",
    "nmlp_weights",
    "pick_answer",
    "top_eta_mask",
    "vote_shares",
    "weighted_vote",
]


def _check_non_negative(values: Mapping[str, float] | Sequence[float], name: str) -> None:
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    for key, value in items:
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name}[{key!r}] must be finite and >= 0, got {value}")


def majority_vote(answers: Sequence[str | None]) -> dict[str, float]:
    """Majority vote ``V(a) = #{i : ans_i == a}``."""
    return weighted_vote(answers, [1.0] * len(answers))


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> dict[str, float]:
    """Weighted vote ``V(a) = sum_{i : ans_i == a} w_i``."""
    if len(answers) != len(weights):
        raise ValueError(
            f"answers and weights must have the same length, got {len(answers)} and {len(weights)}"
        )
    _check_non_negative(weights, "weights")
    votes: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            votes[answer] = votes.get(answer, 0.0) + float(weight)
    return votes


def nmlp_weights(nmlps: Sequence[float], eps: float = 1e-8, floor: float | None = None) -> list[float]:
    """The paper's confidence weights ``w_i = 1 / (NMLP_i + eps)``, or ``w_i = 1 / max(NMLP_i, floor)``
    with a ``floor``.

    Unbounded, one sample at NMLP 0.01 (w = 100) outvotes seven at 0.30 (w = 23.3 together); a floor
    of 0.1 caps every weight at 10. A slightly negative NMLP counts as 0 (log-probs of near-certain
    tokens can round above zero).
    """
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if floor is not None and not (math.isfinite(floor) and floor > 0.0):
        raise ValueError(f"floor must be finite and > 0, or None, got {floor}")
    weights = []
    for i, value in enumerate(nmlps):
        if not math.isfinite(value):
            raise ValueError(f"nmlps[{i}] must be finite, got {value}")
        weights.append(1.0 / (max(value, 0.0) + eps) if floor is None else 1.0 / max(value, floor))
    return weights


def top_eta_mask(confidences: Sequence[float], eta: float = 0.1) -> list[bool]:
    """DeepConf filter: keep sample i when ``c_i >= quantile(c, 1 - eta)`` (linear interpolation).

    The most confident sample is always kept.
    """
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"eta must be in (0, 1], got {eta}")
    values = np.asarray(confidences, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("confidences must be a non-empty sequence of floats")
    if not np.all(np.isfinite(values)):
        raise ValueError("confidences must be finite, got a NaN or infinite value")
    # The quantile never exceeds the max in exact arithmetic; the min() keeps that under rounding.
    threshold = min(float(np.quantile(values, 1.0 - eta)), float(values.max()))
    return [bool(keep) for keep in values >= threshold]


def final_scores(
    votes: Mapping[str, float],
    *,
    voter_probs: Mapping[str, float] | None = None,
    reflected: str | None = None,
    self_check_winner: str | None = None,
    tau1: float = 0.5,
    tau2: float = 0.5,
    tau3: float = 0.5,
    scale: str = "normalised",
    n_samples: int | None = None,
) -> dict[str, float]:
    """CA-TTS final score of each candidate answer.

    ``normalised`` (one scale, default)::

        S(a) = V(a) / sum_b V(b) + tau1 * p_voter(a) + tau2 * [a == reflected]
               + tau3 * [a == self_check_winner]

    (the vote term is 0 when ``sum_b V(b) == 0``). ``literal`` (the official code, for
    reproduction; needs ``n_samples`` = N)::

        S(a) = V(a) + int(tau1 * N) * p_voter(a) + int(tau2 * N) * [a == reflected]
               + int(tau3 * N) * [a == self_check_winner]

    Candidates are the vote keys in order, then new answers from ``voter_probs``, ``reflected`` and
    ``self_check_winner``, which get only their boosts. Missing voter probabilities count as 0.
    """
    _check_non_negative(votes, "votes")
    probs = dict(voter_probs or {})
    _check_non_negative(probs, "voter_probs")
    for name, tau in (("tau1", tau1), ("tau2", tau2), ("tau3", tau3)):
        if not (math.isfinite(tau) and tau >= 0.0):
            raise ValueError(f"{name} must be finite and >= 0, got {tau}")
    boosts: tuple[float, float, float]
    if scale == "normalised":
        total = sum(votes.values())
        vote_term = {a: v / total if total > 0.0 else 0.0 for a, v in votes.items()}
        boosts = (tau1, tau2, tau3)
    elif scale == "literal":
        if n_samples is None or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1 for scale='literal', got {n_samples}")
        vote_term = dict(votes)
        boosts = (int(tau1 * n_samples), int(tau2 * n_samples), int(tau3 * n_samples))
    else:
        raise ValueError(f"scale must be 'normalised' or 'literal', got {scale!r}")
    candidates = dict.fromkeys([*votes, *probs])
    for extra in (reflected, self_check_winner):
        if extra is not None:
            candidates[extra] = None
    return {
        a: vote_term.get(a, 0.0)
        + boosts[0] * probs.get(a, 0.0)
        + boosts[1] * (a == reflected)
        + boosts[2] * (a == self_check_winner)
        for a in candidates
    }


def override_leader(
    scores: Mapping[str, float],
    votes: Mapping[str, float],
    *,
    criticised: str | None,
    replacement: str | None,
    margin: float,
) -> dict[str, float]:
    """``scores`` with ``replacement`` put ``margin`` above the leader when the leader
    (:func:`pick_answer`) is the ``criticised`` answer and ``replacement`` is another one (a new
    candidate joins with that score); otherwise ``scores`` unchanged (a copy).

    >>> scores, votes = {"3": 0.75, "4": 0.25}, {"3": 3.0, "4": 1.0}
    >>> override_leader(scores, votes, criticised="3", replacement="4", margin=0.5)
    {'3': 0.75, '4': 1.25}
    >>> override_leader(scores, votes, criticised="4", replacement="5", margin=0.5)
    {'3': 0.75, '4': 0.25}
    """
    out = dict(scores)
    if not (math.isfinite(margin) and margin >= 0.0):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    leader, _ = pick_answer(scores, votes)
    if leader is None or criticised != leader or replacement is None or replacement == leader:
        return out
    out[replacement] = scores[leader] + margin
    return out


def pick_answer(scores: Mapping[str, float], votes: Mapping[str, float]) -> tuple[str | None, float]:
    """The answer with the highest S and its confidence ``S(answer) / sum_b S(b)``.

    Ties break by higher V, then by first seen in ``scores``. With all S zero the confidence is
    ``1 / len(scores)``; with no candidate the result is ``(None, 0.0)``.
    """
    if not scores:
        return None, 0.0
    _check_non_negative(scores, "scores")
    # max() keeps the first of equal keys, so the order of ``scores`` settles the last tie.
    answer = max(scores, key=lambda a: (scores[a], votes.get(a, 0.0)))
    total = sum(scores.values())
    return answer, scores[answer] / total if total > 0.0 else 1.0 / len(scores)


def vote_shares(votes: Mapping[str, float]) -> dict[str, float]:
    """Vote shares ``V(a) / sum_b V(b)``; all 0.0 when every vote is 0."""
    _check_non_negative(votes, "votes")
    total = sum(votes.values())
    return {a: v / total if total > 0.0 else 0.0 for a, v in votes.items()}
