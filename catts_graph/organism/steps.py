"""Step-level ground truth on the organism, and the critique that names a wrong step.

Every clause of an organism reply is a reasoning step whose truth the generator knows: a described
object exists or it does not, a focus entry names a matching object or it does not, the boxed answer
is right or wrong. A step is *correct* when it matches one of the steps of the reply the generator
would write (:func:`~catts_graph.organism.language.reply_text`), each reference step matched once
(multiset matching, in any order, ignoring case, spacing, closing punctuation and a confidence
statement). The expert organism criticises a reply by naming its first step that its own reading
lacks (:func:`first_wrong_step`, :func:`critique_text`); the applications above measure step
calibration against this truth (:mod:`catts_experiments.step_calibration`), train the reflection
on the critiques (:mod:`catts_experiments.reflection`) and label MMBoundary's steps with it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from catts_graph.confidence import CLAUSE_CUT, split_steps
from catts_graph.statements import split_statement

__all__ = [
    "NO_STEP",
    "critique_text",
    "first_wrong_step",
    "label_steps",
    "normalise_step",
    "reference_steps",
    "reply_steps",
]

NO_STEP = "none"
"""What the critique names when it finds no wrong step."""


def normalise_step(step: str) -> str:
    """A step's content for matching: without a trailing statement, closing punctuation and case."""
    content, _ = split_statement(step)
    return re.sub(r"\s+", " ", content.strip().rstrip(".;!?").strip()).lower()


def reference_steps(question: Any) -> list[str]:
    """The normalised steps of the reply the generator writes for ``question``."""
    from catts_graph.organism.language import reply_text

    text = reply_text(question)
    return [normalise_step(text[s:e]) for s, e in split_steps(text, CLAUSE_CUT)]


def label_steps(steps: Sequence[str], reference: Sequence[str]) -> list[bool]:
    """Whether each step matches a not yet matched reference step (in reply order)."""
    left = Counter(reference)
    labels = []
    for step in steps:
        key = normalise_step(step)
        labels.append(left[key] > 0)
        if left[key] > 0:
            left[key] -= 1
    return labels


def reply_steps(text: str) -> list[str]:
    """The normalised steps of a reply (clauses: lines, sentences and ``;``-separated objects)."""
    return [normalise_step(text[s:e]) for s, e in split_steps(text, CLAUSE_CUT)]


def first_wrong_step(response: str, reference: Sequence[str]) -> str | None:
    """The first step of ``response`` that matches no (not yet matched) step of ``reference``
    (normalised steps, :func:`label_steps`), or None."""
    steps = reply_steps(response)
    for step, right in zip(steps, label_steps(steps, reference), strict=True):
        if not right and step:
            return step
    return None


def critique_text(step: str | None) -> str:
    """The critique in the organisms' language: ``wrong: <step>.``, or ``wrong: none.``."""
    return f"wrong: {normalise_step(step) if step else NO_STEP}."
