"""Confidence estimators: pure functions of a sample's token statistics.

Response level (CA-TTS): NMLP, the mean negative log-probability of the chosen tokens.
DeepConf family: token confidence from the top-k log-probs per step (and the sampled token when it is
outside them), then sliding-window group, lowest-group, bottom-percent, tail and mean confidence. The
window and tail are in tokens; DeepConf's 2048 is for 10k-token traces, and a trace no longer than
the window is one group, which makes lowest-group, bottom-percent and mean the same number.
Entropy: the mean of the backend's full-vocabulary per-step entropies, or of the renormalised top-k.
Step level (MMBoundary): NMLP per reasoning sentence, and over any character span of the response.

Log-probabilities are natural logs under the model's raw distribution. Higher NMLP means *less*
confident; higher DeepConf confidence means *more* confident.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "StepConfidence",
    "bottom_percent_confidence",
    "confidence_from_nmlp",
    "group_confidence",
    "least_confident_step",
    "lowest_group_confidence",
    "mean_confidence",
    "mean_entropy",
    "mean_token_entropy",
    "nmlp",
    "span_nmlp",
    "CLAUSE_CUT",
    "split_steps",
    "step_confidences",
    "step_tokens",
    "tail_confidence",
    "token_confidence",
    "token_entropy",
]


def _finite_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of floats, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got a NaN or infinite value")
    return array


def _positive_int(value: int, name: str) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def nmlp(token_logprobs: Sequence[float]) -> float:
    """Normalised mean negative log-probability: ``NMLP = -(1/T) * sum_t l_t``.

    ``token_logprobs`` are the chosen tokens' log-probs l_1..l_T (EOS excluded).
    """
    return float(-_finite_array(token_logprobs, "token_logprobs").mean())


def confidence_from_nmlp(value: float) -> float:
    """Display / calibration confidence ``exp(-NMLP)``, the geometric-mean token probability.

    In (0, 1]; a slightly negative NMLP gives 1.0, since log-probs of near-certain tokens can round
    to just above zero.
    """
    if not math.isfinite(value):
        raise ValueError(f"value must be a finite NMLP, got {value}")
    return min(1.0, math.exp(-value))


def token_confidence(
    top_logprobs: Sequence[Sequence[float]],
    k: int = 20,
    chosen_logprobs: Sequence[float] | None = None,
) -> list[float]:
    """DeepConf token confidence ``C_t = -(1/|S_t|) * sum_{j in S_t} log p_t(j)`` for each step t.

    ``top_logprobs[t]`` holds step t's top log-probs in descending order; ``S_t`` is its first
    ``k`` entries (all of them when the step has fewer), plus the sampled token when
    ``chosen_logprobs`` is given and ``chosen_logprobs[t]`` lies below the last of them, i.e. the
    sampled token is outside the top-k. That is DeepConf's reference rule: vLLM lists the sampled
    token beside the top-k whenever it is not among them, and DeepConf averages every listed entry.
    """
    _positive_int(k, "k")
    if chosen_logprobs is not None and len(chosen_logprobs) != len(top_logprobs):
        raise ValueError(
            f"chosen_logprobs must hold one log-prob per step of top_logprobs, "
            f"got {len(chosen_logprobs)} and {len(top_logprobs)}"
        )
    confidences = []
    for t, step in enumerate(top_logprobs):
        if len(step) == 0:
            raise ValueError(f"top_logprobs[{t}] is empty; every step needs at least one log-prob")
        kept = _finite_array(step[:k], f"top_logprobs[{t}]")
        if chosen_logprobs is not None:
            chosen = float(chosen_logprobs[t])
            if not math.isfinite(chosen):
                raise ValueError(f"chosen_logprobs[{t}] must be finite, got {chosen}")
            if chosen < kept.min():
                kept = np.append(kept, chosen)
        confidences.append(float(-kept.mean()))
    return confidences


def group_confidence(token_conf: Sequence[float], window: int = 2048) -> list[float]:
    """Sliding-window means ``G_i = (1/w) * sum_{t=i}^{i+w-1} C_t`` with ``w = min(window, T)``.

    Returns ``T - w + 1`` values.
    """
    _positive_int(window, "window")
    conf = _finite_array(token_conf, "token_conf")
    w = min(window, conf.size)
    # Prefix sums make every window O(1), so long traces stay O(T).
    prefix = np.concatenate(([0.0], np.cumsum(conf)))
    return ((prefix[w:] - prefix[:-w]) / w).tolist()


def lowest_group_confidence(token_conf: Sequence[float], window: int = 2048) -> float:
    """DeepConf lowest-group confidence ``min_i G_i``."""
    return min(group_confidence(token_conf, window))


def bottom_percent_confidence(
    token_conf: Sequence[float], window: int = 2048, percent: float = 10.0
) -> float:
    """DeepConf bottom-percent confidence: mean of the lowest ``m`` group confidences.

    ``m = max(1, floor(n_groups * percent / 100))``.
    """
    if not 0.0 < percent <= 100.0:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    groups = np.sort(group_confidence(token_conf, window))
    count = max(1, math.floor(groups.size * percent / 100.0))
    return float(groups[:count].mean())


def tail_confidence(token_conf: Sequence[float], tail: int = 2048) -> float:
    """DeepConf tail confidence: mean of the last ``min(tail, T)`` token confidences."""
    _positive_int(tail, "tail")
    return float(_finite_array(token_conf, "token_conf")[-tail:].mean())


def mean_confidence(token_conf: Sequence[float]) -> float:
    """DeepConf mean confidence ``(1/T) * sum_t C_t``."""
    return float(_finite_array(token_conf, "token_conf").mean())


def token_entropy(step_logprobs: Sequence[float]) -> float:
    """Entropy ``H = -sum_j p_j log p_j`` of one step, with ``p = softmax(step_logprobs)``.

    The log-probs are renormalised first, so a full-vocabulary input gives the model's entropy and
    a top-k input gives the entropy of the *truncated* distribution (a lower bound in practice).
    ``-inf`` entries are zero-probability tokens and contribute nothing.
    """
    values = np.asarray(step_logprobs, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("step_logprobs must be a non-empty sequence of floats")
    if np.any(np.isnan(values) | (values == np.inf)):
        raise ValueError("step_logprobs must not contain NaN or +inf")
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("step_logprobs must contain at least one finite log-prob")
    # Shift by the max before exponentiating so tiny log-probs do not underflow the normaliser.
    shifted = values - values.max()
    log_p = shifted - math.log(np.exp(shifted).sum())
    return float(-(np.exp(log_p) * log_p).sum())


def mean_token_entropy(per_step_logprobs: Sequence[Sequence[float]]) -> float:
    """Mean entropy over steps ``(1/T) * sum_t H_t`` (see :func:`token_entropy`).

    Given top-k log-probs, this is the entropy of the renormalised top-k, which can be far below
    the model's (issue 12 measured 2.4 nats against 6.9 at k = 20): a fallback for backends that
    report no full-vocabulary entropy (:func:`mean_entropy`).
    """
    if len(per_step_logprobs) == 0:
        raise ValueError("per_step_logprobs must hold at least one step")
    return float(np.mean([token_entropy(step) for step in per_step_logprobs]))


def mean_entropy(entropies: Sequence[float]) -> float:
    """Mean of per-step full-vocabulary entropies ``(1/T) * sum_t H_t``, with
    ``H_t = -sum_{v in V} p_t(v) log p_t(v)`` computed by the backend as it decodes."""
    values = _finite_array(entropies, "entropies")
    if np.any(values < 0.0):
        raise ValueError("entropies must be >= 0, got a negative value")
    return float(values.mean())


@dataclass(frozen=True)
class StepConfidence:
    """NMLP of one reasoning step; ``start``/``end`` are character offsets in the response."""

    index: int
    text: str
    start: int
    end: int
    n_tokens: int
    nmlp: float


# A cut follows each newline and each sentence end (. ! ? then whitespace); "3.5" has no
# whitespace after its point, so numbers are never cut.
_STEP_CUT = re.compile(r"\n|[.!?](?=\s)")
# "1." or "12." alone is a list marker, not a sentence: cutting there would make it its own step.
_LIST_MARKER = re.compile(r"\d+\.")


# Clauses as well: also after ``;`` followed by whitespace (the organism's one object per clause).
CLAUSE_CUT = re.compile(r"\n|[.!?;](?=\s)")


def split_steps(text: str, cut: re.Pattern[str] = _STEP_CUT) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the reasoning steps of ``text``.

    Steps are cut at newlines and after ``.``/``!``/``?`` followed by whitespace (but not after a
    leading list marker such as ``1.``); ``cut=CLAUSE_CUT`` also cuts after ``;``. Each span is
    stripped of surrounding whitespace and whitespace-only spans are dropped.
    """
    spans = []
    start = 0
    for match in cut.finditer(text):
        if _LIST_MARKER.fullmatch(text[start : match.end()].strip()):
            continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    stripped = []
    for begin, end in spans:
        segment = text[begin:end]
        content = segment.strip()
        if content:
            offset = begin + len(segment) - len(segment.lstrip())
            stripped.append((offset, offset + len(content)))
    return stripped


