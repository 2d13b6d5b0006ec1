"""The training configs' one mechanism: typed sections read from one YAML file.

A config is a :class:`TrainingConfig` (``model``, ``output_dir``, ``max_pixels``) with one typed
:class:`Section` per YAML section; each field's type, bounds and description are declared once, on
the field, and unknown keys are errors (``extra="forbid"``). CDRL and MMBoundary each declare their
own (:mod:`catts_training.cdrl.config`, :mod:`catts_training.mmboundary.config`); adding a section is
one more field holding one more model.

Every error is a :class:`ConfigError` that names the file and the key path, e.g.
``training/configs/x.yaml: rewards.weights.format: expected a number, got 'big'``; ``catts``
prints it on one line and exits with status 2.

Sections passed through to a library's own config (``grpo`` to ``trl.GRPOConfig``, ``lora`` to
``peft.LoraConfig``) stay mappings, their keys checked against that class's fields
(:func:`fields_of`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, Union, get_args, get_origin

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

__all__ = [
    "ConfigError",
    "Count",
    "Flag",
    "Fraction",
    "ItemsSection",
    "KeyPathError",
    "NonNegative",
    "Number",
    "Prefix",
    "RewardWeights",
    "RewardsSection",
    "Section",
    "TrainingConfig",
    "check_model",
    "fields_of",
    "one_of",
    "positive_int",
    "read_yaml",
    "trl_args",
]

TINY_MODEL = "tiny"
"""``model: tiny`` in a config means the offline tiny random Qwen2.5-VL (``catts_graph.models.tiny``)."""


class ConfigError(ValueError):
    """A training config that cannot be used: the message names the file and the key path."""


class KeyPathError(ValueError):
    """Raised inside a validator about a key below the one being validated (``keys``, relative to
    it), or about a field of its model when a model validator checks several at once."""

    def __init__(self, keys: str | Sequence[str], message: str) -> None:
        super().__init__(message)
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.message = message


def _not_a_bool(value: Any) -> Any:
    # pydantic reads true as 1.0; a boolean where a number belongs is a mistake in the file.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


Number = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]
"""A finite number. ``2e-4`` is one too (YAML 1.1 reads an exponent without a dot as a string)."""
Fraction = Annotated[Number, Field(ge=0, le=1)]
"""A number in [0, 1]."""
Count = Annotated[int, Strict(), Field(ge=1)]
"""An integer >= 1 (a YAML integer: not a string, a float or a boolean)."""
NonNegative = Annotated[int, Strict(), Field(ge=0)]
"""An integer >= 0."""
Flag = Annotated[bool, Strict()]
"""true or false (not a string or a number)."""
Prefix = Annotated[str, Field(min_length=1)]
"""A parameter-name prefix (``model.visual``)."""


class Section(BaseModel):
    """One YAML section: typed fields, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ItemsSection(Section):
    """Where items come from (:func:`catts_training.cdrl.data.load_items`): a benchmark (from the
    Hugging Face Hub, or ``source``, a local export of it), or a plain item file (``source`` alone)."""

    source: str | None = Field(None, description="an item file (JSONL / JSON list) or a benchmark export")
    benchmark: str | None = Field(None, description="a benchmark name (the formats of `catts eval`)")
    split: str | None = Field(None, description="the benchmark's split")
    limit: Count | None = Field(None, description="the first this many items")
    image_dir: str | None = Field(None, description="where relative image paths are read from")

    def load_arguments(self) -> dict[str, Any]:
        """The arguments of :func:`~catts_training.cdrl.data.load_items` for these items."""
        return {key: getattr(self, key) for key in ("source", "benchmark", "split", "limit", "image_dir")}

    def _given(self) -> bool:
        return bool(self.source or self.benchmark)


class RewardWeights(Section):
    """The weight of each reward, one field per reward name (GRPO's ``reward_weights``); unset
    names keep their default."""

    @pydantic.model_validator(mode="after")
    def _one_counts(self) -> Self:
        if not any(self.in_order(type(self).model_fields)):
            raise ValueError("expected at least one non-zero weight")
        return self

    def in_order(self, names: Iterable[str]) -> list[float]:
        """The weights in the order of ``names`` (the order the rewards are built in)."""
        return [float(getattr(self, name)) for name in names]


