"""Token ids to text and back, and the tokens that matter to a decode loop: where a response stops
(one rule, :func:`stop_token_ids` and :func:`response_ids`, for sampling, scoring and training),
which ids are a Qwen chat's vision placeholders, what pads a batch."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

from catts_graph.models.base import align_tokens

__all__ = [
    "VISION_TOKENS",
    "decode_batch",
    "detokenize_ids",
    "pad_token_id",
    "response_ids",
    "stop_token_ids",
    "token_pieces",
    "vision_token_ids",
]


DETOKENIZE_CONTEXT = 4
"""Tokens decoded on each side of a token to find its piece: a UTF-8 character is at most 4 bytes, so
whether a character that a token starts or ends is complete (or invalid) shows within 4 tokens."""


def token_pieces(
    ids: Sequence[int], text: str, decode_batch: Callable[[list[list[int]]], list[str]]
) -> list[str]:
    """One string per token, concatenating to ``text`` (the decoding of ``ids``), in O(T).

    Token t's piece is the text that becomes final when it is added: in the window ``ids[t-C :
    t+1+C]`` (C = :data:`DETOKENIZE_CONTEXT`), decoded as ``F``, the final text up to token t is the
    longest common prefix of ``F`` and ``decode(ids[t-C : t+1])``, and up to the token before the
    longest common prefix of ``F`` and ``decode(ids[t-C : t])``; the piece is ``F`` between the two.
    A character split across byte-level tokens is carried by the token that completes it, the ones
    before it carry "", and an invalid byte keeps its own replacement character. This is the same
    answer as comparing every prefix with the whole text (O(T^2) decodes) with three decodes of at
    most 2C + 1 tokens per token; decoders that are not local in this sense (none known) fall back
    to :func:`~catts_graph.models.base.align_tokens`.
    """
    count = len(ids)
    windows = [
        (max(0, t - DETOKENIZE_CONTEXT), t, min(count, t + 1 + DETOKENIZE_CONTEXT)) for t in range(count)
    ]
    decoded = decode_batch(
        [list(ids[s:e]) for s, _, e in windows]
        + [list(ids[s : t + 1]) for s, t, _ in windows]
        + [list(ids[s:t]) for s, t, _ in windows]
    )
    pieces = []
    for t in range(count):
        ahead, upto, before = decoded[t], decoded[count + t], decoded[2 * count + t]
        done = len(os.path.commonprefix([before, ahead]))
        reached = len(os.path.commonprefix([upto, ahead]))
        pieces.append(ahead[done : max(done, reached)])
    return pieces if "".join(pieces) == text else align_tokens(pieces, text)


def detokenize_ids(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[str]]:
    """The text of ``token_ids`` and one piece per token joining back to it
    (:meth:`TransformersVLM.detokenize`, for any tokenizer: the training rewards read completions
    through it)."""
    ids = list(token_ids)
    if not ids:
        return "", []
    text, *pieces = decode_batch(tokenizer, [ids, *([i] for i in ids)])
    if "".join(pieces) == text:
        return text, pieces
    return text, token_pieces(ids, text, lambda sequences: decode_batch(tokenizer, sequences))


def decode_batch(tokenizer: Any, sequences: list[list[int]]) -> list[str]:
    """Decode with special tokens kept, straight through the Rust tokenizer when there is one
    (``batch_decode`` first walks every id in Python, which costs more than the decoding)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return list(backend.decode_batch(sequences, skip_special_tokens=False))
    return list(
        tokenizer.batch_decode(sequences, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    )


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the vision placeholder tokens the tokenizer knows (Qwen-VL's), never to be sampled."""
    vocab = tokenizer.get_vocab()
    return {vocab[token] for token in VISION_TOKENS if token in vocab}


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a response: EOS from the model's generation config and from the tokenizer,
    and ``<|im_end|>`` (the end of a chat turn). The one stop-token rule of the project; see
    :func:`response_ids`."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != getattr(tokenizer, "unk_token_id", None):
        ids.add(im_end)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token; cannot tell where a response ends")
    return ids


def response_ids(token_ids: Sequence[int], stop_ids: Collection[int]) -> list[int]:
    """The response in ``token_ids``: the ids before the first stop token (which is not part of it),
    as :meth:`TransformersVLM.sample` ends a sample; padding after it goes too."""
    out = []
    for token in token_ids:
        if int(token) in stop_ids:
            break
        out.append(int(token))
    return out


def pad_token_id(tokenizer: Any, stop_ids: set[int]) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else min(stop_ids)
