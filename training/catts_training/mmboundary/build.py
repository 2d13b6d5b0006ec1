"""MMBoundary's first stage, ``catts mmboundary data``: the base model's own replies, the step
calibrator fitted on validation items, a statement after each step (the forward mapping of
:mod:`catts_training.mmboundary.data`), written to ``OUTPUT_DIR/data``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from catts_training.cdrl.data import load_items
from catts_training.mmboundary.config import MMBoundaryConfig
from catts_training.mmboundary.data import (
    MMBoundaryData,
    assess_replies,
    data_summary,
    fit_calibrator,
    sample_replies,
    save_data,
    stated_examples,
)
from catts_training.mmboundary.stage import encoder_of, judge_of, similarity_of

__all__ = ["build_data"]


def build_data(
    config: MMBoundaryConfig,
    *,
    vlm: Any = None,
    encoder: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> MMBoundaryData:
    """Sample, fit, assess, state and save (see :mod:`catts_training.mmboundary.data`); returns what was
    written to ``config.data_dir``. ``vlm``: the base model (loaded from the config when None);
    ``progress(phase, items done, items)`` after each item of the ``validation`` and ``training``
    phases."""
    started = time.perf_counter()
    if vlm is None:
        from catts_graph.models import TransformersVLM

        vlm = TransformersVLM.from_pretrained(config.model_path(), max_pixels=config.max_pixels)
    encoder = encoder if encoder is not None else encoder_of(config)
    judge = judge_of(config, encoder)
    sampling = config.sampling.model_dump()
    common = {
        "signals": config.signals,
        "similarity": similarity_of(config, encoder),
        "judge": judge,
        "stated_lines": config.statements.lines,
    }
    loaded = time.perf_counter()

    def report(phase: str, total: int) -> Callable[[int], None] | None:
        return None if progress is None else (lambda done: progress(phase, done, total))

    held_out = load_items(**config.validation.load_arguments())
    validation = sample_replies(
        vlm, held_out, **common, **{**sampling, "samples": 1}, progress=report("validation", len(held_out))
    )
    validation_done = time.perf_counter()
    calibrator = fit_calibrator(validation, use_labels=config.use_labels())
    items = load_items(**config.data.load_arguments())
    replies = sample_replies(vlm, items, **common, **sampling, progress=report("training", len(items)))
    assess_replies(replies, calibrator)
    examples = stated_examples(items, replies, seed=sampling["seed"])
    sampled = time.perf_counter()
    summary = data_summary(examples, replies, validation, getattr(vlm, "tokenizer", None))
    summary["calibrator"] = {k: v for k, v in calibrator.to_dict().items() if k != "reference"}
    summary["use_labels"] = config.use_labels()
    summary["seconds"] = {
        "load": loaded - started,
        "validation": validation_done - loaded,
        "training": sampled - validation_done,
        "total": time.perf_counter() - started,
    }
    save_data(config.data_dir, items, examples, calibrator, summary)
    return MMBoundaryData(items=items, examples=examples, calibrator=calibrator, summary=summary)
