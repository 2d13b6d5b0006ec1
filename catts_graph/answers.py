"""Answer extraction, normalisation and equivalence: the one answer extractor of the project.

Extraction takes the last ``\\boxed{...}`` (or ``\\fbox{...}``), else the last "the answer is X" /
"Answer: X"; with multiple-choice options it maps the answer to its option letter. Equivalence is
exact after :func:`normalize_answer`, else mathematical through ``math_verify``; never by substring
("1" is not "12").
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence

__all__ = [
    "answer_span",
    "canonicalize",
    "extract_answer",
    "is_equivalent",
    "normalize_answer",
    "option_letter",
]

_SPACE = " \t\r\n"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    # X runs to the end of its sentence (a period followed by whitespace or the end) or line. The
    # outer lookahead lets matches overlap, so "Answer: the answer is 5" yields "5" last.
    r"(?=(?:\banswer\s+is\s*:?|\banswer\s*:)"
    r"[ \t]*(?P<x>[^\n]*?)[ \t]*(?=\.(?:\s|$)|\n|$))",
    re.IGNORECASE,
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm)\s*\{([^{}]*)\}")
# "B", "(B)", "B.", "B)", "B:", "Option B", "Option (B)".
_LETTER = re.compile(r"(?i:option\s*)?\(?([A-Z])\)?[.:)]?")
# "(B) 42", "B) 42", "B. 42", "B: 42": a delimited letter that prefixes the option's text.
_LETTER_PREFIX = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.:)])\s+\S.*", re.DOTALL)
_LONE_LETTER = re.compile(r"[*\s]*\(?([A-Z])\)?\.?[*\s]*")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_WORDS = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
_MATH_VERIFY_TIMEOUT_S = 5


def _balanced_end(text: str, open_brace: int) -> int | None:
    """Index of the brace closing the one at ``open_brace``, or None when it is never closed."""
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _strip_span(text: str, start: int, end: int, chars: str) -> tuple[int, int]:
    """Shrink ``[start, end)`` past any of ``chars`` at either end."""
    while start < end and text[start] in chars:
        start += 1
    while start < end and text[end - 1] in chars:
        end -= 1
    return start, end


def _source_span(text: str) -> tuple[int, int] | None:
    """Span of the inside of the last closed boxed, else of the X of the last "answer is X"."""
    for match in reversed(list(_BOXED.finditer(text))):
        close = _balanced_end(text, match.end() - 1)
        if close is not None:
            start, end = _strip_span(text, match.end(), close, _SPACE)
            if start < end:
                return start, end
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        start, end = _strip_span(text, *match.span("x"), _SPACE + "$*")
        if end > start and text[end - 1] == ".":
            start, end = _strip_span(text, start, end - 1, _SPACE + "$*")
        if start < end:
            return start, end
    return None


def _unwrap(answer: str) -> str:
    """Strip whitespace, surrounding ``$``/``*``, ``\\text{}``-style wrappers and a trailing period."""
    previous = None
    while answer != previous:
        previous = answer
        answer = _TEXT_WRAPPER.sub(r"\1", answer).strip().strip("$*").strip()
        answer = answer.removesuffix(".")
    return answer


def _letter_in_range(letter: str | None, n_options: int) -> str | None:
    if letter is not None and ord(letter) - ord("A") < n_options:
        return letter
    return None


def option_letter(answer: str, options: Sequence[str]) -> str | None:
    """The letter of the option ``answer`` names, by letter or by equivalent text."""
    bare = _unwrap(answer)
    if not bare:
        return None
    if match := _LETTER.fullmatch(bare):
        return _letter_in_range(match.group(1), len(options))
    if match := _LETTER_PREFIX.fullmatch(bare):
        return _letter_in_range(match.group(1) or match.group(2), len(options))
    for i, option in enumerate(options):
        if is_equivalent(bare, option):
            return chr(ord("A") + i)
    return None


def _lone_final_letter(text: str, n_options: int) -> tuple[str, int, int] | None:
    """A final line that is only an in-range option letter, e.g. ``C`` or ``(C)``."""
    lines = text.rstrip().rsplit("\n", 1)
    line_start = len(text.rstrip()) - len(lines[-1])
    match = _LONE_LETTER.fullmatch(lines[-1])
    if match and _letter_in_range(match.group(1), n_options):
        return match.group(1), line_start + match.start(1), line_start + match.end(1)
    return None


def _extract(text: str, options: Sequence[str] | None) -> tuple[str, int, int] | None:
    """The answer and the span of its source in ``text``."""
    return _extract_found(text, None if options is None else tuple(options))


# A response's record asks for its answer and then for the answer's span (samples.describe_sample):
# the second lookup is the first one's result, not another scan of the response.
@functools.lru_cache(maxsize=64)
def _extract_found(text: str, options: tuple[str, ...] | None) -> tuple[str, int, int] | None:
    span = _source_span(text)
    if options is not None:
        if span is not None and (letter := option_letter(text[span[0] : span[1]], options)):
            return letter, *span
        lone = _lone_final_letter(text, len(options))
        if lone is not None:
            return lone
    if span is None:
        return None
    return text[span[0] : span[1]], *span


def extract_answer(text: str, options: Sequence[str] | None = None) -> str | None:
    """The final answer stated in ``text``, or None when none is found.

    Order: the inside of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept whole);
    else X of the last "the answer is X" / "Answer: X" (case-insensitive, X up to the end of its
    sentence or line, without a trailing period or surrounding ``$``/``*``).

    With ``options`` (option texts for letters A, B, C, ...) the answer becomes its letter when it
    names one: "B", "(B)", "B.", "B)", "Option B", or "(B) text" / "B. text"; else when it is
    equivalent (:func:`is_equivalent`) to an option's text. Failing both, a final line that is a
    lone in-range letter ("C", "(C)") is used; else the unmapped answer is returned as found.
    """
    found = _extract(text, options)
    return found[0] if found else None


def answer_span(text: str, options: Sequence[str] | None = None) -> tuple[int, int] | None:
    """Character span in ``text`` of the source of :func:`extract_answer`'s answer, or None.

    The inside of the last boxed, the X of "answer is X", or the lone final option letter; use it
    with ``confidence.span_nmlp`` for answer-only confidence.
    """
    found = _extract(text, options)
    return (found[1], found[2]) if found else None


@functools.lru_cache(maxsize=65536)
def normalize_answer(answer: str) -> str:
    """Canonical text of an answer, for exact comparison. Rules, in order:

    1. strip surrounding whitespace, ``$`` and ``*`` (math delimiters, markdown bold);
    2. unwrap ``\\text{X}``, ``\\textbf{X}``, ``\\mathrm{X}`` to ``X`` (without nested braces);
    3. drop a trailing period (end of sentence);
    4. drop ``\\left`` / ``\\right`` (sizing only: ``\\left(x\\right)`` is ``(x)``);
    5. collapse runs of whitespace to one space;
    6. remove thousands separators from a plain number ("1,000" -> "1000", "-1,234.5" -> "-1234.5");
    7. lower-case plain text of two or more letters ("Paris" -> "paris"); a single letter keeps its
       case, since option letters and variable names are case-sensitive.
    """
    text = _unwrap(answer)
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", text)
    text = " ".join(text.split())
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if _PLAIN_WORDS.fullmatch(text) and len(text) > 1:
        text = text.lower()
    return text


def _math_verify_timeout() -> int | None:
    # math_verify times out through signal.alarm, which only works in the main thread; the graph
    # calls this from worker threads, where the timeout has to be off.
    return _MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
    """math_verify warns once that its timeout is off; off is our choice in worker threads (above),
    so the notice is noise in a user's output."""
    return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _quiet_math_verify() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_drop_timeout_notice)


