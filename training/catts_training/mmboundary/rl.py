"""MMBoundary's RL stage, ``catts mmboundary rl``: TRL's ``GRPOTrainer`` from the SFT model with the
rewards of :mod:`catts_training.mmboundary.rewards` -> ``OUTPUT_DIR/rl``. The paper used PPO with
GAE; TRL removed ``PPOTrainer`` in 1.13 (and the PPO it had took token ids only, no images, and a
reward *model*), so GRPO, with each response's per-step rewards averaged."""

from __future__ import annotations

import time
from typing import Any

from catts_training.cdrl.train import load_processor
from catts_training.mmboundary.config import MMBoundaryConfig
from catts_training.mmboundary.data import MMBoundaryData, load_data, to_grpo_dataset
from catts_training.mmboundary.pretrain import freeze_parameters
from catts_training.mmboundary.rewards import build_rewards
from catts_training.mmboundary.stage import (
    StageResult,
    encoder_of,
    judge_of,
    reader_of,
    similarity_of,
    train_and_save,
)
from catts_training.runs import peft_config

__all__ = ["build_rl_trainer", "train_rl"]


def _policy(config: MMBoundaryConfig, policy: str | None) -> str:
    if policy is not None:
        return policy
    if (config.sft_dir / "config.json").is_file():
        return str(config.sft_dir)
    raise ValueError(
        f"rl: no SFT model at {str(config.sft_dir)!r}; run `catts mmboundary sft` first, or pass --model"
    )


def build_rl_trainer(
    config: MMBoundaryConfig, data: MMBoundaryData, *, policy: str, encoder: Any = None, **overrides: Any
) -> Any:
    """A ready ``trl.GRPOTrainer`` starting from ``policy``, with the rewards of
    :func:`~catts_training.mmboundary.rewards.build_rewards` (its ``scorer`` attribute is their bound
    :class:`~catts_training.cdrl.rewards.PolicyScorer`)."""
    from trl import GRPOTrainer

    from catts_training.cdrl.rewards import PolicyScorer

    args = config.grpo_config(**overrides)
    if args.remove_unused_columns:
        raise ValueError("rl.remove_unused_columns: must stay false; the rewards read the dataset's columns")
    processor = load_processor(policy, config.max_pixels)
    encoder = encoder if encoder is not None else encoder_of(config)
    scorer = PolicyScorer(processor, batch_size=config.rewards.score_batch_size)
    rewards = build_rewards(
        judge=judge_of(config, encoder),
        reader=reader_of(config, encoder),
        calibrator=data.calibrator,
        scorer=scorer,
        level_confidence=config.rewards.level_confidence,
        cover_reference=config.rewards.cover_reference,
        signals=config.signals,
        similarity=similarity_of(config, encoder),
        stated_lines=config.statements.lines,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=rewards,
        args=args,
        train_dataset=to_grpo_dataset(data),
        processing_class=processor,
        peft_config=peft_config(config.lora),
    )
    freeze_parameters(trainer.model, config.freeze)
    # The trainer may wrap or replace its model (PEFT, DeepSpeed); follow whatever it holds now.
    scorer.bind(lambda: trainer.model)
    trainer.scorer = scorer
    return trainer


def train_rl(config: MMBoundaryConfig, *, policy: str | None = None, **overrides: Any) -> StageResult:
    """RL from ``policy`` (default: the SFT model); the model goes to ``config.rl_dir``."""
    started = time.perf_counter()
    start = _policy(config, policy)
    data = load_data(config.data_dir)
    # The trainer goes straight in: no name here keeps it alive once the stage frees it.
    return train_and_save(
        "rl",
        build_rl_trainer(config, data, policy=start, **overrides),
        config,
        base_model=start,
        started=started,
    )
