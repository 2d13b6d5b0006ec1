"""Shared fixtures for tests that need a real (tiny, random) Qwen2.5-VL on CPU.

The model is built once per test session under pytest's base temp folder; the builder is idempotent,
so a second registration of these fixtures (one per importing module) reuses the same files.
Wire into ``tests/conftest.py`` with ``from tests.conftest_models import *  # noqa: F401,F403``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from catts_graph.models.tiny import build_tiny_qwen25vl
from catts_graph.models.transformers_vlm import TransformersVLM

__all__ = ["checkpoint_weights", "tiny_image", "tiny_model_dir", "tiny_vlm"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL (hidden 32, 2 layers) saved like a real checkpoint."""
    return build_tiny_qwen25vl(tmp_path_factory.getbasetemp() / "tiny-qwen25vl", seed=0)


@pytest.fixture(scope="session")
def tiny_vlm(tiny_model_dir: Path) -> TransformersVLM:
    """The tiny model loaded through the public loader, on CPU in float32."""
    return TransformersVLM.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_image() -> Image.Image:
    """An 84x56 image with some structure: 3x2 patches of 28 px, i.e. 6 language-model tokens."""
    image = Image.new("RGB", (84, 56), (200, 30, 30))
    for x in range(0, 84, 7):
        for y in range(0, 56, 7):
            if (x + y) % 14 == 0:
                image.putpixel((x, y), (20, 20, 220))
    return image


def checkpoint_weights(folder: Path) -> dict:
    """Every tensor of a saved checkpoint (all its safetensors shards), by name."""
    from safetensors.torch import load_file

    tensors: dict = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors
