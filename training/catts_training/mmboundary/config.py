"""The MMBoundary config: one YAML file (``training/configs/mmboundary_*.yaml``) for the four stages,
one typed section each.

Every field's type, bounds, default and description are declared here, once; unknown keys, wrong
types and values out of bounds are :class:`~catts_training.config.ConfigError` s naming the file
and the key. ``sft``, ``rl`` and ``lora`` pass through to ``trl.SFTConfig``, ``trl.GRPOConfig`` and
``peft.LoraConfig``, their keys checked against those classes' fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

import pydantic
from pydantic import Field

from catts_graph.step_confidence import LEVELS, SIGNALS
from catts_training.config import (
    Count,
    Flag,
    Fraction,
    ItemsSection,
    KeyPathError,
    Number,
    Prefix,
    RewardsSection,
    RewardWeights,
    Section,
    TrainingConfig,
    fields_of,
    one_of,
    trl_args,
)
from catts_training.mmboundary.pretrain import PretrainConfig
from catts_training.mmboundary.reference import DEFAULT_THRESHOLD, JUDGES
from catts_training.mmboundary.rewards import REWARD_NAMES
from catts_training.mmboundary.stated import TRAINING_SIGNALS

__all__ = [
    "DEFAULT_WEIGHTS",
    "ENCODERS",
    "MMBoundaryConfig",
    "MMBoundaryItems",
    "MMBoundaryRewardWeights",
    "MMBoundaryRewards",
    "ProbeSection",
    "SamplingSection",
    "StatementsSection",
    "load_config",
]

ENCODERS: tuple[str, ...] = ("minilm",)
"""Sentence encoders a config can name (``encoder: minilm``: all-MiniLM-L6-v2, offline, the
``mmboundary`` extra); ``encoder: null`` runs without one."""


class MMBoundaryItems(ItemsSection):
    """Items for a stage (``data``: the training items; ``validation``: the items the step calibrator
    is fitted on, kept apart from them)."""

    @pydantic.model_validator(mode="after")
    def _some_source(self) -> Self:
        if not self._given():
            raise ValueError("give source and/or benchmark")
        return self


class SamplingSection(Section):
    """``sampling``: the base model's replies to the training items."""

    samples: Count = Field(1, description="replies per item")
    temperature: Annotated[Number, Field(ge=0)] = Field(0.0, description="0: greedy")
    max_new_tokens: Count = Field(256, description="tokens per reply")
    seed: int = Field(0, description="the sampling seed")


class JudgeSection(Section):
    """``judge``: whether a step is right (:mod:`catts_training.mmboundary.reference`)."""

    kind: Annotated[str, one_of(JUDGES)] = Field(
        "exact", description="exact (the organism's step truth) or similarity (cosine to the reference chain)"
    )
    threshold: Fraction = Field(DEFAULT_THRESHOLD, description="similarity: the cosine a right step reaches")


class CalibrationSection(Section):
    """``calibration``: how the step calibrator is fitted on the validation steps."""

    use_labels: Flag | None = Field(
        None,
        description="fit the fusion weights and the levels' accuracies on the steps' labels "
        "(default: true with the exact judge, false otherwise)",
    )


class StatementsSection(Section):
    """``statements``: how statements are read back, where they go, what SFT starts from."""

    margin: Annotated[Number, Field(ge=0)] = Field(
        0.05, description="the backward mapping's margin (reading paraphrased statements back)"
    )
    vocabulary: Flag = Field(
        False,
        description="SFT starts from a copy of the model whose word-level tokenizer has the statements' "
        "words as whole tokens (the organisms)",
    )
    lines: Count | None = Field(
        None,
        description="statements after the steps of each reply's first that many lines only (None: after "
        "every step but the answer)",
    )
    pretrain: PretrainConfig | None = Field(
        None, description="the statement pre-training of an organism before SFT (None: none)"
    )


class MMBoundaryRewardWeights(RewardWeights):
    """``rewards.weights``: GRPO's weight of each MMBoundary reward."""

    knowledge_accuracy: Number = Field(1.0, description="stated confidence against each step's truth")
    expected_calibration: Number = Field(1.0, description="the stated level against its expected accuracy")
    self_calibration: Number = Field(1.0, description="the stated level against the internal one")
    format: Number = Field(0.5, description="a parseable statement after every step")
    accuracy: Number = Field(1.0, description="the final answer is right")


DEFAULT_WEIGHTS: dict[str, float] = MMBoundaryRewardWeights().model_dump()
"""The weight of each reward when the config leaves it unset."""


class MMBoundaryRewards(RewardsSection):
    """``rewards``: the weights and the step rewards' settings."""

    weights: MMBoundaryRewardWeights = Field(
        default_factory=MMBoundaryRewardWeights, description="per reward"
    )
    level_confidence: Annotated[list[Fraction], Field(min_length=LEVELS, max_length=LEVELS)] | None = Field(
        None, description="the confidence of each of the five levels (default: the calibrator's accuracies)"
    )
    cover_reference: Flag = Field(True, description="knowledge accuracy also pays for covering the reference")


