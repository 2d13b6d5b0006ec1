"""CATTSConfig: every knob of the CA-TTS graph, documented, with defaults.

One declaration per field, a pydantic field: its type, its bounds (``Count`` is an integer >= 1,
``Fraction`` a number in [0, 1], ...), its default and its description. Everything else comes from
it: validation (strict types, bounds, and the few rules between fields, as model validators), the
environment variables ``CATTS_<FIELD>`` (:meth:`CATTSConfig.from_env`, which is how LangGraph Studio
configures the module-level graph), ``catts config``'s table (:meth:`CATTSConfig.field_docs`) and the
graph's context schema (:data:`CATTSContext`, the configuration panel Studio shows).

Pass ``context=CATTSConfig(...)`` to ``invoke`` to replace the config the graph was built with, or a
mapping of some fields (Studio's panel sends one) to override just those. A value out of its type or
range is a :class:`ConfigError` naming the field (and the variable it came from), before any model
call.
"""

from __future__ import annotations

import difflib
import functools
import os
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple, Self

import pydantic
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

Policy = Literal["adaptive", "paper", "expert"]
Weighting = Literal["nmlp", "majority", "mean", "tail", "bottom_percent", "lowest_group", "step_min"]
ScoreScale = Literal["normalised", "literal"]
ConfidenceSpan = Literal["response", "answer"]
StepSignal = Literal["fused", "expressed", "nmlp"]
Module = Literal["self_consistency", "self_reflection", "visual_self_check", "step_repair"]
ReflectionBoost = Literal["always", "incorrect", "override"]
CriticTarget = Literal["least_confident", "leader"]

PAPER_REFLECTION: dict[str, str] = {"reflection_boost": "always", "critic_target": "least_confident"}
"""The paper's reflection rules (the defaults are the override of the leader validation chose): the
Critic criticises the least confident sample and its reflection gets tau2 among the votes."""
PAPER_TAU1 = 0.5
"""The paper's weight of the Voter's probability (the default is the 2.0 validation chose)."""

MODULES = ("self_consistency", "self_reflection", "visual_self_check")
"""The paper's three modules (the ``paper`` policy runs each once)."""
STEP_REPAIR = "step_repair"
"""MMBoundary's step repair: not one of the paper's modules, routed by ``step_floor`` or a Planner."""

# The bounds fields share. Types are strict (the model's config): an integer field takes an int, not
# a bool, a float or a string; a number field an int or a finite float (NaN would pass every range
# check and fail after the model calls).
Count = Annotated[int, Field(ge=1)]
"""An integer >= 1."""
NonNegative = Annotated[int, Field(ge=0)]
"""An integer >= 0."""
Fraction = Annotated[float, Field(ge=0, le=1)]
"""A number in [0, 1]."""
NonNegativeNumber = Annotated[float, Field(ge=0)]
"""A number >= 0."""
NonBlank = Annotated[str, Field(pattern=r"\S")]
"""A string with a character other than white space (a path)."""

