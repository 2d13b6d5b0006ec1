"""The kept prefills (:class:`catts_graph.models.prefix_cache.PrefixCache`): a reused prefix gives
exactly what reading it again gives, and an entry never answers for other inputs or other weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from catts_graph.models.prefix_cache import PrefixCache, inputs_digest
from catts_graph.models.transformers_vlm import TransformersVLM

PROMPT = "What colour is the square?"
TEXTS = ["It is red. \\boxed{red}.", "It is red. \\boxed{blue}."]
SPANS = [(18, 21), (18, 22)]


def fresh(path: Path, size: int = 2) -> TransformersVLM:
    return TransformersVLM.from_pretrained(path, device="cpu", prefix_cache=size)


def draws(vlm: TransformersVLM, image: Image.Image) -> list[tuple[list[int], list[float]]]:
    samples = vlm.sample([image], PROMPT, 3, seed=4, max_new_tokens=6, top_logprobs=3)
    return [(s.token_ids, s.logprobs) for s in samples]


def wide(image: Image.Image) -> Image.Image:
    """The image twice as wide: another grid, so other multimodal rope offsets."""
    out = Image.new("RGB", (image.width * 2, image.height), (10, 200, 10))
    out.paste(image, (0, 0))
    return out


def test_a_kept_prefix_samples_and_scores_exactly_as_a_cold_read(tiny_model_dir, tiny_image):
    kept, cold = fresh(tiny_model_dir), fresh(tiny_model_dir, size=0)
    first = draws(kept, tiny_image)
    assert (kept.prefixes.hits, kept.prefixes.misses, len(kept.prefixes)) == (0, 1, 1)
    # The sampling call's prefix answers the self-check's clean branch and a second wave.
    scored = kept.score_answers([tiny_image], PROMPT, TEXTS, SPANS)
    again = draws(kept, tiny_image)
    assert (kept.prefixes.hits, kept.prefixes.misses) == (2, 1)
    assert first == again == draws(cold, tiny_image)  # exact: the same tensors, not close ones
    assert scored == cold.score_answers([tiny_image], PROMPT, TEXTS, SPANS)
    whole = kept.score([tiny_image], PROMPT, TEXTS)
    assert [t.logprobs for t in whole] == [t.logprobs for t in cold.score([tiny_image], PROMPT, TEXTS)]
    assert cold.prefixes.hits == 0 and len(cold.prefixes) == 0


def test_a_hit_restores_the_rope_offsets_another_image_left(tiny_model_dir, tiny_image):
    kept, cold = fresh(tiny_model_dir), fresh(tiny_model_dir, size=0)
    draws(kept, tiny_image)
    other = draws(kept, wide(tiny_image))  # its prefill leaves its own offsets on the model
    assert other == draws(cold, wide(tiny_image))
    assert draws(kept, tiny_image) == draws(cold, tiny_image)
    assert kept.prefixes.hits == 1


def test_changed_weights_are_read_again(tiny_model_dir, tiny_image):
    kept = fresh(tiny_model_dir)
    before = draws(kept, tiny_image)
    with torch.no_grad():
        kept.model.get_input_embeddings().weight.mul_(1.5)  # in place, as an optimizer step writes
    after = draws(kept, tiny_image)
    assert kept.prefixes.hits == 0 and kept.prefixes.misses == 2
    assert after != before
    cold = fresh(tiny_model_dir, size=0)
    with torch.no_grad():
        cold.model.get_input_embeddings().weight.mul_(1.5)
    assert after == draws(cold, tiny_image)


def test_the_least_recently_used_prefix_goes_first(tiny_model_dir, tiny_image):
    kept = fresh(tiny_model_dir, size=2)
    images = [tiny_image, wide(tiny_image), tiny_image.rotate(180)]
    for image in images[:2]:
        draws(kept, image)
    draws(kept, images[0])  # used again: now the second image is the oldest
    draws(kept, images[2])
    assert len(kept.prefixes) == 2
    draws(kept, images[0])
    assert kept.prefixes.hits == 2
    draws(kept, images[1])
    assert kept.prefixes.misses == 4
    kept.prefixes.clear()
    assert len(kept.prefixes) == 0


def test_the_digest_sees_one_pixel_and_every_input():
    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), "pixel_values": torch.zeros(4, 6)}
    other = dict(inputs, pixel_values=inputs["pixel_values"].clone())
    assert inputs_digest(inputs) == inputs_digest(other)
    other["pixel_values"][2, 5] = 1e-6
    assert inputs_digest(inputs) != inputs_digest(other)
    assert inputs_digest(inputs) != inputs_digest({**inputs, "input_ids": torch.tensor([[1, 2, 4]])})
    assert inputs_digest(inputs) != inputs_digest({**inputs, "pixel_values": torch.zeros(6, 4)})
    assert inputs_digest(inputs) != inputs_digest({**inputs, "pixel_values": torch.zeros(4, 6).double()})
    assert inputs_digest(inputs) != inputs_digest({**inputs, "mask": torch.ones(1, 3)})
    bf16 = {"x": torch.ones(2, 3, dtype=torch.bfloat16)}
    assert inputs_digest(bf16) == inputs_digest({"x": torch.ones(2, 3, dtype=torch.bfloat16)})


@pytest.mark.parametrize("size", [-1, 1.5, True, "2"])
def test_a_bad_size_is_refused_by_name(size):
    with pytest.raises(ValueError, match="prefix_cache="):
        PrefixCache(size)  # type: ignore[arg-type]
