"""What every node shares: its dependencies, the run's config, decoded images, trace entries."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime, get_runtime
from PIL import Image

from catts_graph.config import CATTSConfig, ConfigError
from catts_graph.experts import ExpertRequest, ExpertResult
from catts_graph.models.base import BaseVLM
from catts_graph.redaction import redact_exception
from catts_graph.samples import StepAssessor
from catts_graph.state import CATTSState
from catts_graph.statements import SentenceEncoder, StatementReader
from catts_graph.step_confidence import Similarity, StepCalibrator

ClipScorer = Callable[[Sequence[Image.Image], Sequence[str]], Sequence[float]]
"""``clip(images, texts)``: the cosine of each text with the image(s) under an image-text model
(CLIPScore; floored at 0 where it is used)."""


@dataclass(frozen=True)
class Deps:
    """The models a compiled graph was built with (bound once, not part of the state).

    ``step_calibrator``: the step calibrator of the graph's config (given to ``build_graph`` or
    read from ``config.step_calibrator``); ``encoder``: a sentence encoder for TokenSAR and for
    reading stated confidences; ``clip``: CLIPScore's image-text model; ``reader``: the statement
    reader (with ``encoder`` when there is one).
    """

    base_model: BaseVLM
    planner: BaseChatModel | None
    voter: BaseChatModel | None
    critic: BaseChatModel | None
    config: CATTSConfig
    step_calibrator: StepCalibrator | None = None
    encoder: SentenceEncoder | None = None
    clip: ClipScorer | None = None
    reader: StatementReader = field(default_factory=StatementReader)


def run_config(runtime: Runtime[CATTSConfig] | None, deps: Deps) -> CATTSConfig:
    """The config of this run: the caller's ``context`` over the graph's defaults.

    ``context`` may be a :class:`CATTSConfig`, a mapping of field overrides (as LangGraph Studio and
    the server send it), or absent.
    """
    context = None if runtime is None else runtime.context
    if context is None:
        return deps.config
    if isinstance(context, CATTSConfig):
        return context
    if isinstance(context, Mapping):
        return deps.config.replace(**dict(context))
    raise TypeError(f"context must be a CATTSConfig or a mapping, got {type(context).__name__}")


def load_step_calibrator(path: str) -> StepCalibrator:
    """The :class:`StepCalibrator` in the JSON file ``path`` (``StepCalibrator.to_dict()``), read
    once per file version; a :class:`ConfigError` naming ``step_calibrator`` when it cannot be."""
    file = Path(path).expanduser()
    try:
        stat = file.stat()
    except OSError as error:
        raise ConfigError(f"step_calibrator={path!r}: cannot read the file ({error.strerror})") from None
    return _read_calibrator(str(file), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_calibrator(path: str, mtime_ns: int, size: int) -> StepCalibrator:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"step_calibrator={path!r}: not a JSON file ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"step_calibrator={path!r}: expected a JSON object, got {type(data).__name__}")
    try:
        return StepCalibrator.from_dict(data)
    except ValueError as error:
        raise ConfigError(f"step_calibrator={path!r}: {error}") from None


def run_step_calibrator(config: CATTSConfig, deps: Deps) -> StepCalibrator | None:
    """The step calibrator of this run: the graph's, unless the run's context names another file."""
    if config.step_calibrator == deps.config.step_calibrator:
        return deps.step_calibrator
    return None if config.step_calibrator is None else load_step_calibrator(config.step_calibrator)


def encoder_similarity(encoder: SentenceEncoder) -> Similarity:
    """TokenSAR's ``similarity(text, variants)`` from a sentence encoder: its own ``similarity``
    when it has one (a cross-encoder's), else the cosine of its unit embeddings."""
    own = getattr(encoder, "similarity", None)
    if callable(own):
        return own  # type: ignore[no-any-return]

    def similarity(text: str, variants: Sequence[str]) -> Sequence[float]:
        embeddings = encoder.encode([text, *variants])
        return list(embeddings[1:] @ embeddings[0])

    return similarity


def step_assessor(config: CATTSConfig, deps: Deps, images: Sequence[Image.Image]) -> StepAssessor:
    """How this run assesses steps: its calibrator, TokenSAR with the graph's encoder, CLIPScore with
    its CLIP model on the run's images, and its statement reader."""
    clip = None if deps.clip is None else functools.partial(deps.clip, list(images))
    return StepAssessor(
        calibrator=run_step_calibrator(config, deps),
        similarity=None if deps.encoder is None else encoder_similarity(deps.encoder),
        clip=clip,
        reader=deps.reader,
    )


def expert_usage(result: ExpertResult[Any]) -> dict[str, float]:
    """The usage counters of one expert role call (all its attempts)."""
    return {
        "expert_calls": result.attempts,
        "expert_input_tokens": result.input_tokens,
        "expert_output_tokens": result.output_tokens,
        "expert_seconds": result.seconds,
    }


def trace_entry(
    module: str,
    decision: str,
    reason: str,
    *,
    inputs: Mapping[str, Any] | None = None,
    duration_s: float = 0.0,
    expert_calls: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One trace record: which module decided what, why, on which numbers, at what cost."""
    return {
        "module": module,
        "decision": decision,
        "reason": reason,
        "inputs": dict(inputs or {}),
        "duration_s": round(duration_s, 6),
        "expert_calls": [dict(call) for call in expert_calls],
    }


def progress(runtime: Runtime[Any] | None, node: str, event: str, **data: Any) -> None:
    """A custom stream event (``stream_mode="custom"``); a no-op outside streaming."""
    if runtime is not None and runtime.stream_writer is not None:
        runtime.stream_writer({"node": node, "event": event, **data})


class Timer:
    """Seconds since construction; ``with timed() as t: ...; t.seconds``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds = 0.0

    def stop(self) -> float:
        self.seconds = time.perf_counter() - self.start
        return self.seconds


@contextmanager
def timed() -> Iterator[Timer]:
    timer = Timer()
    try:
        yield timer
    finally:
        timer.stop()


ExpertSteps = Generator[ExpertRequest[Any], ExpertResult[Any], dict[str, Any]]
"""A node's logic around its expert calls: it yields each request and is sent back its result, so
the same code serves ``invoke`` (the call made in the node's thread) and ``ainvoke`` (awaited)."""


def expert_node(name: str, steps: Callable[[CATTSState, Runtime[CATTSConfig]], ExpertSteps]) -> ExpertNode:
    """A graph node that asks experts: sync under ``invoke`` / ``stream`` / ``batch``, native async
    under ``ainvoke`` / ``astream`` / ``abatch``.

    Run sync, an async graph would queue expert nodes in the event loop's thread pool (a few
    threads), so ``abatch`` of 16 questions took 6x one question (benchmarks/async_experts.py).
    Awaited, the expert calls of every question overlap, however many there are.
    """

    def node(state: CATTSState) -> dict[str, Any]:
        run = steps(state, get_runtime(CATTSConfig))
        try:
            request = next(run)
            while True:
                request = run.send(request.role.ask(request))
        except StopIteration as done:
            return done.value

    async def anode(state: CATTSState) -> dict[str, Any]:
        run = steps(state, get_runtime(CATTSConfig))
        try:
            request = next(run)
            while True:
                request = run.send(await request.role.aask(request))
        except StopIteration as done:
            return done.value

    return ExpertNode(node, afunc=anode, name=name)


class ExpertNode(RunnableLambda):
    """The runnable of an :func:`expert_node`: a RunnableLambda that, run by LangGraph, calls its
    function in the node's own run instead of opening a second one.

    LangGraph already opens a run for every node (its task) and makes its config the current one.
    A RunnableLambda would open another run of the same name inside it: callback set-up, signature
    inspection and run events that cost about 0.6 ms a call (a run with every module makes five:
    the planner three times, the Voter, the Critic) and only nested the node in itself in traces.
    The expert calls inside still open their own runs, under the node's. Called any other way (on
    its own, with another config), it is a plain RunnableLambda.
    """

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        if config is not None and config is var_child_runnable_config.get():
            return self.func(input)
        return super().invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        if config is not None and config is var_child_runnable_config.get():
            return await self.afunc(input)
        return await super().ainvoke(input, config, **kwargs)


Node = Callable[..., dict[str, Any]] | ExpertNode


def redacting(node: Node) -> Node:
    """``node`` raising what it raises with every credential out of it (:func:`redact_exception`).

    LangGraph stores the ``repr`` of a node's exception in the checkpoint (the ``__error__`` write,
    ``get_state(...).tasks[i].error``) before the caller sees it, so it is redacted where it leaves
    the node, whatever raised it (the base model, an expert, a scorer, an encoder, CLIP). Control
    flow (an interrupt, a command to the parent graph) passes untouched.
    """
    if isinstance(node, ExpertNode):
        return ExpertNode(redacting(node.func), afunc=_redacting_async(node.afunc), name=node.name)

    @functools.wraps(node)
    def redacted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return node(*args, **kwargs)
        except GraphBubbleUp:
            raise
        except Exception as error:
            failure = redact_exception(error)
        # Raised outside the handler: a stand-in must not chain the unredacted error as its context.
        raise failure

    return redacted


def _redacting_async(node: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(node)
    async def redacted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await node(*args, **kwargs)  # type: ignore[no-any-return]
        except GraphBubbleUp:
            raise
        except Exception as error:
            failure = redact_exception(error)
        raise failure

    return redacted
