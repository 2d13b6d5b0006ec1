"""Reading the training configs: one YAML mapping per run, checked key by key.

CDRL and MMBoundary configs are dataclasses filled from YAML; both read them through
:func:`read_config` (the top level) and :func:`check_keys` (each section), so a typo anywhere is an
error that names the key and the keys it could have been.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["check_keys", "read_config"]


def check_keys(section: Any, allowed: frozenset[str] | set[str], name: str) -> None:
    """``section`` is a mapping whose keys are all ``allowed``; else a ValueError naming ``name``."""
    if not isinstance(section, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {type(section).__name__}")
    unknown = set(section) - set(allowed)
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}; expected some of {sorted(allowed)}")


def read_config(path: str | Path, config_class: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML mapping at ``path`` with the ``overrides`` that are not None, its keys checked against
    ``config_class``'s fields, ``model`` and ``output_dir`` required."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, Mapping):
        raise ValueError(f"config {str(path)!r}: expected a YAML mapping at the top level")
    values = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(
            f"config {str(path)!r}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}"
        )
    missing = {"model", "output_dir"} - set(values)
    if missing:
        raise ValueError(f"config {str(path)!r}: missing {sorted(missing)}")
    return values
