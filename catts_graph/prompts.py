"""The one prompt loader.

Every prompt is a :class:`string.Template` text file (``$question``, ``$options``, ...), so JSON
braces need no escaping and a literal dollar sign is written ``$$``. The wheel ships them inside the
package as ``catts_graph/prompts/*.txt``; in a source checkout they live in the top-level
``prompts/`` folder. :func:`load_prompt` looks in that order.

User data (questions, options, model responses) is put between tags such as
``<question>\\n...\\n</question>``, and each prompt tells the model that text inside the tags is data,
never instructions. Templates write those tags themselves around their placeholders; callers pass
*raw* text to :func:`render_prompt`, which neutralises any of the template's tags found inside a value
so that a question cannot close its block and rewrite the instructions. :func:`delimit` does the same
for a block built in code (for example one block per supporting response).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TEMPLATE_TAG = re.compile(r"</?([A-Za-z_][\w-]*)>")
_OPTION_LETTERS = string.ascii_uppercase


class PromptError(ValueError):
    """A prompt is missing, or was rendered with missing, unexpected or ill-typed values."""


def _search_dirs() -> list[Path]:
    installed = Path(str(resources.files("catts_graph"))) / "prompts"
    source = Path(__file__).resolve().parents[1] / "prompts"
    return [installed, source]


@functools.cache
def load_prompt(name: str) -> string.Template:
    """The template ``<name>.txt`` from the installed package, else from the source tree's prompts/."""
    if not _NAME.fullmatch(name):
        raise PromptError(f"prompt name {name!r} is not a plain lower-case name like 'voter'")
    dirs = _search_dirs()
    for folder in dirs:
        path = folder / f"{name}.txt"
        if path.is_file():
            return string.Template(path.read_text(encoding="utf-8"))
    available = sorted({p.stem for folder in dirs if folder.is_dir() for p in folder.glob("*.txt")})
    raise PromptError(
        f"no prompt named {name!r} in {', '.join(str(d) for d in dirs)}; available: {available}"
    )


# The scans below are per template object (load_prompt keeps one per name), done once instead of
# on every render: an expert call renders its prompt each time it is asked.


@functools.lru_cache(maxsize=64)
def _template_tags(template: string.Template) -> frozenset[str]:
    """Names of the tags a template writes or mentions (``<question>`` -> ``question``)."""
    return frozenset(_TEMPLATE_TAG.findall(template.template))


@functools.lru_cache(maxsize=64)
def _template_fields(template: string.Template) -> frozenset[str]:
    return frozenset(
        match.group("named") or match.group("braced")
        for match in template.pattern.finditer(template.template)
        if match.group("named") or match.group("braced")
    )


def prompt_fields(name: str) -> frozenset[str]:
    """The placeholders prompt ``name`` takes (``$question`` -> ``question``)."""
    return _template_fields(load_prompt(name))


def render_prompt(name: str, **values: str | int | float) -> str:
    """Fill prompt ``name`` with ``values`` (raw text; the template supplies the delimiting tags).

    Every value is neutralised against every tag the template uses, so data cannot open or close a
    block. A missing or unexpected value, or one that is not text or a number, raises
    :class:`PromptError` naming it.
    """
    template = load_prompt(name)
    expected = _template_fields(template)
    missing = sorted(expected - values.keys())
    unexpected = sorted(values.keys() - expected)
    if missing or unexpected:
        raise PromptError(
            f"prompt {name!r} takes ${', $'.join(sorted(expected))}; "
            + (f"missing: {missing}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected: {unexpected}" if unexpected else "")
        )
    tags = _template_tags(template)
    filled: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            hint = " (format option lists with format_options())" if key == "options" else ""
            raise PromptError(
                f"prompt {name!r}: ${key} must be text or a number, got {type(value).__name__}{hint}"
            )
        filled[key] = neutralise(str(value), tags)
    return template.substitute(filled)


def neutralise(text: str, tags: Sequence[str] | frozenset[str]) -> str:
    """``text`` with every opening or closing tag named in ``tags`` made inert.

    Matching ignores case, spaces and attributes (``</ Question >``, ``<question id=1>``); a match
    is rewritten with ``&lt;`` / ``&gt;`` so it still reads the same to a model but no longer
    delimits anything. Other uses of ``<`` (``x < 5``) are left alone.
    """
    pattern = _tag_pattern(tags if isinstance(tags, frozenset) else frozenset(tags))
    if pattern is None:
        return text
    return pattern.sub(lambda m: "&lt;" + m.group(0)[1:-1] + "&gt;", text)


@functools.lru_cache(maxsize=256)
def _tag_pattern(tags: frozenset[str]) -> re.Pattern[str] | None:
    """The pattern of :func:`neutralise` for ``tags``, built once per set of tags (a template's,
    or the one tag of a :func:`delimit` block) rather than once per value."""
    names = sorted({t for t in tags if t}, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"<\s*/?\s*(?:" + "|".join(re.escape(n) for n in names) + r")\b[^<>]*>", re.IGNORECASE)


def delimit(name: str, text: str) -> str:
    """``text`` as a data block ``<name>\\n...\\n</name>``, with any ``<name>`` tag inside neutralised."""
    if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise PromptError(f"tag name {name!r} must be a word like 'question' or 'response_1'")
    return f"<{name}>\n{neutralise(text, [name])}\n</{name}>"


def format_options(options: Sequence[str] | None) -> str:
    """Options as lettered lines ``"A. text\\nB. text"``; ``"(none)"`` for an open-ended question."""
    if isinstance(options, str):
        raise PromptError("options must be a list of strings, got one string")
    if options is None or len(options) == 0:
        return "(none)"
    if len(options) > len(_OPTION_LETTERS):
        raise PromptError(f"options: got {len(options)}, at most {len(_OPTION_LETTERS)} can be lettered A-Z")
    return "\n".join(
        f"{letter}. {' '.join(str(option).split())}"
        for letter, option in zip(_OPTION_LETTERS, options, strict=False)
    )
