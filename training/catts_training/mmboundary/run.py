"""MMBoundary's probe stage (``catts mmboundary probe``: the figures of
:mod:`catts_training.mmboundary.probe` for one model) and every stage in order (``catts mmboundary
all``: data, SFT, RL and the probes, resumable)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catts_graph.formatting import json_ready
from catts_training.cdrl.data import load_items
from catts_training.mmboundary.build import build_data
from catts_training.mmboundary.config import MMBoundaryConfig
from catts_training.mmboundary.data import load_data
from catts_training.mmboundary.pretrain import MANIFEST_KEY as PRETRAIN_KEY
from catts_training.mmboundary.rewards import level_confidences
from catts_training.mmboundary.rl import train_rl
from catts_training.mmboundary.sft import train_sft
from catts_training.mmboundary.stage import encoder_of, judge_of, reader_of, similarity_of

__all__ = ["run_all", "run_probe"]


def _probed_model(config: MMBoundaryConfig, model: str | None) -> tuple[str, str]:
    """The model to probe and its name: ``model``, else the latest stage written, else the base."""
    if model is not None:
        return model, Path(model).name or "model"
    for name, folder in (("rl", config.rl_dir), ("sft", config.sft_dir)):
        if (folder / "config.json").is_file():
            return str(folder), name
    return config.model_path(), "base"


def run_probe(
    config: MMBoundaryConfig, *, model: str | None = None, out: str | Path | None = None, vlm: Any = None
) -> dict[str, Any]:
    """The probe's figures for ``model`` (see :func:`_probed_model`), with the data's calibrator;
    written with the per-step rows to ``out`` (default ``output_dir/probe/<name>.json``)."""
    from catts_training.mmboundary.probe import probe_figures, probe_steps
    from catts_training.mmboundary.rewards import StepReader

    started = time.perf_counter()
    path, name = _probed_model(config, model)
    data = load_data(config.data_dir)
    if vlm is None:
        from catts_graph.models import TransformersVLM

        vlm = TransformersVLM.from_pretrained(path, max_pixels=config.max_pixels)
    encoder = encoder_of(config)
    section = config.probe or config.validation
    max_new_tokens = getattr(section, "max_new_tokens", None) or config.sampling.max_new_tokens
    items = load_items(**section.load_arguments())
    rows, answers = probe_steps(
        vlm,
        items,
        steps=StepReader(reader_of(config, encoder), stated_lines=config.statements.lines),
        calibrator=data.calibrator,
        judge=judge_of(config, encoder),
        signals=config.signals,
        similarity=similarity_of(config, encoder),
        max_new_tokens=max_new_tokens,
    )
    confidences = level_confidences(data.calibrator, config.rewards.level_confidence)
    figures = probe_figures(rows, answers, confidences)
    figures["level_confidence"] = [float(c) for c in confidences]
    report = {
        "model": path,
        "name": name,
        "seconds": time.perf_counter() - started,
        "figures": figures,
        "answers": {item.id: bool(correct) for item, correct in zip(items, answers, strict=True)},
        "rows": rows,
    }
    target = Path(out) if out is not None else Path(config.output_dir) / "probe" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(json_ready(report), indent=2) + "\n", encoding="utf-8")
    report["path"] = str(target)
    return report


def run_all(
    config: MMBoundaryConfig,
    *,
    sft_steps: int | None = None,
    rl_steps: int | None = None,
    pretrain_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Data, SFT (after the statement pre-training when the config has one), RL and the probe of
    the base, the pre-trained, the SFT and the RL model, each stage skipped when ``output_dir``
    already holds its result (so an interrupted run resumes where it stopped): ``{"data": summary,
    "sft" / "rl": {"seconds", "steps", ...}, "probe": {name: figures}}``."""
    results: dict[str, Any] = {}
    if not (config.data_dir / "summary.json").is_file():
        log("mmboundary: data")
        build_data(config)
    results["data"] = json.loads((config.data_dir / "summary.json").read_text())
    probes: dict[str, Any] = {}
    base = Path(config.output_dir) / "probe" / "base.json"
    if not base.is_file():
        log("mmboundary: probe base")
        run_probe(config, model=config.model_path(), out=base)
    probes["base"] = json.loads(base.read_text())["figures"]
    for stage, steps in (("sft", sft_steps), ("rl", rl_steps)):
        record = Path(config.output_dir) / f"{stage}.json"
        if not record.is_file():
            log(f"mmboundary: {stage}")
            overrides = {"max_steps": steps} if steps is not None else {}
            result = (
                train_sft(config, pretrain_steps=pretrain_steps, **overrides)
                if stage == "sft"
                else train_rl(config, **overrides)
            )
            summary = {
                "seconds": round(result.seconds, 1),
                "steps": result.steps,
                "first_loss": result.losses[0] if result.losses else None,
                "last_loss": result.losses[-1] if result.losses else None,
                "reward_means": result.reward_means,
                "metric_means": result.metric_means,
            }
            record.write_text(json.dumps(summary, indent=2) + "\n")
        results[stage] = json.loads(record.read_text())
        pretrained = Path(config.output_dir) / "pretrained" / "organism.json"
        if stage == "sft" and config.statements.pretrain is not None and pretrained.is_file():
            done = json.loads(pretrained.read_text())[PRETRAIN_KEY]
            results["pretrain"] = {
                "steps": done["settings"]["steps"],
                "seconds": done["wall_time_s"],
                "level_counts": done["level_counts"],
            }
        probed = [("sft", config.sft_dir)] if stage == "sft" else [("rl", config.rl_dir)]
        if stage == "sft" and config.statements.pretrain is not None:
            probed.insert(0, ("pretrained", Path(config.output_dir) / "pretrained"))
        for name, model in probed:
            report = Path(config.output_dir) / "probe" / f"{name}.json"
            if not report.is_file():
                log(f"mmboundary: probe {name}")
                run_probe(config, model=str(model), out=report)
            probes[name] = json.loads(report.read_text())["figures"]
    results["probe"] = probes
    (Path(config.output_dir) / "mmboundary.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
