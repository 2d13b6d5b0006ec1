"""CATTSConfig: every knob of the CA-TTS graph, documented, with defaults.

It is the graph's LangGraph *context schema*: pass ``context=CATTSConfig(...)`` to ``invoke`` to
override the defaults the graph was built with. Every field can also be set from an environment
variable ``CATTS_<FIELD>`` (upper case) through :meth:`CATTSConfig.from_env`, which is how LangGraph
Studio configures the module-level graph.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict

from PIL import Image

Policy = Literal["adaptive", "paper", "expert"]
Weighting = Literal["nmlp", "majority", "mean", "tail", "bottom_percent", "lowest_group", "step_min"]
ScoreScale = Literal["normalised", "literal"]
ConfidenceSpan = Literal["response", "answer"]
StepSignal = Literal["fused", "expressed", "nmlp"]
ReflectionBoost = Literal["always", "incorrect"]
CriticTarget = Literal["least_confident", "leader"]

MODULES = ("self_consistency", "self_reflection", "visual_self_check")
"""The paper's three modules (the ``paper`` policy runs each once)."""
STEP_REPAIR = "step_repair"
"""MMBoundary's step repair: not one of the paper's modules, routed by ``step_floor`` or a Planner."""


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field."""


@dataclass(kw_only=True)
class CATTSConfig:
    """Configuration of one CA-TTS run."""

    policy: Policy = field(
        default="adaptive",
        metadata={"description": "How the planner routes: 'adaptive', 'paper' or 'expert'."},
    )
    n_samples: int = field(
        default=8, metadata={"description": "Samples drawn in the first wave (the paper's N)."}
    )
    max_samples: int = field(
        default=32,
        metadata={"description": "Sample budget per question across waves (adaptive policy)."},
    )
    wave_size: int = field(
        default=8, metadata={"description": "Samples drawn by each extra wave (adaptive policy)."}
    )
    temperature: float = field(default=1.0, metadata={"description": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"description": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"description": "Top-k sampling cut (0 = off)."})
    max_new_tokens: int = field(
        default=1024, metadata={"description": "Longest response the base model may write."}
    )
    top_logprobs: int = field(
        default=0,
        metadata={"description": "Top-k log-probs kept per step (DeepConf weightings need 20)."},
    )
    seed: int = field(default=0, metadata={"description": "Seed of the first wave; waves add 1."})

    weighting: Weighting = field(
        default="nmlp",
        metadata={
            "description": "Vote weight per sample: 'nmlp' (paper, 1/NMLP), 'majority' (1), a "
            "DeepConf confidence: 'mean', 'tail', 'bottom_percent', 'lowest_group', or 'step_min' "
            "(the fused confidence of the sample's weakest step)."
        },
    )
    confidence_span: ConfidenceSpan = field(
        default="response",
        metadata={"description": "NMLP over the whole response or only the final-answer tokens."},
    )
    top_eta: float | None = field(
        default=None,
        metadata={
            "description": "DeepConf filter: keep the samples whose confidence is at or above the "
            "(1 - eta) quantile before voting (None = keep all)."
        },
    )
    deepconf_window: int = field(
        default=32,
        metadata={
            "description": "Sliding window of DeepConf group confidence, in tokens (a trace no longer "
            "than it is one group); also the window online early stopping watches. DeepConf's 2048 "
            "is for 10k-token traces; the CA-TTS baselines use 20-50."
        },
    )
    deepconf_tail: int = field(
        default=32,
        metadata={
            "description": "DeepConf tail confidence: mean token confidence of the last this many "
            "tokens (DeepConf: 2048)."
        },
    )
    nmlp_floor: float | None = field(
        default=None,
        metadata={
            "description": "Floor of the NMLP in the 'nmlp' weight: w = 1 / max(NMLP, floor), so one "
            "near-certain sample cannot outvote many; None = the paper's 1 / (NMLP + 1e-8)."
        },
    )
    tau1: float = field(default=0.5, metadata={"description": "Weight of the Voter's probability."})
    tau2: float = field(default=0.5, metadata={"description": "Boost of the reflected answer."})
    tau3: float = field(default=0.5, metadata={"description": "Boost of the visual self-check winner."})
    score_scale: ScoreScale = field(
        default="normalised",
        metadata={
            "description": "'normalised': S(a) = V(a)/sum V + tau boosts (one scale). 'literal': the "
            "official code's unnormalised sum with boosts of int(tau * N) votes."
        },
    )

    step_calibrator: str | None = field(
        default=None,
        metadata={
            "description": "JSON file of a fitted StepCalibrator (its to_dict): step signals fused "
            "with its weights and cut into five levels. None = a step's fused confidence is its "
            "probability exp(-NMLP) and it has no level (or build_graph(step_calibrator=...))."
        },
    )
    critic_step_signal: StepSignal = field(
        default="fused",
        metadata={
            "description": "Which step of the criticised sample the Critic is pointed at: the lowest "
            "'fused' confidence, the lowest 'expressed' level (the model's own statement; fused "
            "when it states none) or the highest 'nmlp'."
        },
    )
    step_floor: float | None = field(
        default=None,
        metadata={
            "description": "Adaptive: the fast path also needs every leader sample's weakest step at "
            "this fused confidence or above, and below it step_repair runs while the budget "
            "allows (None = off)."
        },
    )
    repair_samples: int = field(
        default=4,
        metadata={
            "description": "Most samples step_repair repairs, the weakest steps first, one "
            "continuation each, within the sample budget."
        },
    )
    disabled_modules: tuple[str, ...] = field(
        default=(),
        metadata={
            "description": "Modules never run, for ablations: any of 'self_consistency', "
            "'self_reflection', 'visual_self_check', 'step_repair' (env: comma-separated)."
        },
    )
    # Policy options the hard regime raised (issue 23), each measured against the paper's rule on
    # 600 level-4 validation items with the expert organism (docs/organism/policy-options.md).
    reflection_boost: ReflectionBoost = field(
        default="always",
        metadata={
            "description": "When the reflected answer gets tau2: 'always' (the paper, whatever the "
            "Critic's verdict) or only when the Critic's verdict on the criticised sample is "
            "'incorrect'. Default: the paper's; 'incorrect' measured +0.2 points [-1.0, 1.3]."
        },
    )
    critic_target: CriticTarget = field(
        default="least_confident",
        metadata={
            "description": "The sample the Critic critiques: 'least_confident' (the paper: the "
            "answered voting sample with the highest NMLP) or 'leader' (the vote leader's most "
            "confident sample, the response the Voter is shown for it). Default: the paper's; "
            "'leader' measured -0.5 points [-1.8, 0.8]."
        },
    )
    skip_modules_at_one_sample: bool = field(
        default=True,
        metadata={
            "description": "With one sample drawn and no more to come there is nothing to vote on: "
            "aggregate at once, with no module and no expert call (the Planner's included); at "
            "tau2 + tau3 <= 1 no module could change that answer. On by default: it changed no "
            "answer and saved every expert call at N = 1. False: the paper's rule, every module runs."
        },
    )
    fast_path_share: float = field(
        default=0.7,
        metadata={"description": "Adaptive fast path: the top answer's weighted vote share must reach this."},
    )
    fast_path_confidence: float = field(
        default=0.5,
        metadata={
            "description": "Adaptive fast path: mean exp(-NMLP) of the top answer's samples must "
            "reach this. No expert is called on the fast path."
        },
    )
    contested_share: float = field(
        default=0.6,
        metadata={
            "description": "Adaptive: below this top vote share the vote is contested and another "
            "wave is drawn while the budget allows."
        },
    )
    close_margin: float = field(
        default=0.15,
        metadata={
            "description": "Adaptive: run the visual self-check when the top two final scores, "
            "normalised to sum 1, are closer than this."
        },
    )
    max_voter_candidates: int = field(
        default=8, metadata={"description": "Most candidates shown to the Voter."}
    )
    self_check_candidates: int = field(
        default=4, metadata={"description": "Most candidates the visual self-check contrasts."}
    )
    vcd_alpha: float = field(default=1.0, metadata={"description": "VCD contrast strength alpha."})
    noise_step: int = field(
        default=500,
        metadata={"description": "Diffusion step (of 1000) of the self-check's noised image."},
    )

    expert_retries: int = field(
        default=2, metadata={"description": "Retries of a failed or malformed expert answer."}
    )
    expert_backoff: float = field(
        default=0.5, metadata={"description": "First retry delay in seconds; doubles each retry."}
    )
    expert_timeout: float = field(
        default=120.0, metadata={"description": "Seconds one expert call may take."}
    )
    max_expert_reply_chars: int = field(
        default=50_000,
        metadata={
            "description": "Longest expert reply parsed; a longer one is a malformed answer (retried, "
            "then the module is skipped)."
        },
    )
    max_expert_text_chars: int = field(
        default=8_000,
        metadata={
            "description": "Longest expert text kept (the critique self-reflection reads, the "
            "planner's reason); longer text is cut in the middle, with a note in the trace."
        },
    )

    max_question_chars: int = field(
        default=20_000,
        metadata={
            "description": "Longest question accepted, in characters (a longer one is an input error, "
            "before any model call; so is one longer than the model's context)."
        },
    )
    max_option_chars: int = field(
        default=2_000, metadata={"description": "Longest multiple-choice option accepted, in characters."}
    )

    allow_url_fetch: bool = field(
        default=False, metadata={"description": "Allow http(s) image URLs to be downloaded."}
    )
    allow_private_urls: bool = field(
        default=False,
        metadata={
            "description": "Allow image URLs on private, loopback and link-local addresses (checked "
            "after every redirect; off guards against server-side request forgery)."
        },
    )
    url_max_bytes: int = field(
        default=20_000_000, metadata={"description": "Largest image download, in bytes."}
    )
    url_timeout: float = field(
        default=10.0,
        metadata={"description": "Seconds a whole image download may take, redirects included."},
    )
    max_image_bytes: int = field(
        default=100_000_000,
        metadata={
            "description": "Largest image file, data URI or bytes input, in bytes (a file's size is "
            "checked before it is read)."
        },
    )
    max_image_pixels: int = field(
        default=40_000_000,
        metadata={
            "description": "Largest image (width * height) accepted; guards against bombs. At most "
            "PIL's own limit, 2 * PIL.Image.MAX_IMAGE_PIXELS."
        },
    )
    max_aspect_ratio: float = field(
        default=200.0,
        metadata={
            "description": "Longest side over shortest side accepted (Qwen2.5-VL's processor refuses "
            "more than 200)."
        },
    )
    image_cache_bytes: int = field(
        default=256_000_000,
        metadata={
            "description": "Decoded images kept for reuse across nodes and runs, in bytes of pixels "
            "plus their PNG encodings for the expert (keyed by the image's content; 0 = no cache)."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field of the wrong type or out of range.

        Types first: an int field takes an int (not a bool), a float field a finite number (NaN
        would pass every range check below and fail after the model calls).
        """
        _check_types(self)
        if self.policy not in typing.get_args(Policy):
            raise ConfigError(f"policy must be one of {typing.get_args(Policy)}, got {self.policy!r}")
        if self.weighting not in typing.get_args(Weighting):
            raise ConfigError(
                f"weighting must be one of {typing.get_args(Weighting)}, got {self.weighting!r}"
            )
        if self.score_scale not in typing.get_args(ScoreScale):
            raise ConfigError(
                f"score_scale must be one of {typing.get_args(ScoreScale)}, got {self.score_scale!r}"
            )
        if self.critic_step_signal not in typing.get_args(StepSignal):
            raise ConfigError(
                f"critic_step_signal must be one of {typing.get_args(StepSignal)}, "
                f"got {self.critic_step_signal!r}"
            )
        for name, allowed in (("reflection_boost", ReflectionBoost), ("critic_target", CriticTarget)):
            if getattr(self, name) not in typing.get_args(allowed):
                raise ConfigError(
                    f"{name} must be one of {typing.get_args(allowed)}, got {getattr(self, name)!r}"
                )
        if self.confidence_span not in typing.get_args(ConfidenceSpan):
            raise ConfigError(
                f"confidence_span must be one of {typing.get_args(ConfidenceSpan)}, "
                f"got {self.confidence_span!r}"
            )
        for name in (
            "n_samples",
            "max_samples",
            "wave_size",
            "max_new_tokens",
            "deepconf_window",
            "deepconf_tail",
            "max_voter_candidates",
            "self_check_candidates",
            "max_expert_reply_chars",
            "max_expert_text_chars",
            "max_question_chars",
            "max_option_chars",
            "url_max_bytes",
            "max_image_bytes",
            "max_image_pixels",
            "repair_samples",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.max_samples < self.n_samples:
            raise ConfigError(f"max_samples ({self.max_samples}) must be >= n_samples ({self.n_samples})")
        for name in (
            "tau1",
            "tau2",
            "tau3",
            "fast_path_share",
            "fast_path_confidence",
            "contested_share",
            "close_margin",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (0 would keep no token), got {self.top_p!r}")
        if self.nmlp_floor is not None and not self.nmlp_floor > 0.0:
            raise ConfigError(f"nmlp_floor must be > 0 or None (off), got {self.nmlp_floor!r}")
        if self.top_eta is not None and not 0.0 < self.top_eta <= 1.0:
            raise ConfigError(f"top_eta must be in (0, 1] or None, got {self.top_eta!r}")
        if self.step_floor is not None and not 0.0 <= self.step_floor <= 1.0:
            raise ConfigError(f"step_floor must be in [0, 1] or None (off), got {self.step_floor!r}")
        if self.step_calibrator is not None and not self.step_calibrator.strip():
            raise ConfigError("step_calibrator must be the path of a JSON file or None, got ''")
        known = (*MODULES, STEP_REPAIR)
        unknown = [m for m in self.disabled_modules if m not in known]
        if unknown:
            raise ConfigError(f"disabled_modules must be a tuple of {known}, got {self.disabled_modules!r}")
        for name in ("top_k", "top_logprobs", "expert_retries", "seed", "image_cache_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.noise_step < 1000:
            raise ConfigError(f"noise_step must be in [0, 999], got {self.noise_step!r}")
        for name in ("temperature", "vcd_alpha", "expert_backoff", "expert_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.url_timeout <= 0:
            raise ConfigError(f"url_timeout must be > 0 seconds, got {self.url_timeout!r}")
        if self.max_aspect_ratio < 1:
            raise ConfigError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio!r}")
        # PIL refuses an image over twice its own limit before our check can let it through.
        if Image.MAX_IMAGE_PIXELS is not None and self.max_image_pixels > 2 * Image.MAX_IMAGE_PIXELS:
            raise ConfigError(
                f"max_image_pixels must be at most {2 * Image.MAX_IMAGE_PIXELS} (PIL's own limit, "
                f"2 * PIL.Image.MAX_IMAGE_PIXELS), got {self.max_image_pixels}; raise "
                "PIL.Image.MAX_IMAGE_PIXELS first"
            )
        if self.weighting in ("mean", "tail", "bottom_percent", "lowest_group") and not self.top_logprobs:
            raise ConfigError(
                f"weighting={self.weighting!r} needs token confidence: set top_logprobs (e.g. 20)"
            )

    def replace(self, **changes: Any) -> CATTSConfig:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: typing.Mapping[str, str] | None = None, *, base: CATTSConfig | None = None
    ) -> CATTSConfig:
        """``base`` (or the defaults) with every ``CATTS_<FIELD>`` variable of ``environ`` applied."""
        environ = os.environ if environ is None else environ
        base = base or cls()
        hints = typing.get_type_hints(cls)
        changes: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"CATTS_{f.name.upper()}")
            if raw is not None:
                changes[f.name] = _parse_env(f.name, raw, hints[f.name])
        return dataclasses.replace(base, **changes)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(name, default, description) of every field, for the README and ``catts config``."""
        return [(f.name, repr(f.default), str(f.metadata.get("description", ""))) for f in fields(cls)]


def _check_types(config: CATTSConfig) -> None:
    """Raise :class:`ConfigError` naming the first field whose value is not of the field's type."""
    for name, hint in typing.get_type_hints(CATTSConfig).items():
        value = getattr(config, name)
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
            if value is None:
                continue
            hint = next(a for a in args if a is not type(None))
        if hint is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        elif hint is str and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        elif hint is float and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        # A list is a tuple here: JSON (Studio's context, the server's) has no tuples.
        elif typing.get_origin(hint) is tuple and (
            not isinstance(value, (tuple, list)) or not all(isinstance(item, str) for item in value)
        ):
            raise ConfigError(f"{name} must be a tuple of strings, got {value!r}")


def _parse_env(name: str, raw: str, hint: Any) -> Any:
    """Parse one environment value by the field's type; errors name the variable."""
    var = f"CATTS_{name.upper()}"
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw.strip().lower() in ("", "none", "null"):
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if origin is Literal:
            return raw.strip()
        if origin is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {getattr(hint, '__name__', hint)}") from None


# The graph's context schema: any subset of CATTSConfig's fields, applied over the config the graph
# was built with. (A dataclass context would be rebuilt by LangGraph from a dict with the *class*
# defaults, silently dropping the graph's own config; a TypedDict of overrides keeps it.)
CATTSContext = TypedDict(  # type: ignore[misc]  # noqa: UP013 (fields come from CATTSConfig)
    "CATTSContext", dict(typing.get_type_hints(CATTSConfig)), total=False
)
