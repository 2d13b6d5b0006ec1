"""Noise at the resolution the model sees: `perturbed_views`, the processor's input size, and the
visual self-check, the probe and the organism evaluation feeding both branches at that size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from catts_graph.config import CATTSConfig
from catts_graph.graph import build_graph
from catts_graph.models.base import input_size_of
from catts_graph.models.transformers_vlm import processor_input_size
from catts_graph.perturb import perturb, perturbed_views, resize_to
from catts_graph.testing import Reply, ScriptedVLM

# Qwen2.5-VL's own bounds are 56*56 .. 28*28*1280 pixels; a 256-token budget keeps the test small.
PROCESSOR = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 256)


def input_size(image: Image.Image) -> tuple[int, int] | None:
    return processor_input_size(PROCESSOR, image)


def scene(side: int) -> Image.Image:
    """The same smooth scene (two gradients and a disc) drawn at ``side`` x ``side`` pixels."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(float)
    pixels = np.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.3 + 0.4 * disc], axis=-1)
    return Image.fromarray(np.rint(pixels * 255).astype(np.uint8))


def residual_std(clean: Image.Image, noised: Image.Image) -> float:
    a = np.asarray(clean, dtype=np.float64) / 255
    b = np.asarray(noised, dtype=np.float64) / 255
    return float((b - a).std())


@pytest.mark.parametrize("side", [224, 333, 1024])
def test_processor_input_size_is_the_size_the_processor_resizes_to(side):
    for width, height in [(side, side), (side, side // 2 + 1), (side // 3 + 5, side)]:
        image = Image.new("RGB", (width, height))
        grid = PROCESSOR(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert input_size(image) == (grid[2] * 14, grid[1] * 14)


def test_processor_without_a_pixel_budget_has_no_input_size():
    assert processor_input_size(object(), Image.new("RGB", (8, 8))) is None


@pytest.mark.parametrize("kind", ["gaussian", "diffusion"])
def test_the_same_strength_gives_the_same_noise_for_a_224_and_a_1024_pixel_image(kind):
    small, large = scene(224), scene(1024)
    stds = []
    for image in (small, large):
        views, noised = perturbed_views([image], kind, 0.5, seed=3, input_size=input_size)
        assert views[0].size == noised[0].size == input_size(image)
        stds.append(residual_std(views[0], noised[0]))
    assert stds[0] == pytest.approx(stds[1], rel=0.03)
    # Noising first and letting the processor downscale, as before, makes the noise size-dependent:
    seen = []
    for image in (small, large):
        size = input_size(image)
        seen.append(residual_std(resize_to(image, size), resize_to(perturb(image, kind, 0.5, 3), size)))
    assert seen[1] < 0.6 * seen[0]


def test_views_are_resized_and_each_image_gets_its_own_seed():
    images = [scene(100), scene(100)]
    views, noised = perturbed_views(images, "gaussian", 0.4, seed=5, input_size=lambda im: (64, 32))
    assert [v.size for v in views] == [(64, 32), (64, 32)]
    assert views[0].tobytes() == resize_to(images[0], (64, 32)).tobytes()
    assert noised[0].tobytes() == perturb(views[0], "gaussian", 0.4, 5).tobytes()
    assert noised[1].tobytes() == perturb(views[1], "gaussian", 0.4, 6).tobytes()
    assert noised[0].tobytes() != noised[1].tobytes()


def test_without_an_input_size_images_keep_their_size():
    image = scene(50)
    views, noised = perturbed_views([image], "blur", 0.3)
    assert views[0].size == noised[0].size == (50, 50)
    assert views[0].tobytes() == image.tobytes()


def test_regions_steer_each_view_and_must_match_the_images():
    image = scene(64)
    left = np.zeros((4, 4))
    left[:, :2] = 1.0
    _, (noised,) = perturbed_views([image], "gaussian", 1.0, regions=[left], input_size=lambda im: (32, 32))
    diff = np.abs(np.asarray(noised, float) - np.asarray(resize_to(image, (32, 32)), float))
    assert diff[:, :12].mean() > 20 * max(diff[:, 20:].mean(), 1e-3)
    with pytest.raises(ValueError, match="regions: got 2 maps for 1 images"):
        perturbed_views([image], "gaussian", 0.5, regions=[left, left])
    with pytest.raises(ValueError, match="size="):
        resize_to(image, (0, 5))


class SizedModel(ScriptedVLM):
    def input_size(self, image: Image.Image) -> tuple[int, int]:
        return (40, 30)


def test_the_self_check_scores_both_branches_at_the_model_input_size():
    seen: list[tuple[int, int]] = []

    def scorer(images, prompt, text):
        seen.extend(image.size for image in images)
        return -1.0

    model = SizedModel.answering(Reply("red. \\boxed{red}", -0.5), Reply("blue. \\boxed{blue}", -0.5))
    model.scorer = scorer
    assert input_size_of(model) == model.input_size
    build_graph(model, config=CATTSConfig(n_samples=2, max_samples=2)).invoke(
        {"image": scene(200), "question": "What colour is the disc?"}
    )
    assert seen and set(seen) == {(40, 30)}


def test_a_backend_without_input_size_declares_none():
    assert input_size_of(ScriptedVLM.answering("x")) is None
