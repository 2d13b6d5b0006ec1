"""Clean and perturbed accuracy of an organism model, per question kind, with its confidence
(``catts measure organism``; ``catts measure level`` at one generator level).

One greedy answer per item through :class:`~catts_graph.models.TransformersVLM` under the prompt
the checkpoint declares: the path ``catts run`` takes. Two confidences, both ``exp(-NMLP)``: over
the whole reply, and over the answer's own tokens (``confidence_span="answer"``). On the organism a
reply is mostly a scene description whose format tokens are easy, so the whole-reply figure sits
high whatever the answer's accuracy; the answer span is where the doubt shows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catts_graph.organism.language import MAX_NEW_TOKENS


def organism_rows(
    model: Any,
    *,
    split: str = "test",
    limit: int = 250,
    noise: float = 0.0,
    seed: int = 0,
    level: int | None = None,
) -> list[dict[str, Any]]:
    """One row per item: ``{"id", "kind", "correct", "confidence", "answer_confidence"}``.

    ``model`` is a :class:`~catts_graph.models.TransformersVLM` or a checkpoint folder; the items are
    the first ``limit`` of ``split`` drawn by the generator seeded ``seed``, at generator level
    ``level`` (None: the mixed regime, levels 1-3 drawn per item). ``noise`` is the
    strength of :func:`catts_graph.perturb.gaussian` (0: clean; 1: sigma 0.5 of the pixel range),
    added at the model's input size and seeded per item. A reply without a readable answer has
    answer confidence 0.
    """
    from catts_graph.answers import answer_span, extract_answer
    from catts_graph.confidence import confidence_from_nmlp, nmlp, span_nmlp
    from catts_graph.eval.synthetic import load_synthetic
    from catts_graph.images import decode_image, read_reference
    from catts_graph.models import TransformersVLM
    from catts_graph.perturb import perturbed_views
    from catts_graph.task import base_prompt, is_correct

    vlm = model if isinstance(model, TransformersVLM) else TransformersVLM.from_pretrained(Path(model))
    rows = []
    for number, item in enumerate(load_synthetic(split, limit=limit, seed=seed, level=level)):
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
        answer = extract_answer(sample.text, item.options)
        confidence = confidence_from_nmlp(nmlp(sample.logprobs)) if sample.logprobs else 0.0
        span = answer_span(sample.text, item.options) if answer is not None else None
        answer_confidence = 0.0
        if span is not None and sample.logprobs:
            answer_confidence = confidence_from_nmlp(span_nmlp(sample.tokens, sample.logprobs, *span))
        rows.append(
            {
                "id": item.id,
                "kind": str(item.category),
                "correct": bool(is_correct(item, answer)),
                "confidence": confidence,
                "answer_confidence": answer_confidence,
            }
        )
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{kind: {"accuracy", "confidence", "answer_confidence", "n"}}`` plus ``"all"``."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["kind"]].append(row)
        groups["all"].append(row)
    return {
        kind: {
            "accuracy": sum(r["correct"] for r in group) / len(group),
            "confidence": sum(r["confidence"] for r in group) / len(group),
            "answer_confidence": sum(r["answer_confidence"] for r in group) / len(group),
            "n": len(group),
        }
        for kind, group in sorted(groups.items())
    }


def evaluate_organism(
    model: Any,
    *,
    split: str = "test",
    limit: int = 250,
    noise: float = 0.0,
    seed: int = 0,
    level: int | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`summarise` of :func:`organism_rows` (the same arguments)."""
    return summarise(organism_rows(model, split=split, limit=limit, noise=noise, seed=seed, level=level))


def format_report(report: dict[str, dict[str, float]]) -> str:
    """One line per kind: accuracy and the two mean confidences."""
    return "\n".join(
        f"{kind:>9}: accuracy {row['accuracy']:.3f}  confidence {row['confidence']:.3f}  "
        f"answer confidence {row['answer_confidence']:.3f}  (n={int(row['n'])})"
        for kind, row in report.items()
    )


LEVEL_SETS: tuple[tuple[str, int], ...] = (("validation", 0), ("test", 0), ("test", 1))
"""Where a generator level is measured: chosen on validation, confirmed on test and on a fresh
generator seed (1, which nothing else in the project uses for choosing)."""


def level_accuracy(
    models: dict[str, Any],
    *,
    level: int,
    items: int = 200,
    sets: Sequence[tuple[str, int]] = LEVEL_SETS,
    log: Any = None,
) -> dict[str, Any]:
    """Greedy accuracy of each model (name -> checkpoint or :class:`~catts_graph.models.TransformersVLM`)
    on the first ``items`` questions at generator ``level`` of each ``(split, seed)`` in ``sets``, per
    kind, each with its 95% percentile bootstrap interval over the items (1,000 resamples, seed 0).

    ``{"level", "items", "accuracy": {model: {"<split> seed <seed>": {kind: {"accuracy", "low",
    "high", "n"}}}}}``, kinds as in :func:`summarise` (``"all"`` included).
    """
    from catts_graph.metrics import bootstrap_interval

    accuracy: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    from catts_graph.models import TransformersVLM

    for name, model in models.items():
        vlm = model if isinstance(model, TransformersVLM) else TransformersVLM.from_pretrained(Path(model))
        accuracy[name] = {}
        for split, seed in sets:
            rows = organism_rows(vlm, split=split, limit=items, seed=seed, level=level)
            per_kind: dict[str, list[float]] = defaultdict(list)
            for row in rows:
                per_kind[row["kind"]].append(float(row["correct"]))
                per_kind["all"].append(float(row["correct"]))
            cells = {}
            for kind, values in sorted(per_kind.items()):
                low, high = bootstrap_interval(values, seed=0)
                cells[kind] = {
                    "accuracy": sum(values) / len(values),
                    "low": low,
                    "high": high,
                    "n": len(values),
                }
            accuracy[name][f"{split} seed {seed}"] = cells
            if log is not None:
                log(f"{name}, {split} seed {seed}: accuracy {cells['all']['accuracy']:.3f}")
    return {"level": level, "items": items, "accuracy": accuracy}


def level_table(result: dict[str, Any]) -> str:
    """:func:`level_accuracy` as a Markdown table: one row per model and set, one column per kind."""
    accuracy = result["accuracy"]
    first = next(iter(next(iter(accuracy.values())).values()))
    kinds = ["all", *sorted(k for k in first if k != "all")]
    lines = [
        f"Greedy accuracy at generator level {result['level']}, the first {result['items']} items of "
        "each set (95% bootstrap intervals over the items):",
        "",
        "| model | set | " + " | ".join(kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for name, sets in accuracy.items():
        for where, cells in sets.items():
            row = [
                f"{cells[k]['accuracy']:.3f} [{cells[k]['low']:.3f}, {cells[k]['high']:.3f}]"
                if k in cells
                else "-"
                for k in kinds
            ]
            lines.append(f"| {name} | {where} | " + " | ".join(row) + " |")
    return "\n".join(lines)
