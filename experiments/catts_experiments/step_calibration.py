"""Step-level calibration measured against the organism's step truth (``catts measure steps``).

:func:`measure_step_calibration` samples one greedy reply per item, computes the step signals
(:mod:`catts_graph.step_confidence`), labels each step against the generator's reply
(:mod:`catts_graph.organism.steps`), fits the calibrator on the validation items and reports step
ECE and AUROC on the test items for each signal alone and for the fusion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from catts_graph.confidence import CLAUSE_CUT, split_steps
from catts_graph.organism.steps import label_steps, reference_steps

__all__ = ["measure_step_calibration", "sample_steps", "step_table"]


def sample_steps(
    vlm: Any,
    question: Any,
    item: Any,
    *,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    clip: Callable[[Sequence[Any], Sequence[str]], Sequence[float]] | None = None,
    max_new_tokens: int = 256,
) -> list[dict[str, Any]]:
    """One greedy reply to ``item`` and its steps: signals, text and ground-truth label per step.
    ``clip(images, texts)``: CLIPScore's image-text cosines (a
    :data:`~catts_graph.nodes.common.ClipScorer`), one call per reply."""
    from catts_graph.images import decode_image, read_reference
    from catts_graph.step_confidence import step_signals
    from catts_graph.task import base_prompt

    image = decode_image(read_reference(item.images[0], name=item.id), name=item.id)
    (sample,) = vlm.sample(
        [image],
        base_prompt(item.question, item.options, vlm),
        1,
        temperature=0.0,
        max_new_tokens=max_new_tokens,
    )
    # The reply's own text, without the stop token the sample may end with.
    tokens, logprobs, entropies, length = [], [], [], 0
    for i, token in enumerate(sample.tokens or []):
        if length >= len(sample.text):
            break
        tokens.append(token)
        logprobs.append(sample.logprobs[i])
        entropies.append(sample.entropies[i] if sample.entropies else float("nan"))
        length += len(token)
    by_text: dict[str, float] = {}
    if clip is not None:
        text = "".join(tokens)
        texts = [text[start:end] for start, end in split_steps(text, CLAUSE_CUT)]
        by_text = dict(zip(texts, (float(c) for c in clip([image], texts)), strict=True))
    steps = step_signals(
        tokens,
        logprobs,
        entropies if sample.entropies else None,
        similarity=similarity,
        clip=by_text.__getitem__ if clip is not None else None,
    )
    labels = label_steps([s.text for s in steps], reference_steps(question))
    return [
        {"item": item.id, "text": s.text, "correct": c, **s.signals()}
        for s, c in zip(steps, labels, strict=True)
    ]


def measure_step_calibration(
    vlm: Any,
    *,
    validation: int = 100,
    test: int = 100,
    seed: int = 0,
    level: int | None = None,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    clip: Callable[[Sequence[Any], Sequence[str]], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Step ECE and AUROC on ``test`` items of each signal alone and of the fusion, fitted on
    ``validation`` items: ``{"signals": {name: {"ece", "auroc"}}, "fused": ..., "calibrator": ...,
    "steps": {"validation", "test"}, "step_accuracy"}``; with ``clip``, also ``"fused_without_clip"``
    (the fusion of the other signals alone, refitted). ``level``: every item at that generator level
    (None: the mix). An AUROC over test steps of one class is NaN (:func:`catts_graph.metrics.auroc`)."""
    from catts_graph.eval.synthetic import item_question, load_synthetic
    from catts_graph.metrics import auroc, expected_calibration_error
    from catts_graph.step_confidence import SIGNALS, StepCalibrator

    rows: dict[str, list[dict[str, Any]]] = {}
    for split, limit in (("validation", validation), ("test", test)):
        rows[split] = []
        for item in load_synthetic(split, limit=limit, seed=seed, level=level):
            question = item_question(item.id, seed=seed)
            rows[split] += sample_steps(vlm, question, item, similarity=similarity, clip=clip)
    fit, held = rows["validation"], rows["test"]
    labels = [row["correct"] for row in held]
    report: dict[str, Any] = {"signals": {}, "steps": {k: len(v) for k, v in rows.items()}}
    for name in SIGNALS:
        if any(row[name] is None for row in fit + held):
            continue
        alone = StepCalibrator.fit([{name: row[name]} for row in fit], [row["correct"] for row in fit])
        assessed = [alone.assess({name: row[name]}) for row in held]
        report["signals"][name] = {
            "ece": expected_calibration_error([a["confidence"] for a in assessed], labels),
            "auroc": auroc([a["fused"] for a in assessed], labels),
        }

    def fused(names: Sequence[str]) -> tuple[dict[str, float], Any]:
        keep = [{k: row[k] for k in names} for row in fit]
        calibrator = StepCalibrator.fit(keep, [row["correct"] for row in fit])
        assessed = [calibrator.assess({k: row[k] for k in names}) for row in held]
        return {
            "ece": expected_calibration_error([a["confidence"] for a in assessed], labels),
            "auroc": auroc([a["fused"] for a in assessed], labels),
        }, calibrator

    present = list(report["signals"])
    report["fused"], calibrator = fused(present)
    if "clipscore" in present:
        report["fused_without_clip"], _ = fused([name for name in present if name != "clipscore"])
    report["calibrator"] = calibrator.to_dict()
    report["step_accuracy"] = sum(labels) / len(labels)
    return report


def step_table(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`measure_step_calibration`'s result."""
    from catts_graph.formatting import markdown_table, number

    rows = [[name, number(v["ece"]), number(v["auroc"])] for name, v in result["signals"].items()]
    rows.append(["fused", number(result["fused"]["ece"]), number(result["fused"]["auroc"])])
    if "fused_without_clip" in result:
        without = result["fused_without_clip"]
        rows.append(["fused without clipscore", number(without["ece"]), number(without["auroc"])])
    weights = ", ".join(f"{k} {v:.2f}" for k, v in result["calibrator"]["weights"].items())
    return "\n".join(
        [
            f"Steps: {result['steps']['validation']} validation (fit), {result['steps']['test']} test; "
            f"test step accuracy {result['step_accuracy']:.3f}; fusion weights {weights}.",
            "",
            markdown_table(["signal", "step ECE (level-mapped)", "step AUROC"], rows),
        ]
    )
