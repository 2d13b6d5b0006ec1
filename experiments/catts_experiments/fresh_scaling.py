"""The hard regime's scaling curves on scenes of another generator seed: ``catts measure scaling``.

The reproduction (``catts reproduce``) measures test-time scaling on the hard level's test items of
generator seed 0; issue 23's goals ask for the slope ratio and CA-TTS's margin over majority at N = 8
on a fresh seed too. This runs the reproduction's scaling step alone
(:func:`~catts_experiments.reproduce.scaling.step_scaling`: majority and DeepConf over random size-N
subsets of each item's 32 samples, CA-TTS's paper and adaptive policies with the expert organism at
every N) on ``--test`` test items of level 4 at generator and sampling seed ``--seed``, with the
fast-path thresholds the reproduction chose on seed 0's validation items (:data:`THRESHOLDS`; nothing
is chosen here), and reports what the reproduction reports for it: accuracy per N with intervals, the
slopes in points per doubling of N with their ratio to majority's (items resampled jointly), CA-TTS
against majority at N = 1 and N = 8 (paired), and the adaptive policy's saving. Deterministic (seeded
samples, greedy expert, seeded bootstrap); the run folder resumes.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from catts_experiments.measured import regenerated_by
from catts_graph.formatting import markdown_table, number, with_interval

__all__ = ["THRESHOLDS", "fresh_scaling", "render_markdown"]

LEVEL = 4
THRESHOLDS: dict[str, float] = {"fast_path_share": 0.9, "fast_path_confidence": 0.5}
"""The adaptive fast path the reproduction chose on the hard level's validation items
(``docs/organism/results.json``, ``hard``; a test checks the two agree)."""


def fresh_scaling(
    *, test: int = 500, seed: int = 1, run_dir: str | Path | None = None, n_boot: int = 1000
) -> dict[str, Any]:
    """The scaling step on ``test`` level-4 test items at generator seed ``seed``, summarised."""
    from catts_experiments.reproduce.hard import hard_plan
    from catts_experiments.reproduce.plan import Organisms, Plan
    from catts_experiments.reproduce.scaling import step_scaling
    from catts_experiments.reproduce.statistics import (
        labelled,
        savings,
        slopes,
        summarise_methods,
        versus_majority,
    )

    plan = hard_plan(dataclasses.replace(Plan(), seed=seed, test_items=test, n_boot=n_boot, hard_level=LEVEL))
    with tempfile.TemporaryDirectory(prefix="catts-scaling-") as scratch:
        folder = Path(run_dir) if run_dir is not None else Path(scratch)
        per_item = step_scaling(folder, plan, Organisms(), dict(THRESHOLDS), catts_self=False)
    rows = labelled(per_item)
    return {
        "level": LEVEL,
        "seed": seed,
        "test_items": test,
        "ns": list(plan.ns),
        "subsets": plan.subsets,
        "n_boot": n_boot,
        "thresholds": dict(THRESHOLDS),
        "scaling": summarise_methods(rows, plan),
        "slopes": slopes(rows, plan),
        "versus": versus_majority(rows, plan, sorted({1, plan.ablation_n} & set(plan.ns))),
        "savings": savings(rows, plan),
    }


def _in_order(methods: Mapping[str, Any]) -> list[str]:
    """The rows in the reproduction's order (:data:`SCALING_METHODS`), whatever order the JSON kept."""
    from catts_experiments.reproduce.plan import SCALING_METHODS

    return sorted(methods, key=lambda label: (SCALING_METHODS.index(label.split(" (")[0]), label))


def render_markdown(result: Mapping[str, Any], command: str) -> str:
    """The tables of :func:`fresh_scaling`'s result, with the command that regenerates them."""
    ns = result["ns"]
    order = _in_order(result["scaling"])
    lines = [
        f"# Test-time scaling on fresh scenes (level {result['level']}, generator seed {result['seed']})",
        *regenerated_by(command),
        f"{result['test_items']} test items; accuracy in %, 95% bootstrap intervals over items "
        f"({result['n_boot']} resamples). Majority and DeepConf: averaged over {result['subsets']} random "
        "size-N subsets of each item's 32 samples; CA-TTS (expert organism as Voter and Critic): the "
        "item's first N samples, the library's defaults, the adaptive fast path the reproduction chose "
        f"on seed 0 ({', '.join(f'{k} = {v}' for k, v in sorted(result['thresholds'].items()))}).",
        "",
    ]
    rows = []
    for method in order:
        per_n, fitted = result["scaling"][method], result["slopes"][method]
        rows.append(
            [
                method,
                *(with_interval(per_n[str(n)]["accuracy"], per_n[str(n)]["ci"], 1) for n in ns),
                with_interval(fitted["slope"], fitted["ci"], 2),
                with_interval(fitted["ratio"], fitted["ratio_ci"], 2),
            ]
        )
    headers = ["method", *(f"N={n}" for n in ns), "slope (pts / doubling)", "slope / majority's"]
    lines += [markdown_table(headers, rows), ""]
    rows = [
        [
            method,
            *(
                f"{number(per_n[str(n)]['tokens'], 0)} / {number(per_n[str(n)]['expert_calls'], 1)}"
                for n in ns
            ),
        ]
        for method, per_n in ((method, result["scaling"][method]) for method in order)
    ]
    lines += [
        "Mean base tokens / expert calls per item:",
        "",
        markdown_table(["method", *(f"N={n}" for n in ns)], rows),
        "",
    ]
    rows = [
        [
            v["method"],
            v["n"],
            number(v["accuracy"], 1),
            number(v["reference_accuracy"], 1),
            ("+" if v["difference"] > 0 else "") + with_interval(v["difference"], v["difference_ci"], 1),
        ]
        for v in result["versus"]
    ]
    lines += [
        "CA-TTS against majority voting at the same N (paired; at N = 1 majority is one sample):",
        "",
        markdown_table(["method", "N", "accuracy", "majority", "difference (points)"], rows),
        "",
    ]
    rows = [
        [
            s["method"],
            number(s["accuracy"], 1),
            number(s["reference_accuracy"], 1),
            with_interval(s["saved"], s["saved_ci"], 2),
            "none" if s["matching_n"] is None else f"N={s['matching_n']} ({number(s['matching_saved'], 2)})",
        ]
        for s in result["savings"]
    ]
    if rows:
        headers = [
            "method",
            "accuracy at N=8",
            "majority N=8",
            "tokens saved at N=8",
            "cheapest N reaching it",
        ]
        lines += [
            "The adaptive policy against majority voting at N = 8:",
            "",
            markdown_table(headers, rows),
            "",
        ]
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def add_measure_scaling(parser: Any) -> None:
    """``catts measure scaling``: :func:`fresh_scaling`, written as tables."""
    from catts_experiments.measured import add_output_arguments

    parser.add_argument("--test", type=int, default=500, help="test items (level 4)")
    parser.add_argument("--seed", type=int, default=1, help="generator and sampling seed (1: fresh scenes)")
    add_output_arguments(parser, "keep the runs' stores here and resume from them")
    parser.set_defaults(func=_command)


def _command(args: Any) -> int:
    from catts_experiments.measured import run_measured

    return run_measured(
        args,
        lambda: fresh_scaling(test=args.test, seed=args.seed, run_dir=args.run_dir),
        f"catts measure scaling --test {args.test} --seed {args.seed}",
        render_markdown,
    )
