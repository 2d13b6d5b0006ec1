"""Shared fixtures: images on disk and a scripted expert chat model (:class:`ScriptedExpert`)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from catts_graph.testing import ScriptedExpert


@pytest.fixture
def scripted_chat() -> Callable[..., ScriptedExpert]:
    """A :class:`ScriptedExpert` from replies per role (and ``latency=`` seconds per call)."""

    def make(**replies: Any) -> ScriptedExpert:
        latency = replies.pop("latency", 0.0)
        return ScriptedExpert(replies=replies, latency=latency)

    return make


def make_item(**fields: Any) -> Any:
    """A scoring test's benchmark item: a MathVista integer question answered 5, ``fields`` replaced."""
    from catts_graph.task import Item

    base: dict[str, Any] = {
        "id": "1",
        "benchmark": "mathvista",
        "images": ["a.png"],
        "question": "Q?",
        "options": None,
        "answer": "5",
        "answer_type": "integer",
    }
    return Item(**{**base, **fields})


def png_bytes(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_path(tmp_path: Any) -> str:
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return str(path)


from tests.conftest_models import tiny_image, tiny_model_dir, tiny_vlm  # noqa: E402,F401  (fixtures)
