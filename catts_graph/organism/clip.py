"""The CLIP organism: a small open_clip model trained here, contrastively, on the synthetic scenes.

CDRL puts its noise where a CLIP relevance map of the question points
(:class:`catts_graph.relevance.ClipRelevance`: cosine of each patch token with the question's text
embedding). With random weights that map is noise (maps of four random CLIPs correlated from -0.97
to 0.83), and no pretrained CLIP reaches our machines, so the organism world gets its own CLIP,
shipped in ``checkpoints/clip``. This module loads it (:func:`clip_organism`); how it is trained,
and why its patch tokens point at the named object, is :mod:`catts_experiments.clip`
(``catts train clip``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ClipOrganismConfig",
    "build_clip_organism",
    "clip_organism",
    "clip_organism_path",
    "load_clip_organism",
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
    grounding_weight: float = 1.0
    """Weight of the dense grounding loss beside the contrastive one (0: contrastive only)."""
    grounding: str = "minmax"
    """How the grounding loss turns patch cosines into a map (:func:`grounding_loss`): ``minmax``,
    the map :class:`~catts_graph.relevance.ClipRelevance` draws, or ``softmax``."""
    grounding_scale: float = 20.0
    """Inverse temperature of the ``softmax`` map."""


def clip_organism_path() -> Path:
    """The shipped CLIP organism's folder."""
    from catts_graph.organism.checkpoint import CHECKPOINTS

    return CHECKPOINTS / "clip"


def build_clip_organism(config: ClipOrganismConfig) -> Any:
    """The ``open_clip.CLIP`` of ``config``, its weights random in ``config.seed``."""
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
        raise FileNotFoundError(f"no CLIP organism at {str(folder)!r}; build it with `catts train clip`")
    config = ClipOrganismConfig(**json.loads(manifest.read_text())["config"])
    model = build_clip_organism(config)
    state = {key: value.to(torch.float32) for key, value in load_file(folder / "model.safetensors").items()}
    model.load_state_dict(state)
    return model.eval(), open_clip.get_tokenizer(TOKENIZER, context_length=config.context_length)


def clip_organism(path: str | Path | None = None, *, device: str = "cpu") -> Any:
    """The CLIP organism as a :class:`~catts_graph.relevance.ClipRelevance`: relevance maps for
    CDRL's noise, and CLIPScore (call it with images and texts) for the step signals."""
    from catts_graph.relevance import ClipRelevance

    model, tokenizer = load_clip_organism(path)
    return ClipRelevance(model, tokenizer, device=device)
