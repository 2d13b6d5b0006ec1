"""Settings chosen on validation data (``catts tune voting``, ``catts tune cdrl``):
DeepConf's window and tail, the ``nmlp_floor``, and CDRL's
margin and learning rate.

DeepConf's 2048-token window is for 10k-token traces; the organism writes ~40-80 tokens, so the window
(and tail) must be chosen for the traces at hand. :func:`tune_voting` draws ``n`` samples per item
once per split, then replays every setting on the same samples (no setting ever redraws):

- for each window ``w`` (tail = ``w``): the accuracy of the four DeepConf weightings (mean, tail,
  bottom 10%, lowest group) at budget ``n``, and DeepConf online's accuracy and the share of
  generated tokens it saves against generating all ``n`` traces in full;
- for each ``nmlp_floor``: the accuracy of the paper's ``1 / NMLP`` vote with that floor.

The window is chosen on the validation split (the best mean accuracy over the four offline
weightings; ties go to the smaller window) and reported on the test split beside DeepConf's 2048,
with 95% bootstrap intervals over items. The floor is reported on validation only, as the issue asks:
whether it helps at all.

:func:`tune_cdrl` runs CDRL on the base organism once per (sensitivity margin, learning rate) of a
grid, each with the probe before and after on *validation* items, and keeps the setting whose pooled
confidence-drop ratio (the drops after CDRL summed over the perturbed cells, over the same sum
before) is highest among those that keep clean validation accuracy within two points of the base.
The test split is left for ``catts reproduce``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CDRL_VARIANTS",
    "ship_cdrl",
    "FLOORS",
    "WINDOWS",
    "cdrl_choice",
    "cdrl_row",
    "cdrl_tuning_table",
    "tune_cdrl",
    "tune_voting",
    "voting_table",
]

WINDOWS: tuple[int, ...] = (4, 8, 16, 32, 64, 2048)
FLOORS: tuple[float | None, ...] = (None, 0.01, 0.05, 0.1, 0.2)
WEIGHTINGS: tuple[str, ...] = ("mean", "tail", "bottom_percent", "lowest_group")


def _pools(vlm: Any, split: str, limit: int, n: int, seed: int) -> list[tuple[Any, list[Any], Any]]:
    """(item, raw samples, config) per item: ``n`` samples at temperature 1, drawn once."""
    from catts_graph.config import CATTSConfig
    from catts_graph.eval.methods import draw_pool
    from catts_graph.eval.synthetic import load_synthetic
    from catts_graph.organism.language import MAX_NEW_TOKENS
    from catts_graph.task import item_seed

    config = CATTSConfig(max_new_tokens=MAX_NEW_TOKENS, top_logprobs=20)
    out = []
    for item in load_synthetic(split, limit=limit, seed=seed):
        graph_input = {"images": list(item.images), "question": item.question, "options": item.options}
        pool = draw_pool(vlm, graph_input, n=n, config=config, seed=item_seed(seed, item.id), greedy=False)
        out.append((item, pool.raw or [], pool))
    return out


def _replay(pool: Any, raw: Sequence[Any], options: Any, window: int) -> Any:
    """The pool's records recomputed with DeepConf window and tail ``window``."""
    from catts_graph.eval.methods import SamplePool, online_lows
    from catts_graph.samples import describe_sample

    records = []
    for i, (sample, old) in enumerate(zip(raw, pool.records, strict=True)):
        record = describe_sample(
            sample, options=options, index=i, wave=0, deepconf_window=window, deepconf_tail=window
        )
        record["seconds"] = old["seconds"]
        record["deepconf_lows"] = online_lows(sample, window)
        records.append(record)
    return SamplePool(prompt=pool.prompt, params=pool.params, records=records)


def _interval(values: Sequence[float]) -> list[float]:
    from catts_graph.metrics import bootstrap_interval

    low, high = bootstrap_interval(values, seed=0)
    return [float(np.mean(values)), float(low), float(high)]


