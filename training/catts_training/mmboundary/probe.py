"""The MMBoundary probe: how well a model's stated step confidences are calibrated, and whether it
states them at all.

:func:`probe_steps` has the model answer each item once (greedy), reads every step's statement back
(:func:`~catts_training.mmboundary.stated.read_steps`), judges the step against the item's reference chain
(:mod:`catts_training.mmboundary.reference`), and assesses its content tokens' signals with the data's
:class:`~catts_graph.step_confidence.StepCalibrator` (the internal level). :func:`probe_figures`
turns those rows into the issue's figures (statement steps only, the answer step left out):

- ``parsed_share``: the share of statement steps with a parseable statement (goal after SFT: 0.95);
- ``expressed_ece``: the ECE of the expressed level's confidence (the level's measured validation
  accuracy, :func:`~catts_training.mmboundary.rewards.level_confidences`) against step correctness;
  ``expressed_auroc``: the AUROC of the expressed level as a detector of right steps (goals after
  RL: <= 0.10 and >= 0.65);
- ``expressed_entropy``: the entropy (nats) of the expressed levels' distribution (goal: >= 1; SFT
  alone is reported to collapse to one level);
- ``internal_ece`` / ``internal_auroc``: the same for the internal level's confidence and the fused
  signal, on every labelled statement step (a model without statements has these only);
  ``level_gap``: the mean ``|expressed - internal|`` over parsed steps;
- ``answer_accuracy`` (goal after RL: within 2 points of the base) and ``step_accuracy``.

A figure that needs labels is None without them; an AUROC is NaN when every step is right or every
step is wrong (undefined: :func:`catts_graph.metrics.auroc`), ``null`` in the written report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from catts_graph.images import load_image
from catts_graph.metrics import auroc, expected_calibration_error
from catts_graph.step_confidence import LEVELS, StepCalibrator
from catts_graph.task import Item, base_prompt
from catts_training.cdrl.rewards import is_correct
from catts_training.mmboundary.data import sample_tokens
from catts_training.mmboundary.reference import StepJudge, reference_chain
from catts_training.mmboundary.rewards import StepReader, expressed_entropy
from catts_training.mmboundary.stated import TRAINING_SIGNALS, content_signals

__all__ = ["probe_figures", "probe_steps"]


def probe_steps(
    vlm: Any,
    items: Iterable[Item],
    *,
    steps: StepReader,
    calibrator: StepCalibrator,
    judge: StepJudge | None = None,
    signals: Collection[str] = TRAINING_SIGNALS,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    max_new_tokens: int = 256,
) -> tuple[list[dict[str, Any]], list[bool]]:
    """One greedy reply per item: a row per step (``item``, ``step``, ``text``, ``is_answer``,
    ``expressed``, ``internal``, ``fused``, ``correct``) and each reply's answer correctness."""
    rows: list[dict[str, Any]] = []
    answers: list[bool] = []
    for item in items:
        images = [
            load_image(ref, name=f"item {item.id!r} images[{k}]").convert("RGB")
            for k, ref in enumerate(item.images)
        ]
        (sample,) = vlm.sample(
            images,
            base_prompt(item.question, item.options, vlm),
            1,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
        )
        tokens, logprobs, entropies = sample_tokens(sample)
        text = "".join(tokens)
        answers.append(is_correct(text, item.answer, item.options))
        stated = steps.steps(text)
        reference = reference_chain(item) if judge is not None else None
        truths = judge.judge([s.text for s in stated], reference) if judge is not None and reference else None
        internal = content_signals(
            stated, tokens, logprobs, entropies, similarity=similarity, signals=signals
        )
        for k, (step, row) in enumerate(zip(stated, internal, strict=True)):
            assessed = None if row is None else calibrator.assess(row)
            rows.append(
                {
                    "item": item.id,
                    "step": step.index,
                    "text": step.text,
                    "is_answer": step.is_answer,
                    "expressed": step.expressed,
                    "internal": None if assessed is None else assessed["level"],
                    "fused": None if assessed is None else assessed["fused"],
                    "correct": None if truths is None else truths[k].correct,
                }
            )
    return rows, answers


def probe_figures(
    rows: Sequence[dict[str, Any]], answers: Sequence[bool], level_confidence: Sequence[float]
) -> dict[str, Any]:
    """The figures of the module docstring from :func:`probe_steps`' rows and answers, the levels'
    confidences ``level_confidence`` (five numbers)."""
    if len(level_confidence) != LEVELS:
        raise ValueError(f"level_confidence: expected {LEVELS} values, got {len(level_confidence)}")
    stated = [row for row in rows if not row["is_answer"]]
    parsed = [row for row in stated if row["expressed"] is not None]
    counts = Counter(int(row["expressed"]) for row in parsed)
    labelled = [row for row in parsed if row["correct"] is not None]
    both = [row for row in stated if row["correct"] is not None and row["internal"] is not None]
    gaps = [abs(row["expressed"] - row["internal"]) for row in parsed if row["internal"] is not None]
    figures: dict[str, Any] = {
        "items": len(answers),
        "answer_accuracy": sum(answers) / len(answers) if answers else None,
        "steps": len(rows),
        "statement_steps": len(stated),
        "parsed_share": len(parsed) / len(stated) if stated else None,
        "expressed_counts": [counts.get(k, 0) for k in range(1, LEVELS + 1)],
        "expressed_entropy": expressed_entropy([int(row["expressed"]) for row in parsed]),
        "level_gap": sum(gaps) / len(gaps) if gaps else None,
        "step_accuracy": None,
        "expressed_ece": None,
        "expressed_auroc": None,
        "internal_ece": None,
        "internal_auroc": None,
        "labelled_steps": len(labelled),
    }
    labels_stated = [row["correct"] for row in stated if row["correct"] is not None]
    if labels_stated:
        figures["step_accuracy"] = sum(labels_stated) / len(labels_stated)
    if labelled:
        correct = [bool(row["correct"]) for row in labelled]
        figures["expressed_ece"] = expected_calibration_error(
            [level_confidence[int(row["expressed"]) - 1] for row in labelled], correct
        )
        figures["expressed_auroc"] = auroc([float(row["expressed"]) for row in labelled], correct)
    if both:
        correct = [bool(row["correct"]) for row in both]
        figures["internal_ece"] = expected_calibration_error(
            [level_confidence[int(row["internal"]) - 1] for row in both], correct
        )
        figures["internal_auroc"] = auroc([float(row["fused"]) for row in both], correct)
    return figures
