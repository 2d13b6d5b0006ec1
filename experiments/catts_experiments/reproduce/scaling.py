"""The reproduction's test-time scaling steps: the adaptive thresholds on validation, the scaling
runs for N = 1..32, the ablations and step repair, all through the evaluation harness
(:func:`catts_graph.eval.runner.run_eval`, resumable SQLite stores in the run folder)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catts_experiments.reproduce.plan import (
    ABLATIONS,
    EXPERT_METHODS,
    SCALING_METHODS,
    STEP_FLOORS,
    Organisms,
    Plan,
    cached,
    catts_config,
    items_of,
)
from catts_experiments.reproduce.statistics import paired_points, summarise_methods


def accuracy_by_n(store_path: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {n: {"accuracy", "tokens", "expert_calls", "seconds", "items"}}}`` from a run's store."""
    from catts_graph.eval.store import read_store

    with read_store(store_path) as store:
        results = store.results()
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["method"], int(row["n"])), []).append(row)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for (method, n), rows in sorted(groups.items()):
        table.setdefault(method, {})[n] = {
            "accuracy": 100.0 * sum(r["correct"] for r in rows) / len(rows),
            "tokens": sum(r["tokens"] for r in rows) / len(rows),
            "expert_calls": sum(r["expert_calls"] for r in rows) / len(rows),
            "seconds": sum(r["seconds"] for r in rows) / len(rows),
            "items": len(rows),
        }
    return table


def run_methods(
    out: Path,
    name: str,
    items: Sequence[Any],
    methods: Sequence[str],
    ns: Sequence[int],
    *,
    base: Any,
    expert: Any,
    expert_name: str,
    plan: Plan,
    config: Any,
) -> Path:
    """Evaluate ``methods`` at ``ns`` on ``items`` (resumable store ``<out>/<name>``); its path."""
    from rich.console import Console

    from catts_graph.eval.runner import run_eval
    from catts_graph.organism.expert import OrganismExpert

    return run_eval(
        items,
        methods=methods,
        ns=ns,
        base_model=base,
        expert=OrganismExpert(vlm=expert),
        run_dir=out / name,
        seed=plan.seed,
        concurrency=plan.concurrency,
        config=config,
        model_name="organism:base",
        expert_name=f"organism:{expert_name}",
        console=Console(stderr=True, quiet=True),
    )


def step_thresholds(out: Path, plan: Plan, models: Organisms) -> dict[str, Any]:
    """Grid-search the adaptive fast path on the validation split; pick the cheapest setting within
    one point of the best accuracy (ties: fewer tokens). Every grid point sees the same seeded
    samples (one pool drawing per item, kept in memory for the search)."""
    from catts_graph.models.replay import ReplayVLM

    items = items_of("validation", plan.validation_items, plan)
    base = ReplayVLM(models.get("base"), memo_max_n=plan.threshold_n)
    expert = models.get("expert")
    grid = []
    for share in plan.threshold_grid["fast_path_share"]:
        for confidence in plan.threshold_grid["fast_path_confidence"]:
            config = catts_config(fast_path_share=share, fast_path_confidence=confidence)
            table = accuracy_by_n(
                run_methods(
                    out / "thresholds",
                    f"share{share:g}-conf{confidence:g}",
                    items,
                    ["catts_adaptive"],
                    [plan.threshold_n],
                    base=base,
                    expert=expert,
                    expert_name="expert",
                    plan=plan,
                    config=config,
                )
            )
            cell = table["catts_adaptive"][plan.threshold_n]
            grid.append({"fast_path_share": share, "fast_path_confidence": confidence, **cell})
    best = max(cell["accuracy"] for cell in grid)
    chosen = min(
        (cell for cell in grid if cell["accuracy"] >= best - 1.0), key=lambda c: (c["tokens"], -c["accuracy"])
    )
    return {
        "grid": grid,
        "chosen": {
            "fast_path_share": chosen["fast_path_share"],
            "fast_path_confidence": chosen["fast_path_confidence"],
        },
        "n": plan.threshold_n,
        "items": len(items),
    }


