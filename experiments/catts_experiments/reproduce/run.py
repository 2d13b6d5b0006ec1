"""Running the reproduction: every step in order, resumable, then ``results.json``, ``results.md``
and the figures (:func:`reproduce`, ``catts reproduce``); and CDRL alone (:func:`cdrl_effect`,
``catts measure cdrl``)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catts_experiments.reproduce.figures import write_figures
from catts_experiments.reproduce.hard import step_hard
from catts_experiments.reproduce.plan import Plan, check_plan, log_line
from catts_experiments.reproduce.render import cdrl_section, render_markdown
from catts_experiments.reproduce.results import CDRLEffect, Results
from catts_experiments.reproduce.scaling import (
    Organisms,
    step_scaling,
    step_thresholds,
)
from catts_experiments.reproduce.statistics import (
    compare_probes,
    labelled,
    savings,
    slopes,
    summarise_methods,
)
from catts_experiments.reproduce.steps import (
    step_clip,
    step_models,
    step_probe,
    step_reflection,
    step_signals,
)
from catts_experiments.reproduce.training import step_cdrl, step_mmboundary
from catts_graph.formatting import json_ready
from catts_graph.organism import organism_path


def cdrl_effect(out: str | Path, plan: Plan, *, log: Callable[[str], None] = log_line) -> CDRLEffect:
    """CDRL alone: the probe on the base organism, CDRL, the probe on the result, the drop ratios and
    calibration (``catts measure cdrl``); resumable in ``out`` like :func:`reproduce`. Writes
    ``cdrl.json`` and ``cdrl.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_plan(out, plan)
    log("[probe before CDRL] ...")
    before = step_probe(out, plan, "base", organism_path("base"))
    log("[cdrl] ...")
    cdrl = step_cdrl(out, plan)
    log("[probe after CDRL] ...")
    after = step_probe(out, plan, "cdrl", out / "cdrl")
    compared = compare_probes(before, after, out / "probe-base.sqlite", out / "probe-cdrl.sqlite", plan)
    effect = CDRLEffect.from_json(json_ready({"plan": dataclasses.asdict(plan), "cdrl": cdrl, **compared}))
    (out / "cdrl.json").write_text(json.dumps(effect.to_json(), indent=2) + "\n")
    markdown = "\n".join(cdrl_section(effect)) + "\n"
    (out / "cdrl.md").write_text(markdown)
    log(markdown)
    return effect


def reproduce(out: str | Path, plan: Plan | None = None, *, log: Callable[[str], None] = log_line) -> Results:
    """Run every step (resuming what ``out`` holds) and write ``results.json``, ``results.md`` and
    ``figures/``; returns the results."""
    import torch

    plan = plan or Plan()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    check_plan(out, plan)
    # Seconds spent per step, summed over every invocation on this folder: a resumed run adds
    # what it computed, so the total is the whole reproduction's cost however often it stopped.
    timings_path = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        log(f"[{name}] ...")
        value = work()
        spent = time.monotonic() - t0
        timings[name] = round(timings.get(name, 0.0) + spent, 1)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        log(f"[{name}] done in {spent:.0f} s")
        return value

    results: dict[str, Any] = {"plan": dataclasses.asdict(plan)}
    results["models"] = timed("models", lambda: step_models(out, plan))
    results["clip"] = timed("clip", lambda: step_clip(out, plan))
    before = timed("probe before CDRL", lambda: step_probe(out, plan, "base", organism_path("base")))
    results["cdrl"] = timed("cdrl", lambda: step_cdrl(out, plan))
    after = timed("probe after CDRL", lambda: step_probe(out, plan, "cdrl", out / "cdrl"))
    results["probe"] = {"before": before, "after": after}
    results.update(compare_probes(before, after, out / "probe-base.sqlite", out / "probe-cdrl.sqlite", plan))
    models = Organisms()
    results["thresholds"] = timed("thresholds", lambda: step_thresholds(out, plan, models))
    chosen = results["thresholds"]["chosen"]
    per_item = timed("scaling", lambda: step_scaling(out, plan, models, chosen))
    results["scaling"] = {expert: summarise_methods(table, plan) for expert, table in per_item.items()}
    results["slopes"] = slopes(labelled(per_item), plan)
    results["savings"] = savings(labelled(per_item), plan)
    # The ablations and step repair run on the hard level only: on the mixed levels the base is
    # right too often for them to be told apart (docs/organism.md); the reflection runs on both.
    results["reflection"] = timed("reflection", lambda: step_reflection(out, plan, models))
    if plan.hard_level is not None:
        results["hard"] = step_hard(out, plan, models, timed)
    results["step_signals"] = timed("step signals", lambda: step_signals(out, plan))
    results["mmboundary"] = timed("mmboundary", lambda: step_mmboundary(out, plan))
    results["seconds"] = timings
    results["total_seconds"] = round(sum(timings.values()), 1)
    typed = Results.from_json(json_ready(results))
    (out / "results.json").write_text(json.dumps(typed.to_json(), indent=2) + "\n")
    markdown = render_markdown(typed)
    (out / "results.md").write_text(markdown)
    write_figures(out, typed)
    log(markdown)
    log(f"total {typed.total_seconds / 60:.1f} min of compute over all runs; results in {out}")
    return typed
