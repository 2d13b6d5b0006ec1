"""Clean and perturbed accuracy of an organism model, per question kind, with its confidence.

One greedy answer per item through :class:`~catts_graph.models.TransformersVLM` under the prompt
the checkpoint declares: the path ``catts run`` takes. Confidence is ``exp(-NMLP)`` of the whole reply.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

MAX_NEW_TOKENS = 256
"""Enough for the longest scene description and the boxed answer."""


def evaluate_organism(
    model: Any,
    *,
    split: str = "test",
    limit: int = 250,
    noise: float = 0.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{kind: {"accuracy", "confidence", "n"}}`` plus ``"all"``, on the first ``limit`` items.

    ``model`` is a :class:`~catts_graph.models.TransformersVLM` or a checkpoint folder. ``noise``
    is the strength of :func:`catts_graph.perturb.gaussian` (0: clean; 1: sigma 0.5 of the pixel
    range), added at the model's input size and seeded per item.
    """
    from catts_graph.answers import extract_answer
    from catts_graph.confidence import confidence_from_nmlp, nmlp
    from catts_graph.eval.synthetic import load_synthetic
    from catts_graph.images import decode_image, read_reference
    from catts_graph.models import TransformersVLM
    from catts_graph.perturb import perturbed_views
    from catts_graph.task import base_prompt, is_correct

    vlm = model if isinstance(model, TransformersVLM) else TransformersVLM.from_pretrained(Path(model))
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for number, item in enumerate(load_synthetic(split, limit=limit, seed=seed)):
        image = decode_image(read_reference(item.images[0], name=item.id), name=item.id)
        if noise > 0:
            image = perturbed_views([image], "gaussian", noise, number, input_size=vlm.input_size)[1][0]
        (sample,) = vlm.sample(
            [image],
            base_prompt(item.question, item.options, vlm),
            1,
            temperature=0.0,
            max_new_tokens=MAX_NEW_TOKENS,
        )
        correct = is_correct(item, extract_answer(sample.text, item.options))
        confidence = confidence_from_nmlp(nmlp(sample.logprobs)) if sample.logprobs else 0.0
        for key in (str(item.category), "all"):
            totals[key][0] += correct
            totals[key][1] += confidence
            totals[key][2] += 1
    return {
        key: {"accuracy": c / n, "confidence": conf / n, "n": n}
        for key, (c, conf, n) in sorted(totals.items())
    }


def format_report(report: dict[str, dict[str, float]]) -> str:
    """One line per kind: accuracy and mean confidence."""
    return "\n".join(
        f"{kind:>9}: accuracy {row['accuracy']:.3f}  confidence {row['confidence']:.3f}  (n={int(row['n'])})"
        for kind, row in report.items()
    )