class RewardsSection(Section):
    """``rewards``: what both trainers' rewards share; each trainer's section adds its own."""

    weights: RewardWeights = Field(description="the weight of each reward (GRPO's reward_weights)")
    score_batch_size: Count = Field(4, description="completions per teacher-forced scoring pass")


def one_of(choices: Sequence[Any]) -> AfterValidator:
    """A validator: the value is one of ``choices`` (declared where they are used)."""

    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {_shown(value)}")
        return value

    return AfterValidator(check)


def fields_of(target: str, *, refused: Mapping[str, str] | None = None) -> AfterValidator:
    """A validator for a mapping passed through to the dataclass ``target`` (``"trl:GRPOConfig"``):
    every key must be one of its fields and every value of that field's type (the class is imported
    when a config is checked; values are converted as pydantic reads that type, so ``"3"`` for an
    int field arrives as 3); ``refused`` keys are errors with their reason."""
    module, _, name = target.partition(":")

    def check(section: dict[str, Any]) -> dict[str, Any]:
        for key, reason in (refused or {}).items():
            if key in section:
                raise KeyPathError(key, reason)
        types_ = _field_types(module, name)
        checked = {}
        for key, value in section.items():
            if key not in types_:
                raise KeyPathError(key, f"unknown key; not a field of {module}.{name}{_near(key, types_)}")
            declared, reader = types_[key]
            try:
                checked[key] = reader.validate_python(value)
            except pydantic.ValidationError:
                raise KeyPathError(key, f"expected {declared}, got {_shown(value)}") from None
        return checked

    return AfterValidator(check)


@functools.cache
def _field_types(module: str, name: str) -> dict[str, tuple[str, pydantic.TypeAdapter[Any]]]:
    """Each field of the dataclass ``module.name``: its declared type, written out, and a reader."""
    target = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(target)
    return {
        field.name: (_written(hints[field.name]), pydantic.TypeAdapter(hints[field.name]))
        for field in dataclasses.fields(target)
    }


def _written(hint: Any) -> str:
    """A type as a reader writes it: ``int``, ``None | str | list[str]``."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _near(key: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def trl_args(target: str, section: Mapping[str, Any], output_dir: str | Path, **defaults: Any) -> Any:
    """``trl.<target>`` (``GRPOConfig``, ``SFTConfig``) from a passed-through section, ``output_dir``
    and ``defaults`` for the fields the section leaves unset (one step per log line, no reporting
    service unless the section names one)."""
    import trl

    values = {"logging_steps": 1, "report_to": "none", **defaults, **section}
    return getattr(trl, target)(output_dir=str(output_dir), **values)


def check_model(name: str) -> str:
    """``name`` as a model to load: ``tiny``, a local folder, or a Hugging Face Hub id (``org/name``,
    downloaded when loaded). A name that can only be a local path (absolute, ``./``, ``~``, more
    than one ``/``, or under a folder that exists here) must exist: a ValueError now, not a Hub
    error after the data is built."""
    if name == TINY_MODEL or Path(name).expanduser().exists():
        return name
    parts = name.split("/")
    hub_id = (
        len(parts) <= 2
        and all(re.fullmatch(r"[A-Za-z0-9][\w.-]*", part) for part in parts)
        and not (len(parts) == 2 and Path(parts[0]).is_dir())
    )
    if not hub_id:
        raise ValueError(
            f"no such model folder {name!r}; give a local checkpoint, a hub id (org/name) or tiny"
        )
    return name


def positive_int(text: str) -> int:
    """An argparse ``type`` for step counts and threads: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


