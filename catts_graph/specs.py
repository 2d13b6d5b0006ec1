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
    """The base model ``spec`` names; a ValueError that says what to pass when there is none: a
    path that does not exist, a Hub id while the Hub is unreachable, a folder that holds no model."""
    if ":" in spec and not os.path.exists(spec):
        return load_object(spec, name="CATTS_BASE_MODEL")
    expected = (
        "expected a model folder (save_pretrained), a Hub id such as Qwen/Qwen2.5-VL-7B-Instruct, "
        "or package.module:attribute"
    )
    if not os.path.exists(spec):
        if os.path.isabs(spec) or spec.startswith((".", "~")) or spec.count("/") != 1:
            raise ValueError(f"model {spec!r}: no such folder; {expected}")
        from catts_graph.hub import hub_unreachable

        offline = hub_unreachable()
        if offline is not None:
            raise ValueError(
                f"model {spec!r}: not a local folder, and the Hugging Face Hub is unreachable "
                f"({offline}); pass a local model folder, or set HF_HUB_OFFLINE=1 to use a cached copy"
            )
    from catts_graph.models import TransformersVLM

    try:
        return TransformersVLM.from_pretrained(spec)
    except (OSError, ValueError) as error:  # transformers' "no model here" / download errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model {spec!r}: cannot load it ({first}); {expected}") from error


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
