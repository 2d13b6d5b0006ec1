"""Settings chosen on validation data: DeepConf's window and tail, the ``nmlp_floor``, and CDRL's
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
The test split is left for ``catts organism reproduce``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CDRL_GRID",
    "FLOORS",
    "WINDOWS",
    "cdrl_choice",
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
    from catts_graph.organism.evaluate import MAX_NEW_TOKENS
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


CDRL_GRID: dict[str, tuple[float, ...]] = {
    "sensitivity_margin": (0.1, 0.25, 1.0),
    "learning_rate": (2e-5, 1e-4),
}
"""The CDRL settings :func:`tune_cdrl` searches: the hinge of the perceptual-sensitivity reward in
NMLP units (the config's 1.0 is far above the ~0.07 the organism's noised answers move) and the
learning rate."""

ACCURACY_TOLERANCE = 0.02
"""Clean validation accuracy a CDRL setting may lose and still be chosen (the paper's two points)."""


def cdrl_choice(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The chosen row: the highest ``pooled_ratio`` among rows whose clean accuracy after CDRL is
    within :data:`ACCURACY_TOLERANCE` of before (ties: the smaller learning rate, then margin);
    ``None`` when no row qualifies."""
    eligible = [r for r in rows if r["clean_after"] >= r["clean_before"] - ACCURACY_TOLERANCE - 1e-12]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r["pooled_ratio"], -r["learning_rate"], -r["sensitivity_margin"]))


def _cdrl_row(margin: float, lr: float, result: dict[str, Any]) -> dict[str, Any]:
    ratios = result["ratios"]
    before = sum(r["confidence_drop_before"] for r in ratios)
    after = sum(r["confidence_drop_after"] for r in ratios)
    calibration = result["calibration"]
    return {
        "sensitivity_margin": margin,
        "learning_rate": lr,
        "clean_before": calibration["before"]["clean_accuracy"],
        "clean_after": calibration["after"]["clean_accuracy"],
        "ece_before": calibration["before"]["ece"],
        "ece_after": calibration["after"]["ece"],
        "auroc_before": calibration["before"]["auroc"],
        "auroc_after": calibration["after"]["auroc"],
        # Drops are signed (perturbed minus clean: negative when confidence falls); so is each sum.
        "pooled_ratio": after / before if before != 0 else float("nan"),
        "ratios": {f"{r['perturb']} {r['level']:g}": r["confidence_ratio"] for r in ratios},
        "seconds": result["cdrl"]["seconds"],
    }


def tune_cdrl(
    out: str | Path,
    *,
    items: int = 100,
    margins: Sequence[float] = CDRL_GRID["sensitivity_margin"],
    learning_rates: Sequence[float] = CDRL_GRID["learning_rate"],
    perturbs: Sequence[str] = ("gaussian", "occlusion"),
    steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """CDRL at every (margin, learning rate), probed on ``items`` validation items before and after;
    one folder per setting under ``out`` (each resumable, the probe before computed once and
    copied). Returns ``{"rows", "chosen", "items", "config"}`` and writes ``tuning.json`` and
    ``tuning.md`` into ``out``."""
    import yaml

    from catts_graph.organism.reproduce import CDRL_CONFIG, Plan, cdrl_effect, training_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    template = yaml.safe_load(training_config(CDRL_CONFIG).read_text())
    rows, probe_before = [], None
    for margin in margins:
        for lr in learning_rates:
            folder = out / f"margin{margin:g}-lr{lr:g}"
            folder.mkdir(exist_ok=True)
            config = copy.deepcopy(template)
            config["rewards"]["sensitivity_margin"] = float(margin)
            config["grpo"]["learning_rate"] = float(lr)
            path = folder / "cdrl.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            if probe_before is not None and not (folder / "probe-base.sqlite").exists():
                shutil.copy(probe_before, folder / "probe-base.sqlite")
            plan = Plan(
                probe_items=items,
                probe_split="validation",
                perturbs=tuple(perturbs),
                cdrl_config=str(path.resolve()),
                cdrl_steps=steps,
            )
            log(f"[tune-cdrl] margin {margin:g}, learning rate {lr:g}")
            rows.append(_cdrl_row(float(margin), float(lr), cdrl_effect(folder, plan, log=lambda line: None)))
            probe_before = probe_before or folder / "probe-base.sqlite"
    chosen = cdrl_choice(rows)
    result = {
        "items": items,
        "split": "validation",
        "config": CDRL_CONFIG,
        "steps": steps if steps is not None else template["grpo"]["max_steps"],
        "rows": rows,
        "chosen": None if chosen is None else {k: chosen[k] for k in ("sensitivity_margin", "learning_rate")},
    }
    (out / "tuning.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tuning.md").write_text(cdrl_tuning_table(result) + "\n")
    return result


def cdrl_tuning_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`tune_cdrl`'s result."""
    from catts_graph.formatting import markdown_table

    def number(value: float) -> str:
        return "n/a" if value != value else f"{value:.3f}"

    cells = list(result["rows"][0]["ratios"]) if result["rows"] else []
    body = [
        [
            f"{r['sensitivity_margin']:g}",
            f"{r['learning_rate']:g}",
            f"{number(r['clean_before'])} -> {number(r['clean_after'])}",
            f"{number(r['ece_before'])} -> {number(r['ece_after'])}",
            f"{number(r['auroc_before'])} -> {number(r['auroc_after'])}",
            *(number(r["ratios"][c]) for c in cells),
            number(r["pooled_ratio"]),
        ]
        for r in result["rows"]
    ]
    chosen = result["chosen"]
    return "\n".join(
        [
            f"CDRL settings on {result['items']} validation items, {result['steps']} GRPO steps each "
            "(clean accuracy, ECE and AUROC over every probe row, before -> after; confidence-drop "
            "ratios after / before per perturbation and level, and pooled over them).",
            "",
            markdown_table(
                ["margin", "learning rate", "clean accuracy", "ECE", "AUROC", *cells, "pooled ratio"], body
            ),
            "",
            "Chosen (highest pooled ratio with clean accuracy within 2 points): "
            + (
                "none qualifies"
                if chosen is None
                else f"margin {chosen['sensitivity_margin']:g}, learning rate {chosen['learning_rate']:g}"
            )
            + ".",
        ]
    )
