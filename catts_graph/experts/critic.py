"""The Critic: an expert checks a low-confidence response, starting at its weakest step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field

from catts_graph.experts.base import (
    ExpertRequest,
    ExpertResult,
    ExpertRole,
    MalformedAnswer,
    parse_json_object,
    user_message,
)
from catts_graph.prompts import format_options, render_prompt

VERDICTS = ("correct", "incorrect", "unsure")


class CriticAnswer(BaseModel):
    """The Critic's answer: what is wrong with the response, if anything, and a verdict."""

    critique: str = Field(description="the critique, starting at the step singled out")
    verdict: Literal["correct", "incorrect", "unsure"] = Field(description="the response's final answer is")


def parse_critique(text: str) -> str:
    """``{"critique": "...", "verdict": ...}`` -> the critique with a ``Verdict: ...`` line appended.

    An empty or missing critique is rejected; so is a verdict outside :data:`VERDICTS` (matched
    ignoring case). A missing verdict reads as ``unsure``.
    """
    answer = parse_json_object(text)
    critique = answer.get("critique")
    if not isinstance(critique, str) or not critique.strip():
        raise MalformedAnswer(f'"critique" must be a non-empty string, got {critique!r}')
    verdict = answer.get("verdict", "unsure")
    if not isinstance(verdict, str) or verdict.strip().lower() not in VERDICTS:
        raise MalformedAnswer(f'"verdict" must be one of {list(VERDICTS)}, got {verdict!r}')
    return f"{critique.strip()}\nVerdict: {verdict.strip().lower()}"


def critique_verdict(critique: str) -> str:
    """The verdict of a critique :func:`parse_critique` wrote (its last line, ``Verdict: ...``);
    ``unsure`` when the text ends in no verdict line of :data:`VERDICTS`.

    >>> critique_verdict("Step 1 misreads the colour.\\nVerdict: incorrect")
    'incorrect'
    """
    last = critique.rstrip().rpartition("\n")[2].strip()
    prefix, _, verdict = last.partition(":")
    verdict = verdict.strip().lower()
    return verdict if prefix.strip().lower() == "verdict" and verdict in VERDICTS else "unsure"


class Critic(ExpertRole):
    """Critiques one response; ``value`` is the critique text ending in a ``Verdict:`` line."""

    role = "critic"

    def request(
        self,
        *,
        question: str,
        options: Sequence[str] | None,
        images: Sequence[Image.Image],
        response: str,
        step: str | None = None,
        step_note: str | None = None,
    ) -> ExpertRequest[str]:
        """Ask for ``{"critique": ..., "verdict": ...}`` about ``response``, pointed at ``step``;
        ``step_note`` says which step it is and on what numbers it was chosen."""
        if not response or not response.strip():
            raise ValueError("response: got an empty response to critique")
        singled = bool(step and step.strip())
        prompt = render_prompt(
            "critic",
            question=question,
            options=format_options(options),
            response=response,
            step=step.strip() if step and singled else "(no step singled out: check the whole response)",
            step_note=(step_note or "The step was singled out as the least confident one.")
            if singled
            else "No step was singled out.",
        )
        return ExpertRequest(self, [user_message(prompt, images)], parse_critique, CriticAnswer)

    def critique(self, **request: Any) -> ExpertResult[str]:
        """:meth:`request` answered (:meth:`ask`)."""
        return self.ask(self.request(**request))