class TrainingConfig(Section):
    """What every training config has: the model, where results go, the processor's pixel cap.

    Subclasses add one field per section; :meth:`load` reads one YAML file into one."""

    REWARD_NAMES: ClassVar[tuple[str, ...]] = ()
    """The rewards in the order the trainer builds them (and GRPO weighs them)."""
    RELATIVE_PATHS: ClassVar[tuple[tuple[str, str], ...]] = ()
    """``(section, key)`` of the paths read from the config's folder when they exist there (else from
    the working directory), so a config and its data travel together."""

    model: Annotated[str, AfterValidator(check_model)] = Field(
        description="a local checkpoint or hub id of a Qwen2.5-VL-style model (tiny: the offline tiny "
        "random one)"
    )
    output_dir: str = Field(description="where the run writes its results")
    max_pixels: Count | None = Field(None, description="cap on pixels per image for the processor")
    rewards: RewardsSection = Field(description="the rewards' weights and settings")

    def model_path(self) -> str:
        """The model to train: ``tiny`` is built (once) at the default tiny-model folder."""
        if self.model == TINY_MODEL:
            from catts_graph.models.tiny import ensure_tiny_model

            return str(ensure_tiny_model())
        return self.model

    def reward_weights(self) -> list[float]:
        """GRPO's ``reward_weights``: each reward's weight in the order the rewards are built."""
        return self.rewards.weights.in_order(self.REWARD_NAMES)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> Self:
        """Read the YAML file at ``path``; ``overrides`` that are not None replace top-level keys.
        Any problem is a :class:`ConfigError` naming the file and the key."""
        raw = read_yaml(path)
        values = {**raw, **{key: value for key, value in overrides.items() if value is not None}}
        for section, key in cls.RELATIVE_PATHS:
            given = values.get(section)
            if isinstance(given, Mapping) and isinstance(given.get(key), str):
                beside = Path(path).parent / given[key]
                if not Path(given[key]).is_absolute() and beside.exists():
                    values[section] = {**given, key: str(beside)}
        return cls.checked(values, source=str(path))

    @classmethod
    def checked(cls, values: Mapping[str, Any], *, source: str = "config") -> Self:
        """``cls`` from ``values``; a :class:`ConfigError` naming ``source`` and the key otherwise."""
        try:
            return cls.model_validate(dict(values))
        except pydantic.ValidationError as err:
            raise ConfigError(describe(err, cls, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in the file at ``path``; a :class:`ConfigError` naming the file otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader, see below)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return dict(raw)


class _Loader(yaml.SafeLoader):
    """YAML's safe loader reading ``2e-4`` as a number, as YAML 1.2 and every reader do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


# -- describing errors -------------------------------------------------------------------------------

_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dataclass_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}


def describe(err: pydantic.ValidationError, model: type[BaseModel], source: str) -> str:
    """One line for the first error of ``err``: ``SOURCE: KEY.PATH: what was expected, got VALUE``
    (and how many more errors there are)."""
    errors = err.errors()
    first = errors[0]
    keys = [str(part) for part in first["loc"]]
    error = (first.get("ctx") or {}).get("error")
    if first["type"] == "value_error" and isinstance(error, KeyPathError):
        keys += error.keys
    message = _expected(first, model, keys)
    where = ".".join(keys)
    if where and not message.startswith(where):
        message = f"{where}: {message}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {message}{more}"


def _expected(error: Any, model: Any, keys: Sequence[str]) -> str:
    """What a pydantic error says was expected, and what was found (``keys``: where, below
    ``model``, to list the accepted keys of an unknown one)."""
    kind = error["type"]
    value = error.get("input")
    context = error.get("ctx") or {}
    if kind == "value_error":
        cause = context.get("error")
        return cause.message if isinstance(cause, KeyPathError) else str(cause or error["msg"])
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _keys_at(model, keys[:-1])
        return "unknown key" + (
            f"; expected one of {', '.join(known)}{_near(keys[-1], known)}" if known else ""
        )
    if kind == "missing":
        return "missing (required)"
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_shown(value)}"
    if kind in _BOUNDS:
        return f"expected a value {_BOUNDS[kind]} {next(iter(context.values()))}, got {_shown(value)}"
    if kind == "too_short":
        return f"expected at least {context.get('min_length')} entries, got {_shown(value)}"
    if kind == "too_long":
        return f"expected at most {context.get('max_length')} entries, got {_shown(value)}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {_shown(value)}"


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys_at(model: Any, keys: Sequence[str]) -> list[str]:
    """The keys the section at ``keys`` below ``model`` accepts (empty when not a declared section)."""
    current: Any = model
    for key in keys:
        fields = _fields(current)
        if key not in fields:
            return []
        current = fields[key]
    return sorted(_fields(current))


def _fields(annotation: Any) -> dict[str, Any]:
    """A section type's fields and their types: a pydantic model's or a dataclass's."""
    for kind in _unwrapped(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return {name: field.annotation for name, field in kind.model_fields.items()}
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            hints = typing.get_type_hints(kind)
            return {f.name: hints.get(f.name) for f in dataclasses.fields(kind)}
    return {}


def _unwrapped(annotation: Any) -> list[Any]:
    """The types inside ``X | None`` and ``Annotated[X, ...]``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrapped(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [inner for arg in get_args(annotation) for inner in _unwrapped(arg)]
    return [annotation]
