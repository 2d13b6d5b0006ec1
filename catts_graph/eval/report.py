"""``catts report RUN_DIR``: a Markdown report with tables and PNG plots from ``results.sqlite``.

Everything is read from the run's database with plain SQL (tables ``meta``, ``results``, ``probe``;
see :mod:`catts_graph.eval.store`) and recomputed here, so a report can be rebuilt at any time,
also from a run that is still going or was interrupted. Sections appear only when their table has
rows: a probe-only run directory gets the probe section alone.

- Accuracy per method and N (percent), with a 95% percentile bootstrap interval over items
  (:func:`catts_graph.metrics.bootstrap_interval`, 1000 resamples, seed 0), and the scaling slope
  (points per doubling of N, :func:`catts_graph.metrics.scaling_slope`) when a method has two N or more.
  The headline is the benchmark's official scorer (the ``official`` column,
  :mod:`catts_graph.eval.official`; the run's ``meta["scorer"]`` names it), the strict rule's
  accuracy beside it; a cell with a row stored before the official column existed falls back to
  the strict rule and says so.
- Calibration of each method at its largest N: ECE and MCE (15 equal-width bins), Brier score and
  AUROC of the ``confidence`` column against the strict verdicts (AUROC "n/a" when all answers are
  right or all wrong); the official rules' guesses (MMMU's random option) would blur it.
- The probe (:func:`catts_graph.eval.probe.probe_summary`).
- Cost at each method's largest N: mean generated tokens, expert calls and seconds per item, and the
  share of items in which each module ran (from the ``modules`` column).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catts_graph import metrics
from catts_graph.eval import plots
from catts_graph.eval.probe import ProbeSummaryRow, probe_summary
from catts_graph.eval.store import DB_FILENAME, read_store
from catts_graph.formatting import markdown_table, number
from catts_graph.graph import NODES

__all__ = [
    "AccuracyCell",
    "MethodSummary",
    "method_summaries",
    "write_report",
]

N_BOOT = 1000
CONFIDENCE_LEVEL = 0.95
PLOTS = ("scaling.png", "reliability.png", "probe.png", "cost.png")
# Graph nodes in the order a run passes them (DESIGN.md), so the module columns read like the graph.
MODULE_ORDER = NODES


@dataclass(frozen=True)
class AccuracyCell:
    """Accuracy of one method at one N over ``items`` items, in points with its bootstrap interval:
    by the official scorer when ``official`` (every row has its verdict), else by the strict rule;
    ``strict`` is the strict rule's accuracy."""

    n: int
    items: int
    accuracy: float
    lower: float
    upper: float
    strict: float
    official: bool


@dataclass(frozen=True)
class MethodSummary:
    """Everything the report says about one method."""

    method: str
    cells: list[AccuracyCell]
    slope: float
    """Points per doubling of N; NaN with a single N."""
    largest_n: int
    items: int
    """Items at the largest N."""
    calibrated: int
    """Items at the largest N with a confidence (the calibration numbers are over these)."""
    ece: float
    mce: float
    brier: float
    auroc: float
    """NaN when every calibrated item is right or every one wrong (or none has a confidence)."""
    tokens: float
    expert_calls: float
    seconds: float
    modules: dict[str, float] = field(default_factory=dict)
    """Share of items (0-1) at the largest N in which each module ran at least once."""
    bins: list[metrics.Bin] = field(default_factory=list)
    """Reliability bins (15) of the calibrated items at the largest N; empty when there are none."""


def _module_names(entries: Sequence[Any] | None) -> set[str]:
    names = set()
    for entry in entries or []:
        if isinstance(entry, str):
            names.add(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("module"), str):
            names.add(entry["module"])
    return names


def _mean(values: Sequence[float | None]) -> float:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else math.nan


def _method_order(found: Sequence[str], meta: dict[str, Any]) -> list[str]:
    """Methods in the order the run listed them (``meta["methods"]``), then any others by name."""
    listed = meta.get("methods")
    listed = [m for m in listed if isinstance(m, str)] if isinstance(listed, list) else []
    return [m for m in listed if m in found] + sorted(m for m in found if m not in listed)


