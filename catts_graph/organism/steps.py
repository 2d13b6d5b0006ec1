"""Step-level ground truth on the organism, and step-level calibration measured against it.

Every clause of an organism reply is a reasoning step whose truth the generator knows: a described
object exists or it does not, a focus entry names a matching object or it does not, the boxed answer
is right or wrong. A step is *correct* when it matches one of the steps of the reply the generator
would write (:func:`~catts_graph.organism.language.reply_text`), each reference step matched once
(multiset matching, in any order, ignoring case, spacing, closing punctuation and a confidence
statement). :func:`measure_step_calibration` samples one greedy reply per item, computes the step
signals (:mod:`catts_graph.step_confidence`), fits the calibrator on the validation items and
reports step ECE and AUROC on the test items for each signal alone and for the fusion.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from catts_graph.confidence import CLAUSE_CUT, split_steps
from catts_graph.statements import split_statement

__all__ = [
    "label_steps",
    "measure_step_calibration",
    "normalise_step",
    "reference_steps",
    "sample_steps",
    "step_table",
]


def normalise_step(step: str) -> str:
    """A step's content for matching: without a trailing statement, closing punctuation and case."""
    content, _ = split_statement(step)
    return re.sub(r"\s+", " ", content.strip().rstrip(".;!?").strip()).lower()


def reference_steps(question: Any) -> list[str]:
    """The normalised steps of the reply the generator writes for ``question``."""
    from catts_graph.organism.language import reply_text

    text = reply_text(question)
    return [normalise_step(text[s:e]) for s, e in split_steps(text, CLAUSE_CUT)]


def label_steps(steps: Sequence[str], reference: Sequence[str]) -> list[bool]:
    """Whether each step matches a not yet matched reference step (in reply order)."""
    left = Counter(reference)
    labels = []
    for step in steps:
        key = normalise_step(step)
        labels.append(left[key] > 0)
        if left[key] > 0:
            left[key] -= 1
    return labels


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
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    clip: Callable[[Sequence[Any], Sequence[str]], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Step ECE and AUROC on ``test`` items of each signal alone and of the fusion, fitted on
    ``validation`` items: ``{"signals": {name: {"ece", "auroc"}}, "fused": ..., "calibrator": ...,
    "steps": {"validation", "test"}, "step_accuracy"}``; with ``clip``, also ``"fused_without_clip"``
    (the fusion of the other signals alone, refitted)."""
    from catts_graph.eval.synthetic import load_synthetic, make_question
    from catts_graph.metrics import expected_calibration_error
    from catts_graph.step_confidence import SIGNALS, StepCalibrator

    rows: dict[str, list[dict[str, Any]]] = {}
    for split, limit in (("validation", validation), ("test", test)):
        rows[split] = []
        for item in load_synthetic(split, limit=limit, seed=seed):
            question = make_question(split, int(item.id.rsplit("-", 1)[1]), seed=seed)
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
            "auroc": _auroc([a["fused"] for a in assessed], labels),
        }

    def fused(names: Sequence[str]) -> tuple[dict[str, float], Any]:
        keep = [{k: row[k] for k in names} for row in fit]
        calibrator = StepCalibrator.fit(keep, [row["correct"] for row in fit])
        assessed = [calibrator.assess({k: row[k] for k in names}) for row in held]
        return {
            "ece": expected_calibration_error([a["confidence"] for a in assessed], labels),
            "auroc": _auroc([a["fused"] for a in assessed], labels),
        }, calibrator

    present = list(report["signals"])
    report["fused"], calibrator = fused(present)
    if "clipscore" in present:
        report["fused_without_clip"], _ = fused([name for name in present if name != "clipscore"])
    report["calibrator"] = calibrator.to_dict()
    report["step_accuracy"] = sum(labels) / len(labels)
    return report


def _auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """AUROC, None when every step is right or every step is wrong (undefined)."""
    from catts_graph.metrics import auroc

    return auroc(scores, labels) if 0 < sum(labels) < len(labels) else None


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
