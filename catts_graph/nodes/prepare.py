"""``prepare``: check the input and turn it into serialisable references, before any model call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Overwrite
from PIL import Image

from catts_graph.answers import normalize_answer
from catts_graph.config import CATTSConfig
from catts_graph.images import InputError, is_url, to_reference
from catts_graph.nodes.common import Deps, load_images, read_image, run_config, timed, trace_entry
from catts_graph.prompts import format_options, render_prompt
from catts_graph.state import CATTSState


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
    template = getattr(model, "answer_prompt", None) or "answer"
    return render_prompt(template, question=question, options=format_options(options))


def fresh_run() -> dict[str, Any]:
    """Every per-run key reset, reducers bypassed: a second question on a checkpointed thread
    starts from nothing instead of voting with the first question's samples. The raw image inputs
    are dropped too (``image_refs`` holds them), so the next run must bring its own image."""
    return {
        "image": None,
        "images": None,
        "samples": Overwrite([]),
        "usage": Overwrite({}),
        "done": Overwrite([]),
        "waves": 0,
        "votes": {},
        "voter_probs": None,
        "critique": None,
        "reflected": None,
        "self_check_winner": None,
        "pending": None,
        "route": [],
        "plan_source": None,
        "answer": None,
        "confidence": 0.0,
        "scores": {},
    }


def make_prepare(deps: Deps) -> Callable[..., dict[str, Any]]:
    def prepare(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        with timed() as timer:
            config = run_config(runtime, deps)
            question, options, references, images = check_inputs(state, config)
            prompt = base_prompt(question, options, deps.base_model)
            check_context(deps.base_model, images, prompt)
        sizes = [f"{image.width}x{image.height}" for image in images]
        return {
            **fresh_run(),
            "question": question,
            "options": options,
            "image_refs": references,
            "prompt": prompt,
            "trace": Overwrite(
                [
                    trace_entry(
                        "prepare",
                        "input accepted",
                        f"{len(images)} image(s) {', '.join(sizes)}; "
                        + (f"{len(options)} options" if options else "open question"),
                        inputs={"images": len(images), "options": len(options or [])},
                        duration_s=timer.seconds,
                    )
                ]
            ),
        }

    return prepare