def _evaluate(pools: Sequence[tuple[Any, list[Any], Any]], n: int, windows: Sequence[int]) -> dict[str, Any]:
    from catts_graph.config import CATTSConfig
    from catts_graph.eval.methods import _vote, deepconf_offline, deepconf_online
    from catts_graph.task import is_correct

    # String keys throughout, so the result is JSON with sorted keys.
    rows: dict[str, Any] = {"window": {}, "floor": {}}
    for window in windows:
        correct: dict[str, list[float]] = {name: [] for name in (*WEIGHTINGS, "online")}
        saved = []
        for item, raw, pool in pools:
            replayed = _replay(pool, raw, item.options, window)
            for name in WEIGHTINGS:
                correct[name].append(
                    float(is_correct(item, deepconf_offline(replayed, n, weighting=name).answer))
                )
            online = deepconf_online(replayed, n)
            correct["online"].append(float(is_correct(item, online.answer)))
            full = sum(int(r["n_tokens"]) for r in replayed.records[:n])
            saved.append(1.0 - online.tokens / full if full else 0.0)
        rows["window"][str(window)] = {
            **{name: _interval(values) for name, values in correct.items()},
            "offline_mean": float(np.mean([np.mean(correct[name]) for name in WEIGHTINGS])),
            "online_tokens_saved": _interval(saved),
        }
    for floor in FLOORS:
        config = CATTSConfig(weighting="nmlp", nmlp_floor=floor)
        values = []
        for item, _, pool in pools:
            records = pool.first(n)
            values.append(float(is_correct(item, _vote(records, config, records)[0])))
        rows["floor"]["none" if floor is None else str(floor)] = _interval(values)
    majority = CATTSConfig(weighting="majority")
    rows["majority"] = _interval(
        [float(is_correct(item, _vote(p.first(n), majority, p.first(n))[0])) for item, _, p in pools]
    )
    return rows


def tune_voting(
    vlm: Any, *, validation: int = 100, test: int = 100, n: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Choose the DeepConf window on validation, report it on test; the floor on validation."""
    start = time.perf_counter()
    fit = _evaluate(_pools(vlm, "validation", validation, n, seed), n, WINDOWS)
    chosen = max(WINDOWS, key=lambda w: (fit["window"][str(w)]["offline_mean"], -w))
    held = _evaluate(_pools(vlm, "test", test, n, seed), n, sorted({chosen, 2048}))
    return {
        "n": n,
        "items": {"validation": validation, "test": test},
        "chosen_window": chosen,
        "validation": fit,
        "test": {"window": held["window"], "majority": held["majority"]},
        "seconds": time.perf_counter() - start,
    }


def voting_table(result: dict[str, Any]) -> str:
    """Markdown tables of :func:`tune_voting`'s result."""
    from catts_graph.formatting import markdown_table

    def cell(values: Sequence[float]) -> str:
        return f"{values[0]:.3f} [{values[1]:.3f}, {values[2]:.3f}]"

    lines = [f"N = {result['n']} samples per item; 95% bootstrap intervals over items.", ""]
    for split in ("validation", "test"):
        header = ["window", *WEIGHTINGS, "online", "online tokens saved"]
        body = [
            [str(w), *(cell(row[name]) for name in (*WEIGHTINGS, "online")), cell(row["online_tokens_saved"])]
            for w, row in result[split]["window"].items()
        ]
        lines += [
            f"DeepConf on {split} ({result['items'][split]} items; "
            f"majority {cell(result[split]['majority'])})",
            "",
        ]
        lines += [markdown_table(header, body), ""]
    lines += [f"Chosen window (validation): {result['chosen_window']} tokens.", ""]
    floor_rows = [[str(k), cell(v)] for k, v in result["validation"]["floor"].items()]
    lines += [
        "1/NMLP vote with a floor (validation)",
        "",
        markdown_table(["nmlp_floor", "accuracy"], floor_rows),
    ]
    return "\n".join(lines)


TRAINING_MIX: tuple[dict[str, Any], ...] = (
    {"kind": "gaussian", "strength": 0.5},
    {"kind": "gaussian", "strength": 1.0},
    {"kind": "occlusion", "strength": 0.5},
    {"kind": "occlusion", "strength": 1.0},
)
"""The perturbations CDRL's pairs are dealt from (``noise.mix``); the probe adds ``blur``, which
training never shows, to measure transfer to an unseen kind."""

TOP_QUARTER = 0.25
"""``noise.top_fraction`` of every variant but the whole-image one: the quarter of the patches the
CLIP organism ranks most relevant, as the paper steers its noise."""

ENTROPY_TERMS: dict[str, float] = {"noised_entropy": 1.0, "clean_entropy": 1.0, "entropy_target": 0.5}

VARIANT_STEPS = 120
"""GRPO steps of every variant but the one that says otherwise (``+240``): each states its own, so a
change of the template's ``max_steps`` (the chosen variant's) retrains none of them."""

CDRL_VARIANTS: dict[str, dict[str, Any]] = {
    "reward_only": {
        "noise": {"kind": "gaussian", "strength": 1.0, "mix": [], "top_fraction": TOP_QUARTER},
        "confidence_loss": None,
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "reward_only+mix": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": TOP_QUARTER},
        "confidence_loss": None,
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "entropy+mix": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": TOP_QUARTER},
        "confidence_loss": ENTROPY_TERMS,
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "entropy+mix-clean": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": TOP_QUARTER},
        "confidence_loss": {"noised_entropy": 1.0, "entropy_target": 0.5},
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "nmlp+mix": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": TOP_QUARTER},
        "confidence_loss": {"noised_nmlp": 1.0, "clean_entropy": 1.0, "nmlp_target": 1.0},
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "entropy+mix+target1": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": TOP_QUARTER},
        "confidence_loss": {**ENTROPY_TERMS, "entropy_target": 1.0},
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "entropy+mix+target1+whole": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": 1.0},
        "confidence_loss": {**ENTROPY_TERMS, "entropy_target": 1.0},
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "entropy+nmlp+mix+target1+whole": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": 1.0},
        "confidence_loss": {**ENTROPY_TERMS, "entropy_target": 1.0, "noised_nmlp": 1.0, "nmlp_target": 1.0},
        "grpo": {"max_steps": VARIANT_STEPS},
    },
    "entropy+mix+target1+whole+240": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": 1.0},
        "confidence_loss": {**ENTROPY_TERMS, "entropy_target": 1.0},
        "grpo": {"max_steps": 240},
    },
    "entropy+mix+target1+whole+240+clean_kl": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": 1.0},
        "confidence_loss": {**ENTROPY_TERMS, "entropy_target": 1.0, "clean_kl": 1.0},
        "grpo": {"max_steps": 240},
    },
    "entropy+mix+brier": {
        "noise": {"mix": list(TRAINING_MIX), "top_fraction": TOP_QUARTER},
        "confidence_loss": {**ENTROPY_TERMS, "brier": 1.0},
        "grpo": {"max_steps": VARIANT_STEPS},
    },
}
"""The CDRL variants :func:`tune_cdrl` trains, as overrides of the organism's CDRL config (sections
merged key by key): the paper's reward-only GRPO on Gaussian noise, the same on the perturbation mix,
and the differentiable confidence terms (:mod:`catts_training.cdrl.confidence_loss`) on the mix, each term
left out or changed once."""

