"""Running the reproduction: every step in order, resumable, then ``results.json``, ``results.md``
and the figures (:func:`reproduce`, ``catts reproduce``); and CDRL alone (:func:`cdrl_effect`,
``catts measure cdrl``).

The steps fall into two chains that share nothing until the tables: the training chain (the probe
before CDRL, CDRL, the probe after it, MMBoundary: :data:`TRAINING_STEPS`) and the CA-TTS chain (the
organisms, CLIP, the thresholds, the scaling runs, the reflection, the hard regime, the step signals).
With ``workers=2`` the training chain runs in a process of its own (``python -m
catts_experiments.reproduce.worker OUT``) beside the CA-TTS chain, one thread each, so a 2-core machine
runs both at once; each chain keeps its own step timings (``timings.json``, ``timings-worker.json``)
and the wall time of every invocation is kept in ``wall.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
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

TRAINING_STEPS: tuple[str, ...] = ("probe before CDRL", "cdrl", "probe after CDRL", "mmboundary")
"""The training chain's steps, in order: the ones a second worker runs. With the shipped CDRL
organism placed (``Plan.cdrl_shipped``) the CDRL step is a copy, and the two probes and MMBoundary
balance the CA-TTS chain (docs/organism.md gives each step's minutes)."""
TIMINGS = "timings.json"
WORKER_TIMINGS = "timings-worker.json"
WALL = "wall.json"


class Timer:
    """Runs a named step and adds its seconds to a JSON file of seconds per step: summed over every
    invocation on the run folder, so a resumed run adds what it computed and the total is the whole
    reproduction's cost however often it stopped."""

    def __init__(self, path: Path, log: Callable[[str], None]) -> None:
        self.path = path
        self.log = log
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, name: str, work: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        self.log(f"[{name}] ...")
        value = work()
        spent = time.monotonic() - t0
        self.seconds[name] = round(self.seconds.get(name, 0.0) + spent, 1)
        self.path.write_text(json.dumps(self.seconds, indent=2) + "\n")
        self.log(f"[{name}] done in {spent:.0f} s")
        return value


def training_chain(out: Path, plan: Plan, timed: Callable[[str, Callable[[], Any]], Any]) -> dict[str, Any]:
    """The steps of :data:`TRAINING_STEPS` (each resumed from what ``out`` holds), by name."""
    return {
        "probe before CDRL": timed(
            "probe before CDRL", lambda: step_probe(out, plan, "base", organism_path("base"))
        ),
        "cdrl": timed("cdrl", lambda: step_cdrl(out, plan)),
        "probe after CDRL": timed("probe after CDRL", lambda: step_probe(out, plan, "cdrl", out / "cdrl")),
        "mmboundary": timed("mmboundary", lambda: step_mmboundary(out, plan)),
    }


def start_worker(out: Path) -> subprocess.Popen[bytes]:
    """The training chain in a process of its own, on one thread (its output in ``worker.log``);
    it reads the plan from ``out/plan.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (out / "worker.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "catts_experiments.reproduce.worker", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_worker(worker: subprocess.Popen[bytes], out: Path) -> None:
    """Wait for the worker; RuntimeError with its log's tail unless it finished cleanly."""
    if worker.wait() != 0:
        tail = (out / "worker.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the training chain's worker failed (exit {worker.returncode}):\n{tail}")


def worker_main(argv: list[str]) -> int:
    """``python -m catts_experiments.reproduce.worker OUT``: the training chain of the run in ``OUT``."""
    import torch
    from pydantic import TypeAdapter

    (folder,) = argv
    out = Path(folder)
    plan = TypeAdapter(Plan).validate_python(json.loads((out / "plan.json").read_text()))
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    training_chain(out, plan, Timer(out / WORKER_TIMINGS, log_line))
    return 0


def _merged_seconds(out: Path) -> dict[str, float]:
    """Seconds per step over both chains' timing files."""
    merged: dict[str, float] = {}
    for name in (TIMINGS, WORKER_TIMINGS):
        path = out / name
        for step, seconds in (json.loads(path.read_text()) if path.is_file() else {}).items():
            merged[step] = round(merged.get(step, 0.0) + seconds, 1)
    return merged


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


def reproduce(
    out: str | Path,
    plan: Plan | None = None,
    *,
    workers: int = 1,
    log: Callable[[str], None] = log_line,
) -> Results:
    """Run every step (resuming what ``out`` holds) and write ``results.json``, ``results.md`` and
    ``figures/``; returns the results. ``workers=2`` runs the training chain in a second process,
    beside the CA-TTS chain (one thread each)."""
    import torch

    if workers not in (1, 2):
        raise ValueError(f"workers: {workers!r}; expected 1 or 2")
    plan = plan or Plan()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    check_plan(out, plan)
    start = time.monotonic()
    timed = Timer(out / TIMINGS, log)
    worker = None
    if workers == 2:
        torch.set_num_threads(1)
        log(f"[training chain] in a worker process (log: {out / 'worker.log'})")
        worker = start_worker(out)
    try:
        results: dict[str, Any] = {"plan": dataclasses.asdict(plan)}
        results["models"] = timed("models", lambda: step_models(out, plan))
        results["clip"] = timed("clip", lambda: step_clip(out, plan))
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
        if worker is not None:
            log("[training chain] waiting for the worker ...")
            wait_worker(worker, out)
            worker = None
        # Read back what the worker computed (or compute it here with one worker).
        chain = training_chain(out, plan, timed)
    finally:
        if worker is not None:  # this chain failed: stop the other one
            worker.terminate()
            worker.wait()
    before, after = chain["probe before CDRL"], chain["probe after CDRL"]
    results["cdrl"] = chain["cdrl"]
    results["probe"] = {"before": before, "after": after}
    results.update(compare_probes(before, after, out / "probe-base.sqlite", out / "probe-cdrl.sqlite", plan))
    results["mmboundary"] = chain["mmboundary"]
    wall_path = out / WALL
    wall = json.loads(wall_path.read_text()) if wall_path.is_file() else {"invocations": []}
    wall["invocations"].append({"workers": workers, "seconds": round(time.monotonic() - start, 1)})
    wall_path.write_text(json.dumps(wall, indent=2) + "\n")
    results["seconds"] = _merged_seconds(out)
    results["total_seconds"] = round(sum(results["seconds"].values()), 1)
    results["wall_seconds"] = round(sum(i["seconds"] for i in wall["invocations"]), 1)
    typed = Results.from_json(json_ready(results))
    (out / "results.json").write_text(json.dumps(typed.to_json(), indent=2) + "\n")
    markdown = render_markdown(typed)
    (out / "results.md").write_text(markdown)
    write_figures(out, typed)
    log(markdown)
    log(
        f"total {typed.total_seconds / 60:.1f} min of compute over the steps, "
        f"{typed.wall_seconds / 60:.1f} min of wall time over all runs; results in {out}"
    )
    return typed
