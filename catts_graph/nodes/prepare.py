"""``prepare``: check the input and turn it into serialisable references, before any model call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from catts_graph.config import CATTSConfig
from catts_graph.nodes.common import Deps, run_config, run_step_calibrator, timed, trace_entry
from catts_graph.state import CATTSState
from catts_graph.task import base_prompt, check_context, check_inputs


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
            run_step_calibrator(config, deps)  # a calibrator file the run's context names, checked now
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