PROBE_PERTURBS: tuple[str, ...] = ("gaussian", "occlusion", "blur")
GOAL_PERTURBS: tuple[str, ...] = ("gaussian", "occlusion")
"""The probe cells the choice reads (the paper's noise and occlusion); ``blur`` is reported only."""

ACCURACY_TOLERANCE = 0.02
"""Clean validation accuracy a CDRL setting may lose and still be chosen (the paper's two points)."""


def cdrl_choice(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The chosen row: the highest ``goal_ratio`` (the smallest NMLP drop ratio over the Gaussian
    and occlusion cells: the goal is every cell at 2x) among rows whose clean accuracy after CDRL is
    within :data:`ACCURACY_TOLERANCE` of before (ties: the first listed); ``None`` when none
    qualifies."""
    eligible = [r for r in rows if r["clean_after"] >= r["clean_before"] - ACCURACY_TOLERANCE - 1e-12]
    if not eligible:
        return None
    return max(eligible, key=lambda r: r["goal_ratio"] if r["goal_ratio"] == r["goal_ratio"] else -math.inf)


REPLACED_SECTIONS: tuple[str, ...] = ("confidence_loss",)
"""Sections a variant gives whole: its ``confidence_loss`` is every term it has, not an addition to
the template's."""


def _merged(template: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``template`` with each override section merged key by key (``None`` removes a section; the
    sections of :data:`REPLACED_SECTIONS` are replaced whole).

    >>> _merged({"noise": {"kind": "blur", "top_fraction": 0.5}, "confidence_loss": {"brier": 1.0}},
    ...         {"noise": {"kind": "gaussian"}, "confidence_loss": {"clean_entropy": 1.0}})
    {'noise': {'kind': 'gaussian', 'top_fraction': 0.5}, 'confidence_loss': {'clean_entropy': 1.0}}
    """
    config = copy.deepcopy(template)
    for section, values in overrides.items():
        if values is None:
            config.pop(section, None)
        elif section in REPLACED_SECTIONS:
            config[section] = copy.deepcopy(values)
        elif isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **copy.deepcopy(values)}
        else:
            config[section] = copy.deepcopy(values)
    return config


def cdrl_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """One variant's line of the tuning table, from
    :func:`~catts_experiments.reproduce.statistics.compare_probes`."""
    ratios = result["ratios"]
    calibration = result["calibration"]
    goal = [r["nmlp_ratio"] for r in ratios if r["perturb"] in GOAL_PERTURBS]
    return {
        "variant": name,
        "clean_before": calibration["before"]["clean_accuracy"],
        "clean_after": calibration["after"]["clean_accuracy"],
        "clean_nmlp_before": calibration["before"]["clean_nmlp"],
        "clean_nmlp_after": calibration["after"]["clean_nmlp"],
        "ece_before": calibration["before"]["ece"],
        "ece_after": calibration["after"]["ece"],
        "auroc_before": calibration["before"]["auroc"],
        "auroc_after": calibration["after"]["auroc"],
        "goal_ratio": min(goal) if goal and all(g == g for g in goal) else math.nan,
        "cells": {
            f"{r['perturb']} {r['level']:g}": {
                "nmlp_ratio": r["nmlp_ratio"],
                "nmlp_ratio_ci": r.get("nmlp_ratio_ci"),
                "nmlp_drop_before": r["nmlp_drop_before"],
                "nmlp_drop_after": r["nmlp_drop_after"],
                "confidence_ratio": r["confidence_ratio"],
            }
            for r in ratios
        },
        "seconds": result["cdrl"]["seconds"],
        "steps": result["cdrl"].get("steps"),
    }


def tune_cdrl(
    out: str | Path,
    *,
    variants: Sequence[str] = tuple(CDRL_VARIANTS),
    items: int = 200,
    split: str = "validation",
    seed: int = 0,
    steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train each CDRL variant of :data:`CDRL_VARIANTS` once (folder ``out/<variant>``, on the
    generator's train split, resumable), probe the base organism and every variant on ``items``
    scenes of ``split`` drawn with generator seed ``seed`` (one store per model and split and seed),
    and compare each with the base: NMLP drop ratios with bootstrap intervals per perturbation and
    level, clean accuracy and NMLP, ECE and AUROC over every probe row.

    On ``validation`` the variant is chosen (:func:`cdrl_choice`); on ``test`` (or a fresh seed) the
    same checkpoints are only measured, and the table marks the variant validation chose (read from
    ``out/tuning-validation-seed0.json``). Writes ``tuning-<split>-seed<seed>.json`` and ``.md``.
    """
    import yaml

    from catts_experiments.reproduce.plan import CDRL_CONFIG, Plan
    from catts_experiments.reproduce.statistics import compare_probes
    from catts_experiments.reproduce.steps import step_probe
    from catts_experiments.reproduce.training import step_cdrl, training_config
    from catts_graph.organism import organism_path

    unknown = sorted(set(variants) - set(CDRL_VARIANTS))
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; expected some of {list(CDRL_VARIANTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    template = yaml.safe_load(training_config(CDRL_CONFIG).read_text())
    plan = Plan(probe_items=items, probe_split=split, seed=seed, perturbs=PROBE_PERTURBS, cdrl_steps=steps)
    probe_name = f"{split}-seed{seed}"
    log(f"[tune-cdrl] probe of the base organism on {items} {split} scenes (seed {seed})")
    (out / "base").mkdir(exist_ok=True)
    before = step_probe(out / "base", plan, probe_name, organism_path("base"))
    rows = []
    for name in variants:
        folder = out / name
        folder.mkdir(exist_ok=True)
        path = folder / "cdrl.yaml"
        path.write_text(yaml.safe_dump(_merged(template, CDRL_VARIANTS[name]), sort_keys=False))
        log(f"[tune-cdrl] {name}: training")
        cdrl = step_cdrl(folder, dataclasses.replace(plan, cdrl_config=str(path.resolve())))
        log(f"[tune-cdrl] {name}: probe")
        after = step_probe(folder, plan, probe_name, folder / "cdrl")
        compared = compare_probes(
            before,
            after,
            out / "base" / f"probe-{probe_name}.sqlite",
            folder / f"probe-{probe_name}.sqlite",
            plan,
        )
        rows.append(cdrl_row(name, {"cdrl": cdrl, **compared}))
    if split == "validation":
        chosen = cdrl_choice(rows)
        chosen_name = None if chosen is None else chosen["variant"]
    else:
        fit = out / "tuning-validation-seed0.json"
        chosen_name = json.loads(fit.read_text())["chosen"] if fit.is_file() else None
    result = {
        "items": items,
        "split": split,
        "seed": seed,
        "config": CDRL_CONFIG,
        "steps": steps if steps is not None else template["grpo"]["max_steps"],
        "rows": rows,
        "chosen": chosen_name,
    }
    (out / f"tuning-{probe_name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"tuning-{probe_name}.md").write_text(cdrl_tuning_table(result) + "\n")
    return result


def cdrl_tuning_table(result: dict[str, Any]) -> str:
    """Markdown tables of :func:`tune_cdrl`'s result: NMLP drop ratios (with 95% intervals) per cell,
    then clean accuracy, clean NMLP, ECE and AUROC before -> after."""
    from catts_graph.formatting import markdown_table, number, with_interval

    def pair(row: dict[str, Any], key: str) -> str:
        return f"{number(row[key + '_before'])} -> {number(row[key + '_after'])}"

    cells = list(result["rows"][0]["cells"]) if result["rows"] else []
    ratios = [
        [
            r["variant"] + (" (chosen)" if r["variant"] == result["chosen"] else ""),
            *(with_interval(r["cells"][c]["nmlp_ratio"], r["cells"][c]["nmlp_ratio_ci"], 2) for c in cells),
        ]
        for r in result["rows"]
    ]
    calibration = [
        [
            r["variant"],
            pair(r, "clean"),
            pair(r, "clean_nmlp"),
            pair(r, "ece"),
            pair(r, "auroc"),
            number(r["seconds"], 0),
        ]
        for r in result["rows"]
    ]
    drops = [f"{c} {number(result['rows'][0]['cells'][c]['nmlp_drop_before'])}" for c in cells]
    where = f"{result['items']} {result['split']} scenes of generator seed {result['seed']}"
    counts = sorted({r.get("steps") or result["steps"] for r in result["rows"]})
    steps = (
        f"{counts[0]} GRPO steps each"
        if len(counts) == 1
        else f"{counts[0]} GRPO steps each, {counts[-1]} where the name ends in +{counts[-1]}"
    )
    return "\n".join(
        [
            f"CDRL variants ({steps}), probed on {where}: NMLP drop ratio (drop "
            "after CDRL / drop before, NMLP units, on the model's own answers; 95% bootstrap interval "
            "over items). `blur` is a kind training never shows.",
            "",
            markdown_table(["variant", *cells], ratios),
            "",
            "The base organism's NMLP drops (perturbed - clean): " + ", ".join(drops) + ".",
            "",
            "Clean accuracy, clean NMLP, and ECE and AUROC of exp(-NMLP) over every probe row, "
            "before -> after:",
            "",
            markdown_table(
                ["variant", "clean accuracy", "clean NMLP", "ECE", "AUROC", "training s"], calibration
            ),
            "",
            "Chosen on validation (highest smallest Gaussian / occlusion ratio with clean accuracy within "
            "2 points): " + (result["chosen"] or "none qualifies") + ".",
        ]
    )


def ship_cdrl(out: str | Path, variant: str, target: str | Path | None = None) -> Path:
    """Copy the CDRL checkpoint of ``variant`` trained by :func:`tune_cdrl` in ``out`` to ``target``
    (default: the shipped ``base-cdrl`` folder), with an ``organism.json`` that says what it is: the
    variant, its full CDRL config, the run's training summary, the checksum of the base weights it
    started from (:func:`~catts_graph.organism.checkpoint.weights_checksum`; a retrained base makes it
    stale, and the tests say so) and the tuning tables' file names."""
    import yaml

    from catts_graph.organism.checkpoint import (
        CDRL_ORGANISM,
        CHECKPOINT_FILES,
        organism_path,
        weights_checksum,
    )

    source = Path(out) / variant / "cdrl"
    if not (source / "cdrl_summary.json").is_file():
        raise FileNotFoundError(
            f"no finished CDRL run of {variant!r} in {str(source)!r}; run tune-cdrl first"
        )
    destination = Path(target) if target is not None else organism_path(CDRL_ORGANISM)
    destination.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        if (source / name).is_file():
            (destination / name).write_bytes((source / name).read_bytes())
    summary = json.loads((source / "cdrl_summary.json").read_text())
    record = {
        "name": CDRL_ORGANISM,
        "variant": variant,
        "started_from": "base",
        "base_checksum": weights_checksum(organism_path("base")),
        "cdrl_config": yaml.safe_load((Path(out) / variant / "cdrl.yaml").read_text()),
        "training": {
            k: summary[k] for k in ("seconds", "steps", "reward_means", "metric_means") if k in summary
        },
        "command": f"catts ship cdrl --out {out} --variant {variant}",
    }
    record["cdrl_config"].pop("output_dir", None)
    record["cdrl_config"]["model"] = "catts_graph/organism/checkpoints/base"
    (destination / "organism.json").write_text(json.dumps(record, indent=2) + "\n")
    return destination
