"""The graph's state schemas: what a caller passes in, what comes out, and what flows between nodes.

Everything that reaches a checkpointer is plain JSON-like data: images are kept as string references
(path, URL or data URI, see :mod:`catts_graph.images`), samples as dicts of text and numbers (the
token log-probs are reduced to confidence statistics when they are sampled and never stored).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from catts_graph.task import SampleRecord


def merge_usage(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer of ``usage``: counters add up, so parallel nodes can each report their own cost."""
    merged = dict(left or {})
    for key, value in (right or {}).items():
        merged[key] = merged.get(key, 0) + value
    return merged


class InputState(TypedDict, total=False):
    """What a caller passes to ``invoke``.

    ``image`` (or ``images`` for several, as MMMU needs) is a local path, an http(s) URL (fetched only
    when ``allow_url_fetch`` is on), a ``data:`` URI, raw bytes, or a PIL image (kept as a PNG data
    URI as it enters the graph, so that a checkpointer can store it: see
    :class:`catts_graph.graph.StorableInput`).
    """

    image: Any
    images: list[Any]
    question: str
    options: list[str] | None


class OutputState(TypedDict, total=False):
    """What the graph returns."""

    answer: str | None
    """The chosen answer (an option letter for multiple choice), or None if no sample gave one."""
    confidence: float
    """S(answer) / sum_b S(b), in [0, 1]."""
    scores: dict[str, float]
    """Final score S per candidate answer."""
    samples: Annotated[list[SampleRecord], operator.add]
    """Every response the base model wrote: text, answer, nmlp, confidence, tokens, image, source,
    and its reasoning steps (:class:`~catts_graph.task.SampleRecord`)."""
    trace: Annotated[list[dict[str, Any]], operator.add]
    """One entry per decision: module, decision, reason, inputs, duration_s, expert_calls."""
    usage: Annotated[dict[str, Any], merge_usage]
    """Cost counters: generated tokens, base-model and expert calls, expert tokens, seconds."""


class CATTSState(InputState, OutputState, total=False):
    """The full state the nodes share."""

    image_refs: list[str]
    prompt: str
    waves: int
    votes: dict[str, float]
    tally: dict[str, Any]
    """The weighted vote over the samples (:func:`catts_graph.scoring.stored_tally`), counted by
    ``base_model`` and ``step_repair`` when they add samples and read by every later node instead
    of counted again."""
    voter_probs: dict[str, float] | None
    critique: dict[str, Any] | None
    """The Critic's critique: ``text``, the criticised ``sample``'s index, the ``step`` it was
    pointed at and its ``verdict`` (``correct``, ``incorrect`` or ``unsure``)."""
    reflected: str | None
    self_check_winner: str | None
    done: Annotated[list[str], operator.add]
    pending: list[str]
    route: list[str]
    plan_source: str | None
