"""The task layer: what the graph's nodes, the evaluation harness and training share about a question.

One place for each of: the benchmark :class:`Item`; checking a run's input (question, options,
images, context length), before any model call; which prompt a model is asked in (the templates a
checkpoint declares, :meth:`answer_template` / :meth:`reflection_template`); whether an answer is
correct (:func:`is_correct`, :func:`answer_matches`); the per-item seed (:func:`item_seed`); and the
typed record of one sampled response (:class:`SampleRecord`). It sits above the pure math
(``answers``, ``confidence``, ...) and below the models, so every layer above uses the same rules.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from PIL import Image

from catts_graph.answers import is_equivalent, normalize_answer
from catts_graph.config import CATTSConfig
from catts_graph.images import InputError, is_url, load_images, read_image, to_reference
from catts_graph.prompts import format_options, render_prompt

__all__ = [
    "ANSWER_TYPES",
    "Item",
    "RepairOrigin",
    "SampleRecord",
    "StepFusion",
    "StepRecord",
    "answer_matches",
    "answer_template",
    "base_prompt",
    "check_context",
    "check_inputs",
    "check_options",
    "check_question",
    "image_references",
    "is_correct",
    "item_seed",
    "least_confident",
    "most_confident",
    "reflection_template",
    "weakest_step",
]

ANSWER_TYPES: tuple[str, ...] = ("choice", "integer", "float", "text")
_LETTERS = string.ascii_uppercase


# --- the benchmark item ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One benchmark question, in the form the graph and the scorer use.

    ``images`` are references :mod:`catts_graph.images` reads (file paths or ``data:`` URIs);
    ``options`` are option texts lettered A, B, C... in order (None when open-ended); ``answer`` is
    the gold option LETTER for ``answer_type == "choice"``, else the answer text; ``precision`` is
    the number of decimals a float answer is compared at (MathVista). ``metadata`` holds plain
    JSON-able fields of the source row (skills, subject, level, accepted alternative answers...).
    """

    id: str
    benchmark: str
    images: list[str]
    question: str
    options: list[str] | None
    answer: str
    answer_type: str
    category: str | None = None
    precision: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"item {self.id!r} of {self.benchmark!r}"
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"item id must be a non-empty string, got {self.id!r}")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"{where}: answer_type {self.answer_type!r} is not one of {ANSWER_TYPES}")
        if not self.images or not all(isinstance(i, str) and i for i in self.images):
            raise ValueError(f"{where}: images must be a non-empty list of reference strings")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError(f"{where}: the gold answer is empty")
        if self.answer_type == "choice":
            if not self.options:
                raise ValueError(f"{where}: a choice item needs options")
            if self.answer not in _LETTERS[: len(self.options)]:
                raise ValueError(
                    f"{where}: gold answer {self.answer!r} is not a letter among "
                    f"A-{_LETTERS[len(self.options) - 1]}"
                )
        if self.precision is not None and (
            isinstance(self.precision, bool) or not isinstance(self.precision, int) or self.precision < 0
        ):
            raise ValueError(f"{where}: precision must be an integer >= 0 or None, got {self.precision!r}")

    def graph_input(self) -> dict[str, Any]:
        """The graph's input: ``{"image": ...}`` (one image) or ``{"images": [...]}``, with the
        question and the options (None when open-ended)."""
        images: dict[str, Any] = (
            {"image": self.images[0]} if len(self.images) == 1 else {"images": list(self.images)}
        )
        return {
            **images,
            "question": self.question,
            "options": list(self.options) if self.options else None,
        }


# --- correctness --------------------------------------------------------------------------------


def _number(text: str) -> float | None:
    """``text`` as a plain decimal number after :func:`normalize_answer`, else None."""
    try:
        return float(normalize_answer(text))
    except ValueError:
        return None


def answer_matches(
    answer: str | None, golds: Sequence[str], *, answer_type: str = "text", precision: int | None = None
) -> bool:
    """Whether ``answer`` matches one of ``golds``: exactly for ``choice`` (option letters), at
    ``precision`` decimals for a ``float`` with a precision, else by :func:`is_equivalent`
    (``math-verify`` equivalence, never substring). No answer is never correct."""
    if answer is None or not answer.strip():
        return False
    if answer_type == "choice":
        return answer.strip() in golds
    if answer_type == "float" and precision is not None:
        predicted = _number(answer)
        if predicted is not None:
            return any(
                (gold := _number(g)) is not None and round(predicted, precision) == round(gold, precision)
                for g in golds
            )
    return any(is_equivalent(answer, g) for g in golds)


def is_correct(item: Item, answer: str | None) -> bool:
    """Whether ``answer`` (a letter for choice items) matches ``item``'s gold or an accepted
    alternative (``metadata["accepted_answers"]``): the one correctness rule of the project."""
    golds = [item.answer, *item.metadata.get("accepted_answers", [])]
    return answer_matches(answer, golds, answer_type=item.answer_type, precision=item.precision)


