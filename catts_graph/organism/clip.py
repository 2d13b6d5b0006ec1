"""The CLIP organism: a small open_clip model trained here, contrastively, on the synthetic scenes.

CDRL puts its noise where a CLIP relevance map of the question points
(:class:`catts_graph.relevance.ClipRelevance`: cosine of each patch token with the question's text
embedding). With random weights that map is noise (maps of four random CLIPs correlated from -0.97
to 0.83), and no pretrained CLIP reaches our machines, so the organism world gets its own CLIP.

What makes its *patch* tokens meaningful, not only its pooled embedding:

- **Average pooling** (``pool_type="avg"``): the image embedding is the mean of the patch tokens
  after the same LayerNorm and projection the relevance map applies to each patch, so the
  contrastive loss trains every patch in the joint space, and an object's phrase can only match
  the image through the patches that show it (the effect MaskCLIP gets from a pretrained CLIP).
- **Object phrases, one object per pair**: each training image is paired with a phrase about one
  object in it, in the forms a question names it (``"red circle"``, ``"the red circle top left"``,
  ``"How many red circles are there?"``, ``"What colour is the circle?"``).
- **Hard negatives**: the same phrase with the colour or the shape changed to an object the image
  lacks, as an extra text for that image; and a batch image that holds the phrase's object is not
  counted as a negative (the pairs are labelled from the scenes, so the mask is exact).

:func:`relevance_lift` measures the map: the share of relevance mass on the object the question
names, divided by that object's share of the image area (1 = no better than spreading it evenly).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ClipOrganismConfig",
    "clip_organism_path",
    "load_clip_organism",
    "object_phrase",
    "relevance_lift",
    "train_clip_organism",
]

TOKENIZER = "ViT-B-32"
"""open_clip's bundled BPE tokenizer (offline); the organism uses it with a shorter context."""


@dataclass(frozen=True)
class ClipOrganismConfig:
    """Architecture and schedule of the CLIP organism."""

    embed_dim: int = 64
    image_size: int = 112
    patch_size: int = 8
    """112 / 8 = a 14 x 14 relevance map (16 scene pixels a cell)."""
    vision_layers: int = 3
    vision_width: int = 64
    text_layers: int = 2
    text_width: int = 64
    context_length: int = 24
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    seed: int = 0


def clip_organism_path() -> Path:
    """The shipped CLIP organism's folder."""
    from catts_graph.organism.train import CHECKPOINTS

    return CHECKPOINTS / "clip"


def _build(config: ClipOrganismConfig) -> Any:
    import open_clip
    import torch
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = open_clip.CLIP(
            embed_dim=config.embed_dim,
            vision_cfg=CLIPVisionCfg(
                layers=config.vision_layers,
                width=config.vision_width,
                head_width=32,
                patch_size=config.patch_size,
                image_size=config.image_size,
                pool_type="avg",
            ),
            text_cfg=CLIPTextCfg(
                context_length=config.context_length,
                vocab_size=49408,
                width=config.text_width,
                heads=max(1, config.text_width // 32),
                layers=config.text_layers,
            ),
        )
    return model


def load_clip_organism(path: str | Path | None = None) -> tuple[Any, Any]:
    """The CLIP organism (``open_clip.CLIP``, eval mode) and its tokenizer, from ``path`` (default:
    the shipped one)."""
    import open_clip
    import torch
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else clip_organism_path()
    manifest = folder / "clip_organism.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no CLIP organism at {str(folder)!r}; build it with `catts organism train-clip`"
        )
    config = ClipOrganismConfig(**json.loads(manifest.read_text())["config"])
    model = _build(config)
    state = {key: value.to(torch.float32) for key, value in load_file(folder / "model.safetensors").items()}
    model.load_state_dict(state)
    return model.eval(), open_clip.get_tokenizer(TOKENIZER, context_length=config.context_length)


def object_phrase(rng: random.Random, colour: str, shape: str, quadrant: str) -> str:
    """One of the ways a question names an object, drawn with ``rng``."""
    forms = (
        f"{colour} {shape}",
        f"the {colour} {shape}",
        f"{colour} {shape} {quadrant}",
        f"Where is the {colour} {shape}?",
        f"How many {colour} {shape}s are there?",
        f"What colour is the {shape}?",
    )
    return rng.choice(forms)


def _pixels(images: Sequence[Any], size: int) -> Any:
    import torch
    from PIL import Image

    # The normalisation ClipRelevance applies by default (OpenAI CLIP's), so the map sees what
    # training saw.
    mean = np.asarray((0.48145466, 0.4578275, 0.40821073), np.float32)
    std = np.asarray((0.26862954, 0.26130258, 0.27577711), np.float32)
    arrays = [
        (
            np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
            - mean
        )
        / std
        for image in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _batch(
    rng: random.Random, index: int, size: int, seed: int
) -> tuple[list[Any], list[str], list[str], Any]:
    """Images, positive phrases, hard-negative phrases and the (text, image) positive mask."""
    import torch

    from catts_graph.eval.synthetic import COLOURS, SHAPES, make_question, render

    images, positives, negatives, present = [], [], [], []
    while len(images) < size:
        question = make_question("train", index, seed=seed)
        index += 1
        shapes = question.scene.shapes
        if not shapes:
            continue
        target = rng.choice(shapes)
        kinds = {(s.colour, s.shape) for s in shapes}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in kinds]
        swap = [(c, s) for c, s in absent if c == target.colour or s == target.shape] or absent
        colour, shape = rng.choice(swap)
        images.append(render(question.scene))
        positives.append(object_phrase(rng, target.colour, target.shape, target.quadrant))
        negatives.append(object_phrase(rng, colour, shape, target.quadrant))
        present.append((kinds, (target.colour, target.shape)))
    mask = torch.tensor([[named in kinds for kinds, _ in present] for _, named in present], dtype=torch.bool)
    return images, positives, negatives, mask


