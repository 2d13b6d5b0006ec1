"""What every node shares: its dependencies, the run's config, decoded images, trace entries."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableLambda
from langgraph.runtime import Runtime, get_runtime
from PIL import Image

from catts_graph.config import CATTSConfig
from catts_graph.experts import ExpertRequest, ExpertResult
from catts_graph.images import decode_image, read_reference
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


class ImageCache:
    """Decoded images keyed by their content, bounded in bytes of pixels, least recently used out.

    Several nodes of a run need the same pixels, and an evaluation asks about the same image again.
    The key is the SHA-256 of the image's bytes (with the limits it was checked against), never its
    path: a new picture saved at the same path is a new entry, not the old pixels. The bytes are
    read again on every lookup (a file, a data URI); only the decoding is saved. Safe to share
    between threads; a decoded image is shared too, so callers must not modify it.
    """

    def __init__(self) -> None:
        self._images: OrderedDict[tuple[str, int, float], Image.Image] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of pixels held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._images)

    def load(self, data: bytes, *, name: str, config: CATTSConfig) -> Image.Image:
        """``data`` decoded and checked (:func:`~catts_graph.images.decode_image`), from the cache when
        the same bytes were decoded under the same limits; keeps at most ``config.image_cache_bytes``."""
        key = (hashlib.sha256(data).hexdigest(), config.max_image_pixels, config.max_aspect_ratio)
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
                return image
        image = decode_image(
            data, name=name, max_pixels=config.max_image_pixels, max_aspect_ratio=config.max_aspect_ratio
        )
        with self._lock:
            budget = config.image_cache_bytes
            size = _pixel_bytes(image)
            if size <= budget and key not in self._images:
                self._images[key] = image
                self._bytes += size
            while self._bytes > budget:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= _pixel_bytes(dropped)
        return image


def _pixel_bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


IMAGE_CACHE = ImageCache()
"""The decoded images of this process, shared by every graph and run in it."""


def read_image(reference: str, *, name: str, config: CATTSConfig) -> bytes:
    """The bytes behind one reference, within the limits of ``config``."""
    return read_reference(
        reference,
        name=name,
        allow_url=config.allow_url_fetch,
        url_max_bytes=config.url_max_bytes,
        url_timeout=config.url_timeout,
        max_bytes=config.max_image_bytes,
        allow_private=config.allow_private_urls,
    )


def image_name(index: int, count: int) -> str:
    """How errors name image ``index`` of ``count``: ``image``, or ``images[i]`` when there are several."""
    return "image" if count == 1 else f"images[{index}]"


def load_images(references: Sequence[str], config: CATTSConfig) -> list[Image.Image]:
    """Decode the run's image references (through :data:`IMAGE_CACHE`)."""
    names = [image_name(i, len(references)) for i in range(len(references))]
    return [
        IMAGE_CACHE.load(read_image(ref, name=name, config=config), name=name, config=config)
        for ref, name in zip(references, names, strict=True)
    ]


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
