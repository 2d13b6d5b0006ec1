"""A reply with confidence statements, read back step by step: what each step says, the level its
statement expresses, and the internal signals of its own tokens.

The reply is cut into steps as the organism's step truth cuts it (newlines, and ``.``/``!``/``?``/
``;`` before white space: :data:`~catts_graph.confidence.CLAUSE_CUT`). A step's statement is the
text after its last comma (:func:`~catts_graph.statements.split_statement`), read back to a level
by a :class:`~catts_graph.statements.StatementReader` (exact pool match, then the sentence encoder
with a margin); a phrase that does not read as a level is *not* a statement, and the step is all
content. A step holding the final ``\\boxed{...}`` answer is the *answer step*: no statement is
written after it (the answer stays the reply's last words, where the answer extractor and CDRL's
format rule read it), and it is left out of the statement rewards.

The internal confidence of a step comes from its *content* tokens only, with the statement's tokens
(its comma included) left out, so that it measures the same thing as at data time, when the reply
had no statements (:func:`content_tokens`, :func:`content_signals`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from catts_graph.confidence import CLAUSE_CUT, split_steps
from catts_graph.statements import StatementReader, split_statement
from catts_graph.step_confidence import SIGNALS, step_signals

__all__ = [
    "ANSWER_MARK",
    "TRAINING_SIGNALS",
    "StatedStep",
    "content_signals",
    "content_tokens",
    "is_answer_step",
    "read_steps",
    "restrict_signals",
]

ANSWER_MARK = re.compile(r"\\(?:boxed|fbox)\s*\{")
"""What marks the answer step: the final answer in ``\\boxed{...}``."""

TRAINING_SIGNALS: tuple[str, ...] = ("probability", "entropy", "tokensar")
"""The step signals training can use: all but CLIPScore, which needs an image-text model at every
reward call (none reaches our machines with pretrained weights; the signal is dropped and the fusion
renormalised, as :class:`~catts_graph.step_confidence.StepCalibrator` does for a missing signal)."""

_NEVER = re.compile(r"(?!)")
"""A cut that never matches: a step's own tokens are one step."""


@dataclass(frozen=True)
class StatedStep:
    """One step of a reply. ``[start, end)`` is its span in the reply; ``content`` the step without
    its statement (closing punctuation kept); ``phrase`` the text after its last comma and
    ``expressed`` the level it reads as (None: no statement, or one the reader could not parse);
    ``statement`` the span of the statement, from its comma to the closing punctuation, when one
    was read."""

    index: int
    start: int
    end: int
    text: str
    content: str
    phrase: str | None
    expressed: int | None
    is_answer: bool
    statement: tuple[int, int] | None = None


def is_answer_step(text: str) -> bool:
    """Whether a step holds the final answer (``\\boxed{...}``)."""
    return ANSWER_MARK.search(text) is not None


def statement_expected(text: str, start: int, end: int, stated_lines: int | None = None) -> bool:
    """Whether step ``text[start:end]`` of a reply carries a statement: every step but the answer,
    or with ``stated_lines`` only the steps of the reply's first that many lines (the organism's
    description, not the focus line that copies from it)."""
    step = text[start:end]
    if is_answer_step(step):
        return False
    first = start + len(step) - len(step.lstrip())
    return stated_lines is None or text.count("\n", 0, first) < stated_lines


def read_steps(text: str, reader: StatementReader, stated_lines: int | None = None) -> list[StatedStep]:
    """The steps of ``text`` with their statements read back (see the module docstring); a step
    that carries no statement (:func:`statement_expected`) is marked ``is_answer``."""
    steps = []
    for index, (start, end) in enumerate(split_steps(text, CLAUSE_CUT)):
        step = text[start:end]
        content, phrase = split_statement(step)
        expressed = reader.level(phrase)
        span = None
        if expressed is None:
            content = step
        else:
            body = step.rstrip()
            closing = 1 if body[-1] in ".;!?" else 0
            inner = body[: len(body) - closing]
            span = (start + inner.rindex(","), start + len(inner))
        steps.append(
            StatedStep(
                index=index,
                start=start,
                end=end,
                text=step,
                content=content,
                phrase=phrase,
                expressed=expressed,
                is_answer=not statement_expected(text, start, end, stated_lines),
                statement=span,
            )
        )
    return steps


def content_tokens(steps: Sequence[StatedStep], tokens: Sequence[str]) -> list[list[int]]:
    """The indices of each step's content tokens (``"".join(tokens)`` is the reply the steps were
    read from). A token belongs to the step holding its first non-space character, and is left out
    when that character lies in the step's statement; a white-space token goes with the token before
    it (the first step's when none precedes) unless it starts inside a statement, so that a step's
    tokens are those it had before a statement was written into it
    (:func:`~catts_graph.confidence.step_tokens`' rule)."""
    groups: list[list[int]] = [[] for _ in steps]
    leading: list[int] = []
    offset = 0
    current: int | None = None
    for i, token in enumerate(tokens):
        content = token.lstrip()
        start = offset
        first = offset + len(token) - len(content)
        offset += len(token)
        if content:
            current = _step_at(steps, first)
        if current is not None and _in(steps[current].statement, first if content else start):
            continue
        if current is None:
            if not content:
                leading.append(i)
            continue
        if leading and not groups[current]:
            groups[current].extend(leading)
            leading = []
        groups[current].append(i)
    return groups


def _step_at(steps: Sequence[StatedStep], position: int) -> int | None:
    for k, step in enumerate(steps):
        if step.start <= position < step.end:
            return k
    return None


def _in(span: tuple[int, int] | None, position: int) -> bool:
    return span is not None and span[0] <= position < span[1]


def content_signals(
    steps: Sequence[StatedStep],
    tokens: Sequence[str],
    logprobs: Sequence[float],
    entropies: Sequence[float] | None = None,
    *,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    signals: Collection[str] = TRAINING_SIGNALS,
) -> list[dict[str, float | None] | None]:
    """Each step's raw signals (:func:`~catts_graph.step_confidence.step_signals`) over its content
    tokens, restricted to ``signals``; None for a step without content tokens."""
    if len(tokens) != len(logprobs):
        raise ValueError(f"tokens and logprobs: got {len(tokens)} and {len(logprobs)} values")
    out: list[dict[str, float | None] | None] = []
    for members in content_tokens(steps, tokens):
        found = step_signals(
            [tokens[i] for i in members],
            [logprobs[i] for i in members],
            None if entropies is None or "entropy" not in signals else [entropies[i] for i in members],
            similarity=similarity if "tokensar" in signals else None,
            cut=_NEVER,
        )
        out.append(restrict_signals(found[0].signals(), signals) if found else None)
    return out


def restrict_signals(row: dict[str, Any], signals: Collection[str]) -> dict[str, float | None]:
    """``row`` with every signal outside ``signals`` set to None (so it is not fused)."""
    unknown = set(signals) - set(SIGNALS)
    if unknown:
        raise ValueError(f"signals: unknown {sorted(unknown)}; expected some of {list(SIGNALS)}")
    return {name: (row.get(name) if name in signals else None) for name in SIGNALS}