def _token_offsets(tokens: Sequence[str], token_logprobs: Sequence[float]) -> list[int]:
    if len(tokens) != len(token_logprobs):
        raise ValueError(
            f"tokens and token_logprobs must have the same length, "
            f"got {len(tokens)} and {len(token_logprobs)}"
        )
    offsets = [0]
    for token in tokens:
        offsets.append(offsets[-1] + len(token))
    return offsets


def step_confidences(tokens: Sequence[str], token_logprobs: Sequence[float]) -> list[StepConfidence]:
    """NMLP of each reasoning step of the response ``"".join(tokens)`` (see :func:`split_steps`).

    A token belongs to the step holding its first non-whitespace character; a whitespace-only token
    belongs to the preceding token's step (the next one's if none precedes). ``index`` is the step's
    position in ``split_steps(text)``; steps that receive no token are dropped.
    """
    _token_offsets(tokens, token_logprobs)
    text = "".join(tokens)
    spans = split_steps(text)
    return [
        StepConfidence(
            index=step,
            text=text[spans[step][0] : spans[step][1]],
            start=spans[step][0],
            end=spans[step][1],
            n_tokens=len(members),
            nmlp=nmlp([token_logprobs[i] for i in members]),
        )
        for step, members in step_tokens(tokens, spans).items()
    ]


