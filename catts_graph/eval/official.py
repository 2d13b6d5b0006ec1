"""Each benchmark's own scoring rule, beside the project's strict one, so accuracies compare with the papers.

The strict rule (:func:`catts_graph.task.is_correct`) compares an extracted answer with the gold
exactly after normalisation, else by ``math-verify`` at full precision. The papers' tables come
from each benchmark's own evaluation code, which is more lenient in documented ways; the scorers
here restate those rules (written from the official code's behaviour, not copied from it). Each is
a pure function ``score(item, answer, response) -> bool``: ``answer`` is the extracted answer (the
rule's or the judge's; an option letter for choice items, None when none was found), ``response``
the full text it came from (None when a method gives only an answer).

- **MathVista** (``evaluation/calculate_score.py``, :func:`mathvista_official`). Multiple choice:
  a letter in range (or ``(X)`` inside the extraction) is mapped to its choice text, anything else
  to the choice nearest by Levenshtein distance (ties: the first; no answer is the empty string,
  so the shortest choice); correct when that text equals the gold text, so a gold text listed under
  two letters accepts either. Integers: ``str(int(float(x))) == gold`` (truncation: ``4.9`` is
  ``4``); floats: ``str(round(float(x), precision)) == gold``; lists and text: ``x == gold``.
- **MathVision** (``evaluation/evaluate.py`` with ``utils.is_equal``, :func:`mathvision_official`):
  the answer is right when it ``is_equal`` to the gold letter or to the gold option's text:
  lower-cased, equal after stripping; else tuples ``(a,b)`` / lists ``[a,b]`` with each element
  evaluated and rounded to 2 decimals compare as text; else both sides parsed as LaTeX and
  evaluated to numbers compare rounded to 2 decimals (``0.67`` is right against ``\\frac{2}{3}``).
  Empty answers are never right.
- **MMMU** (``eval/eval_utils.py``, :func:`mmmu_official`). Multiple choice: the extracted letter;
  without one, the official parse of the response: a ``(X)``, else a `` X `` standing alone, else
  (responses over 5 words) an option's text contained in it, the last occurrence winning; failing
  all, a random option, seeded per item (:data:`MMMU_RANDOM_SEED` and the item id, so a rerun
  scores the same). Open: the response's key sentences (after "is", "so", "therefore", "answer",
  "=" ...) and every number in them are candidates; numbers are rounded to 2 decimals, text is
  lower-cased; a number is right when it equals a gold number, text when a gold text (a single
  character padded with a space) is contained in it. ``6.33`` is right against ``6.333``, ``cell
  transformation`` against ``Transformation``. Listed golds (``accepted_answers``) all count.
- **MMStar** and the synthetic benchmark: VLMEvalKit's MMStar rule is the option letter (or an
  option's text) compared exactly, which is the strict rule; :data:`OFFICIAL_SCORERS` names it
  ``strict``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from catts_graph.answers import normalize_answer
from catts_graph.task import Item, is_correct, item_seed

__all__ = [
    "MMMU_RANDOM_SEED",
    "OFFICIAL_SCORERS",
    "Scorer",
    "levenshtein",
    "mathvision_is_equal",
    "mathvision_official",
    "mathvista_official",
    "mmmu_official",
    "mmmu_open_candidates",
    "official_scorer",
    "strict",
]

MMMU_RANDOM_SEED = 42
"""The seed MMMU's evaluation sets before parsing; here combined with the item id per item."""

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def strict(item: Item, answer: str | None, response: str | None = None) -> bool:
    """The project's strict rule (:func:`catts_graph.task.is_correct` on ``answer``)."""
    return is_correct(item, answer)


# --- MathVista -----------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and substitutions
    turning ``a`` into ``b``. ``levenshtein("kitten", "sitting") == 3``."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _mathvista_choice(extraction: str, choices: Sequence[str]) -> str:
    """The choice text an extraction names: its letter, a ``(X)`` inside it, else the nearest text."""
    extraction = extraction.strip()
    bracketed = re.findall(r"\(([a-zA-Z])\)", extraction)
    if bracketed:
        extraction = bracketed[0].upper()
    letters = _LETTERS[: len(choices)]
    if len(extraction) == 1 and extraction in letters:
        return choices[letters.index(extraction)]
    distances = [levenshtein(extraction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def _mathvista_prediction(extraction: str, answer_type: str, precision: int | None) -> str | None:
    """A free-form extraction normalised to the gold's form; None when it is not a number."""
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), precision))
    except (ValueError, OverflowError):
        return None
    return extraction


