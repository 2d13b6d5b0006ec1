"""catts-graph: confidence-aware test-time scaling for multimodal LLMs, on LangGraph.

``build_graph(base_model, expert=...)`` compiles the CA-TTS graph; ``graph.invoke({"image": ...,
"question": ...})`` returns the answer, its confidence, the candidates' scores, the samples and a
trace of every decision.

The layers, bottom up (each imports only those below it; ``lint-imports`` checks the contracts in
``pyproject.toml``):

- pure math: ``confidence``, ``answers``, ``voting``, ``metrics``, ``vcd``, ``perturb``,
  ``redaction``, ``formatting``: numpy and PIL only; then ``config``;
- ``images`` and ``prompts`` (reading and decoding inputs, prompt templates);
- the task layer, ``task``: the benchmark item, input checks, prompt selection, correctness,
  per-item seeds, the typed sample record;
- ``models`` (the base-model protocol and its backends) and ``state`` (the graph's state schema);
- ``samples`` (a response -> its record) and ``relevance`` (CLIP relevance maps);
- ``experts``: Planner, Voter and Critic over any LangChain chat model;
- ``scoring``, ``policy``, then ``nodes``, then ``graph``;
- ``eval``: datasets, runner, probe, report, the result store;
- applications: ``organism``, ``specs``, ``commands``, ``studio``, ``testing``, ``cli``; and
  ``catts_training`` (``training/catts_training/``) above the package, which never imports it.

The names below are imported on first use (PEP 562), so ``import catts_graph.voting`` loads numpy,
not LangGraph or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from catts_graph.config import CATTSConfig, ConfigError
    from catts_graph.graph import build_graph
    from catts_graph.images import InputError
    from catts_graph.models.base import BaseVLM, Sample, TokenLogprobs
    from catts_graph.state import InputState, OutputState

_EXPORTS = {
    "BaseVLM": "catts_graph.models.base",
    "CATTSConfig": "catts_graph.config",
    "ConfigError": "catts_graph.config",
    "InputError": "catts_graph.images",
    "InputState": "catts_graph.state",
    "OutputState": "catts_graph.state",
    "Sample": "catts_graph.models.base",
    "TokenLogprobs": "catts_graph.models.base",
    "build_graph": "catts_graph.graph",
}

__all__ = [
    "BaseVLM",
    "CATTSConfig",
    "ConfigError",
    "InputError",
    "InputState",
    "OutputState",
    "Sample",
    "TokenLogprobs",
    "build_graph",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'catts_graph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
