"""A base model that answers a repeated call from memory.

Evaluations ask the same thing many times: every N and every method of a run re-reads the same item,
so the greedy answers behind reflection, and an organism expert's own reading of the image, are the
same call each time; a threshold search re-draws the same seeded pool at each grid point. With a
seeded (or greedy) backend such a call has one answer, so :class:`MemoizedVLM` returns it again
instead of computing it again. Only calls with ``n <= max_n`` are kept (big pools with top-k
log-probs are large), and unseeded sampling is never cached (it is meant to differ).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

from PIL import Image

from catts_graph.models.base import Sample, TokenLogprobs


def images_key(images: Sequence[Image.Image]) -> str:
    """A digest of the images' pixels, sizes and modes."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


class MemoizedVLM:
    """Wraps a base model; repeated ``sample`` (seeded or greedy, ``n <= max_n``) and ``score`` calls
    are answered from memory. ``hits`` and ``misses`` count them. The prompt templates the inner
    model declares (``answer_prompt``, ``reflection_prompt``) are passed through."""

    def __init__(self, inner: Any, *, max_n: int = 1) -> None:
        if max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n}")
        self.inner = inner
        self.max_n = max_n
        self.answer_prompt = getattr(inner, "answer_prompt", None)
        self.reflection_prompt = getattr(inner, "reflection_prompt", None)
        self.hits = 0
        self.misses = 0
        self._cache: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def _lookup(self, key: tuple[Any, ...]) -> list[Any] | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self.hits += 1
            return found

    def _store(self, key: tuple[Any, ...], value: list[Any]) -> None:
        with self._lock:
            self.misses += 1
            self._cache[key] = value

    def sample(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        n: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 512,
        seed: int | None = None,
        top_logprobs: int = 0,
    ) -> list[Sample]:
        call = {
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "top_logprobs": top_logprobs,
        }
        deterministic = temperature == 0 or seed is not None
        if n > self.max_n or not deterministic:
            return self.inner.sample(images, prompt, n, **call)
        key = ("sample", images_key(images), prompt, n, tuple(call.values()))
        found = self._lookup(key)
        if found is None:
            found = list(self.inner.sample(images, prompt, n, **call))
            self._store(key, found)
        return list(found)

    def score(
        self, images: Sequence[Image.Image], prompt: str, continuations: Sequence[str]
    ) -> list[TokenLogprobs]:
        key = ("score", images_key(images), prompt, tuple(continuations))
        found = self._lookup(key)
        if found is None:
            found = list(self.inner.score(images, prompt, continuations))
            self._store(key, found)
        return list(found)

    def __getattr__(self, name: str) -> Any:
        # Anything else (generate_vcd, detokenize, the processor, ...) is the inner model's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