def step_tokens(tokens: Sequence[str], spans: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """The indices of the tokens of each step (``spans`` from :func:`split_steps` of ``"".join(tokens)``).

    A token belongs to the step holding its first non-whitespace character; a whitespace-only token
    belongs to the preceding token's step (the next one's if none precedes). Steps that receive no
    token are left out; the keys are in step order.
    """
    offsets = [0]
    for token in tokens:
        offsets.append(offsets[-1] + len(token))
    starts = [start for start, _ in spans]
    members: dict[int, list[int]] = {}
    leading: list[int] = []  # whitespace tokens seen before any step; they join the first one
    current: int | None = None
    for i, token in enumerate(tokens):
        content = token.lstrip()
        first_char = offsets[i] + len(token) - len(content)
        step = bisect.bisect_right(starts, first_char) - 1 if content else None
        current = step if step is not None and step >= 0 else current
        if current is None:
            leading.append(i)
            continue
        if current not in members:
            members[current], leading = leading, []
        members[current].append(i)
    return dict(sorted(members.items()))


def least_confident_step(tokens: Sequence[str], token_logprobs: Sequence[float]) -> StepConfidence | None:
    """The step with the highest NMLP (the earliest on ties), or None when there is no step."""
    steps = step_confidences(tokens, token_logprobs)
    if not steps:
        return None
    # max() keeps the first of equal keys, which gives the earliest step on ties.
    return max(steps, key=lambda step: step.nmlp)


def span_nmlp(tokens: Sequence[str], token_logprobs: Sequence[float], start: int, end: int) -> float:
    """NMLP over the tokens overlapping the character span ``[start, end)`` of ``"".join(tokens)``.

    Used for answer-only confidence, with the span from ``answers.answer_span``.
    """
    offsets = _token_offsets(tokens, token_logprobs)
    selected = [
        logprob
        for i, logprob in enumerate(token_logprobs)
        if min(offsets[i + 1], end) > max(offsets[i], start)
    ]
    if not selected:
        raise ValueError(f"no token overlaps the span [{start}, {end})")
    return nmlp(selected)