def item_seed(seed: int, item_id: str) -> int:
    """The seed of one item in a run seeded ``seed``: a hash of both, the same in every process (no
    ``hash()`` salt), so an item's draws do not depend on which items run before it or how many."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


# --- the run's input --------------------------------------------------------------------------


def _check_text(text: str, what: str, max_chars: int, limit_name: str) -> None:
    """Text a model will read: valid UTF-8 (a tokenizer fails on lone surrogates, after the models
    have loaded) and at most ``max_chars`` long."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            f"{what}: not valid UTF-8 text ({text[err.start]!r} at character {err.start}); text from "
            "bytes that are not UTF-8 (a shell argument, a file) must be decoded first"
        ) from None
    if len(text) > max_chars:
        raise InputError(f"{what}: {len(text)} characters, over the limit of {max_chars} ({limit_name})")


def check_question(question: Any, max_chars: int = 20_000) -> str:
    if question is None:
        raise InputError("question: missing, expected a non-empty string")
    if not isinstance(question, str):
        raise InputError(f"question: got {type(question).__name__}, expected a non-empty string")
    if not question.strip():
        raise InputError("question: is empty, expected a non-empty string")
    _check_text(question, "question", max_chars, "max_question_chars")
    return question.strip()


def check_options(options: Any, max_chars: int = 2_000) -> list[str] | None:
    if options is None:
        return None
    if isinstance(options, str) or not isinstance(options, (list, tuple)):
        raise InputError(f"options: got {type(options).__name__}, expected a list of strings or None")
    if not options:
        raise InputError("options: given but empty; pass None for an open question")
    if len(options) > 26:
        raise InputError(f"options: {len(options)} options, at most 26 (letters A-Z) are supported")
    seen: dict[str, int] = {}
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise InputError(f"options[{i}]: expected a non-empty string, got {option!r}")
        _check_text(option, f"options[{i}]", max_chars, "max_option_chars")
        # Two options with one answer text would split the vote between two letters.
        key = normalize_answer(option)
        if key in seen:
            raise InputError(
                f"options[{i}]: {option.strip()!r} is the same option as options[{seen[key]}] "
                f"({options[seen[key]].strip()!r}); each option must be distinct"
            )
        seen[key] = i
    return [option.strip() for option in options]


def image_references(state: Mapping[str, Any], config: CATTSConfig) -> list[str]:
    """The run's images as references. A URL is fetched here, once, and kept as a data URI: every
    node then reads the same bytes, whatever the server answers later, and the image cache keys
    them by content."""
    has_image = state.get("image") is not None
    images = state.get("images")
    if has_image and images:
        raise InputError("image and images: give one of them, not both")
    if has_image:
        given = [state["image"]]
    elif images is None:
        raise InputError("image: missing; pass image (path, URL, data URI, bytes or PIL image) or images")
    elif isinstance(images, (str, bytes)) or not isinstance(images, (list, tuple)) or not images:
        raise InputError("images: expected a non-empty list of images")
    else:
        given = list(images)
    references = []
    for i, image in enumerate(given):
        name = "image" if has_image else f"images[{i}]"
        reference = to_reference(image, name=name, max_bytes=config.max_image_bytes)
        if is_url(reference):
            reference = to_reference(read_image(reference, name=name, config=config), name=name)
        references.append(reference)
    return references


def check_inputs(
    state: Mapping[str, Any], config: CATTSConfig
) -> tuple[str, list[str] | None, list[str], list[Image.Image]]:
    """Every check of a run's input that needs no model: (question, options, image references,
    decoded images). The CLI runs it before it loads a model; ``prepare`` runs it again."""
    question = check_question(state.get("question"), config.max_question_chars)
    options = check_options(state.get("options"), config.max_option_chars)
    references = image_references(state, config)
    return question, options, references, load_images(references, config)


def check_context(model: Any, images: Sequence[Image.Image], prompt: str) -> None:
    """Refuse a prompt the model has no room for: its tokens, images included, must stay below the
    model's context (a model that declares ``context_length`` and ``prompt_ids``, as
    :class:`~catts_graph.models.TransformersVLM` does). Past it, positions the model never learnt,
    and a prefill that can run for hours."""
    limit = getattr(model, "context_length", None)
    if limit is None or not hasattr(model, "prompt_ids"):
        return
    used = len(model.prompt_ids(images, prompt))
    if used >= limit:
        raise InputError(
            f"question: the prompt is {used} tokens with its image(s), over the model's context of "
            f"{limit} positions; shorten the question"
        )


def base_prompt(question: str, options: list[str] | None, model: Any = None) -> str:
    """The base model's user turn for a question (the images go before it).

    The template is the one ``model`` declares in its ``answer_prompt`` attribute (a checkpoint
    trained on its own prompt format, such as the organism models), else ``prompts/answer.txt``.
    """
    return render_prompt(answer_template(model), question=question, options=format_options(options))


def answer_template(model: Any) -> str:
    """The prompt template ``model`` is asked questions in: the ``answer_prompt`` it declares (a
    checkpoint trained on its own format, such as the organisms), else ``prompts/answer.txt``."""
    return getattr(model, "answer_prompt", None) or "answer"


