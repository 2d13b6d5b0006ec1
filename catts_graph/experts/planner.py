"""The Planner: an expert chooses which modules to run, and in what order, from a confidence summary."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

MODULE_DESCRIPTIONS: dict[str, str] = {
    "self_consistency": "weigh the samples' answers by confidence, then an expert Voter judges how "
    "likely each distinct candidate is",
    "self_reflection": "an expert Critic checks the least confident sample, starting at its least "
    "confident step, and the base model answers again with the critique",
    "visual_self_check": "score the top candidates under the original and a noised image: an answer "
    "that really rests on the image loses support when the image is noised",
    "step_repair": "keep the weakest samples' steps before their least confident step and have the "
    "base model write the rest again; the repairs join the vote (no expert call)",
    "base_model": "draw another wave of samples from the base model",
    "aggregate": "stop and choose the final answer now",
}


class PlannerAnswer(BaseModel):
    """The Planner's answer: the modules to run, in order, and why."""

    modules: list[str] = Field(description="module names from the list offered, in the order to run them")
    reason: str = Field(description="one sentence on why")


@dataclass(frozen=True)
class Plan:
    """The modules to run, in order, and the Planner's stated reason."""

    modules: list[str]
    reason: str


def _key(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def _rounded(value: Any) -> Any:
    """The summary with floats rounded to 4 decimals and numpy scalars made plain."""
    if isinstance(value, Mapping):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 4)
    return value


def render_summary(summary: Mapping[str, Any]) -> str:
    """The confidence summary as indented JSON."""
    return json.dumps(_rounded(summary), indent=2, ensure_ascii=False, default=str)


def parse_plan(text: str, allowed: Sequence[str]) -> Plan:
    """``{"modules": [...], "reason": "..."}`` -> :class:`Plan`.

    Valid modules are a non-empty list of distinct names from ``allowed``; names are matched
    ignoring case, spaces and hyphens, and returned as spelled in ``allowed``.
    """
    answer = parse_json_object(text)
    modules = answer.get("modules")
    if not isinstance(modules, list) or not modules:
        raise MalformedAnswer(f'"modules" must be a non-empty list of module names, got {modules!r}')
    spelled = {_key(name): name for name in allowed}
    chosen: list[str] = []
    for item in modules:
        if not isinstance(item, str):
            raise MalformedAnswer(f"module {item!r} is not a name")
        name = spelled.get(_key(item))
        if name is None:
            raise MalformedAnswer(f"unknown module {item!r}; allowed: {list(allowed)}")
        if name in chosen:
            raise MalformedAnswer(f"module {name!r} is listed twice")
        chosen.append(name)
    reason = answer.get("reason", "")
    return Plan(modules=chosen, reason=reason.strip() if isinstance(reason, str) else str(reason))


class Planner(ExpertRole):
    """Chooses modules from a confidence summary; the graph falls back when ``ok`` is False."""

    role = "planner"

    def request(
        self,
        *,
        question: str,
        options: Sequence[str] | None,
        images: Sequence[Image.Image],
        summary: Mapping[str, Any],
        allowed: Sequence[str],
    ) -> ExpertRequest[Plan]:
        """Ask for ``{"modules": [...], "reason": "..."}``; the value is a :class:`Plan`."""
        if isinstance(allowed, str) or not allowed:
            raise ValueError(f"allowed must be a non-empty list of module names, got {allowed!r}")
        allowed = list(allowed)
        menu = "\n".join(
            f"- {name}: {MODULE_DESCRIPTIONS[name]}" if name in MODULE_DESCRIPTIONS else f"- {name}"
            for name in allowed
        )
        prompt = render_prompt(
            "planner",
            question=question,
            options=format_options(options),
            summary=render_summary(summary),
            allowed=menu,
        )
        return ExpertRequest(
            self, [user_message(prompt, images)], lambda text: parse_plan(text, allowed), PlannerAnswer
        )

    def plan(self, **request: Any) -> ExpertResult[Plan]:
        """:meth:`request` answered (:meth:`ask`)."""
        return self.ask(self.request(**request))
