"""The Voter: an expert gives a probability to each distinct candidate answer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from PIL import Image
from pydantic import BaseModel, Field

from catts_graph.experts.base import (
    DEFAULT_MAX_REPLY_CHARS,
    ExpertRequest,
    ExpertResult,
    ExpertRole,
    MalformedAnswer,
    finite_number,
    parse_json_object,
    truncate_middle,
    user_message,
)
from catts_graph.prompts import delimit, format_options, render_prompt


class VoterAnswer(BaseModel):
    """The Voter's answer: how likely each candidate is to be the correct answer."""

    probabilities: list[float] = Field(
        description="one probability per candidate, in the order the candidates are listed"
    )


def parse_probabilities(text: str, count: int) -> list[float]:
    """``{"probabilities": [...]}`` -> ``count`` probabilities renormalised to sum 1.

    Rejected: a wrong length, a value that is not a finite number (:func:`finite_number`: booleans,
    NaN, infinities and integers too large for a float included), negative, or all zero. The values
    are divided by the largest before they are summed, so no sum overflows (``[1e308, 1e308]``).
    """
    answer = parse_json_object(text)
    values = answer.get("probabilities")
    if not isinstance(values, list):
        raise MalformedAnswer(f'"probabilities" must be a list of numbers, got {values!r}')
    if len(values) != count:
        raise MalformedAnswer(f"expected {count} probabilities (one per candidate), got {len(values)}")
    numbers = [finite_number(value, f"probability {index}") for index, value in enumerate(values, start=1)]
    for index, number in enumerate(numbers, start=1):
        if number < 0:
            raise MalformedAnswer(f"probability {index} is {number!r}, negative")
    top = max(numbers)
    if top <= 0:
        raise MalformedAnswer("all probabilities are zero")
    scaled = [number / top for number in numbers]
    total = math.fsum(scaled)
    return [number / total for number in scaled]


class Voter(ExpertRole):
    """Judges the distinct candidates; ``value`` is one probability per candidate, summing to 1."""

    role = "voter"

    def __init__(
        self,
        model: BaseChatModel,
        *,
        retries: int = 2,
        backoff: float = 0.5,
        timeout: float | None = 120.0,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
        evidence_chars: int = 3000,
    ) -> None:
        super().__init__(
            model, retries=retries, backoff=backoff, timeout=timeout, max_reply_chars=max_reply_chars
        )
        if evidence_chars < 100:
            raise ValueError(f"evidence_chars must be >= 100, got {evidence_chars!r}")
        self.evidence_chars = evidence_chars

    def request(
        self,
        *,
        question: str,
        options: Sequence[str] | None,
        images: Sequence[Image.Image],
        candidates: Sequence[str],
        evidence: Sequence[str] | None = None,
    ) -> ExpertRequest[list[float]]:
        """Ask for ``{"probabilities": [...]}`` over ``candidates`` (listed 1..n).

        ``evidence``, when given, is one supporting response per candidate, shown in the middle-cut
        to ``evidence_chars`` characters.
        """
        if isinstance(candidates, str) or not candidates:
            raise ValueError(f"candidates must be a non-empty list of answers, got {candidates!r}")
        if evidence is not None and len(evidence) != len(candidates):
            raise ValueError(
                f"evidence must give one response per candidate: {len(evidence)} responses for "
                f"{len(candidates)} candidates"
            )
        listing = "\n".join(
            f"{index}. {' '.join(str(candidate).split())}"
            for index, candidate in enumerate(candidates, start=1)
        )
        if evidence is None:
            shown = "(none)"
        else:
            shown = "\n\n".join(
                delimit(
                    f"response_{index}",
                    truncate_middle(text, self.evidence_chars) if text else "(none)",
                )
                for index, text in enumerate(evidence, start=1)
            )
        prompt = render_prompt(
            "voter",
            question=question,
            options=format_options(options),
            candidates=listing,
            evidence=shown,
            count=len(candidates),
        )
        count = len(candidates)
        return ExpertRequest(
            self, [user_message(prompt, images)], lambda text: parse_probabilities(text, count), VoterAnswer
        )

    def vote(self, **request: Any) -> ExpertResult[list[float]]:
        """:meth:`request` answered (:meth:`ask`); ``value`` sums to 1."""
        return self.ask(self.request(**request))
