"""The graph LangGraph Studio (``langgraph dev``) serves: ``langgraph.json`` points at ``graph`` here.

It is built when the server imports this module, from environment variables (see ``.env.example``):

- ``CATTS_BASE_MODEL``: a local model directory or hub id, or ``package.module:attribute``; empty or
  unset: the base organism shipped in the package (no download; it knows only synthetic scenes);
- ``CATTS_EXPERT``: empty / ``none``, ``self``, ``organism``, a model name, or
  ``package.module:attribute``;
- ``CATTS_<FIELD>``: any :class:`~catts_graph.config.CATTSConfig` field.

It is compiled without a checkpointer: the server brings its own. A run's ``context`` (Studio's
configuration panel) overrides single fields.
"""

from __future__ import annotations

import os

from catts_graph.config import CATTSConfig
from catts_graph.graph import build_graph
from catts_graph.specs import base_model_from_spec, default_base_model_spec, expert_from_spec

graph = build_graph(
    base_model_from_spec(os.environ.get("CATTS_BASE_MODEL") or default_base_model_spec()),
    expert=expert_from_spec(os.environ.get("CATTS_EXPERT", "")),
    config=CATTSConfig.from_env(),
)
