"""What the MMBoundary stages share: the sentence encoder, the judge and the statement reader a
config names, a stage's result and its summary file."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from catts_graph.statements import StatementReader
from catts_training.cdrl.train import save_policy
from catts_training.mmboundary.config import MMBoundaryConfig
from catts_training.mmboundary.reference import make_judge
from catts_training.mmboundary.rewards import REWARD_NAMES
from catts_training.runs import free_memory, logged_means

__all__ = [
    "SUMMARY_FILE",
    "StageResult",
    "encoder_of",
    "finish_stage",
    "judge_of",
    "reader_of",
    "similarity_of",
    "train_and_save",
]

SUMMARY_FILE = "mmboundary_summary.json"
"""Each training stage's summary (steps, losses, reward and metric means), in its output folder."""


def encoder_of(config: MMBoundaryConfig) -> Any:
    """The sentence encoder the config names (None: none)."""
    if config.encoder is None:
        return None
    from catts_graph.models.encoders import MiniLMEncoder

    return MiniLMEncoder()


def judge_of(config: MMBoundaryConfig, encoder: Any) -> Any:
    """The step judge of the config's ``judge`` section."""
    return make_judge(config.judge.kind, encoder, config.judge.threshold)


def reader_of(config: MMBoundaryConfig, encoder: Any) -> StatementReader:
    """The statement reader (the backward mapping, with the config's margin)."""
    return StatementReader(encoder, margin=config.statements.margin)


def similarity_of(config: MMBoundaryConfig, encoder: Any) -> Any:
    """TokenSAR's sentence similarity when the config's signals use it, else None."""
    return encoder.similarity if encoder is not None and "tokensar" in config.signals else None


@dataclasses.dataclass
class StageResult:
    """What a training stage did."""

    stage: str
    output_dir: Path
    seconds: float
    """Wall time of the stage (loading, training, saving)."""
    steps: int
    losses: list[float]
    reward_means: dict[str, float]
    """Each reward's mean over the logged steps (RL), and the weighted total ``reward``."""
    metric_means: dict[str, float]
    """Each logged ``mmboundary/*`` metric's mean over the run (RL)."""
    log_history: list[dict[str, Any]]


def finish_stage(stage: str, trainer: Any, out: Path, started: float) -> StageResult:
    """The result of a stage whose ``trainer`` has trained and saved to ``out``, written (on the main
    process) to ``out/`` :data:`SUMMARY_FILE` without the log history."""
    history = [dict(entry) for entry in trainer.state.log_history]
    reward_means, metric_means = logged_means(history, REWARD_NAMES, "mmboundary/")
    result = StageResult(
        stage=stage,
        output_dir=out,
        seconds=time.perf_counter() - started,
        steps=int(trainer.state.global_step),
        losses=[float(e["loss"]) for e in history if "loss" in e],
        reward_means=reward_means,
        metric_means=metric_means,
        log_history=history,
    )
    if trainer.accelerator.is_main_process:
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "log_history"}
        summary["output_dir"] = str(out)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result


def train_and_save(
    stage: str, trainer: Any, config: MMBoundaryConfig, *, base_model: str, started: float
) -> StageResult:
    """Train ``trainer``, save its policy to ``OUTPUT_DIR/<stage>`` as a plain checkpoint (LoRA, when
    the config has it, merged into ``base_model``), record the stage (:func:`finish_stage`) and free
    the trainer's memory; pass the trainer itself, not a name still bound to it, so that it is freed."""
    trainer.train()
    out = Path(config.output_dir) / stage
    saved = save_policy(trainer, out, base_model=base_model, lora=config.lora is not None)
    result = finish_stage(stage, trainer, saved, started)
    del trainer
    free_memory()
    return result