def method_items(
    store_path: Path, items: Sequence[Any], methods: Sequence[str], ns: Sequence[int], plan: Plan, config: Any
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per method and N, per item (in ``items``' order): ``correct`` (0-1), ``tokens`` and
    ``expert_calls``.

    The CA-TTS methods are read from the run's rows (the pool's first N samples). The offline
    methods are recomputed from the stored pools and averaged over ``plan.subsets`` random size-N
    subsets of each pool (seeded per item and N; at N = the pool's size, the whole pool once): one
    draw order would make every N below 32 depend on which samples happened to come first.
    """
    from catts_graph.eval.methods import SamplePool, parse_method, run_offline
    from catts_graph.eval.scoring import judge_answer
    from catts_graph.eval.store import read_store
    from catts_graph.task import item_seed

    table: dict[str, dict[str, dict[str, list[float]]]] = {
        m: {str(n): {"correct": [], "tokens": [], "expert_calls": []} for n in ns} for m in methods
    }
    with read_store(store_path) as store:
        rows = {(r["item_id"], r["method"], int(r["n"])): r for r in store.results()}
        pools = {item.id: SamplePool.from_records(store.get_pool(item.id) or []) for item in items}
    for item in items:
        pool = pools[item.id]
        for method in methods:
            spec = parse_method(method)
            for n in ns:
                cell = table[method][str(n)]
                if spec.kind == "catts":
                    row = rows[item.id, method, n]
                    cell["correct"].append(float(row["correct"]))
                    cell["tokens"].append(float(row["tokens"]))
                    cell["expert_calls"].append(float(row["expert_calls"]))
                    continue
                size = len(pool.records)
                rng = np.random.default_rng([item_seed(plan.seed, item.id), n])
                orders = (
                    [list(range(size))]
                    if n >= size
                    else [rng.permutation(size)[:n].tolist() for _ in range(plan.subsets)]
                )
                correct = tokens = 0.0
                for order in orders:
                    subset = dataclasses.replace(pool, records=[pool.records[i] for i in order])
                    result = run_offline(spec, subset, n, config)
                    correct += judge_answer(item, result.answer, result.response).correct
                    tokens += result.tokens
                cell["correct"].append(correct / len(orders))
                cell["tokens"].append(tokens / len(orders))
                cell["expert_calls"].append(0.0)
    return table


def step_scaling(
    out: Path, plan: Plan, models: Organisms, thresholds: dict[str, float], *, catts_self: bool = True
) -> dict[str, Any]:
    """Test-time scaling on the test split: ``{"self" | "expert": {method: {n: per-item lists}}}``
    (:func:`method_items`), the base organism as its own expert or the expert organism. Without
    ``catts_self`` the ``self`` table holds the offline methods only (majority, DeepConf: no expert),
    in a store named ``scaling-pool``."""
    items = items_of("test", plan.test_items, plan)
    config = catts_config(**thresholds)
    base = models.get("base")
    result = {}
    offline = tuple(method for method in SCALING_METHODS if method not in EXPERT_METHODS)
    for expert, methods in (("self", SCALING_METHODS if catts_self else offline), ("expert", EXPERT_METHODS)):
        name = f"scaling-{expert}" if catts_self or expert != "self" else "scaling-pool"
        path = run_methods(
            out,
            name,
            items,
            methods,
            plan.ns,
            base=base,
            expert=base if expert == "self" else models.get("expert"),
            expert_name="base" if expert == "self" else "expert",
            plan=plan,
            config=config,
        )
        result[expert] = cached(
            out / f"{name}-items.json",
            lambda path=path, methods=methods: method_items(path, items, methods, plan.ns, plan, config),
        )
    return result


def step_repair_comparison(
    out: Path, plan: Plan, models: Organisms, thresholds: dict[str, float]
) -> dict[str, Any]:
    """MMBoundary's ``step_repair`` in the adaptive policy against the adaptive policy without it
    (expert organism, the chosen thresholds): the step floor searched on validation at
    ``threshold_n`` (best accuracy, ties: fewer tokens), then on the test items at ``ablation_n``:
    adaptive, adaptive with the floor but the repair disabled (the same routing and expert calls),
    adaptive with ``step_repair``; accuracy, base tokens and expert calls per item, and the paired
    differences. Every run's first wave is half the budget: ``step_repair`` draws from the budget the
    first wave leaves (with the whole budget in the first wave it never runs)."""
    from catts_graph.models.replay import ReplayVLM

    validation = items_of("validation", plan.validation_items, plan)
    base = ReplayVLM(models.get("base"), memo_max_n=plan.threshold_n)
    grid = []
    for floor in (None, *STEP_FLOORS):
        config = catts_config(**thresholds, step_floor=floor, n_samples=max(1, plan.threshold_n // 2))
        name = "off" if floor is None else f"floor{floor:g}"
        table = accuracy_by_n(
            run_methods(
                out / "step-repair-validation",
                name,
                validation,
                ["catts_adaptive"],
                [plan.threshold_n],
                base=base,
                expert=models.get("expert"),
                expert_name="expert",
                plan=plan,
                config=config,
            )
        )
        grid.append({"step_floor": floor, **table["catts_adaptive"][plan.threshold_n]})
    floors = [cell for cell in grid if cell["step_floor"] is not None]
    chosen = max(floors, key=lambda c: (c["accuracy"], -c["tokens"]))["step_floor"]
    items = items_of("test", plan.test_items, plan)
    rows: dict[str, Any] = {}
    per_item: dict[str, dict[str, list[float]]] = {}
    runs = (
        ("adaptive", None, (), "step-repair-off"),
        ("adaptive + step floor, no repair", chosen, ("step_repair",), "step-floor-only"),
        ("adaptive + step_repair", chosen, (), "step-repair"),
    )
    for label, floor, disabled, name in runs:
        config = catts_config(
            **thresholds,
            step_floor=floor,
            disabled_modules=disabled,
            n_samples=max(1, plan.ablation_n // 2),
        )
        cells = expert_organism_items(out, name, items, ["catts_adaptive"], plan, models, config)
        per_item[label] = cells["catts_adaptive"][str(plan.ablation_n)]
        rows[label] = summarise_methods(cells, plan)["catts_adaptive"][str(plan.ablation_n)]

    def paired(other: str) -> tuple[float, list[float]]:
        return paired_points(per_item["adaptive + step_repair"]["correct"], per_item[other]["correct"], plan)

    difference, difference_ci = paired("adaptive")
    # The floor alone routes the same items off the fast path (the same expert calls): what
    # step_repair itself adds.
    own, own_ci = paired("adaptive + step floor, no repair")
    return {
        "grid": grid,
        "chosen": chosen,
        "n": plan.ablation_n,
        "rows": rows,
        "difference": difference,
        "difference_ci": difference_ci,
        "repair_difference": own,
        "repair_difference_ci": own_ci,
    }


def ablation_items(
    out: Path, plan: Plan, models: Organisms, thresholds: dict[str, float]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """CA-TTS (paper policy, expert organism) without each module or boost: the runs' per-item cells
    (:func:`method_items`) at ``plan.ablation_n``."""
    items = items_of("test", plan.test_items, plan)
    return expert_organism_items(out, "ablations", items, ABLATIONS, plan, models, catts_config(**thresholds))


def expert_organism_items(
    out: Path,
    name: str,
    items: Sequence[Any],
    methods: Sequence[str],
    plan: Plan,
    models: Organisms,
    config: Any,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``methods`` at ``plan.ablation_n`` on ``items`` with the base organism and the expert organism
    as the expert (resumable store ``<out>/<name>``): the per-item cells of :func:`method_items`."""
    path = run_methods(
        out,
        name,
        items,
        methods,
        [plan.ablation_n],
        base=models.get("base"),
        expert=models.get("expert"),
        expert_name="expert",
        plan=plan,
        config=config,
    )
    return method_items(path, items, methods, [plan.ablation_n], plan, config)
