"""Where in an image a question looks: a relevance map from open_clip, to steer CDRL's noise.

Method: patch-token / text similarity. The image goes through the CLIP vision transformer; the
last block's patch tokens get the same final LayerNorm and projection as the pooled (class) token,
which puts them in the joint image-text space, and each patch's relevance is its cosine similarity
with the text embedding of the question (and its options):

    r_p = cos(proj(ln_post(z_p)), e_text),   map = (r - min r) / (max r - min r)

Why this and not gradient-weighted attention: it needs one forward pass and no gradients, it works
with any open_clip ViT (open_clip's attention does not return its weights on the autograd path, so
Grad-CAM over attention would mean re-implementing every block), and the map is exactly as good as
the CLIP it comes from. Its known weakness, shared by all raw CLIP patch maps, is noise from
background tokens; the map is only used to *weight* where a perturbation goes (and optionally
binarised to the top fraction of patches), so a coarse map is enough.

The image is resized to the model's square input *without* cropping, so the patch grid covers the
whole image and the map can be laid back over it (:func:`catts_graph.perturb.region_weights`
resizes it to the image).

Offline (tests, the smoke run) :func:`build_tiny_clip` makes a random few-MB CLIP; with real
weights, :meth:`ClipRelevance.from_pretrained` takes any open_clip name and pretrained tag or file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ClipRelevance", "build_tiny_clip", "relevance_query", "top_fraction_mask"]

TINY_CLIP = "tiny"
"""The model name that :meth:`ClipRelevance.from_spec` maps to :func:`build_tiny_clip`."""

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_tiny_clip(seed: int = 0) -> Any:
    """A random open_clip ``CLIP`` of about 1.6M parameters (64x64 input, 8x8 patches: an 8x8 map).

    Same classes and code path as a real ViT CLIP; for tests and offline smoke runs only (its maps
    are random).
    """
    import open_clip
    import torch
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(
            embed_dim=32,
            vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=64),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
        )
    return model.eval()


def relevance_query(question: str, options: Sequence[str] | None = None) -> str:
    """The text a relevance map is computed for: the question, then its options (CLIP truncates at 77
    tokens, so the question comes first)."""
    parts = [" ".join(question.split())]
    parts.extend(" ".join(str(option).split()) for option in options or ())
    return " ".join(part for part in parts if part)


class ClipRelevance:
    """Question-to-patch relevance maps from an open_clip ViT model.

    ``model`` is an ``open_clip.CLIP`` (or anything with its ``visual`` ViT tower and
    ``encode_text``), ``tokenizer`` open_clip's tokenizer for it.
    """

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu") -> None:
        visual = getattr(model, "visual", None)
        if (
            visual is None
            or not hasattr(visual, "forward_intermediates")
            or getattr(visual, "proj", None) is None
        ):
            raise TypeError(
                f"model={type(model).__name__}: expected an open_clip CLIP with a ViT vision tower "
                "(timm / ConvNeXt towers have no patch tokens to compare with the text)"
            )
        self.device = device
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        size = visual.image_size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[assignment]
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", getattr(visual, "image_mean", None) or _OPENAI_MEAN))
        self.std = tuple(cfg.get("std", getattr(visual, "image_std", None) or _OPENAI_STD))

    @classmethod
    def from_pretrained(
        cls, model_name: str, pretrained: str | None = None, *, device: str = "cpu"
    ) -> ClipRelevance:
        """An open_clip model by name (``"ViT-B-16"``) with weights by tag (``"openai"``) or file path.

        Downloading a tag needs the network (or open_clip's cache); ``pretrained=None`` is random.
        """
        import open_clip

        model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        return cls(model, open_clip.get_tokenizer(model_name), device=device)

    @classmethod
    def tiny(cls, seed: int = 0) -> ClipRelevance:
        """:func:`build_tiny_clip` with the ViT-B-32 tokenizer (bundled with open_clip, offline)."""
        import open_clip

        return cls(build_tiny_clip(seed), open_clip.get_tokenizer("ViT-B-32"))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ClipRelevance:
        """From a config mapping ``{model: NAME | "tiny", pretrained: TAG | PATH | None, device, seed}``."""
        unknown = set(spec) - {"model", "pretrained", "device", "seed"}
        if unknown:
            raise ValueError(
                f"relevance: unknown keys {sorted(unknown)}; expected model, pretrained, device, seed"
            )
        name = spec.get("model", TINY_CLIP)
        if name == TINY_CLIP:
            return cls.tiny(int(spec.get("seed", 0)))
        return cls.from_pretrained(str(name), spec.get("pretrained"), device=str(spec.get("device", "cpu")))

    def relevance_map(self, image: Image.Image, text: str) -> np.ndarray:
        """The (rows, cols) map in [0, 1] over the patch grid; 1 = most relevant patch.

        A map with no spread (all patches equally similar) is all ones: the noise then goes everywhere.
        """
        return self.relevance_maps([image], [text])[0]

    def relevance_maps(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[np.ndarray]:
        """:meth:`relevance_map` for many (image, text) pairs in one batched pass."""
        import torch
        import torch.nn.functional as F

        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images and {len(texts)} texts; expected one text per image")
        if not images:
            return []
        pixels = torch.stack([self._pixels(image) for image in images]).to(self.device)
        tokens = self.tokenizer(list(texts)).to(self.device)
        visual = self.model.visual
        with torch.no_grad():
            out = visual.forward_intermediates(
                pixels, indices=1, normalize_intermediates=True, output_fmt="NLC", intermediates_only=True
            )
            patches = out["image_intermediates"][-1] @ visual.proj  # (B, P, D): joint space
            text = self.model.encode_text(tokens)  # (B, D)
            similarity = torch.einsum(
                "bpd,bd->bp", F.normalize(patches.float(), dim=-1), F.normalize(text.float(), dim=-1)
            )
        height, width = self.image_size
        patch_h, patch_w = _pair(visual.patch_size)
        rows, cols = height // patch_h, width // patch_w
        maps = []
        for row in similarity.cpu().numpy().astype(np.float64):
            low, high = row.min(), row.max()
            scaled = (row - low) / (high - low) if high - low > 1e-12 else np.ones_like(row)
            maps.append(scaled.reshape(rows, cols))
        return maps

    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """CLIPScore's cosine of each text with the image(s): ``cos(e_image, e_text)`` of the model's
        pooled embeddings, the image embedding averaged over ``images`` (normalised, then averaged,
        then normalised again). A :data:`~catts_graph.nodes.common.ClipScorer` for
        ``build_graph(clip=...)`` and the step signals; the floor at 0 is the caller's
        (:mod:`catts_graph.step_confidence`)."""
        import torch
        import torch.nn.functional as F

        if not images:
            raise ValueError("images: CLIPScore needs at least one image")
        if not texts:
            return []
        pixels = torch.stack([self._pixels(image) for image in images]).to(self.device)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.no_grad():
            image = F.normalize(self.model.encode_image(pixels).float(), dim=-1).mean(dim=0)
            text = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            cosines = text @ F.normalize(image, dim=-1)
        return [float(c) for c in cosines.cpu()]

    def _pixels(self, image: Image.Image) -> Any:
        import torch

        if not isinstance(image, Image.Image):
            raise TypeError(f"image: got {type(image).__name__}, expected a PIL image")
        height, width = self.image_size
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        array = (
            np.asarray(resized, dtype=np.float32) / 255.0 - np.asarray(self.mean, np.float32)
        ) / np.asarray(self.std, np.float32)
        return torch.from_numpy(array).permute(2, 0, 1)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def top_fraction_mask(relevance: np.ndarray, fraction: float) -> np.ndarray:
    """1 on the ``ceil(fraction * P)`` most relevant patches, 0 elsewhere (ties by position)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"top_fraction={fraction!r}: expected a number in (0, 1]")
    flat = relevance.ravel()
    keep = max(1, int(np.ceil(fraction * flat.size)))
    mask = np.zeros_like(flat)
    mask[np.argsort(-flat, kind="stable")[:keep]] = 1.0
    return mask.reshape(relevance.shape)