def mathvista_official(item: Item, answer: str | None, response: str | None = None) -> bool:
    """MathVista's ``calculate_score.py`` rule (see the module docstring); ``answer`` is the
    extraction, the empty string when None. Official extractions come from a GPT call that returns
    bare values; a free-form answer is first cleaned by :func:`catts_graph.answers.normalize_answer`
    (``$``, ``\\text{}``, a final period and thousands separators dropped). The gold's form is
    ``metadata["source_answer_type"]`` (``integer``, ``float``, ``list``, ``text``), defaulting to
    the item's ``answer_type``."""
    extraction = answer if answer is not None else ""
    if item.answer_type == "choice":
        options = item.options or []
        gold = options[_LETTERS.index(item.answer)]
        return _mathvista_choice(extraction, options) == gold
    answer_type = str(item.metadata.get("source_answer_type") or item.answer_type)
    cleaned = normalize_answer(extraction) if extraction.strip() else ""
    return _mathvista_prediction(cleaned, answer_type, item.precision) == item.answer


# --- MathVision ----------------------------------------------------------------------------------


def _latex_number(text: str) -> float:
    """``text`` parsed as LaTeX and evaluated to a real number; ValueError when it is not one."""
    from latex2sympy2_extended import latex2sympy

    try:
        value = latex2sympy(text)
        if getattr(value, "free_symbols", None):
            raise ValueError(f"{text!r} has free symbols")
        return float(value.evalf() if hasattr(value, "evalf") else value)
    except Exception as err:  # the LaTeX parser raises many types; every failure means "no number"
        raise ValueError(f"{text!r} is not a number: {err}") from None


def _mathvision_tuple(text: str) -> str:
    """``(a,b,...)`` / ``[a,b,...]`` with each element evaluated and rounded to 2 decimals
    (``infty``, ``a`` and ``-a`` kept); any other text, or any failure, unchanged."""
    if len(text) < 2 or (text[0], text[-1]) not in (("(", ")"), ("[", "]")):
        return text
    elements = text[1:-1].split(",")
    if len(elements) < 2:
        return text
    try:
        evaluated = [
            element if "infty" in element or element in ("a", "-a") else str(round(_latex_number(element), 2))
            for element in elements
        ]
    except ValueError:
        return text
    return text[0] + ",".join(evaluated) + text[-1]


def mathvision_is_equal(answer: str, gold: str) -> bool:
    """MATH-V's ``is_equal``: lower-cased; never for an empty side; equal after stripping; equal
    as evaluated tuples; else ``round(number(gold), 2) == round(number(answer), 2)`` with both
    parsed as LaTeX. ``mathvision_is_equal("0.67", "\\\\frac{2}{3}") is True``."""
    answer, gold = answer.lower(), gold.lower()
    if not answer.replace(" ", "") or not gold.replace(" ", ""):
        return False
    if answer.strip() == gold.strip():
        return True
    answer, gold = _mathvision_tuple(answer), _mathvision_tuple(gold)
    if answer == gold:
        return True
    try:
        return round(_latex_number(gold), 2) == round(_latex_number(answer), 2)
    except ValueError:
        return False


def mathvision_official(item: Item, answer: str | None, response: str | None = None) -> bool:
    """MathVision's rule: ``answer`` :func:`mathvision_is_equal` to the gold (the letter for
    choice items) or to the gold option's text, or to an accepted alternative; None is wrong."""
    if answer is None:
        return False
    golds = [item.answer, *item.metadata.get("accepted_answers", [])]
    if item.answer_type == "choice" and item.options:
        golds.append(item.options[_LETTERS.index(item.answer)])
    return any(mathvision_is_equal(answer, gold) for gold in golds)


# --- MMMU ----------------------------------------------------------------------------------------

_MMMU_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_MMMU_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_MMMU_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])")
_MMMU_KEYS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def _mmmu_random_letter(item: Item, letters: str) -> str:
    return random.Random(item_seed(MMMU_RANDOM_SEED, item.id)).choice(letters)


