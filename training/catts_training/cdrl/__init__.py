"""CDRL: GRPO with confidence rewards on original / noised image pairs (CVPR 2026, CA-TTS paper).

- :mod:`catts_graph.relevance`: open_clip relevance maps (question against image patches).
- :mod:`catts_training.cdrl.data`: items -> original/noised pairs -> a GRPO dataset of two rows per pair, the
  sampler that keeps a pair together; saving and a contact sheet.
- :mod:`catts_training.cdrl.rewards`: accuracy, format, perceptual sensitivity, calibration (TRL reward
  callables).
- :mod:`catts_training.cdrl.trainer`: ``CDRLTrainer``, TRL's ``GRPOTrainer`` with that sampler.
- :mod:`catts_training.cdrl.config`: ``CDRLConfig``, the YAML config's typed sections.
- :mod:`catts_training.cdrl.train`: the trainer, export, before/after probe, ``catts train``.

Imports here are lazy, so ``import catts_training.cdrl`` stays cheap (no torch, TRL or open_clip).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ClipRelevance": "catts_graph.relevance",
    "NoiseConfig": "catts_training.cdrl.data",
    "PairedRepeatSampler": "catts_training.cdrl.data",
    "TrainingPair": "catts_training.cdrl.data",
    "build_pairs": "catts_training.cdrl.data",
    "load_items": "catts_training.cdrl.data",
    "load_pairs": "catts_training.cdrl.data",
    "save_pairs": "catts_training.cdrl.data",
    "to_grpo_dataset": "catts_training.cdrl.data",
    "AccuracyReward": "catts_training.cdrl.rewards",
    "CalibrationReward": "catts_training.cdrl.rewards",
    "FormatReward": "catts_training.cdrl.rewards",
    "PerceptualSensitivityReward": "catts_training.cdrl.rewards",
    "PolicyScorer": "catts_training.cdrl.rewards",
    "build_rewards": "catts_training.cdrl.rewards",
    "calibration_reward": "catts_training.cdrl.rewards",
    "sensitivity_reward": "catts_training.cdrl.rewards",
    "CDRLTrainer": "catts_training.cdrl.trainer",
    "CDRLConfig": "catts_training.cdrl.config",
    "add_cdrl": "catts_training.cdrl.train",
    "add_pairs": "catts_training.cdrl.train",
    "add_train": "catts_training.cdrl.train",
    "build_trainer": "catts_training.cdrl.train",
    "load_config": "catts_training.cdrl.config",
    "probe_before_after": "catts_training.cdrl.train",
    "train_cdrl": "catts_training.cdrl.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'catts_training.cdrl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