def train_clip_organism(
    out: str | Path | None = None,
    *,
    config: ClipOrganismConfig | None = None,
    threads: int = 2,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train the CLIP organism from scratch (seeded) and save it (default: the shipped folder).

    Loss per batch of B (image, phrase) pairs plus B hard-negative phrases, with learned temperature:
    image-to-text cross-entropy over the 2B texts and text-to-image over the B images, where a batch
    image that shows a phrase's object is masked out of that phrase's negatives.
    """
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    config = config or ClipOrganismConfig()
    log = log or (lambda line: print(line, flush=True))
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    rng = random.Random(f"clip:{config.seed}")
    model = _build(config).train()
    tokenizer = open_clip.get_tokenizer(TOKENIZER, context_length=config.context_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    started = time.monotonic()
    index, window = 0, []
    for step in range(config.steps):
        if step < config.warmup_steps:
            lr = config.lr * (step + 1) / config.warmup_steps
        else:
            progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
            lr = config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, positives, negatives, mask = _batch(rng, index, config.batch_size, config.seed)
        index += config.batch_size * 2  # a margin: skipped items (digit scenes) never repeat
        image_emb = F.normalize(model.encode_image(_pixels(images, config.image_size)), dim=-1)
        text_emb = F.normalize(model.encode_text(tokenizer(positives + negatives)), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * image_emb @ text_emb.T  # (B, 2B)
        size = len(images)
        labels = torch.arange(size)
        # A positive phrase that also describes another batch image is no negative for that image.
        shared = mask.T.clone()  # (image j, phrase i): phrase i's object is in image j
        shared.fill_diagonal_(False)
        image_logits = logits.clone()
        image_logits[:, :size] = image_logits[:, :size].masked_fill(shared, float("-inf"))
        text_logits = logits[:, :size].T.masked_fill(shared.T, float("-inf"))
        loss = (F.cross_entropy(image_logits, labels) + F.cross_entropy(text_logits, labels)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            log(
                f"clip step {step + 1}/{config.steps} loss {sum(window) / len(window):.4f} "
                f"{(time.monotonic() - started) / 60:.1f} min"
            )
            window = []
    wall = time.monotonic() - started
    model.eval()
    target = Path(out) if out is not None else clip_organism_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        state = {
            key: value.detach().to(torch.bfloat16).contiguous() for key, value in model.state_dict().items()
        }
        save_file(state, staging / "model.safetensors")
        manifest = {
            "config": asdict(config),
            "wall_time_s": round(wall, 1),
            "threads": threads,
            "torch": torch.__version__,
        }
        (staging / "clip_organism.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"clip: saved to {target} after {wall / 60:.1f} min")
    return target


def relevance_lift(
    relevance: Any, *, split: str = "test", limit: int = 200, seed: int = 0
) -> dict[str, float]:
    """How much a relevance model points at the object a question names.

    For each item (colour, count and position questions whose named object is in the scene), the
    map of the question and its options (``relevance.relevance_map``) is laid over the 224-pixel
    scene; ``mass`` is the map's share of total mass on the named objects' pixels, ``area`` those
    pixels' share of the image. Returns the means of both and ``lift = mean(mass / area)`` (1 for a
    map that ignores the question).
    """
    from PIL import Image, ImageDraw

    from catts_graph.eval.synthetic import IMAGE_SIZE, draw_shapes, make_question, render

    masses, areas, lifts = [], [], []
    index = 0
    while len(lifts) < limit:
        question = make_question(split, index, seed=seed)
        index += 1
        target = question.target
        if question.kind not in ("colour", "count", "position"):
            continue
        named = [
            s
            for s in question.scene.shapes
            if s.shape == target["shape"] and ("colour" not in target or s.colour == target["colour"])
        ]
        if not named:
            continue
        mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        draw_shapes(ImageDraw.Draw(mask), named, fill=255)
        inside = np.asarray(mask, np.float64) > 0
        from catts_graph.relevance import relevance_query

        text = relevance_query(question.question, question.options)
        grid = relevance.relevance_map(render(question.scene), text)
        heat = np.asarray(
            Image.fromarray(grid.astype(np.float32), mode="F").resize(
                (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST
            ),
            np.float64,
        )
        mass = float(heat[inside].sum() / max(heat.sum(), 1e-12))
        area = float(inside.mean())
        masses.append(mass)
        areas.append(area)
        lifts.append(mass / area)
    return {
        "mass": float(np.mean(masses)),
        "area": float(np.mean(areas)),
        "lift": float(np.mean(lifts)),
        "n": len(lifts),
    }