def _mmmu_choice(item: Item, response: str) -> str:
    """MMMU's ``parse_multi_choice_response``: the letter a response names (see the module docstring)."""
    options = item.options or []
    letters = _LETTERS[: len(options)]
    for char in ",.!?;:'":
        response = response.strip(char)
    response = f" {response} "
    found = [x for x in letters if f"({x})" in response]
    marker = "({})"
    if not found:
        found = [x for x in letters if f" {x} " in response]
        marker = " {} "
    by_text = False
    if not found and len(response.split()) > 5:
        found = [x for x, text in zip(letters, options, strict=True) if text.lower() in response.lower()]
        by_text = True
    if not found:
        return _mmmu_random_letter(item, letters)
    if by_text:
        positions = [response.lower().rfind(options[letters.index(x)].lower()) for x in found]
    else:
        positions = [response.rfind(marker.format(x)) for x in found]
    return found[positions.index(max(positions))]


def _mmmu_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _mmmu_normalise(text: str) -> list[str | float]:
    """A number rounded to 2 decimals; text lower-cased (one character padded either side)."""
    text = text.strip()
    number = _mmmu_number(text)
    if number is not None:
        return [round(number, 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _mmmu_key_sentences(response: str) -> list[str]:
    """The tail of each sentence after its last answer cue (the shortest such tail)."""
    response = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, sentence in enumerate(sentences):
        cues = _MMMU_KEYS + ("=",) if index == len(sentences) - 1 else _MMMU_KEYS
        shortest = ""
        for cue in cues:
            tail = sentence.split(cue)[-1].strip() if cue in sentence else None
            # As the official loop: an empty tail so far is replaced by the next one, whatever its length.
            if tail is not None and (not shortest or len(tail) < len(shortest)):
                shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def mmmu_open_candidates(response: str) -> list[str | float]:
    """MMMU's ``parse_open_response``: the key sentences and every number in them, normalised
    (numbers rounded to 2 decimals, text lower-cased), without repeats."""
    keys = _mmmu_key_sentences(response)
    texts = list(keys)
    for key in keys:
        texts += _MMMU_COMMAS.findall(key) + _MMMU_SCIENTIFIC.findall(key) + _MMMU_SIMPLE.findall(key)
    candidates: list[str | float] = []
    for text in texts:
        candidates += [c for c in _mmmu_normalise(text) if c not in candidates]
    return candidates


def mmmu_official(item: Item, answer: str | None, response: str | None = None) -> bool:
    """MMMU's rule (see the module docstring). Choice items: the extracted letter, else the parse
    of ``response``, else a seeded random option. Open items: the candidates of ``response`` (of
    ``answer`` when there is no response) against every listed gold."""
    golds = [item.answer, *item.metadata.get("accepted_answers", [])]
    if item.answer_type == "choice":
        letters = _LETTERS[: len(item.options or [])]
        letter = answer.strip() if answer is not None and answer.strip() in letters else None
        if letter is None:
            letter = _mmmu_choice(item, response or answer or "")
        return letter in golds
    text = response if response is not None else answer
    if text is None:
        return False
    norm_golds = [g for gold in golds for g in _mmmu_normalise(gold)]
    for candidate in mmmu_open_candidates(text):
        if isinstance(candidate, str):
            if any(isinstance(g, str) and g in candidate for g in norm_golds):
                return True
        elif candidate in norm_golds:
            return True
    return False


# --- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scorer:
    """A named scoring rule: ``name`` goes in a run's metadata, ``source`` says whose code it
    follows, ``score(item, answer, response)`` decides one answer."""

    name: str
    source: str
    score: Callable[[Item, str | None, str | None], bool]


OFFICIAL_SCORERS: dict[str, Scorer] = {
    "mathvista": Scorer("mathvista_official", "MathVista evaluation/calculate_score.py", mathvista_official),
    "mathvision": Scorer(
        "mathvision_official", "MATH-V evaluation/evaluate.py (utils.is_equal)", mathvision_official
    ),
    "mmmu": Scorer("mmmu_official", "MMMU eval/eval_utils.py", mmmu_official),
    "mmstar": Scorer("strict", "VLMEvalKit's multiple-choice rule, which is the strict rule", strict),
    "synthetic": Scorer("strict", "catts_graph.task.is_correct (generated benchmark)", strict),
}
"""The headline scorer of each benchmark."""


def official_scorer(benchmark: str) -> Scorer:
    """The headline scorer of ``benchmark`` (:data:`OFFICIAL_SCORERS`)."""
    if benchmark not in OFFICIAL_SCORERS:
        raise ValueError(f"benchmark {benchmark!r} has no official scorer; known: {sorted(OFFICIAL_SCORERS)}")
    return OFFICIAL_SCORERS[benchmark]
