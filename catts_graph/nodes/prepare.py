"""``prepare``: check the input and turn it into serialisable references, before any model call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from catts_graph.config import CATTSConfig
from catts_graph.images import InputError, to_reference
from catts_graph.nodes.common import Deps, load_images, run_config, timed, trace_entry
from catts_graph.prompts import format_options, render_prompt
from catts_graph.state import CATTSState


def check_question(question: Any) -> str:
    if question is None:
        raise InputError("question: missing, expected a non-empty string")
    if not isinstance(question, str):
        raise InputError(f"question: got {type(question).__name__}, expected a non-empty string")
    if not question.strip():
        raise InputError("question: is empty, expected a non-empty string")
    return question.strip()


def check_options(options: Any) -> list[str] | None:
    if options is None:
        return None
    if isinstance(options, str) or not isinstance(options, (list, tuple)):
        raise InputError(f"options: got {type(options).__name__}, expected a list of strings or None")
    if not options:
        raise InputError("options: given but empty; pass None for an open question")
    if len(options) > 26:
        raise InputError(f"options: {len(options)} options, at most 26 (letters A-Z) are supported")
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise InputError(f"options[{i}]: expected a non-empty string, got {option!r}")
    return [option.strip() for option in options]


def image_references(state: CATTSState) -> list[str]:
    has_image = state.get("image") is not None
    images = state.get("images")
    if has_image and images:
        raise InputError("image and images: give one of them, not both")
    if has_image:
        return [to_reference(state["image"], name="image")]
    if images is None:
        raise InputError("image: missing; pass image (path, URL, data URI, bytes or PIL image) or images")
    if isinstance(images, (str, bytes)) or not isinstance(images, (list, tuple)) or not images:
        raise InputError("images: expected a non-empty list of images")
    return [to_reference(image, name=f"images[{i}]") for i, image in enumerate(images)]


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
            question = check_question(state.get("question"))
            options = check_options(state.get("options"))
            references = image_references(state)
            images = load_images(references, config)
        sizes = [f"{image.width}x{image.height}" for image in images]
        return {
            **fresh_run(),
            "question": question,
            "options": options,
            "image_refs": references,
            "prompt": base_prompt(question, options, deps.base_model),
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
