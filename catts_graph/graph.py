"""The CA-TTS graph on LangGraph.

``prepare -> base_model -> planner``, and from ``planner`` by confidence:

- ``step_repair -> planner`` (resample the weakest samples from their weakest step; routed by
  ``step_floor`` or a Planner's plan),
- ``self_consistency -> voter -> planner`` (weighted vote, then the Voter expert),
- ``critic -> self_reflection -> planner`` (run in the same step as the Voter when both are due),
- ``visual_self_check -> planner``,
- ``base_model`` (another wave of samples),
- ``aggregate -> END``.

The planner is a *deferred* node: when the Voter and the Critic branch finish in different steps,
it waits for both and runs once, instead of once per branch.

LangGraph Studio is pointed (by ``langgraph.json``) at the module-level graph of
:mod:`catts_graph.studio`, built from ``CATTS_*`` environment variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.channels import EphemeralValue
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from PIL import Image

from catts_graph.config import CATTSConfig, CATTSContext, ConfigError
from catts_graph.experts import resolve_experts
from catts_graph.images import to_reference
from catts_graph.models.base import BaseVLM
from catts_graph.nodes.aggregate import make_aggregate
from catts_graph.nodes.base_model import make_base_model
from catts_graph.nodes.common import ClipScorer, Deps, load_step_calibrator, redacting
from catts_graph.nodes.critic import make_critic
from catts_graph.nodes.planner import make_planner
from catts_graph.nodes.prepare import make_prepare
from catts_graph.nodes.self_consistency import make_self_consistency
from catts_graph.nodes.self_reflection import make_self_reflection
from catts_graph.nodes.step_repair import make_step_repair
from catts_graph.nodes.visual_self_check import make_visual_self_check
from catts_graph.nodes.voter import make_voter
from catts_graph.state import CATTSState, InputState, OutputState
from catts_graph.statements import SentenceEncoder, StatementReader
from catts_graph.step_confidence import StepCalibrator

NODES = (
    "prepare",
    "base_model",
    "planner",
    "step_repair",
    "self_consistency",
    "voter",
    "critic",
    "self_reflection",
    "visual_self_check",
    "aggregate",
)
"""The graph's nodes, in the order a run passes them: the public contract Studio and traces show."""

ExpertSpec = None | str | BaseChatModel | Mapping[str, "None | str | BaseChatModel"]


def _route(state: CATTSState) -> list[str]:
    return state["route"]


