"""Base-model backends behind one protocol (:class:`BaseVLM`: ``sample`` and ``score``, with the
sampling settings as one :class:`SamplingParams`), and :class:`ReplayVLM`, which answers from
recorded responses (a sample pool, a JSON-lines file, its own memory) before asking a backend.

The torch-backed classes are imported on first use, so ``import catts_graph`` stays light.
"""

from __future__ import annotations

from typing import Any

from catts_graph.models.base import BaseVLM, Sample, SamplingParams, TokenLogprobs

_LAZY = {
    "TransformersVLM": "catts_graph.models.transformers_vlm",
    "build_tiny_qwen25vl": "catts_graph.models.tiny",
    "ensure_tiny_model": "catts_graph.models.tiny",
    "BaseModelChat": "catts_graph.models.chat_adapter",
    "OpenAICompatibleVLM": "catts_graph.models.openai_compatible",
    "ReplayVLM": "catts_graph.models.replay",
    "NotRecordedError": "catts_graph.models.replay",
    "serve": "catts_graph.models.loopback_server",
    "MiniLMEncoder": "catts_graph.models.encoders",
}

__all__ = ["BaseVLM", "Sample", "SamplingParams", "TokenLogprobs", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
