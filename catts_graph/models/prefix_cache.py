"""The KV caches of a model's last few prefills, so a call over a prefix it has just read does not read
it again.

The graph reads one question's prefix (the vision tower over the image, then the prompt) several
times: the sampling call, a later wave of samples, and the visual self-check's clean branch, which
scores candidates under the very image and prompt the samples were drawn from. A :class:`PrefixCache`
keeps the last ``size`` prefills (the KV cache, the last position's logits and Qwen2-VL's multimodal
rope offsets) and answers a call over the same inputs with a copy of them.

An entry is found by the content of what determines the prefill, never by identity: a digest of the
processor inputs (every tensor's name, dtype, shape and bytes) together with the weights' fingerprint
(each parameter's storage and in-place version counter, which an optimizer step or a
``load_state_dict`` advances). So an entry cannot answer for other inputs or other weights. A change
that alters the model's function without touching a parameter (PEFT's ``disable_adapter``, a swapped
attention kernel) is invisible to it: call :meth:`PrefixCache.clear` after one, or build the model's
wrapper with ``prefix_cache=0``.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from catts_graph.models.teacher_forcing import prefill, rope_deltas

__all__ = ["PrefixCache", "inputs_digest", "weights_fingerprint"]


def inputs_digest(inputs: Mapping[str, torch.Tensor]) -> bytes:
    """BLAKE2b over each input's name, dtype, shape and bytes, in name order."""
    digest = hashlib.blake2b(digest_size=20)
    for name in sorted(inputs):
        value = inputs[name]
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        flat = value.detach().reshape(-1).contiguous()
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return digest.digest()


def weights_fingerprint(model: Any) -> tuple[tuple[int, int], ...]:
    """Each parameter's ``(data_ptr, version counter)``: it changes when a parameter is written in place
    (an optimizer step, ``copy_``, ``load_state_dict``) or replaced."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class PrefixCache:
    """The last ``size`` prefills of one model, least recently used dropped first (``size=0``: none
    kept, every call prefills). ``hits`` and ``misses`` count the calls each way."""

    def __init__(self, size: int = 2) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"prefix_cache={size!r}: expected an integer >= 0 (prefills kept)")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, torch.Tensor, torch.Tensor | None]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every kept prefill."""
        self._entries.clear()

    def prefill(self, model: Any, inputs: Mapping[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """What :func:`catts_graph.models.teacher_forcing.prefill` returns for ``inputs``: the KV cache
        (the caller's own copy, free to grow) and the last position's logits; the model's rope offsets
        are left as that prefill leaves them."""
        if self.size == 0:
            self.misses += 1
            return prefill(model, inputs)
        key = (weights_fingerprint(model), inputs_digest(inputs))
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            cache, logits, deltas = entry
            for module in model.modules():
                if hasattr(module, "rope_deltas"):
                    module.rope_deltas = deltas
            return copy.deepcopy(cache), logits.clone()
        self.misses += 1
        cache, logits = prefill(model, inputs)
        self._entries[key] = (copy.deepcopy(cache), logits.clone(), rope_deltas(model))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return cache, logits