def build_graph(
    base_model: BaseVLM,
    expert: ExpertSpec = None,
    config: CATTSConfig | None = None,
    checkpointer: Checkpointer = None,
    cache: Any = None,
    *,
    name: str = "catts",
    step_calibrator: StepCalibrator | None = None,
    encoder: SentenceEncoder | None = None,
    clip: ClipScorer | None = None,
) -> CompiledStateGraph:
    """Compile the CA-TTS graph around ``base_model``.

    ``expert`` plays Planner, Voter and Critic: None (no expert: the voter, critic and planner
    expert are skipped), ``"self"`` (the base model as its own expert), a model name such as
    ``"gemini-2.5-pro"`` or ``"gpt-5"`` (needs the provider's API key), any LangChain chat model, or
    a mapping ``{"planner": ..., "voter": ..., "critic": ...}``. ``config`` gives the defaults a run's
    ``context`` overrides.

    Step-level confidence (MMBoundary), all optional: ``step_calibrator`` fuses the step signals
    and cuts levels (or give its JSON file as ``config.step_calibrator``, not both); ``encoder``
    (e.g. :class:`~catts_graph.models.MiniLMEncoder`) adds TokenSAR, K + 1 encodings per K-token
    step, and reads paraphrased confidence statements; ``clip(images, texts) -> cosines`` adds
    CLIPScore. Without them a step's fused confidence is its probability.
    """
    if not all(callable(getattr(base_model, method, None)) for method in ("sample", "score")):
        raise TypeError(
            f"base_model must implement sample() and score() (catts_graph.models.BaseVLM), "
            f"got {type(base_model).__name__}"
        )
    config = config or CATTSConfig()
    roles = resolve_experts(expert, base_model)
    if config.policy == "expert" and roles["planner"] is None:
        raise ValueError("policy='expert' needs a planner expert: pass expert=... to build_graph")
    if step_calibrator is not None and config.step_calibrator is not None:
        raise ConfigError(
            f"step_calibrator: given twice, to build_graph and as config.step_calibrator="
            f"{config.step_calibrator!r}; give one"
        )
    if step_calibrator is not None and not isinstance(step_calibrator, StepCalibrator):
        raise TypeError(f"step_calibrator: got {type(step_calibrator).__name__}, expected a StepCalibrator")
    if step_calibrator is not None:
        try:
            step_calibrator.check()
        except ValueError as error:
            raise ConfigError(f"step_calibrator: {error}") from None
    if config.step_calibrator is not None:
        step_calibrator = load_step_calibrator(config.step_calibrator)
    deps = Deps(
        base_model=base_model,
        planner=roles["planner"],
        voter=roles["voter"],
        critic=roles["critic"],
        config=config,
        step_calibrator=step_calibrator,
        encoder=encoder,
        clip=clip,
        reader=StatementReader(encoder),
    )
    builder = StateGraph(
        CATTSState, context_schema=CATTSContext, input_schema=InputState, output_schema=OutputState
    )
    nodes = {
        "prepare": make_prepare(deps),
        "base_model": make_base_model(deps),
        "planner": make_planner(deps),
        "step_repair": make_step_repair(deps),
        "self_consistency": make_self_consistency(deps),
        "voter": make_voter(deps),
        "critic": make_critic(deps),
        "self_reflection": make_self_reflection(deps),
        "visual_self_check": make_visual_self_check(deps),
        "aggregate": make_aggregate(deps),
    }
    for node_name in NODES:
        # Every node's exception leaves it redacted: LangGraph stores it before the caller sees it.
        builder.add_node(node_name, redacting(nodes[node_name]), defer=node_name == "planner")

    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "base_model")
    builder.add_edge("base_model", "planner")
    builder.add_conditional_edges(
        "planner",
        _route,
        ["base_model", "step_repair", "self_consistency", "critic", "visual_self_check", "aggregate"],
    )
    builder.add_edge("step_repair", "planner")
    builder.add_conditional_edges("self_consistency", _route, ["voter", "critic", "planner"])
    builder.add_edge("voter", "planner")
    builder.add_conditional_edges("critic", _route, ["self_reflection", "planner"])
    builder.add_edge("self_reflection", "planner")
    builder.add_edge("visual_self_check", "planner")
    builder.add_edge("aggregate", END)
    graph = builder.compile(checkpointer=checkpointer, cache=cache, name=name)
    return with_storable_input(graph)


def with_storable_input(graph: CompiledStateGraph) -> CompiledStateGraph:
    """``graph`` with :class:`StorableInput` as its input channel: the one place this package
    touches LangGraph's internals. ``compile()`` makes the input channel (``START``) itself, and no
    public hook (an input schema, a node) sees the input before a checkpointer stores it; LangGraph
    proposed a compile-time ``input_validator`` (langchain-ai/langgraph#6767) but did not merge it.
    tests/test_graph.py checks the channel this replaces is still the one the input goes through."""
    graph.channels[START] = StorableInput(graph.channels[START].typ)
    return graph


class StorableInput(EphemeralValue[Any]):
    """The graph's input channel, with PIL images in ``image`` / ``images`` kept as PNG data URIs.

    A checkpointer stores the input as given, before any node runs, and msgpack takes no PIL image
    ("Type is not msgpack serializable: Image"). Converted on the way in, a PIL image works with
    every checkpointer, as a path or bytes do; without one, ``prepare`` would encode it the same way.
    """

    def update(self, values: Sequence[Any]) -> bool:
        return super().update([_storable_input(value) for value in values])


def _storable_input(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    return {key: _storable(item) if key in ("image", "images") else item for key, item in value.items()}


def _storable(value: Any) -> Any:
    if isinstance(value, Image.Image):
        return to_reference(value)
    if isinstance(value, (list, tuple)):
        return [_storable(item) for item in value]
    return value
