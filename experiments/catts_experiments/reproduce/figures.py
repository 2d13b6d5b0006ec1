"""The reproduction's figures (``figures/*.png``): the probe before and after CDRL, accuracy against N,
and accuracy against the base model's tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from catts_experiments.reproduce.results import CostCell, Results
from catts_experiments.reproduce.statistics import row_label


def write_figures(out: Path, results: Results) -> list[Path]:
    """Write ``out/figures/probe_before.png``, ``probe_after.png``, ``scaling.png`` and
    ``accuracy_vs_tokens.png``; their paths."""
    from matplotlib.figure import Figure

    from catts_graph.eval.plots import ScalingCurve, plot_probe, plot_scaling
    from catts_graph.eval.probe import ProbeSummaryRow

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    written = []
    fields = {f.name for f in dataclasses.fields(ProbeSummaryRow)}
    for name, rows in (("before", results.probe.before), ("after", results.probe.after)):
        summary = [
            ProbeSummaryRow(**{k: v for k, v in dataclasses.asdict(row).items() if k in fields})
            for row in rows
        ]
        written.append(plot_probe(summary, folder / f"probe_{name}.png"))
    curves = {
        label: ScalingCurve(ns=ns, accuracy=[c.accuracy for c in cells])
        for label, ns, cells in _curves(results)
    }
    written.append(plot_scaling(curves, folder / "scaling.png"))
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for label, _, cells in _curves(results):
        ax.plot([c.tokens for c in cells], [c.accuracy for c in cells], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per item (base model)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = folder / "accuracy_vs_tokens.png"
    figure.savefig(path, dpi=120)
    written.append(path)
    return written


def _curves(results: Results) -> list[tuple[str, list[int], list[CostCell]]]:
    """Each scaling row: its label, its Ns in order and its cell at each."""
    curves = []
    for expert, table in results.scaling.items():
        for method, per_n in table.items():
            ns = sorted(int(n) for n in per_n)
            curves.append((row_label(method, expert), ns, [per_n[str(n)] for n in ns]))
    return curves
