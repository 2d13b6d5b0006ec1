"""CDRL: GRPO with confidence rewards on original / noised image pairs (CVPR 2026, CA-TTS paper).

- :mod:`catts_graph.relevance`: open_clip relevance maps (question against image patches).
- :mod:`training.cdrl.data`: items -> original/noised pairs -> a GRPO dataset of two rows per pair, the
  sampler that keeps a pair together; saving and a contact sheet.
- :mod:`training.cdrl.rewards`: accuracy, format, perceptual sensitivity, calibration (TRL reward callables).
- :mod:`training.cdrl.trainer`: ``CDRLTrainer``, TRL's ``GRPOTrainer`` with that sampler.
- :mod:`training.cdrl.train`: YAML config, the trainer, export, before/after probe, ``catts train``.

Imports here are lazy, so ``import training.cdrl`` stays cheap (no torch, TRL or open_clip).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ClipRelevance": "catts_graph.relevance",
    "NoiseConfig": "training.cdrl.data",
    "PairedRepeatSampler": "training.cdrl.data",
    "TrainingPair": "training.cdrl.data",
    "build_pairs": "training.cdrl.data",
    "load_items": "training.cdrl.data",
    "load_pairs": "training.cdrl.data",
    "save_pairs": "training.cdrl.data",
    "to_grpo_dataset": "training.cdrl.data",
    "AccuracyReward": "training.cdrl.rewards",
    "CalibrationReward": "training.cdrl.rewards",
    "FormatReward": "training.cdrl.rewards",
    "PerceptualSensitivityReward": "training.cdrl.rewards",
    "PolicyScorer": "training.cdrl.rewards",
    "build_rewards": "training.cdrl.rewards",
    "calibration_reward": "training.cdrl.rewards",
    "sensitivity_reward": "training.cdrl.rewards",
    "CDRLTrainer": "training.cdrl.trainer",
    "CDRLConfig": "training.cdrl.train",
    "add_train_command": "training.cdrl.train",
    "build_trainer": "training.cdrl.train",
    "load_config": "training.cdrl.train",
    "probe_before_after": "training.cdrl.train",
    "train_cdrl": "training.cdrl.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'training.cdrl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