def method_summaries(store_path: str | Path) -> list[MethodSummary]:
    """Per method: accuracy per N with intervals, slope, calibration and cost at its largest N."""
    with read_store(store_path) as store:
        meta = store.meta
        results = sorted(store.results(), key=lambda r: (r["method"], r["n"], r["item_id"]))
    keys = (
        "method",
        "n",
        "correct",
        "confidence",
        "tokens",
        "expert_calls",
        "seconds",
        "modules",
        "official",
    )
    rows = [tuple(r[key] for key in keys) for r in results]
    by_method: dict[str, dict[int, list[tuple[Any, ...]]]] = {}
    for row in rows:
        by_method.setdefault(row[0], {}).setdefault(int(row[1]), []).append(row)
    summaries = []
    for method in _method_order(list(by_method), meta):
        per_n = by_method[method]
        cells = []
        for n in sorted(per_n):
            strict = [100.0 * int(r[2]) for r in per_n[n]]
            official = all(r[8] is not None for r in per_n[n])
            points = [100.0 * int(r[8]) for r in per_n[n]] if official else strict
            lower, upper = metrics.bootstrap_interval(points, n_boot=N_BOOT, level=CONFIDENCE_LEVEL, seed=0)
            cells.append(
                AccuracyCell(
                    n, len(points), float(np.mean(points)), lower, upper, float(np.mean(strict)), official
                )
            )
        slope = (
            metrics.scaling_slope([c.n for c in cells], [c.accuracy for c in cells])
            if len(cells) >= 2
            else math.nan
        )
        largest = max(per_n)
        top = per_n[largest]
        scored = [(float(r[3]), bool(r[2])) for r in top if r[3] is not None]
        confidences = [c for c, _ in scored]
        correct = [y for _, y in scored]
        ece = mce = brier = auroc = math.nan
        bins: list[metrics.Bin] = []
        if scored:
            bins = metrics.reliability_bins(confidences, correct)
            ece = metrics.expected_calibration_error(confidences, correct)
            mce = metrics.maximum_calibration_error(confidences, correct)
            brier = metrics.brier_score(confidences, correct)
            auroc = metrics.auroc(confidences, correct)
        ran = [_module_names(r[7]) for r in top]
        modules = {m: sum(m in names for names in ran) / len(top) for m in set().union(*ran)}
        summaries.append(
            MethodSummary(
                method=method,
                cells=cells,
                slope=slope,
                largest_n=largest,
                items=len(top),
                calibrated=len(scored),
                ece=ece,
                mce=mce,
                brier=brier,
                auroc=auroc,
                tokens=_mean([r[4] for r in top]),
                expert_calls=_mean([r[5] for r in top]),
                seconds=_mean([r[6] for r in top]),
                modules=modules,
                bins=bins,
            )
        )
    return summaries


def _ordered_modules(summaries: Sequence[MethodSummary]) -> list[str]:
    seen = {m for s in summaries for m in s.modules}
    return [m for m in MODULE_ORDER if m in seen] + sorted(seen.difference(MODULE_ORDER))


# -- Markdown ---------------------------------------------------------------------------------------


