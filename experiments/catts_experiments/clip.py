"""Training the CLIP organism (``catts train clip``): a small open_clip model learned here,
contrastively, on the synthetic scenes; the library loads the result (:mod:`catts_graph.organism.clip`).

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
- **A dense grounding loss**: contrastive pairs alone aligned the pooled embedding but barely the
  patches (relevance lift 1.33, where random tiny CLIPs give 0.92-1.63). The scenes say exactly
  which pixels a phrase names, so each patch's share of the named objects is known; the loss is
  ``-log`` of the relevance mass on those shares, of the very map the relevance model draws
  (patch cosines with the phrase, less their minimum): the map, trained to point. (A softmax
  over the cosines, the other ``grounding``, reached a lift of 3.7 in 300 steps; this 11.3.)

:func:`relevance_lift` measures the map: the share of relevance mass on the object the question
names, divided by that object's share of the image area (1 = no better than spreading it evenly).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from catts_graph.organism.checkpoint import replaced_folder
from catts_graph.organism.clip import TOKENIZER, ClipOrganismConfig, build_clip_organism, clip_organism_path

__all__ = ["grounding_loss", "object_phrase", "relevance_lift", "train_clip_organism"]


def object_phrase(rng: random.Random, colour: str, shape: str, quadrant: str) -> str:
    """One of the ways a question names an object, drawn with ``rng``; a question comes with its
    options as :func:`~catts_graph.relevance.relevance_query` writes them (a colour question's
    options name other colours, which the map must not follow)."""
    from catts_graph.eval.synthetic import COLOURS

    others = rng.sample([c for c in COLOURS if c != colour], 3)
    options = [colour, *others]
    rng.shuffle(options)
    forms = (
        f"{colour} {shape}",
        f"the {colour} {shape}",
        f"{colour} {shape} {quadrant}",
        f"Where is the {colour} {shape}? top left top right bottom left bottom right",
        f"How many {colour} {shape}s are there?",
        f"What colour is the {shape}? {' '.join(options)}",
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
    rng: random.Random, index: int, size: int, seed: int, grid: int = 14
) -> tuple[list[Any], list[str], list[str], Any, Any]:
    """Images, positive phrases, hard-negative phrases, the (text, image) positive mask, and per
    image the share of each of the ``grid`` x ``grid`` patches that the positive phrase names."""
    import torch
    from PIL import Image, ImageDraw

    from catts_graph.eval.synthetic import COLOURS, IMAGE_SIZE, SHAPES, draw_shapes, make_question, render

    images, positives, negatives, present, shares = [], [], [], [], []
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
        phrase = object_phrase(rng, target.colour, target.shape, target.quadrant)
        positives.append(phrase)
        negatives.append(object_phrase(rng, colour, shape, target.quadrant))
        present.append((kinds, (target.colour, target.shape)))
        by_shape = phrase.startswith("What colour")  # names the shape, whatever its colour
        named = [s for s in shapes if s.shape == target.shape and (by_shape or s.colour == target.colour)]
        mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        draw_shapes(ImageDraw.Draw(mask), named, fill=255)
        shares.append(np.asarray(mask.resize((grid, grid), Image.Resampling.BOX), np.float32).ravel() / 255)
    mask = torch.tensor([[named in kinds for kinds, _ in present] for _, named in present], dtype=torch.bool)
    return images, positives, negatives, mask, torch.from_numpy(np.stack(shares))


def grounding_loss(patches: Any, text: Any, shares: Any, kind: str = "minmax", scale: float = 20.0) -> Any:
    """``-log`` of the relevance mass on the named objects, averaged over the batch.

    ``patches`` (B, P, D) are the patch tokens in the joint space, ``text`` (B, D) the phrases'
    embeddings, ``shares`` (B, P) each patch's share of the named objects in [0, 1]; ``c_p`` the
    cosine of patch ``p`` with the text. The map ``m`` is, for ``kind="minmax"``, ``c_p - min c``
    normalised to sum 1 (the map :class:`~catts_graph.relevance.ClipRelevance` draws, so the mass
    is the one :func:`relevance_lift` measures), or ``softmax(scale * c)`` for ``"softmax"``; the
    mass is ``sum_p m_p * share_p``, 1 when the whole map sits on fully covered patches.
    """
    import torch
    import torch.nn.functional as F

    cosine = torch.einsum("bpd,bd->bp", F.normalize(patches, dim=-1), F.normalize(text, dim=-1))
    if kind == "minmax":
        lifted = cosine - cosine.min(dim=-1, keepdim=True).values
        mass = (lifted * shares).sum(dim=-1) / lifted.sum(dim=-1).clamp_min(1e-6)
    elif kind == "softmax":
        mass = (torch.softmax(scale * cosine, dim=-1) * shares).sum(dim=-1)
    else:
        raise ValueError(f"grounding={kind!r}: expected 'minmax' or 'softmax'")
    return -torch.log(mass.clamp_min(1e-6)).mean()


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
    image that shows a phrase's object is masked out of that phrase's negatives; plus
    ``grounding_weight`` times :func:`grounding_loss` of each image's patches and its phrase.
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
    model = build_clip_organism(config).train()
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
        grid = config.image_size // config.patch_size
        images, positives, negatives, mask, shares = _batch(rng, index, config.batch_size, config.seed, grid)
        index += config.batch_size * 2  # a margin: skipped items (digit scenes) never repeat
        # The patch tokens in the joint space, as ClipRelevance computes them; with average pooling
        # their mean is exactly encode_image's embedding, so one vision pass serves both losses.
        patches = (
            model.visual.forward_intermediates(
                _pixels(images, config.image_size),
                indices=1,
                normalize_intermediates=True,
                output_fmt="NLC",
                intermediates_only=True,
            )["image_intermediates"][-1]
            @ model.visual.proj
        )
        image_emb = F.normalize(patches.mean(dim=1), dim=-1)
        texts = model.encode_text(tokenizer(positives + negatives))
        text_emb = F.normalize(texts, dim=-1)
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
        if config.grounding_weight:
            loss = loss + config.grounding_weight * grounding_loss(
                patches, texts[:size], shares, config.grounding, config.grounding_scale
            )
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
    with replaced_folder(target) as staging:
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
    log(f"clip: saved to {target} after {wall / 60:.1f} min")
    return target


def relevance_lift(
    relevance: Any, *, split: str = "test", limit: int = 200, seed: int = 0
) -> dict[str, float]:
    """How much a relevance model points at the object a question names.

    For each item (colour, count and position questions whose named object is in the scene), the
    map of the question and its options (``relevance.relevance_map``) is laid over the 224-pixel
    scene; ``mass`` is the map's share of total mass on the named objects' pixels, ``area`` those
    pixels' share of the image. Returns the means of both, ``lift = mean(mass / area)`` (1 for a
    map that ignores the question) and ``kinds``, the lift per question kind.
    """
    from PIL import Image, ImageDraw

    from catts_graph.eval.synthetic import IMAGE_SIZE, draw_shapes, make_question, render

    masses, areas, lifts, kinds = [], [], [], []
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
        kinds.append(question.kind)
    return {
        "mass": float(np.mean(masses)),
        "area": float(np.mean(areas)),
        "lift": float(np.mean(lifts)),
        "n": len(lifts),
        "kinds": {
            kind: float(np.mean([lift for lift, k in zip(lifts, kinds, strict=True) if k == kind]))
            for kind in sorted(set(kinds))
        },
    }
