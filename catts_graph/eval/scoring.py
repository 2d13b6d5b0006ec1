"""Scoring benchmark answers: rule first, an optional LLM judge second, never a random fallback.

:func:`judge_answer` follows VLMEvalKit's order (rule-based extraction, then a judge model), made
deterministic:

1. **Rule.** The given ``answer`` (already extracted, e.g. the graph's output) is tried first, then
   :func:`catts_graph.answers.extract_answer` on the raw ``response``. A choice item needs an option
   letter: a letter, ``(B)``, ``Option B``, ``B. text`` or an option's TEXT all map to their letter;
   anything else is no answer.
2. **Judge.** Only when the rule found no answer and a ``judge`` chat model is given: the judge
   (temperature 0 where the model has that field; prompt ``prompts/judge.txt``, the response
   delimited as data) extracts the answer, which is then compared by the same rule.
3. Otherwise, or when the judge fails or reports no answer: incorrect, method ``"none"``.

Comparison (:func:`is_correct`): choice items compare letters; a float item with a ``precision``
(MathVista) compares both numbers rounded to that many decimals, ``round(pred, p) == round(gold, p)``;
everything else (integers, MathVision and MMMU values, text) uses
:func:`catts_graph.answers.is_equivalent` (exact after normalisation, else ``math_verify``), against
the gold and any ``metadata["accepted_answers"]``. Never substring matching.

:func:`benchmark_metrics` reports accuracy in percent under VLMEvalKit's names: ``"Overall"`` plus
one key per group (MathVista: task and skill; MathVision: subject; MMStar: category and
l2-category; MMMU: discipline and subject).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from catts_graph.answers import extract_answer, option_letter
from catts_graph.eval.datasets import BENCHMARKS
from catts_graph.experts.base import (
    ExpertResult,
    MalformedAnswer,
    call_expert,
    parse_json_object,
    user_message,
)
from catts_graph.experts.voter import truncate_middle
from catts_graph.prompts import format_options, render_prompt
from catts_graph.task import Item, is_correct

__all__ = [
    "Judgement",
    "benchmark_metrics",
    "is_correct",
    "judge_answer",
    "metric_groups",
    "parse_judge_reply",
]

JUDGE_RESPONSE_CHARS = 6000
"""The judge sees at most this many characters of a response (its start and, mostly, its end)."""


@dataclass(frozen=True)
class Judgement:
    """How one response was scored.

    ``answer`` is the answer as judged (the option letter for choice items; None when none was
    found), ``method`` says who found it: ``"rule"``, ``"judge"`` or ``"none"`` (no answer: always
    incorrect). ``detail`` explains a ``"none"`` or a judge answer that fits no option.
    """

    answer: str | None
    correct: bool
    method: str
    detail: str = ""


def _usable(item: Item, candidate: str | None) -> str | None:
    """The candidate in the item's terms (a letter for choice items), or None if it is not one."""
    if candidate is None or not candidate.strip():
        return None
    if item.answer_type == "choice":
        return option_letter(candidate, item.options or [])
    return candidate.strip()


def _rule_answer(item: Item, answer: str | None, response: str | None) -> str | None:
    found = _usable(item, answer)
    if found is None and response:
        found = _usable(item, extract_answer(response, item.options))
    return found


def _answer_format(item: Item) -> str:
    if item.answer_type == "choice":
        last = chr(ord("A") + len(item.options or []) - 1)
        return f"the letter of one option, A to {last}"
    if item.answer_type == "integer":
        return "an integer"
    if item.answer_type == "float":
        if item.precision is not None:
            return f"a decimal number (the question asks for {item.precision} decimal places)"
        return "a number"
    return "a short value, expression or phrase"


def _judge_messages(item: Item, text: str) -> list[BaseMessage]:
    prompt = render_prompt(
        "judge",
        question=item.question,
        options=format_options(item.options),
        response=truncate_middle(text, JUDGE_RESPONSE_CHARS),
        answer_format=_answer_format(item),
    )
    return [user_message(prompt)]


