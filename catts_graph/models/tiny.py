"""A tiny random Qwen2.5-VL, built offline, saved like a real checkpoint.

No model hub is reachable from our machines, yet the tests and the offline demo need a *real*
Qwen2.5-VL: the same classes, processor, chat template and loading path as
``Qwen/Qwen2.5-VL-7B-Instruct``, only small and with random weights (so its answers are random).
:func:`build_tiny_qwen25vl` writes one with ``save_pretrained``; it loads back through
``AutoProcessor`` / ``AutoModelForImageTextToText`` and :class:`~catts_graph.models.TransformersVLM`
exactly as a downloaded checkpoint would.

The tokenizer is byte-level BPE with no merges: every UTF-8 byte is one token, and the Qwen special
tokens follow. Its 256-symbol byte alphabet is *sorted*, because ``tokenizers`` returns it in a
different order in each process, and an unsorted rebuild silently maps bytes to other ids.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "build_tiny_qwen25vl",
    "default_tiny_model_dir",
    "ensure_tiny_model",
]

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""The Qwen2.5-VL special tokens the tiny tokenizer carries, in id order after the 256 bytes."""

# Qwen's ChatML: one `<|im_start|>role\n...<|im_end|>\n` block per turn, an image part rendered as
# the vision placeholder the processor expands to one `<|image_pad|>` per merged patch.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_MANIFEST = "catts_tiny.json"


def default_tiny_model_dir() -> Path:
    """Where the shared tiny model lives: ``$CATTS_HOME/tiny-qwen25vl``, else under ``~/.cache``."""
    home = os.environ.get("CATTS_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "catts-graph"
    return root / "tiny-qwen25vl"


def ensure_tiny_model() -> Path:
    """Build the tiny model with default settings at :func:`default_tiny_model_dir` if missing."""
    return build_tiny_qwen25vl(default_tiny_model_dir())


def build_tiny_qwen25vl(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    intermediate_size: int = 64,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    vision_num_heads: int = 2,
    min_pixels: int = 28 * 28,
    max_pixels: int = 28 * 28 * 16,
    initializer_range: float = 0.02,
    vocab_size: int | None = None,
    image_mean: tuple[float, float, float] | None = None,
    image_std: tuple[float, float, float] | None = None,
    words: Sequence[str] | None = None,
) -> Path:
    """Write a random Qwen2.5-VL with tokenizer, processor and chat template to ``path``.

    Text model: ``hidden_size`` with ``num_hidden_layers`` layers; the multimodal rope sections are
    derived from the head dimension (they must sum to ``head_dim / 2``). Vision tower:
    ``vision_depth`` blocks of ``vision_hidden_size``, patch 14, merge 2, so one language-model image
    token covers 28x28 pixels; ``max_pixels`` caps an image at ``max_pixels / 784`` such tokens,
    which keeps prefixes short on CPU. ``vocab_size`` pads the embedding and output matrices past
    the tokenizer's 264 tokens (the real model has 152064 rows for 151665 tokens); benchmarks use it
    to get the real cost of a 150k-way softmax. Ids without a token decode to "".
    ``image_mean`` / ``image_std`` replace the processor's per-channel normalisation (default:
    CLIP's, as in the real model); a model trained from scratch on white-background images learns
    far faster when white maps to 0 (``image_mean=(1, 1, 1)``). ``words`` adds whole-word tokens
    (pieces of the byte-level pre-split, e.g. ``"Ġcircle"``) after the byte symbols: a text made of
    them costs a token per word, any other text still one per byte (:func:`_byte_level_tokenizer`).

    Idempotent: when ``path`` already holds a model built with the same settings, nothing is
    written. Deterministic: the same settings give the same weights and token ids in any process.
    The build happens in a sibling temporary folder that is renamed into place, so a reader (or a
    concurrent builder) never sees a half-written model. Returns ``path``.
    """
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be a multiple of num_attention_heads={num_attention_heads}"
        )
    head_dim = hidden_size // num_attention_heads
    if head_dim % 2 or head_dim < 6:
        raise ValueError(
            f"head_dim = hidden_size / num_attention_heads = {head_dim}: expected an even number >= 6"
        )
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels={max_pixels} must be at least min_pixels={min_pixels}")

    settings: dict[str, Any] = {
        "format": 1,
        "seed": seed,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "intermediate_size": intermediate_size,
        "vision_hidden_size": vision_hidden_size,
        "vision_depth": vision_depth,
        "vision_num_heads": vision_num_heads,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "initializer_range": initializer_range,
        "vocab_size": vocab_size,
    }
    # Only when set, so models built before these settings existed keep their manifest.
    if image_mean is not None:
        settings["image_mean"] = [float(v) for v in image_mean]
    if image_std is not None:
        settings["image_std"] = [float(v) for v in image_std]
    if words is not None:
        settings["words"] = list(words)
    target = Path(path)
    manifest = target / _MANIFEST
    if manifest.is_file():
        if json.loads(manifest.read_text()) == settings:
            return target
        raise FileExistsError(
            f"path={str(target)!r} holds a tiny model built with other settings "
            f"({manifest.read_text().strip()}); choose another path or delete it"
        )
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"path={str(target)!r} exists and is not a tiny model built here")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(words),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")

    normalisation = {
        key: list(value)
        for key, value in (("image_mean", image_mean), ("image_std", image_std))
        if value is not None
    }
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        **normalisation,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )

    # Three mrope sections (temporal, height, width) summing to head_dim / 2, as in the real model
    # ([16, 24, 24] for head_dim 128).
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size or len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads,
            "max_position_embeddings": 32768,
            "initializer_range": initializer_range,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": mrope_section,
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_heads": vision_num_heads,
            "out_hidden_size": hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [vision_depth - 1],
            "initializer_range": initializer_range,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / _MANIFEST).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        try:
            if target.exists():
                target.rmdir()  # empty, checked above
            staging.rename(target)
        except OSError:
            # Another process won the race; its model has the same settings or the check below says why.
            if not (manifest.is_file() and json.loads(manifest.read_text()) == settings):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _byte_level_tokenizer(words: Sequence[str] | None = None) -> Any:
    """Byte-level BPE, no merges: ids 0-255 are the sorted byte alphabet, then ``words`` (whole
    pre-split pieces, in the order given), then the special tokens.

    With ``ignore_merges`` a piece found in the vocabulary is one token and any other piece falls
    back to its bytes, so every text still encodes and decodes back exactly: a word-level
    vocabulary with a byte fallback, without the merge tables a word list would need in plain BPE
    (whose merges of one word's prefixes block another word's).

    Imports only ``tokenizers`` (this module imports torch lazily), so it is cheap to call in a
    subprocess, which is how the tests check that the ids do not depend on the process.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    for word in words or ():
        if not word or word in QWEN_SPECIAL_TOKENS:
            raise ValueError(f"words: {word!r} is not a usable word token")
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=bool(words)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    return tokenizer