DEEPCONF_WEIGHTINGS = ("mean", "tail", "bottom_percent", "lowest_group")
"""The weightings that read token confidence, so need ``top_logprobs``."""


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field (and the environment
    variable it came from). ``fields``: the fields it is about."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class CATTSConfig(BaseModel):
    """Configuration of one CA-TTS run."""

    # Built on first use, not at import: `catts --help` imports this module and never validates.
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", defer_build=True)

    policy: Policy = Field("adaptive", description="How the planner routes: 'adaptive', 'paper' or 'expert'.")
    n_samples: Count = Field(8, description="Samples drawn in the first wave (the paper's N).")
    max_samples: Count = Field(32, description="Sample budget per question across waves (adaptive policy).")
    wave_size: Count = Field(8, description="Samples drawn by each extra wave (adaptive policy).")
    temperature: NonNegativeNumber = Field(1.0, description="Sampling temperature.")
    # 0 would keep no token.
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: NonNegative = Field(0, description="Top-k sampling cut (0 = off).")
    max_new_tokens: Count = Field(1024, description="Longest response the base model may write.")
    top_logprobs: NonNegative = Field(
        0, description="Top-k log-probs kept per step (DeepConf weightings need 20)."
    )
    seed: NonNegative = Field(0, description="Seed of the first wave; waves add 1.")

    weighting: Weighting = Field(
        "nmlp",
        description="Vote weight per sample: 'nmlp' (paper, 1/NMLP), 'majority' (1), a "
        "DeepConf confidence: 'mean', 'tail', 'bottom_percent', 'lowest_group', or 'step_min' "
        "(the fused confidence of the sample's weakest step).",
    )
    confidence_span: ConfidenceSpan = Field(
        "response", description="NMLP over the whole response or only the final-answer tokens."
    )
    top_eta: float | None = Field(
        None,
        gt=0,
        le=1,
        description="DeepConf filter: keep the samples whose confidence is at or above the "
        "(1 - eta) quantile before voting (None = keep all).",
    )
    deepconf_window: Count = Field(
        32,
        description="Sliding window of DeepConf group confidence, in tokens (a trace no longer "
        "than it is one group); also the window online early stopping watches. DeepConf's 2048 "
        "is for 10k-token traces; the CA-TTS baselines use 20-50.",
    )
    deepconf_tail: Count = Field(
        32,
        description="DeepConf tail confidence: mean token confidence of the last this many "
        "tokens (DeepConf: 2048).",
    )
    nmlp_floor: float | None = Field(
        None,
        gt=0,
        description="Floor of the NMLP in the 'nmlp' weight: w = 1 / max(NMLP, floor), so one "
        "near-certain sample cannot outvote many; None = the paper's 1 / (NMLP + 1e-8).",
    )
    tau1: NonNegativeNumber = Field(
        2.0,
        description="Weight of the Voter's probability: at 2 (default; above 1 + tau3) a Voter sure "
        "of one answer outweighs the whole vote and the self-check's boost, a hedging one leaves "
        "the vote to decide. The paper's 0.5 lets a vote margin over one half overrule a sure "
        "Voter; 2 measured +5.5 points [3.3, 7.8] over it on level-4 validation items (under the "
        "override of the leader).",
    )
    tau2: Fraction = Field(0.5, description="Boost of the reflected answer.")
    tau3: Fraction = Field(0.5, description="Boost of the visual self-check winner.")
    score_scale: ScoreScale = Field(
        "normalised",
        description="'normalised': S(a) = V(a)/sum V + tau boosts (one scale). 'literal': the "
        "official code's unnormalised sum with boosts of int(tau * N) votes.",
    )

    step_calibrator: NonBlank | None = Field(
        None,
        description="JSON file of a fitted StepCalibrator (its to_dict): step signals fused "
        "with its weights and cut into five levels. None = a step's fused confidence is its "
        "probability exp(-NMLP) and it has no level (or build_graph(step_calibrator=...)).",
    )
    critic_step_signal: StepSignal = Field(
        "fused",
        description="Which step of the criticised sample the Critic is pointed at: the lowest "
        "'fused' confidence, the lowest 'expressed' level (the model's own statement; fused "
        "when it states none) or the highest 'nmlp'.",
    )
    step_floor: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Adaptive: the fast path also needs every leader sample's weakest step at "
        "this fused confidence or above, and below it step_repair runs while the budget "
        "allows (None = off).",
    )
    repair_samples: Count = Field(
        4,
        description="Most samples step_repair repairs, the weakest steps first, one "
        "continuation each, within the sample budget.",
    )
    repair_temperature: NonNegativeNumber | None = Field(
        None,
        description="Temperature of step_repair's continuations: None = the run's temperature "
        "(another draw from the weak step on), 0 = greedy (the model's likeliest rewrite).",
    )
    # Not strict: a list is a tuple here, since JSON (Studio's context, the server's) has no tuples.
    disabled_modules: tuple[Module, ...] = Field(
        (),
        strict=False,
        description="Modules never run, for ablations: any of 'self_consistency', "
        "'self_reflection', 'visual_self_check', 'step_repair' (env: comma-separated).",
    )
    # Policy options the hard regime raised (issue 23), each measured against the paper's rule on
    # 600 level-4 validation items with the expert organism (docs/organism/policy-options.md); the
    # defaults are the options validation adopted (the paper's rules: reflection_boost='always',
    # critic_target='least_confident', skip_modules_at_one_sample=False).
    reflection_boost: ReflectionBoost = Field(
        "override",
        description="What the reflected answer gets: 'always' tau2 (the paper, whatever the "
        "Critic's verdict); 'incorrect' tau2 only when the Critic's verdict on the criticised "
        "sample is 'incorrect'; 'override' (default, with critic_target='leader'), after an "
        "'incorrect' verdict on a sample of the leading answer, the lead (its score the leader's "
        "plus tau2), nothing otherwise. Measured against the paper's rule on level-4 validation "
        "items: the two together +3.8 points [1.8, 6.0]; 'incorrect' alone +0.2 [-1.0, 1.3].",
    )
    critic_target: CriticTarget = Field(
        "leader",
        description="The sample the Critic critiques: 'leader' (default: the vote leader's most "
        "confident sample, the response the Voter is shown for it) or 'least_confident' (the "
        "paper: the answered voting sample with the highest NMLP). 'leader' alone, with the "
        "paper's boost, measured -0.5 points [-1.8, 0.8]; with reflection_boost='override' +3.8.",
    )
    skip_modules_at_one_sample: bool = Field(
        True,
        description="With one sample drawn and no more to come there is nothing to vote on: "
        "aggregate at once, with no module and no expert call (the Planner's included); at "
        "tau2 + tau3 <= 1 no module could change that answer. On by default: it changed no "
        "answer and saved every expert call at N = 1. False: the paper's rule, every module runs.",
    )
    fast_path_share: Fraction = Field(
        0.7, description="Adaptive fast path: the top answer's weighted vote share must reach this."
    )
    fast_path_confidence: Fraction = Field(
        0.5,
        description="Adaptive fast path: mean exp(-NMLP) of the top answer's samples must "
        "reach this. No expert is called on the fast path.",
    )
    contested_share: Fraction = Field(
        0.6,
        description="Adaptive: below this top vote share the vote is contested and another "
        "wave is drawn while the budget allows.",
    )
    close_margin: Fraction = Field(
        0.15,
        description="Adaptive: run the visual self-check when the top two final scores, "
        "normalised to sum 1, are closer than this.",
    )
    max_voter_candidates: Count = Field(8, description="Most candidates shown to the Voter.")
    self_check_candidates: Count = Field(4, description="Most candidates the visual self-check contrasts.")
    vcd_alpha: NonNegativeNumber = Field(1.0, description="VCD contrast strength alpha.")
    noise_step: int = Field(
        500, ge=0, lt=1000, description="Diffusion step (of 1000) of the self-check's noised image."
    )

    expert_retries: NonNegative = Field(2, description="Retries of a failed or malformed expert answer.")
    expert_backoff: NonNegativeNumber = Field(
        0.5, description="First retry delay in seconds; doubles each retry."
    )
    expert_timeout: NonNegativeNumber = Field(120.0, description="Seconds one expert call may take.")
    max_expert_reply_chars: Count = Field(
        50_000,
        description="Longest expert reply parsed; a longer one is a malformed answer (retried, "
        "then the module is skipped).",
    )
    max_expert_text_chars: Count = Field(
        8_000,
        description="Longest expert text kept (the critique self-reflection reads, the "
        "planner's reason); longer text is cut in the middle, with a note in the trace.",
    )

    max_question_chars: Count = Field(
        20_000,
        description="Longest question accepted, in characters (a longer one is an input error, "
        "before any model call; so is one longer than the model's context).",
    )
    max_option_chars: Count = Field(
        2_000, description="Longest multiple-choice option accepted, in characters."
    )

    allow_url_fetch: bool = Field(False, description="Allow http(s) image URLs to be downloaded.")
    allow_private_urls: bool = Field(
        False,
        description="Allow image URLs on private, loopback and link-local addresses (checked "
        "after every redirect; off guards against server-side request forgery).",
    )
    url_max_bytes: Count = Field(20_000_000, description="Largest image download, in bytes.")
    url_timeout: float = Field(
        10.0, gt=0, description="Seconds a whole image download may take, redirects included."
    )
    max_image_bytes: Count = Field(
        100_000_000,
        description="Largest image file, data URI or bytes input, in bytes (a file's size is "
        "checked before it is read).",
    )
    max_image_pixels: Count = Field(
        40_000_000,
        description="Largest image (width * height) accepted; guards against bombs. At most "
        "PIL's own limit, 2 * PIL.Image.MAX_IMAGE_PIXELS.",
    )
    max_aspect_ratio: float = Field(
        200.0,
        ge=1,
        description="Longest side over shortest side accepted (Qwen2.5-VL's processor refuses "
        "more than 200).",
    )
    image_cache_bytes: NonNegative = Field(
        256_000_000,
        description="Decoded images kept for reuse across nodes and runs, in bytes of pixels "
        "plus their PNG encodings for the expert (keyed by the image's content; 0 = no cache).",
    )

    # -- rules between fields (they run once every field has its type and range) ------------------

    @model_validator(mode="after")
    def _budget_holds_the_first_wave(self) -> Self:
        if self.max_samples < self.n_samples:
            raise _Rule(
                ("max_samples", "n_samples"),
                f"max_samples ({self.max_samples}) must be >= n_samples ({self.n_samples})",
            )
        return self

    @model_validator(mode="after")
    def _deepconf_has_token_confidence(self) -> Self:
        if self.weighting in DEEPCONF_WEIGHTINGS and not self.top_logprobs:
            raise _Rule(
                ("weighting", "top_logprobs"),
                f"weighting={self.weighting!r} needs token confidence: set top_logprobs (e.g. 20)",
            )
        return self

    @model_validator(mode="after")
    def _pixels_within_pil(self) -> Self:
        # PIL refuses an image over twice its own limit before our check can let it through; its
        # limit is a setting of the running process, so this bound is checked here, not declared.
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and self.max_image_pixels > 2 * limit:
            raise _Rule(
                ("max_image_pixels",),
                f"max_image_pixels must be at most {2 * limit} (PIL's own limit, "
                f"2 * PIL.Image.MAX_IMAGE_PIXELS), got {self.max_image_pixels}; raise "
                "PIL.Image.MAX_IMAGE_PIXELS first",
            )
        return self

    # -- construction -------------------------------------------------------------------------------

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as error:
            raise _config_error(error) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated."""
        return type(self)(**{**self.__dict__, **changes})

    def validate(self) -> None:  # type: ignore[override]  # pydantic v1's classmethod, deprecated
        """Raise :class:`ConfigError` naming the first field of the wrong type or out of range
        (construction does it; this checks a config whose fields were assigned since)."""
        self.replace()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, base: CATTSConfig | None = None) -> Self:
        """``base`` (or the defaults) with every ``CATTS_<FIELD>`` variable of ``environ`` applied.

        Each value is read by pydantic from its string (``16``, ``0.25``, ``yes``/``no``,
        ``paper``) against the field's type and bounds; two spellings are the environment's own:
        ``none``, ``null`` or nothing turn off a field that takes None, and a tuple is
        comma-separated. An error names the variable and the field.
        """
        environ = os.environ if environ is None else environ
        given = {
            name: environ[env_variable(name)] for name in cls.model_fields if env_variable(name) in environ
        }
        try:
            # Lax, unlike construction: a string is read as the field's type.
            changes = _context_reader().validate_python(
                {name: _from_env_string(cls.model_fields[name], raw) for name, raw in given.items()},
                strict=False,
            )
            return (base or cls()).replace(**changes)
        except pydantic.ValidationError as error:
            raise _config_error(error, given) from None
        except ConfigError as error:  # a rule between fields, or a bound only construction checks
            raise _config_error(error, given) from None

    # -- documentation ------------------------------------------------------------------------------

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(name, default, description) of every field, for the README and ``catts config``."""
        return [(doc.name, doc.default, doc.description) for doc in cls.field_docs()]

    @classmethod
    def field_docs(cls) -> list[FieldDoc]:
        """Every field as ``catts config`` prints it, its type and bounds read from the model's
        JSON schema (the one Studio shows)."""
        properties = _json_schema(cls)["properties"]
        return [
            FieldDoc(
                name,
                _schema_type(properties[name]),
                repr(field.default),
                _bounds(properties[name]),
                field.description or "",
            )
            for name, field in cls.model_fields.items()
        ]


