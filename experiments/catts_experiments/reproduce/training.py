"""The reproduction's training steps: CDRL and MMBoundary on the base organism, each run through its
command line (``python -m catts_training.<trainer>.train``) in a process of its own.

The training package sits beside this one, not below it: nothing here imports it. It is found by
name (:data:`TRAINING_PACKAGE`), its configs located where it is installed (:func:`training_config`),
and its runs get their own process and memory, with no working-directory assumption."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from catts_experiments.reproduce.plan import SHIPPED_CONFIGS, Plan
from catts_experiments.reproduce.statistics import paired_accuracy, probe_intervals

TRAINING_PACKAGE = "catts_training"
"""The training package (``training/catts_training/`` in the repository), run by name: it sits above
the library, which never imports it."""


def step_cdrl(out: Path, plan: Plan) -> dict[str, Any]:
    """CDRL on the base organism (skipped when ``<out>/cdrl`` already holds the checkpoint). With
    ``plan.cdrl_shipped`` and the shipped CDRL organism trained from this plan's config and the
    shipped base (:func:`shipped_cdrl`), that checkpoint is placed there instead of training it
    again; its summary then names it (``shipped_from``)."""
    from catts_graph.organism import organism_path

    target = out / "cdrl"
    summary = target / "cdrl_summary.json"
    shipped = None if summary.is_file() else shipped_cdrl(plan)
    if shipped is not None:
        place_shipped_cdrl(shipped, target, summary)
    elif not summary.is_file():
        # Through CDRL's command line, as a user runs it: the library never imports the training
        # package, which sits above it, and the GRPO run gets a process (and memory) of its own.
        command = [
            "cdrl",
            "--config",
            str(training_config(plan.cdrl_config)),
            "--output-dir",
            str(target),
            "--model",
            str(organism_path("base")),
        ]
        if plan.cdrl_steps is not None:
            command += ["--max-steps", str(plan.cdrl_steps)]
        _run_training("cdrl", command, summary)
    return json.loads(summary.read_text())


def shipped_cdrl(plan: Plan) -> Path | None:
    """The shipped CDRL organism's folder when it is what this plan's CDRL step would train, else
    None: ``plan.cdrl_shipped``, no ``cdrl_steps`` override, and its ``organism.json`` recording the
    plan's CDRL config (``output_dir`` aside) and the checksum of the shipped base's weights.

    CDRL on the CPU is deterministic: the reproduction of 2026-12-07 trained this config from the
    shipped base in 25.7 min on one thread and wrote the shipped file byte for byte (SHA-256
    ``2575180f...``), so training it again tells nothing new; ``catts reproduce --train-cdrl`` does."""
    import yaml

    from catts_graph.organism import organism_path
    from catts_graph.organism.checkpoint import CDRL_ORGANISM, weights_checksum

    if not plan.cdrl_shipped or plan.cdrl_steps is not None:
        return None
    folder = organism_path(CDRL_ORGANISM)
    record_path = folder / "organism.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    config = yaml.safe_load(training_config(plan.cdrl_config).read_text())
    config.pop("output_dir", None)
    if record.get("cdrl_config") != config:
        return None
    if record.get("base_checksum") != weights_checksum(organism_path("base")):
        return None
    return folder


def place_shipped_cdrl(source: Path, target: Path, summary: Path) -> None:
    """Copy the shipped CDRL organism into ``target`` and write its training summary (the record's
    ``training`` section, ``shipped_from`` its name) to ``summary``, last: a copy cut short is
    copied again."""
    from catts_graph.organism.checkpoint import CHECKPOINT_FILES

    record = json.loads((source / "organism.json").read_text())
    target.mkdir(parents=True, exist_ok=True)
    for name in (*CHECKPOINT_FILES, "organism.json"):
        if (source / name).is_file():
            (target / name).write_bytes((source / name).read_bytes())
    written = {"output_dir": str(target), **record["training"], "shipped_from": record["name"]}
    summary.write_text(json.dumps(written, indent=2) + "\n")


def training_config(path: str | Path) -> Path:
    """The file a plan's training config names. ``training/configs/NAME`` (how the plan records the
    configs that ship with the training package) is read from wherever that package is installed:
    inside it as ``catts_training/configs/`` in a wheel, beside it in ``training/configs/`` in a source
    checkout; the package is located, not imported. Any other path is read as given."""
    text = str(path)
    if not text.startswith(SHIPPED_CONFIGS):
        return Path(path)
    name = text.removeprefix(SHIPPED_CONFIGS)
    spec = importlib.util.find_spec(TRAINING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{text}: the training package {TRAINING_PACKAGE} is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{text}: not among the configs of {TRAINING_PACKAGE} ({package})")


def _run_training(trainer: str, arguments: list[str], summary: Path) -> None:
    """Run ``python -m catts_training.<trainer>.train ARGUMENTS`` in a process of its own (the library
    never imports the training package, and the run gets its own memory), with this interpreter and
    no working-directory assumption; RuntimeError with its output's tail unless it wrote ``summary``."""
    command = [sys.executable, "-m", f"{TRAINING_PACKAGE}.{trainer}.train", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not summary.is_file():
        output = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{trainer} failed (exit {done.returncode}): {' '.join(command)}\n{output}")


def step_mmboundary(out: Path, plan: Plan) -> dict[str, Any]:
    """MMBoundary on the base organism (``catts train mmboundary all`` in a process of its own, resumable):
    data, SFT, RL, and the probe of each model on ``probe_items`` items of ``probe_split``; each
    probe's figures with bootstrap intervals over items."""
    import yaml

    from catts_graph.organism import organism_path

    target = out / "mmboundary"
    target.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(training_config(plan.mmboundary_config).read_text())
    # The shipped base organism wherever the package lies (the config's relative path holds in a
    # checkout's root only), as the CDRL step passes it.
    config["model"] = str(organism_path("base"))
    config["output_dir"] = str(target)
    config["validation"] = {**config["validation"], "limit": plan.validation_items}
    if plan.mmboundary_data_items is not None:
        config["data"] = {**config["data"], "limit": plan.mmboundary_data_items}
    config["probe"] = {
        **(config.get("probe") or {}),
        "benchmark": "synthetic",
        "split": plan.probe_split,
        "limit": plan.probe_items,
    }
    written = target / "config.yaml"
    written.write_text(yaml.safe_dump(config, sort_keys=False))
    summary = target / "mmboundary.json"
    if not summary.is_file():
        command = ["all", "--config", str(written)]
        if plan.mmboundary_pretrain_steps is not None:
            command += ["--pretrain-steps", str(plan.mmboundary_pretrain_steps)]
        if plan.mmboundary_sft_steps is not None:
            command += ["--sft-steps", str(plan.mmboundary_sft_steps)]
        if plan.mmboundary_rl_steps is not None:
            command += ["--rl-steps", str(plan.mmboundary_rl_steps)]
        _run_training("mmboundary", command, summary)
    results = json.loads(summary.read_text())
    reports = {name: json.loads((target / "probe" / f"{name}.json").read_text()) for name in results["probe"]}
    for name, report in reports.items():
        figures = results["probe"][name]
        figures["intervals"] = probe_intervals(report["rows"], report["answers"], figures, plan)
        if name != "base" and "base" in reports:
            figures["accuracy_vs_base"] = paired_accuracy(report["answers"], reports["base"]["answers"], plan)
    return results
