"""The reproduction's measuring steps on the shipped organisms: the models' accuracy, the CLIP
organism's relevance, the probe, step signals and reflection. Each stores its result in the run
folder as it goes and is read back, not recomputed, when the run resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from catts_experiments.reproduce.plan import Organisms, Plan, cached, items_of
from catts_experiments.reproduce.statistics import interval, probe_cells, probe_key


def step_models(out: Path, plan: Plan) -> dict[str, Any]:
    """Greedy accuracy and confidence (whole reply and answer span) per kind of both organisms:
    clean, under full noise, and clean on fresh scenes (another generator seed); each accuracy with
    its bootstrap interval."""
    from catts_experiments.evaluate import organism_rows, summarise
    from catts_graph.organism import organism_model

    def compute() -> dict[str, Any]:
        report: dict[str, Any] = {}
        for which in ("base", "expert"):
            vlm = organism_model(which)
            report[which] = {"parameters": sum(p.numel() for p in vlm.model.parameters())}
            for name, noise, seed in (
                ("clean", 0.0, plan.seed),
                ("noise", 1.0, plan.seed),
                ("fresh", 0.0, plan.fresh_seed),
            ):
                rows = organism_rows(
                    vlm, split="test", limit=plan.model_items, noise=noise, seed=seed, level=plan.level
                )
                summary = summarise(rows)
                for kind, cell in summary.items():
                    picked = [float(r["correct"]) for r in rows if kind in ("all", r["kind"])]
                    cell["ci"] = interval(picked, plan)
                report[which][name] = summary
        return report

    return cached(out / "models.json", compute)


RANDOM_CLIP_SEEDS = (0, 1, 2, 3)
"""Random tiny CLIPs the CLIP organism's map is compared with."""


def step_clip(out: Path, plan: Plan) -> dict[str, Any]:
    """How much of its relevance map each CLIP puts on the object a question names, against that
    object's share of the area (:func:`~catts_experiments.clip.relevance_lift`, ``probe_items``
    test items): the CLIP organism CDRL steers its noise with, and random tiny CLIPs."""
    from catts_experiments.clip import relevance_lift
    from catts_graph.organism.clip import load_clip_organism
    from catts_graph.relevance import ClipRelevance

    def compute() -> dict[str, Any]:
        model, tokenizer = load_clip_organism()
        table = {"CLIP organism": relevance_lift(ClipRelevance(model, tokenizer), limit=plan.probe_items)}
        for seed in RANDOM_CLIP_SEEDS:
            table[f"random tiny CLIP (seed {seed})"] = relevance_lift(
                ClipRelevance.tiny(seed), limit=plan.probe_items
            )
        return table

    return cached(out / "clip.json", compute)


def step_probe(out: Path, plan: Plan, name: str, model_path: Path) -> list[dict[str, Any]]:
    """The probe on one checkpoint (resumable store ``probe-<name>.sqlite``): its summary rows, each
    with the bootstrap interval of its accuracy (``accuracy_ci``)."""
    from catts_graph.eval.probe import probe_model
    from catts_graph.models import TransformersVLM

    vlm = TransformersVLM.from_pretrained(model_path, device="cpu")
    store_path = out / f"probe-{name}.sqlite"
    rows = probe_model(
        vlm,
        items_of(plan.probe_split, plan.probe_items, plan),
        perturbs=plan.perturbs,
        levels=(0.0, *plan.levels),
        seed=plan.seed,
        store_path=store_path,
        max_new_tokens=256,
        info={"model": name},
    )
    cells = probe_cells(store_path)
    summary = []
    for row in rows:
        entry = dataclasses.asdict(row)
        cell = cells[probe_key(row.perturb, row.level)]
        entry["accuracy_ci"] = interval([float(r["correct"]) for r in cell.values()], plan)
        summary.append(entry)
    return summary


def step_signals(out: Path, plan: Plan) -> dict[str, Any]:
    """Step-level calibration of each step signal of the base organism and of their fusion, with and
    without CLIPScore (the CLIP organism), against the generator's step truth: fitted on
    ``validation_items``, measured on ``probe_items`` test items
    (:func:`~catts_experiments.step_calibration.measure_step_calibration`)."""
    from catts_experiments.step_calibration import measure_step_calibration
    from catts_graph.models import TransformersVLM
    from catts_graph.models.encoders import MiniLMEncoder
    from catts_graph.organism import organism_path
    from catts_graph.organism.clip import clip_organism

    def compute() -> dict[str, Any]:
        vlm = TransformersVLM.from_pretrained(organism_path("base"), device="cpu")
        return measure_step_calibration(
            vlm,
            validation=plan.validation_items,
            test=plan.probe_items,
            seed=plan.seed,
            level=plan.level,
            similarity=MiniLMEncoder().similarity,
            clip=clip_organism(),
        )

    return cached(out / "step_signals.json", compute)


def step_reflection(out: Path, plan: Plan, models: Organisms) -> dict[str, Any]:
    """What the base organism's reflection on the expert organism's critique adds
    (:func:`~catts_experiments.reflection.reflection_effect`, ``test_items`` test items): accuracy
    before and after (the reflected answer where the expert's verdict was ``incorrect``), with an
    oracle critic beside it, intervals, and the paired difference."""
    from catts_experiments.reflection import reflection_effect
    from catts_graph.metrics import paired_difference

    effect = cached(
        out / "reflection.json",
        lambda: reflection_effect(
            models.get("base"),
            models.get("expert"),
            split="test",
            limit=plan.test_items,
            seed=plan.seed,
            level=plan.level,
        ),
    )
    rows = effect["rows"]
    paired = np.array([[r["before"], r["after"], r["after_oracle"]] for r in rows], dtype=float)
    summary = {k: v for k, v in effect.items() if k != "rows"}
    for column, name in ((0, "accuracy_before"), (1, "accuracy_after"), (2, "accuracy_after_oracle")):
        summary[f"{name}_ci"] = interval(paired[:, column].tolist(), plan)
    difference, difference_ci = paired_difference(paired[:, 1], paired[:, 0], n_boot=plan.n_boot)
    summary["difference"] = difference
    summary["difference_ci"] = list(difference_ci)
    return summary
