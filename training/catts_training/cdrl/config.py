"""The CDRL config: one YAML file (examples in ``training/configs/``), one typed section each.

Every field's type, bounds, default and description are declared here, once; unknown keys, wrong
types and values out of bounds are :class:`~catts_training.config.ConfigError` s naming the file
and the key. ``grpo`` and ``lora`` pass through to ``trl.GRPOConfig`` and ``peft.LoraConfig``,
their keys checked against those classes' fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

import pydantic
from pydantic import Field

from catts_training.cdrl.confidence_loss import ConfidenceLossConfig
from catts_training.cdrl.data import NoiseConfig
from catts_training.cdrl.rewards import CALIBRATION_VARIANTS, DEFAULT_SENSITIVITY_MARGIN, REWARD_NAMES
from catts_training.config import (
    Count,
    Fraction,
    ItemsSection,
    KeyPathError,
    Number,
    RewardsSection,
    RewardWeights,
    Section,
    TrainingConfig,
    fields_of,
    one_of,
    trl_args,
)

__all__ = [
    "ORGANISM_CLIP",
    "CDRLConfig",
    "CDRLData",
    "CDRLProbe",
    "CDRLRewardWeights",
    "CDRLRewards",
    "RelevanceSection",
    "load_config",
]

ORGANISM_CLIP = "organism"
"""``relevance.model`` naming the CLIP organism (:mod:`catts_graph.organism.clip`)."""


class CDRLData(ItemsSection):
    """``data``: the training items, or the pairs ``catts train pairs`` saved."""

    pairs_dir: str | None = Field(
        None,
        description="a folder written by `catts train pairs` (the relevance and noise sections are then "
        "unused)",
    )

    @pydantic.model_validator(mode="after")
    def _some_source(self) -> Self:
        if not self.pairs_dir and not self._given():
            raise ValueError("give pairs_dir, or source and/or benchmark")
        return self


class RelevanceSection(Section):
    """``relevance``: the CLIP whose relevance map says where the noise goes."""

    model: str = Field(
        description="an open_clip model name (ViT-B-16), organism (the CLIP organism shipped with the "
        "package) or tiny (random weights, offline)"
    )
    pretrained: str | None = Field(None, description="open_clip weights: a tag (openai) or a file")
    path: str | None = Field(
        None, description="model: organism only: another folder written by `catts train clip`"
    )
    device: str = Field("cpu", description="where CLIP runs")
    seed: int = Field(0, description="model: tiny only: the random weights' seed")

    @pydantic.model_validator(mode="after")
    def _path_for_the_organism(self) -> Self:
        if self.model == ORGANISM_CLIP and self.pretrained is not None:
            raise KeyPathError(
                "pretrained", "not with model: organism (give path: for another CLIP organism)"
            )
        if self.model != ORGANISM_CLIP and self.path is not None:
            raise KeyPathError("path", "only with model: organism (open_clip weights go in pretrained:)")
        return self


class CDRLRewardWeights(RewardWeights):
    """``rewards.weights``: GRPO's weight of each CDRL reward."""

    accuracy: Number = Field(1.0, description="the answer is right")
    format: Number = Field(0.5, description="the reply ends with a non-empty \\boxed{...}")
    perceptual_sensitivity: Number = Field(1.0, description="less sure of its answer to the noised image")
    calibration: Number = Field(1.0, description="confidence that matches correctness")


class CDRLRewards(RewardsSection):
    """``rewards``: the weights and the two confidence rewards' settings."""

    weights: CDRLRewardWeights = Field(default_factory=CDRLRewardWeights, description="per reward")
    sensitivity_margin: Annotated[Number, Field(ge=0)] = Field(
        DEFAULT_SENSITIVITY_MARGIN,
        description="NMLP units: the hinge of the perceptual-sensitivity reward",
    )
    calibration_variant: Annotated[str, one_of(CALIBRATION_VARIANTS)] = Field(
        "brier", description="brier (a proper scoring rule) or signed (+-confidence)"
    )

    @pydantic.model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, values: Any) -> Any:
        for key in ("sensitivity_scale", "sensitivity_clip"):
            if isinstance(values, dict) and key in values:
                raise KeyPathError(
                    key,
                    "no longer used; the perceptual-sensitivity reward is a hinge on each noised "
                    "rollout's own NMLP, set rewards.sensitivity_margin (NMLP units) instead",
                )
        return values


class CDRLProbe(Section):
    """``probe``: :func:`catts_graph.eval.probe.probe_model` on the model before and after."""

    items: Count = Field(8, description="the first this many training items")
    perturbs: list[str] = Field(["gaussian", "occlusion"], description="perturbations of catts_graph.perturb")
    levels: list[Fraction] = Field([0.0, 0.5, 1.0], description="perturbation strengths")
    max_new_tokens: Count = Field(64, description="tokens per answer")
    seed: int = Field(0, description="the probe's seed")


class CDRLConfig(TrainingConfig):
    """Everything a CDRL run needs; one YAML file. ``model`` and ``output_dir`` are required,
    ``data`` gives the items; every other section has defaults."""

    REWARD_NAMES: ClassVar[tuple[str, ...]] = REWARD_NAMES
    RELATIVE_PATHS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("data", "source"),
        ("data", "pairs_dir"),
        ("data", "image_dir"),
    )

    data: CDRLData = Field(description="the training items (or saved pairs)")
    relevance: RelevanceSection = Field(
        default_factory=lambda: RelevanceSection(model="ViT-B-16", pretrained="openai"),
        description="the CLIP of the relevance map",
    )
    noise: NoiseConfig = Field(
        default_factory=NoiseConfig,
        description="how the noised copy is made (kind, strength, top_fraction, ...)",
    )
    rewards: CDRLRewards = Field(default_factory=CDRLRewards, description="the rewards")
    confidence_loss: ConfidenceLossConfig = Field(
        default_factory=ConfidenceLossConfig,
        description="the differentiable confidence terms added to GRPO's loss, a weight each "
        "(noised_entropy, clean_entropy, brier) and entropy_target; all zero (the default): the "
        "paper's reward-only GRPO",
    )
    lora: Annotated[dict[str, Any], fields_of("peft:LoraConfig")] | None = Field(
        None, description="None: full-parameter training; else peft.LoraConfig fields"
    )
    grpo: Annotated[
        dict[str, Any],
        fields_of(
            "trl:GRPOConfig",
            refused={"output_dir": "set output_dir at the top level of the config instead"},
        ),
    ] = Field(default_factory=dict, description="trl.GRPOConfig fields")
    probe: CDRLProbe | None = Field(None, description="the before/after probe (None: none)")

    def grpo_config(self, **overrides: Any) -> Any:
        """``trl.GRPOConfig`` from the ``grpo`` section (``overrides`` replace its fields),
        ``output_dir`` and the reward weights."""
        return trl_args(
            "GRPOConfig", {**self.grpo, **overrides}, self.output_dir, reward_weights=self.reward_weights()
        )


def load_config(path: str | Path, **overrides: Any) -> CDRLConfig:
    """Read a YAML config; ``overrides`` that are not None replace top-level keys (e.g.
    ``output_dir``). Relative data paths are read from the config's folder when they exist there."""
    return CDRLConfig.load(path, **overrides)
