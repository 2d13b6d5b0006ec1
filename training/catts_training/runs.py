"""What both trainers (CDRL, MMBoundary) do around a TRL run: LoRA from a config's ``lora``
section, the means of what the run logged, and memory freed before the next model loads."""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["free_memory", "logged_means", "peft_config"]


def peft_config(lora: Mapping[str, Any] | None) -> Any:
    """``peft.LoraConfig`` of a config's ``lora`` section for a causal LM (None: full-parameter)."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**{"task_type": "CAUSAL_LM", **lora})


def logged_means(
    history: Sequence[Mapping[str, Any]], rewards: Sequence[str], metrics_prefix: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Over a run's ``log_history``: each reward's mean (``rewards/<name>/mean``, named ``<name>``, and
    the weighted total ``reward``) and each metric's under ``metrics_prefix`` (``cdrl/``), non-finite
    entries left out, names never logged absent."""

    def means(keys: Sequence[str]) -> dict[str, float]:
        found = {}
        for key in keys:
            values = [entry[key] for entry in history if key in entry and math.isfinite(entry[key])]
            if values:
                found[key] = sum(values) / len(values)
        return found

    reward_keys = [f"rewards/{name}/mean" for name in rewards] + ["reward"]
    reward_means = {
        key.removeprefix("rewards/").removesuffix("/mean"): value for key, value in means(reward_keys).items()
    }
    metric_keys = sorted({key for entry in history for key in entry if key.startswith(metrics_prefix)})
    return reward_means, means(metric_keys)


def free_memory() -> None:
    """Free a deleted trainer's policy, optimizer state and buffers before anything else loads a model."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
