"""The hard regime: CA-TTS's steps again on the generator's hard level (``plan.hard_level``, 4), where
the base organism answers ~69% greedily and the expert organism ~87% (``docs/organism/hard-level.md``).

On the mixed levels the base is already right on ~92% of the test scenes, which squeezes CA-TTS
between its sampled accuracy and a ceiling near 97%: slopes, ablations and step repair could not be
told apart there. Here the same steps run on hard items, in the run folder's ``level<N>/`` (their
own stores, resumable): the adaptive thresholds on hard validation items, the scaling runs (N = 1..32,
slopes and slope ratios against majority), the adaptive saving, CA-TTS against majority at N = 1 and
N = ``ablation_n``, the ablations with each one's paired effect, step repair at equal expert calls
(the floor without the repair routes the same items to the same expert calls) and the reflection on
the expert's critique."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catts_experiments.reproduce.plan import Organisms, Plan, cached, items_of
from catts_experiments.reproduce.scaling import (
    ablation_items,
    step_repair_comparison,
    step_scaling,
    step_thresholds,
)
from catts_experiments.reproduce.statistics import (
    ablation_effects,
    labelled,
    module_answers,
    savings,
    slopes,
    summarise_methods,
    versus_majority,
)
from catts_experiments.reproduce.steps import step_reflection
from catts_graph.eval.store import db_path

Timed = Callable[[str, Callable[[], Any]], Any]
"""Runs a named piece of work and adds its seconds to the run's timings (``reproduce``'s ``timed``)."""


def hard_plan(plan: Plan) -> Plan:
    """``plan`` with its items at the hard level.

    >>> hard_plan(Plan()).level
    4
    """
    if plan.hard_level is None:
        raise ValueError("plan.hard_level is None: the hard regime is not run")
    return dataclasses.replace(plan, level=plan.hard_level)


def step_hard(out: Path, plan: Plan, models: Organisms, timed: Timed) -> dict[str, Any]:
    """Every CA-TTS step on the hard level, in ``out/level<N>/``; the :class:`HardRegime` fields."""
    hard = hard_plan(plan)
    folder = out / f"level{hard.level}"
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"level {hard.level}"
    thresholds = timed(f"{tag} thresholds", lambda: step_thresholds(folder, hard, models))
    chosen = thresholds["chosen"]
    per_item = timed(
        f"{tag} scaling", lambda: step_scaling(folder, hard, models, chosen, catts_self=hard.hard_self_expert)
    )
    rows = labelled(per_item)
    cells = timed(f"{tag} ablations", lambda: ablation_items(folder, hard, models, chosen))
    ablations = summarise_methods(cells, hard)
    n = str(hard.ablation_n)
    at_n = {method: per_n[n] for method, per_n in cells.items()}
    return {
        "plan": dataclasses.asdict(hard),
        "thresholds": thresholds,
        "scaling": {expert: summarise_methods(table, hard) for expert, table in per_item.items()},
        "slopes": slopes(rows, hard),
        "savings": savings(rows, hard),
        "versus": versus_majority(rows, hard, sorted({1, hard.ablation_n} & set(hard.ns))),
        "ablations": {method: table[n] for method, table in ablations.items()},
        "ablation_effects": ablation_effects(at_n, hard, full="catts_paper"),
        "module_answers": module_answers(
            db_path(folder / "ablations"),
            items_of("test", hard.test_items, hard),
            "catts_paper",
            hard.ablation_n,
        ),
        "reflection": timed(f"{tag} reflection", lambda: step_reflection(folder, hard, models)),
        "step_repair": timed(
            f"{tag} step repair",
            lambda: cached(
                folder / "step_repair.json", lambda: step_repair_comparison(folder, hard, models, chosen)
            ),
        ),
    }
