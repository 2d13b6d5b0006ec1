"""Reference chains and step judges: is a step of a reply right?

MMBoundary's knowledge-accuracy reward compares each step with a *reference chain*, the reasoning
a strong model wrote for the item (the paper's were written by GPT-4o and filtered). Here:

- on the organism (benchmark ``synthetic``) the reference chain is the reply the generator writes
  for the item's question (:func:`catts_graph.organism.steps.reference_steps`), and a step is right
  when it matches one of its steps exactly, each reference step matched once
  (:class:`ExactJudge`: the organism's step ground truth, :func:`~catts_graph.organism.steps.label_steps`);
- elsewhere the chain is the item's ``metadata["reference"]`` (a text, cut into steps like a
  reply, or a list of steps), and a step's score is its best cosine similarity with a reference step
  under a sentence encoder, floored at 0; it counts as right at ``threshold`` or above
  (:class:`SimilarityJudge`; our choice, the paper's matching was not released).

Either way a judge returns a :class:`StepTruth` per step: ``score`` in [0, 1] (what the
knowledge-accuracy reward averages) and ``correct`` (what the calibration reward and the step ECE
compare a confidence with). Steps are compared without their statements
(:func:`~catts_graph.organism.steps.normalise_step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from catts_graph.confidence import CLAUSE_CUT, split_steps
from catts_graph.organism.steps import label_steps, normalise_step, reference_steps
from catts_graph.statements import SentenceEncoder
from catts_graph.task import Item

__all__ = [
    "JUDGES",
    "ExactJudge",
    "SimilarityJudge",
    "StepJudge",
    "StepTruth",
    "make_judge",
    "reference_chain",
]

JUDGES: tuple[str, ...] = ("exact", "similarity")

DEFAULT_THRESHOLD = 0.8
"""Cosine similarity (all-MiniLM-L6-v2) at which a step counts as matching a reference step."""


@dataclass(frozen=True)
class StepTruth:
    """How right one step is: ``score`` in [0, 1] and ``correct``."""

    score: float
    correct: bool


class StepJudge(Protocol):
    name: str

    def judge(self, steps: Sequence[str], reference: Sequence[str]) -> list[StepTruth]:
        """One :class:`StepTruth` per step of a reply, against the reference chain's steps."""
        ...


class ExactJudge:
    """A step is right (score 1) when it matches a not yet matched reference step, ignoring case,
    spacing, closing punctuation and its statement; else wrong (score 0)."""

    name = "exact"

    def judge(self, steps: Sequence[str], reference: Sequence[str]) -> list[StepTruth]:
        return [StepTruth(float(label), label) for label in label_steps(steps, reference)]


class SimilarityJudge:
    """A step's score is ``max(0, max_j cos(step, reference_j))`` under ``encoder`` (steps without
    their statements); it is right when the score reaches ``threshold``."""

    name = "similarity"

    def __init__(self, encoder: SentenceEncoder, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold={threshold!r}: expected a cosine similarity in (0, 1]")
        self.encoder = encoder
        self.threshold = float(threshold)

    def judge(self, steps: Sequence[str], reference: Sequence[str]) -> list[StepTruth]:
        if not steps:
            return []
        if not reference:
            return [StepTruth(0.0, False) for _ in steps]
        contents = [normalise_step(step) for step in steps]
        embeddings = np.asarray(self.encoder.encode([*contents, *reference]), dtype=np.float64)
        similarity = embeddings[: len(contents)] @ embeddings[len(contents) :].T
        best = np.clip(similarity.max(axis=1), 0.0, 1.0)
        return [StepTruth(float(s), bool(s >= self.threshold)) for s in best]


def make_judge(
    kind: str, encoder: SentenceEncoder | None = None, threshold: float = DEFAULT_THRESHOLD
) -> Any:
    """The judge called ``kind`` (:data:`JUDGES`); ``similarity`` needs ``encoder``."""
    if kind == "exact":
        return ExactJudge()
    if kind == "similarity":
        if encoder is None:
            raise ValueError("judge.kind='similarity' needs a sentence encoder: set encoder: minilm")
        return SimilarityJudge(encoder, threshold)
    raise ValueError(f"judge.kind={kind!r}: expected one of {JUDGES}")


def reference_chain(item: Item) -> list[str] | None:
    """The normalised steps of ``item``'s reference chain, or None when it has none (see the
    module docstring)."""
    if item.benchmark == "synthetic":
        from catts_graph.eval.synthetic import make_question

        split, _, index = item.id.rpartition("-")
        if not split or not index.isdigit():
            raise ValueError(f"item {item.id!r}: a synthetic item id is '<split>-<index>'")
        seed = int(item.metadata.get("seed", 0))
        return reference_steps(make_question(split, int(index), seed=seed))
    given = item.metadata.get("reference")
    if given is None:
        return None
    if isinstance(given, str):
        return [normalise_step(given[s:e]) for s, e in split_steps(given, CLAUSE_CUT)]
    if isinstance(given, Sequence) and all(isinstance(step, str) for step in given):
        return [normalise_step(step) for step in given]
    raise ValueError(
        f"item {item.id!r}: metadata.reference must be a text or a list of steps, got {type(given).__name__}"
    )