def parse_judge_reply(text: str) -> str | None:
    """``{"answer": "B"}`` -> ``"B"``; ``{"answer": null}`` -> None (the response gives no answer).

    A number is read as its text; a missing key, a boolean or any other type is malformed.
    """
    reply = parse_json_object(text)
    if "answer" not in reply:
        raise MalformedAnswer('the JSON object has no "answer" key')
    value = reply["answer"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MalformedAnswer(f'"answer" must be a string or null, got {value!r}')
    text_value = str(value).strip()
    return text_value or None


def _deterministic(judge: BaseChatModel | None) -> BaseChatModel:
    """``judge`` at temperature 0 when it has a ``temperature`` field (a copy; the caller's is kept)."""
    if not isinstance(judge, BaseChatModel):
        raise TypeError(f"judge must be a LangChain BaseChatModel, got {type(judge).__name__}")
    if "temperature" in type(judge).model_fields:
        return judge.model_copy(update={"temperature": 0.0})
    return judge


def _check_response(answer: str | None, response: str | None) -> None:
    for name, value in (("answer", answer), ("response", response)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")


def _from_judge(item: Item, result: ExpertResult[str | None]) -> Judgement:
    if not result.ok:
        return Judgement(
            None, False, "none", f"judge failed after {result.attempts} attempts: " + "; ".join(result.errors)
        )
    if result.value is None:
        return Judgement(None, False, "none", "the judge found no final answer in the response")
    found = _usable(item, result.value)
    if found is None:
        return Judgement(
            result.value, False, "judge", f"the judge's answer {result.value!r} is not an option"
        )
    return Judgement(found, is_correct(item, found), "judge")


def _rule_or_text(
    item: Item, answer: str | None, response: str | None, judge: BaseChatModel | None
) -> Judgement | str:
    """The final judgement when no judge call is needed, else the text to give the judge."""
    _check_response(answer, response)
    if judge is not None:
        _deterministic(judge)  # a wrong judge type fails here, not only when a response needs it
    found = _rule_answer(item, answer, response)
    if found is not None:
        return Judgement(found, is_correct(item, found), "rule")
    text = response if response and response.strip() else answer
    if not text or not text.strip():
        return Judgement(None, False, "none", "no response to score")
    if judge is None:
        return Judgement(None, False, "none", "the rule found no answer and no judge is set")
    return text


def judge_answer(
    item: Item,
    answer: str | None,
    response: str | None = None,
    *,
    judge: BaseChatModel | None = None,
    retries: int = 2,
    backoff: float = 0.5,
    timeout: float | None = 60.0,
) -> Judgement:
    """Score one answer to ``item``: rule first, then (only if the rule found none) the ``judge``.

    ``answer`` is the extracted answer (may be None), ``response`` the full text it came from. The
    judge call retries ``retries`` times with exponential ``backoff`` and a per-attempt ``timeout``
    (:func:`catts_graph.experts.base.call_expert`); if it still fails the item is incorrect with
    method ``"none"``. Never raises for model errors.
    """
    outcome = _rule_or_text(item, answer, response, judge)
    if isinstance(outcome, Judgement):
        return outcome
    result = call_expert(
        _deterministic(judge),
        _judge_messages(item, outcome),
        parse_judge_reply,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
    )
    return _from_judge(item, result)


def _group_levels(item: Item) -> tuple[list[str], list[str]]:
    meta = item.metadata
    levels: tuple[list[Any], list[Any]]
    if item.benchmark == "mathvista":
        levels = [item.category], list(meta.get("skills", []))
    elif item.benchmark == "mathvision":
        levels = [item.category], []
    elif item.benchmark == "mmstar":
        levels = [item.category], [meta.get("l2_category")]
    else:
        levels = [meta.get("discipline")], [item.category]
    return [str(k) for k in levels[0] if k], [str(k) for k in levels[1] if k]


def metric_groups(item: Item) -> list[str]:
    """The metric keys (besides "Overall") an item counts towards, as VLMEvalKit groups them.

    MathVista: its task, then each skill; MathVision: its subject; MMStar: its category, then its
    l2-category; MMMU: its discipline, then its subject. Missing values are skipped.
    """
    first, second = _group_levels(item)
    return list(dict.fromkeys([*first, *second]))


def benchmark_metrics(benchmark: str, judged: Sequence[tuple[Item, bool]]) -> dict[str, float]:
    """Accuracy in percent (0-100): ``"Overall"``, then one key per group of :func:`metric_groups`.

    ``value(key) = 100 * (correct items in the group) / (items in the group)``. After "Overall"
    come the first-level groups (task, subject, category, discipline), sorted, then the
    second-level groups (skill, l2-category, subject), sorted. A name used at both levels is one
    group.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark!r} is not one of {BENCHMARKS}")
    if not judged:
        raise ValueError("judged is empty; at least one (item, correct) pair is needed")
    totals: dict[str, list[int]] = {"Overall": [0, 0]}
    first_level: set[str] = set()
    for index, pair in enumerate(judged):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], Item):
            raise ValueError(f"judged[{index}] must be an (Item, bool) pair, got {pair!r}")
        item, correct = pair
        if item.benchmark != benchmark:
            raise ValueError(
                f"judged[{index}]: item {item.id!r} is from {item.benchmark!r}, not {benchmark!r}"
            )
        first, _ = _group_levels(item)
        first_level.update(first)
        for key in ["Overall", *metric_groups(item)]:
            counts = totals.setdefault(key, [0, 0])
            counts[0] += bool(correct)
            counts[1] += 1
    order = ["Overall", *sorted(first_level - {"Overall"})]
    order += sorted(set(totals) - set(order))
    return {key: 100.0 * totals[key][0] / totals[key][1] for key in order}