def _header(meta: dict[str, Any], run_dir: Path) -> list[str]:
    benchmark = meta.get("benchmark") or (meta.get("probe") or {}).get("benchmark")
    lines = [
        f"# Evaluation report{': ' + str(benchmark) if benchmark else ''}",
        "",
        f"Run directory: `{run_dir}`. Rebuild with `catts report {run_dir}`.",
        "",
    ]
    keys = ("benchmark", "scorer", "model", "expert", "seed", "ns", "methods")
    shown = [(k, meta[k]) for k in keys if k in meta]
    if "probe" in meta:
        shown.append(("probe", meta["probe"]))
    if shown:
        lines += [
            markdown_table(
                ["setting", "value"], [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in shown]
            ),
            "",
        ]
    if "config" in meta:
        lines += [
            "<details><summary>configuration</summary>",
            "",
            "```json",
            json.dumps(meta["config"], indent=2, sort_keys=True),
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def _accuracy_cell(c: AccuracyCell) -> str:
    headline = f"{c.accuracy:.1f} [{c.lower:.1f}, {c.upper:.1f}]"
    return f"{headline} (strict {c.strict:.1f})" if c.official else f"{headline} (strict only)"


def _accuracy_section(summaries: Sequence[MethodSummary], meta: dict[str, Any]) -> list[str]:
    ns = sorted({c.n for s in summaries for c in s.cells})
    rows = []
    for s in summaries:
        by_n = {c.n: c for c in s.cells}
        row: list[object] = [s.method]
        for n in ns:
            c = by_n.get(n)
            row.append("—" if c is None else _accuracy_cell(c))
        row += [number(s.slope, 2), s.items]
        rows.append(row)
    scorer = (meta.get("scorer") or {}).get("headline", "the benchmark's official rule")
    return [
        "## Accuracy and test-time scaling",
        "",
        f"Accuracy in percent at each N by the benchmark's official scoring rule (`{scorer}`, "
        "comparable with the papers), with the "
        f"{int(CONFIDENCE_LEVEL * 100)}% percentile bootstrap interval over items ({N_BOOT} resamples, "
        "seed 0); in parentheses the strict rule's accuracy (exact after normalisation, else "
        "math-verify; never a guess). 'strict only': rows stored before the official scorer, "
        "scored strictly. Slope: least-squares accuracy points per doubling of N (log2 N), of the "
        "headline accuracy.",
        "",
        markdown_table(["method", *[f"N={n}" for n in ns], "slope (pts/doubling)", "items"], rows),
        "",
        "![accuracy against N](plots/scaling.png)",
        "",
    ]


def _calibration_section(summaries: Sequence[MethodSummary]) -> list[str]:
    rows = [
        (s.method, s.largest_n, s.calibrated, number(s.ece), number(s.mce), number(s.brier), number(s.auroc))
        for s in summaries
    ]
    return [
        "## Calibration",
        "",
        "Each method at its largest N: ECE and MCE over 15 equal-width confidence bins, Brier score, and "
        "AUROC of confidence for right against wrong answers (n/a when all are right or all wrong).",
        "",
        markdown_table(["method", "N", "items", "ECE", "MCE", "Brier", "AUROC"], rows),
        "",
        "![reliability diagrams](plots/reliability.png)",
        "",
    ]


def _probe_section(rows: Sequence[ProbeSummaryRow]) -> list[str]:
    table = [
        (
            r.perturb,
            f"{r.level:g}",
            r.items,
            number(100 * r.accuracy, 1),
            number(r.mean_confidence),
            number(r.mean_nmlp),
            number(r.confidence_drop),
            number(r.confidence_drop_nmlp),
            number(r.ece),
            number(r.auroc),
        )
        for r in rows
    ]
    return [
        "## Probe: confidence under perturbation",
        "",
        "Level 0 is the clean image (the same rows for every kind). Confidence is exp(-NMLP). Drops are "
        "paired over items, perturbed minus clean: in confidence units, and in NMLP units with "
        "confidence taken as -NMLP (the paper's unit). Negative means the confidence fell; a "
        "perceptually blunt model loses accuracy with little drop.",
        "",
        markdown_table(
            [
                "perturb",
                "level",
                "items",
                "accuracy %",
                "confidence",
                "NMLP",
                "drop (conf)",
                "drop (-NMLP)",
                "ECE",
                "AUROC",
            ],
            table,
        ),
        "",
        "![accuracy and confidence against perturbation level](plots/probe.png)",
        "",
    ]


def _cost_section(summaries: Sequence[MethodSummary]) -> list[str]:
    modules = _ordered_modules(summaries)
    rows = [
        (
            s.method,
            s.largest_n,
            number(s.tokens, 1),
            number(s.expert_calls, 2),
            number(s.seconds, 2),
            *[f"{100 * s.modules.get(m, 0.0):.0f}%" if s.modules else "—" for m in modules],
        )
        for s in summaries
    ]
    return [
        "## Module usage and cost",
        "",
        "Each method at its largest N: mean generated tokens, expert calls and seconds per item, and the "
        "share of items in which each module ran (— for methods that run no graph modules).",
        "",
        markdown_table(["method", "N", "tokens", "expert calls", "seconds", *modules], rows),
        "",
        "![cost and module usage](plots/cost.png)",
        "",
    ]


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.md`` and its PNGs in ``RUN_DIR/plots/``; return the report's path."""
    folder = Path(run_dir)
    store_path = folder / DB_FILENAME
    if not store_path.is_file():
        raise FileNotFoundError(
            f"run_dir: no {DB_FILENAME} in {str(folder)!r}; run `catts eval` or `catts probe` with "
            "--run-dir pointing there first"
        )
    with read_store(store_path) as store:
        meta = store.meta
    summaries = method_summaries(store_path)
    probe_rows = probe_summary(store_path)
    plot_dir = folder / "plots"
    lines = _header(meta, folder)
    if summaries:
        plots.plot_scaling(
            {
                s.method: plots.ScalingCurve(
                    [c.n for c in s.cells],
                    [c.accuracy for c in s.cells],
                    [c.lower for c in s.cells],
                    [c.upper for c in s.cells],
                )
                for s in summaries
            },
            plot_dir / "scaling.png",
        )
        lines += _accuracy_section(summaries, meta)
        reliability = {s.method: s.bins for s in summaries if s.bins}
        if reliability:
            plots.plot_reliability(reliability, plot_dir / "reliability.png")
            lines += _calibration_section(summaries)
    if probe_rows:
        plots.plot_probe(probe_rows, plot_dir / "probe.png")
        lines += _probe_section(probe_rows)
    if summaries:
        plots.plot_cost(
            {
                s.method: plots.MethodCost(
                    tokens=0.0 if math.isnan(s.tokens) else s.tokens,
                    expert_calls=0.0 if math.isnan(s.expert_calls) else s.expert_calls,
                    seconds=0.0 if math.isnan(s.seconds) else s.seconds,
                    modules={m: s.modules.get(m, 0.0) for m in _ordered_modules(summaries)}
                    if s.modules
                    else {},
                )
                for s in summaries
            },
            plot_dir / "cost.png",
        )
        lines += _cost_section(summaries)
    if not summaries and not probe_rows:
        lines += ["No results yet: the `results` and `probe` tables are empty.", ""]
    # A plot of an earlier report whose section is gone now would be a stale, unlinked file.
    for name in PLOTS:
        if f"](plots/{name})" not in "\n".join(lines):
            (plot_dir / name).unlink(missing_ok=True)
    path = folder / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# -- command line -----------------------------------------------------------------------------------