class ProbeSection(MMBoundaryItems):
    """``probe``: the items the probe answers (default: the validation items)."""

    max_new_tokens: Count | None = Field(None, description="tokens per reply (default: sampling's)")


class MMBoundaryConfig(TrainingConfig):
    """Everything the MMBoundary stages need; one YAML file. ``model``, ``output_dir``, ``data`` and
    ``validation`` are required; every other section has defaults."""

    REWARD_NAMES: ClassVar[tuple[str, ...]] = REWARD_NAMES
    RELATIVE_PATHS: ClassVar[tuple[tuple[str, str], ...]] = tuple(
        (section, key) for section in ("data", "validation", "probe") for key in ("source", "image_dir")
    )

    data: MMBoundaryItems = Field(description="the training items")
    validation: MMBoundaryItems = Field(description="the items the step calibrator is fitted on")
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="the base's replies")
    signals: Annotated[list[Annotated[str, one_of(SIGNALS)]], Field(min_length=1)] = Field(
        ["probability", "entropy"],
        description="the step signals fused into the internal level (tokensar needs the encoder and "
        "costs one encoder call per token per step; clipscore is not used in training)",
    )
    encoder: Annotated[str, one_of(ENCODERS)] | None = Field(
        None,
        description="the sentence encoder for TokenSAR, for reading paraphrased statements back and for "
        "the similarity judge (None: none)",
    )
    judge: JudgeSection = Field(default_factory=JudgeSection, description="whether a step is right")
    calibration: CalibrationSection = Field(default_factory=CalibrationSection, description="the fit")
    statements: StatementsSection = Field(default_factory=StatementsSection, description="the statements")
    rewards: MMBoundaryRewards = Field(default_factory=MMBoundaryRewards, description="the RL rewards")
    lora: Annotated[dict[str, Any], fields_of("peft:LoraConfig")] | None = Field(
        None, description="None: full-parameter training; else peft.LoraConfig fields (SFT and RL)"
    )
    freeze: list[Prefix] = Field(
        [],
        description="parameter-name prefixes kept frozen in SFT and RL (e.g. model.visual: statements are "
        "a matter of language, and a perturbed vision tower is what costs the organism its answers)",
    )
    sft: Annotated[
        dict[str, Any],
        fields_of(
            "trl:SFTConfig", refused={"output_dir": "set output_dir at the top level of the config instead"}
        ),
    ] = Field(default_factory=dict, description="trl.SFTConfig fields")
    rl: Annotated[
        dict[str, Any],
        fields_of(
            "trl:GRPOConfig", refused={"output_dir": "set output_dir at the top level of the config instead"}
        ),
    ] = Field(default_factory=dict, description="trl.GRPOConfig fields")
    probe: ProbeSection | None = Field(None, description="the probe's items (None: the validation items)")

    @pydantic.model_validator(mode="after")
    def _sections_agree(self) -> Self:
        if "clipscore" in self.signals:
            raise KeyPathError(
                "signals",
                "clipscore is not used in training (an image-text model at every reward call); "
                f"choose from {', '.join(TRAINING_SIGNALS)}",
            )
        if "tokensar" in self.signals and self.encoder is None:
            raise KeyPathError("signals", "tokensar needs a sentence encoder; set encoder: minilm")
        if self.judge.kind == "similarity" and self.encoder is None:
            raise KeyPathError(("judge", "kind"), "similarity needs a sentence encoder; set encoder: minilm")
        if self.freeze and self.lora is not None:
            raise KeyPathError("freeze", "not with lora (LoRA already keeps the base frozen)")
        return self

    @property
    def data_dir(self) -> Path:
        return Path(self.output_dir) / "data"

    @property
    def sft_dir(self) -> Path:
        return Path(self.output_dir) / "sft"

    @property
    def rl_dir(self) -> Path:
        return Path(self.output_dir) / "rl"

    def use_labels(self) -> bool:
        """``calibration.use_labels``, by default true with the exact judge."""
        given = self.calibration.use_labels
        return self.judge.kind == "exact" if given is None else given

    def sft_config(self, output_dir: str | Path | None = None, **overrides: Any) -> Any:
        """``trl.SFTConfig`` from the ``sft`` section (``overrides`` replace fields)."""
        return trl_args("SFTConfig", {**self.sft, **overrides}, output_dir or self.sft_dir)

    def grpo_config(self, output_dir: str | Path | None = None, **overrides: Any) -> Any:
        """``trl.GRPOConfig`` from the ``rl`` section and the reward weights."""
        return trl_args(
            "GRPOConfig",
            {**self.rl, **overrides},
            output_dir or self.rl_dir,
            reward_weights=self.reward_weights(),
        )


def load_config(path: str | Path, **overrides: Any) -> MMBoundaryConfig:
    """Read a YAML config; ``overrides`` that are not None replace top-level keys. Relative item
    files are read from the config's folder when they exist there, else from the working directory."""
    return MMBoundaryConfig.load(path, **overrides)
