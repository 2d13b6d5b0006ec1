"""Models named by strings: how the CLI and LangGraph Studio turn settings into objects.

- a base model: a local model directory or hub id (loaded with
  :class:`~catts_graph.models.TransformersVLM`), or ``package.module:attribute`` naming a base model or
  a zero-argument factory of one; unset, the base organism (a small Qwen2.5-VL trained here on
  synthetic scenes, shipped in the package: :mod:`catts_graph.organism`);
- an expert: empty or ``none`` (no expert), ``self``, ``organism`` (the larger organism model as
  Voter and Critic), a model name (``gemini-2.5-pro``, ``gpt-5``, ...) or
  ``package.module:attribute`` naming a LangChain chat model or a factory of one.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

ORGANISM = "organism"
"""The expert spec naming the larger organism model (:func:`catts_graph.organism.expert.organism_expert`)."""
ORGANISM_BASE = "organism:base"
"""How run metadata names the base organism, the model that runs when none is given."""


def load_object(spec: str, *, name: str) -> Any:
    """``package.module:attribute`` -> the attribute, called if it is a factory (a plain function)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{name}={spec!r}: expected 'package.module:attribute'")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{name}={spec!r}: cannot load it ({err})") from err
    if callable(target) and not hasattr(target, "sample") and not hasattr(target, "invoke"):
        target = target()
    return target


def base_model_from_spec(spec: str) -> Any:
    if ":" in spec and not os.path.exists(spec):
        return load_object(spec, name="CATTS_BASE_MODEL")
    from catts_graph.models import TransformersVLM

    return TransformersVLM.from_pretrained(spec)


def expert_from_spec(spec: str) -> Any:
    spec = spec.strip()
    if not spec or spec.lower() == "none":
        return None
    if spec.lower() == ORGANISM:
        from catts_graph.organism.expert import organism_expert

        return organism_expert("expert")
    if ":" in spec:
        return load_object(spec, name="CATTS_EXPERT")
    return spec


def default_base_model_spec() -> str:
    """The shipped base organism's directory: the CLI and Studio answer with no download or key."""
    from catts_graph.organism import organism_path

    return str(organism_path("base"))


def judge_from_spec(spec: str | None) -> Any:
    """The answer judge of an evaluation: like an expert, a model name built at temperature 0."""
    judge = expert_from_spec(spec or "")
    if isinstance(judge, str):
        from catts_graph.experts import make_chat_model

        judge = make_chat_model(judge, temperature=0.0)
    return judge
