"""MMBoundary: a multimodal model that says, after every reasoning step, how sure it is of it
(ACL 2025, arXiv 2505.23224; its training code was never released, so the choices here are ours
and documented where they are made).

- :mod:`catts_training.mmboundary.stated`: a reply with confidence statements read back step by step,
  and the internal signals of each step's own tokens.
- :mod:`catts_training.mmboundary.reference`: reference chains (the organism's generator, or the item's
  ``metadata.reference``) and step judges (exact, or sentence-encoder similarity).
- :mod:`catts_training.mmboundary.data`: the base model's replies, levels from a step calibrator fitted
  on validation items, statements inserted (the forward mapping); TRL's SFT and GRPO datasets.
- :mod:`catts_training.mmboundary.rewards`: knowledge accuracy, expected calibration, self-calibration,
  statement format (and answer accuracy), as TRL reward callables and pure formulas.
- :mod:`catts_training.mmboundary.probe`: step ECE / AUROC of the stated levels, parseable share, level
  entropy, answer accuracy.
- :mod:`catts_training.mmboundary.config`: ``MMBoundaryConfig``, the YAML config's typed sections.
- the stages: :mod:`~catts_training.mmboundary.build` (data), :mod:`~catts_training.mmboundary.sft`
  (``SFTTrainer``), :mod:`~catts_training.mmboundary.rl` (``GRPOTrainer``; TRL removed
  ``PPOTrainer``, the paper's algorithm, in 1.13), :mod:`~catts_training.mmboundary.run` (the probe,
  every stage in order), on what :mod:`~catts_training.mmboundary.stage` shares.
- :mod:`catts_training.mmboundary.train`: ``catts mmboundary``, the entry point.

Imports here are lazy, so ``import catts_training.mmboundary`` stays cheap (no torch or TRL).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "StatedStep": "catts_training.mmboundary.stated",
    "content_signals": "catts_training.mmboundary.stated",
    "read_steps": "catts_training.mmboundary.stated",
    "ExactJudge": "catts_training.mmboundary.reference",
    "SimilarityJudge": "catts_training.mmboundary.reference",
    "reference_chain": "catts_training.mmboundary.reference",
    "MMBoundaryData": "catts_training.mmboundary.data",
    "load_data": "catts_training.mmboundary.data",
    "sample_replies": "catts_training.mmboundary.data",
    "to_grpo_dataset": "catts_training.mmboundary.data",
    "to_sft_dataset": "catts_training.mmboundary.data",
    "ExpectedCalibrationReward": "catts_training.mmboundary.rewards",
    "KnowledgeAccuracyReward": "catts_training.mmboundary.rewards",
    "SelfCalibrationReward": "catts_training.mmboundary.rewards",
    "StatementFormatReward": "catts_training.mmboundary.rewards",
    "build_rewards": "catts_training.mmboundary.rewards",
    "expected_calibration": "catts_training.mmboundary.rewards",
    "knowledge_accuracy": "catts_training.mmboundary.rewards",
    "self_calibration": "catts_training.mmboundary.rewards",
    "statement_format": "catts_training.mmboundary.rewards",
    "probe_figures": "catts_training.mmboundary.probe",
    "probe_steps": "catts_training.mmboundary.probe",
    "MMBoundaryConfig": "catts_training.mmboundary.config",
    "add_mmboundary": "catts_training.mmboundary.train",
    "build_data": "catts_training.mmboundary.build",
    "load_config": "catts_training.mmboundary.config",
    "run_probe": "catts_training.mmboundary.run",
    "train_rl": "catts_training.mmboundary.rl",
    "train_sft": "catts_training.mmboundary.sft",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'catts_training.mmboundary' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
