"""Loading a local transformers checkpoint: its ``catts.json`` settings, the device and dtype chosen
when the caller gives none, and the processor's image size and pixel cap."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

__all__ = ["checkpoint_settings", "default_device", "limit_pixels", "processor_input_size", "resolve_dtype"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def checkpoint_settings(path_or_id: str | os.PathLike[str]) -> dict[str, Any]:
    """``catts.json`` of a local checkpoint folder (``{}`` when absent or for a hub id)."""
    path = Path(path_or_id) / "catts.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(settings).__name__}")
    return settings


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r}: expected a torch.dtype, 'auto' or one of {sorted(_DTYPES)}")


def processor_input_size(processor: Any, image: Image.Image) -> tuple[int, int] | None:
    """The ``(width, height)`` a Qwen2-VL-style processor resizes ``image`` to, or None for another.

    Qwen2-VL's ``smart_resize``: both sides rounded to multiples of ``patch_size * merge_size``,
    then scaled (keeping the aspect ratio) into ``[shortest_edge, longest_edge]`` pixels.
    """
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None)
    patch = getattr(image_processor, "patch_size", None)
    merge = getattr(image_processor, "merge_size", None)
    try:
        min_pixels, max_pixels = size["shortest_edge"], size["longest_edge"]
    except (KeyError, TypeError):
        return None
    if not (min_pixels and max_pixels and patch and merge):
        return None
    height, width = smart_resize(
        image.height, image.width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return (width, height)


def limit_pixels(processor: Any, max_pixels: int) -> None:
    """Cap the pixels per image on a Qwen2-VL-style image processor (``size`` = min/max pixels)."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels={max_pixels!r}: expected a positive int")
    if size is None or "longest_edge" not in size:
        raise ValueError(
            f"max_pixels: {type(image_processor).__name__} has no pixel budget to set; "
            "expected a Qwen2-VL-style image processor"
        )
    image_processor.size = {
        "shortest_edge": min(size["shortest_edge"], max_pixels),
        "longest_edge": max_pixels,
    }