def reflection_template(model: Any) -> str:
    """The template of the self-reflection turn: the ``reflection_prompt`` ``model`` declares, else
    ``prompts/reflection.txt``."""
    return getattr(model, "reflection_prompt", None) or "reflection"


# --- the record of one response ---------------------------------------------------------------


class StepRecord(TypedDict):
    """One reasoning step of a response (MMBoundary), as the record keeps it.

    ``index`` is the step's position among the response's steps (0 first); ``span`` its
    ``[start, end)`` character offsets in the response text; ``nmlp`` the mean negative log-prob of
    its ``n_tokens`` tokens; ``signals`` the raw step signals of
    :mod:`catts_graph.step_confidence` (``probability`` = exp(-NMLP), ``entropy`` in nats,
    ``tokensar``, ``clipscore``; None where not computed); ``fused`` the fused confidence in [0, 1]
    (the step calibrator's weighted mean of the normalised signals, else the probability);
    ``level`` its level 1..5 (None without a calibrator); ``expressed`` the level the model
    states in the step's closing phrase (:class:`~catts_graph.statements.StatementReader`), None
    when it states none or the phrase is unparsed. Floats are rounded to 6 decimals.
    """

    index: int
    text: str
    span: list[int]
    n_tokens: int
    nmlp: float
    signals: dict[str, float | None]
    fused: float
    level: int | None
    expressed: int | None


class StepFusion(TypedDict):
    """How a response's steps were fused: ``calibrated`` (a step calibrator was used), the signals
    ``used`` in the fused confidence, and each ``dropped`` signal with the reason."""

    calibrated: bool
    used: list[str]
    dropped: dict[str, str]


class RepairOrigin(TypedDict):
    """Where a ``step_repair`` sample comes from: the repaired sample's index (``of``), how many of
    its steps were kept (``kept_steps``) and the characters of kept text (``prefix_chars``)."""

    of: int
    kept_steps: int
    prefix_chars: int


class SampleRecord(TypedDict, total=False):
    """One response as the graph and the evaluation keep it: text, answer and every confidence
    statistic, computed once when it is sampled (:func:`catts_graph.samples.describe_sample`).

    ``nmlp`` is the mean negative log-probability of its tokens (None without log-probs),
    ``confidence`` its ``exp(-nmlp)``; ``nmlp_answer`` the same over the final answer's tokens;
    ``deepconf`` DeepConf's confidences (``mean``, ``tail``, ``bottom_percent``,
    ``lowest_group``) when top-k log-probs were kept; ``mean_entropy`` the mean per-step entropy,
    over the whole vocabulary when the backend reported it (``entropy_over == "vocabulary"``), else
    over the renormalised top-k (``"top_k"``, a lower bound), else None; ``steps`` its reasoning
    steps with their signals (:class:`StepRecord`; empty without per-token log-probs) and
    ``step_fusion`` how they were fused; ``source`` says which module produced it (``sample``,
    ``reflection``, ``repair``), ``image`` which image it saw, ``wave`` which wave of samples it
    came in. A ``repair`` sample keeps the first steps of another sample and continues it
    (``repair``: :class:`RepairOrigin`); its ``nmlp`` covers the kept and the new tokens, its
    DeepConf confidences and entropy the new tokens only.
    """

    index: int
    wave: int
    source: str
    image: str
    text: str
    answer: str | None
    n_tokens: int
    finish_reason: str
    nmlp: float | None
    confidence: float
    nmlp_answer: float | None
    deepconf: dict[str, float] | None
    mean_entropy: float | None
    entropy_over: str | None
    steps: list[StepRecord]
    step_fusion: StepFusion | None
    repair: RepairOrigin


def weakest_step(record: Mapping[str, Any], by: str = "fused") -> Mapping[str, Any] | None:
    """The weakest step of a sample record: the lowest ``fused`` confidence, the highest ``nmlp``,
    or the lowest ``expressed`` level (steps that state none are skipped; ties: lower fused).
    Ties go to the earliest step; None when the record has no step (or, by ``expressed``, none
    states a level)."""
    steps = record.get("steps") or []
    if by == "fused":
        return min(steps, key=lambda s: (s["fused"], s["index"]), default=None)
    if by == "nmlp":
        return min(steps, key=lambda s: (-s["nmlp"], s["index"]), default=None)
    if by == "expressed":
        stated = [s for s in steps if s.get("expressed") is not None]
        return min(stated, key=lambda s: (s["expressed"], s["fused"], s["index"]), default=None)
    raise ValueError(f"by={by!r}: expected 'fused', 'nmlp' or 'expressed'")


def most_confident(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record with the lowest NMLP (ties: the lowest ``index``); records without an NMLP are
    skipped; None when none has one."""
    scored = [r for r in records if r.get("nmlp") is not None]
    return min(scored, key=lambda r: (r["nmlp"], r["index"])) if scored else None


def least_confident(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record with the highest NMLP (ties: the lowest ``index``); records without an NMLP are
    skipped; None when none has one."""
    scored = [r for r in records if r.get("nmlp") is not None]
    return max(scored, key=lambda r: (r["nmlp"], -r["index"])) if scored else None