@functools.lru_cache(maxsize=65536)
def _equivalent_normalised(a: str, b: str) -> bool:
    if a == b:
        return True
    if not a or not b or _PLAIN_WORDS.fullmatch(a) or _PLAIN_WORDS.fullmatch(b):
        # Plain words and letters compare exactly: math_verify reads them as products of symbols,
        # so it would call "cat" and "act" equal, and lower-cases option letters ("A" == "a").
        return False
    # Imported here: math_verify pulls in sympy (about 2 s), which only a real comparison needs.
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    timeout = _math_verify_timeout()
    _quiet_math_verify()
    try:
        parsed_a = parse(f"${a}$", parsing_timeout=timeout)  # type: ignore[arg-type]
        parsed_b = parse(f"${b}$", parsing_timeout=timeout)  # type: ignore[arg-type]
        return bool(verify(parsed_a, parsed_b, timeout_seconds=timeout))
    # Whatever math_verify raises (TimeoutException is a BaseException) means "not shown equal".
    except (Exception, TimeoutException):
        return False


def is_equivalent(a: str, b: str) -> bool:
    """Whether two answers are the same: equal after :func:`normalize_answer`, else equal as math.

    Math equivalence is ``math_verify.verify`` on both answers parsed as ``$...$`` ("0.5",
    "1/2" and "\\frac{1}{2}" are equivalent; "1" and "12" are not). Plain words and single letters
    only compare exactly. The check is symmetric and cached on the normalised pair.
    """
    x, y = sorted((normalize_answer(a), normalize_answer(b)))
    return _equivalent_normalised(x, y)


def canonicalize(answers: Sequence[str | None]) -> list[str | None]:
    """Map each answer to the first-seen answer equivalent to it, so votes group by meaning.

    None stays None. Costs O(distinct^2) equivalence checks: a string seen before maps as it did.
    """
    representatives: list[str] = []
    seen: dict[str, str] = {}
    canonical: list[str | None] = []
    for answer in answers:
        if answer is None:
            canonical.append(None)
            continue
        match = seen.get(answer)
        if match is None:
            match = next((rep for rep in representatives if is_equivalent(rep, answer)), None)
            if match is None:
                representatives.append(answer)
                match = answer
            seen[answer] = match
        canonical.append(match)
    return canonical
