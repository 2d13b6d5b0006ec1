"""MMBoundary: a multimodal model that says, after every reasoning step, how sure it is of it
(ACL 2025, arXiv 2505.23224; its training code was never released, so the choices here are ours
and documented where they are made).

- :mod:`training.mmboundary.stated`: a reply with confidence statements read back step by step,
  and the internal signals of each step's own tokens.
- :mod:`training.mmboundary.reference`: reference chains (the organism's generator, or the item's
  ``metadata.reference``) and step judges (exact, or sentence-encoder similarity).
- :mod:`training.mmboundary.data`: the base model's replies, levels from a step calibrator fitted
  on validation items, statements inserted (the forward mapping); TRL's SFT and GRPO datasets.
- :mod:`training.mmboundary.rewards`: knowledge accuracy, expected calibration, self-calibration,
  statement format (and answer accuracy), as TRL reward callables and pure formulas.
- :mod:`training.mmboundary.probe`: step ECE / AUROC of the stated levels, parseable share, level
  entropy, answer accuracy.
- :mod:`training.mmboundary.train`: the YAML config, SFT (``SFTTrainer``) and RL (``GRPOTrainer``;
  TRL removed ``PPOTrainer``, the paper's algorithm, in 1.13), ``catts mmboundary``.

Imports here are lazy, so ``import training.mmboundary`` stays cheap (no torch or TRL).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "StatedStep": "training.mmboundary.stated",
    "content_signals": "training.mmboundary.stated",
    "read_steps": "training.mmboundary.stated",
    "ExactJudge": "training.mmboundary.reference",
    "SimilarityJudge": "training.mmboundary.reference",
    "reference_chain": "training.mmboundary.reference",
    "MMBoundaryData": "training.mmboundary.data",
    "load_data": "training.mmboundary.data",
    "sample_replies": "training.mmboundary.data",
    "to_grpo_dataset": "training.mmboundary.data",
    "to_sft_dataset": "training.mmboundary.data",
    "ExpectedCalibrationReward": "training.mmboundary.rewards",
    "KnowledgeAccuracyReward": "training.mmboundary.rewards",
    "SelfCalibrationReward": "training.mmboundary.rewards",
    "StatementFormatReward": "training.mmboundary.rewards",
    "build_rewards": "training.mmboundary.rewards",
    "expected_calibration": "training.mmboundary.rewards",
    "knowledge_accuracy": "training.mmboundary.rewards",
    "self_calibration": "training.mmboundary.rewards",
    "statement_format": "training.mmboundary.rewards",
    "probe_figures": "training.mmboundary.probe",
    "probe_steps": "training.mmboundary.probe",
    "MMBoundaryConfig": "training.mmboundary.train",
    "add_mmboundary_command": "training.mmboundary.train",
    "build_data": "training.mmboundary.train",
    "load_config": "training.mmboundary.train",
    "run_probe": "training.mmboundary.train",
    "train_rl": "training.mmboundary.train",
    "train_sft": "training.mmboundary.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'training.mmboundary' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
