"""Confidence statements (MMBoundary): a natural phrase after each reasoning step, and back to a level.

Five pools of phrasings, one per level (1: least sure .. 5: surest; the pools are *ours*, MMBoundary's
were not released). The forward mapping writes a step's level into the text for SFT data: the
phrase goes after the step, before its closing punctuation (``"circle red top left, and I am fairly
sure of it;"``). The backward mapping reads a generated phrase back to its level: an exact pool
match first (case and surrounding punctuation ignored), then the nearest pool phrase under a
sentence encoder when it beats the nearest phrase of every other level by ``margin`` in cosine
similarity, else None ("unparsed"): a paraphrase is read, an ambiguous phrase is not guessed.

Numpy only: the sentence encoder is any object with ``encode(texts) -> (n, d) array`` of unit rows
(:class:`catts_graph.models.encoders.MiniLMEncoder` ships one offline).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "STATEMENTS",
    "SentenceEncoder",
    "StatementReader",
    "exact_level",
    "insert_statements",
    "split_statement",
]

STATEMENTS: dict[int, tuple[str, ...]] = {
    1: (
        "but this is only a guess",
        "though I really cannot tell",
        "but I have almost no idea",
        "though this is very uncertain",
        "but I am probably wrong here",
    ),
    2: (
        "but I can't be entirely sure",
        "though I have my doubts",
        "but I am not very confident",
        "though this may well be wrong",
        "but I am unsure of this",
    ),
    3: (
        "and I think this is likely",
        "and this seems plausible",
        "and I am moderately confident",
        "and this is probably right",
        "and I lean towards this",
    ),
    4: (
        "and I believe this is right",
        "and I am fairly sure of it",
        "and I am quite confident",
        "and this is very likely correct",
        "and I have little doubt",
    ),
    5: (
        "with total certainty",
        "and I am completely sure",
        "and there is no doubt about it",
        "and I am absolutely certain",
        "and this is definitely correct",
    ),
}
"""Five pools of confidence statements, by level (1: least sure, 5: surest)."""

_CLOSING = ".;!?"


@runtime_checkable
class SentenceEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, one row per text."""
        ...


def _canonical(phrase: str) -> str:
    return re.sub(r"\s+", " ", phrase.strip().strip(_CLOSING + ",").strip()).lower()


_EXACT = {_canonical(phrase): level for level, pool in STATEMENTS.items() for phrase in pool}


def exact_level(phrase: str) -> int | None:
    """The level of a pool phrase (ignoring case, spacing and surrounding punctuation), else None."""
    return _EXACT.get(_canonical(phrase))


def insert_statements(
    text: str, spans: Sequence[tuple[int, int]], levels: Sequence[int], seed: int = 0
) -> str:
    """``text`` with a statement of ``levels[i]`` after step ``spans[i]`` (``[start, end)``, in order,
    not overlapping), before the step's closing punctuation when it has one: ``"<step>, <phrase><p>"``.
    The phrase is drawn from the level's pool with ``random.Random(seed)``."""
    if len(spans) != len(levels):
        raise ValueError(f"levels: got {len(levels)} for {len(spans)} steps")
    rng = random.Random(seed)
    pieces, cursor = [], 0
    for (start, end), level in zip(spans, levels, strict=True):
        if level not in STATEMENTS:
            raise ValueError(f"level={level!r}: expected one of {sorted(STATEMENTS)}")
        if not cursor <= start < end <= len(text):
            raise ValueError(f"spans: ({start}, {end}) is out of order or outside the text")
        cut = end - 1 if text[end - 1] in _CLOSING else end
        pieces += [text[cursor:cut], ", ", rng.choice(STATEMENTS[level]), text[cut:end]]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def split_statement(step: str) -> tuple[str, str | None]:
    """A step's content and its trailing statement: the text after the step's last comma, without
    the closing punctuation; ``(step, None)`` when there is no comma."""
    body = step.rstrip()
    closing = body[-1] if body and body[-1] in _CLOSING else ""
    body = body[: len(body) - len(closing)]
    if "," not in body:
        return step, None
    content, phrase = body.rsplit(",", 1)
    return content + closing, phrase.strip()


class StatementReader:
    """The backward mapping: a phrase to its level (exact match, then the encoder with a margin)."""

    def __init__(self, encoder: SentenceEncoder | None = None, margin: float = 0.05) -> None:
        if not 0 <= margin < 2:
            raise ValueError(f"margin={margin!r}: expected a cosine margin in [0, 2)")
        self.encoder = encoder
        self.margin = float(margin)
        self._phrases = [phrase for pool in STATEMENTS.values() for phrase in pool]
        self._levels = np.array([level for level, pool in STATEMENTS.items() for _ in pool])
        self._embeddings = None if encoder is None else np.asarray(encoder.encode(self._phrases))

    def level(self, phrase: str | None) -> int | None:
        """The level ``phrase`` states, or None when it is unparsed."""
        if not phrase:
            return None
        exact = exact_level(phrase)
        if exact is not None or self._embeddings is None or self.encoder is None:
            return exact
        similarity = self._embeddings @ np.asarray(self.encoder.encode([phrase]))[0]
        best = {level: float(similarity[self._levels == level].max()) for level in STATEMENTS}
        ranked = sorted(best, key=best.__getitem__, reverse=True)
        return ranked[0] if best[ranked[0]] - best[ranked[1]] >= self.margin else None