class FieldDoc(NamedTuple):
    """One field of :class:`CATTSConfig`, written out: ``type`` and ``bounds`` as its JSON schema
    gives them (``integer``, ``>= 1``; ``number | null``, ``(0, 1]``; ``string``, ``'a' | 'b'``)."""

    name: str
    type: str
    default: str
    bounds: str
    description: str


def env_variable(name: str) -> str:
    """The environment variable of the field ``name``: ``CATTS_<NAME>``."""
    return f"CATTS_{name.upper()}"


def _from_env_string(field: FieldInfo, raw: str) -> Any:
    """The environment's spellings pydantic does not read from a string: None and a tuple."""
    text = raw.strip()
    args = typing.get_args(field.annotation)
    if type(None) in args and text.lower() in ("", "none", "null"):
        return None
    if typing.get_origin(field.annotation) is tuple:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


class _Rule(ValueError):
    """A rule between fields is broken (raised in a model validator): ``fields`` are the ones it
    reads, named in the message; an environment error also names their variables."""

    def __init__(self, fields: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.fields = fields


# -- errors, in the words of the field ---------------------------------------------------------------

_TYPES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a finite number",
    "float_parsing": "a finite number",
    "finite_number": "a finite number",
    "bool_type": "True or False",
    "bool_parsing": "True or False",
    "string_type": "a string",
    "string_pattern_mismatch": "a non-blank string",  # NonBlank, the one pattern
    "tuple_type": "a list of strings",
}
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _config_error(
    error: pydantic.ValidationError | ConfigError, env: Mapping[str, str] | None = None
) -> ConfigError:
    """A :class:`ConfigError` for the first error of ``error``: ``FIELD must be EXPECTED, got VALUE``,
    prefixed by ``CATTS_FIELD='raw'`` for the fields ``env`` (raw variables by field) gave."""
    if isinstance(error, ConfigError):
        text, fields = str(error), error.fields
    else:
        errors = error.errors()
        cause = (errors[0].get("ctx") or {}).get("error")
        if isinstance(cause, _Rule):
            text, fields = str(cause), cause.fields
        else:
            text, fields = _field_message(errors[0]), (str(errors[0]["loc"][0]),)
        if len(errors) > 1:
            text += f" (and {len(errors) - 1} more)"
    named = [f"{env_variable(name)}={env[name]!r}" for name in fields if env and name in env]
    return ConfigError(", ".join(named) + (": " if named else "") + text, fields)


