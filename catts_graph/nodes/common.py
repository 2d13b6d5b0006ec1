"""What every node shares: its dependencies, the run's config, decoded images, trace entries."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableLambda
from langgraph.runtime import Runtime, get_runtime

from catts_graph.config import CATTSConfig
from catts_graph.experts import ExpertRequest, ExpertResult
from catts_graph.models.base import BaseVLM
from catts_graph.state import CATTSState


@dataclass(frozen=True)
class Deps:
    """The models a compiled graph was built with (bound once, not part of the state)."""

    base_model: BaseVLM
    planner: BaseChatModel | None
    voter: BaseChatModel | None
    critic: BaseChatModel | None
    config: CATTSConfig


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
        known = {f.name for f in dataclasses.fields(CATTSConfig)}
        unknown = sorted(set(context) - known)
        if unknown:
            raise ValueError(f"context has unknown CATTSConfig fields {unknown}")
        return deps.config.replace(**dict(context))
    raise TypeError(f"context must be a CATTSConfig or a mapping, got {type(context).__name__}")


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


def expert_node(
    name: str, steps: Callable[[CATTSState, Runtime[CATTSConfig]], ExpertSteps]
) -> RunnableLambda:
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

    return RunnableLambda(node, afunc=anode, name=name)
