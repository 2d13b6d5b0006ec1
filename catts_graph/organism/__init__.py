"""The model organism: small Qwen2.5-VLs trained here from scratch on the synthetic benchmark.

Two checkpoints ship in ``catts_graph/organism/checkpoints/``: ``base`` (the offline default base
model of ``catts run``) and ``expert`` (larger). Both answer :mod:`catts_graph.eval.synthetic`
questions under their own short prompt (declared in the checkpoint's ``catts.json``): a description
of the scene, then ``\\boxed{X}``. Neither speaks the expert prompts' JSON: the expert roles are
played by :class:`~catts_graph.organism.expert.OrganismExpert` (Voter and Critic from the model's
own probabilities and answers; no Planner), around the base organism itself or the larger one.

``catts organism train --which base|expert`` rebuilds a checkpoint; ``catts organism eval`` prints
its accuracy and confidence per question kind, clean or under noise; ``catts organism reproduce``
regenerates every number and figure of ``docs/organism.md``
(:mod:`catts_graph.organism.reproduce`).
"""

from __future__ import annotations

from typing import Any

from catts_graph.organism.train import CONFIGS, organism_path, train_organism

__all__ = [
    "CONFIGS",
    "organism_model",
    "organism_path",
    "train_organism",
]


def organism_model(which: str = "base") -> Any:
    """The shipped organism model ``which`` as a :class:`~catts_graph.models.TransformersVLM`."""
    from catts_graph.models import TransformersVLM

    path = organism_path(which)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no organism checkpoint at {str(path)!r}; build it with `catts organism train --which {which}`"
        )
    return TransformersVLM.from_pretrained(path, device="cpu")