def _field_message(error: ErrorDetails) -> str:
    name, *inner = (str(part) for part in error["loc"])
    where = name + "".join(f"[{part}]" for part in inner)
    kind = error["type"]
    got = f", got {error['input']!r}"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(name, list(CATTSConfig.model_fields), n=1)
        return f"{name} is not a CATTSConfig field" + (f" (did you mean {close[0]}?)" if close else "")
    if kind == "literal_error":
        return f"{where} must be one of {(error.get('ctx') or {}).get('expected')}{got}"
    if kind in _BOUNDS:
        return f"{where} must be {_range(name)}{got}"
    if kind in _TYPES:
        return f"{where} must be {_TYPES[kind]}{got}"
    return f"{where}: {error['msg']}{got}"


def _range(name: str) -> str:
    """What the field ``name`` accepts, from its schema: ``an integer >= 1``, ``in (0, 1]``,
    ``> 0 or None (off)`` (None's meaning: :data:`_NONE_MEANS`, else off)."""
    schema = _json_schema(CATTSConfig)["properties"][name]
    number = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
    bounds = _bounds(number)
    text = ("an integer " if number.get("type") == "integer" else "") + (
        f"in {bounds}" if bounds.startswith(("[", "(")) else bounds
    )
    return text + (f" or None ({_NONE_MEANS.get(name, 'off')})" if "anyOf" in schema else "")


_NONE_MEANS = {"repair_temperature": "the run's temperature"}
"""What None means for the optional numbers where it is not "off"."""


def _bounds(schema: Mapping[str, Any]) -> str:
    """The bounds in a JSON schema: ``[0, 1]``, ``>= 1`` (from ``minimum``, ``exclusiveMaximum``,
    ...), ``'a' | 'b'`` (an ``enum``), or ``""``; of an array, its items'; in an ``anyOf``, those of
    its member that has them."""
    for member in schema.get("anyOf", []):
        if bounds := _bounds(member):
            return bounds
    if "enum" in schema:
        return " | ".join(repr(choice) for choice in schema["enum"])
    if "items" in schema:
        return _bounds(schema["items"])
    low = (f"[{schema['minimum']:g}", ">=") if "minimum" in schema else None
    if "exclusiveMinimum" in schema:
        low = (f"({schema['exclusiveMinimum']:g}", ">")
    high = (f"{schema['maximum']:g}]", "<=") if "maximum" in schema else None
    if "exclusiveMaximum" in schema:
        high = (f"{schema['exclusiveMaximum']:g})", "<")
    if low and high:
        return f"{low[0]}, {high[0]}"
    if low:
        return f"{low[1]} {low[0][1:]}"
    if high:
        return f"{high[1]} {high[0][:-1]}"
    return ""


def _schema_type(schema: Mapping[str, Any]) -> str:
    """A JSON schema's type written out: ``integer``, ``number | null``, ``list of string``."""
    if "anyOf" in schema:
        return " | ".join(_schema_type(member) for member in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_schema_type(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


# The graph's context schema: any subset of CATTSConfig's fields, applied over the config the graph
# was built with, each field with the type, bounds and description declared above (LangGraph makes
# Studio's configuration panel from it). Not CATTSConfig itself: LangGraph would build a model from a
# context mapping with the *class* defaults, dropping the graph's own config (an env-configured
# Studio graph's, say), and check rules between fields against them. No defaults either, for the
# same reason: a field left empty keeps the graph's value. A mapping is checked, over the graph's
# config, when a node reads it (``nodes.common.run_config``).
CATTSContext = TypedDict(  # type: ignore[misc]  # noqa: UP013 (fields come from CATTSConfig)
    "CATTSContext",
    {
        name: Annotated[
            field.annotation,
            *field.metadata,
            Field(description=field.description),
        ]
        for name, field in CATTSConfig.model_fields.items()
    },
    total=False,
)
CATTSContext.__pydantic_config__ = ConfigDict(allow_inf_nan=False, extra="forbid")  # type: ignore[attr-defined]


@functools.cache
def _context_reader() -> pydantic.TypeAdapter[CATTSContext]:
    """Validates some fields, each by its type and bounds (the rules between fields are the model's)."""
    return pydantic.TypeAdapter(CATTSContext)
