"""The model organism the library ships: small Qwen2.5-VLs trained from scratch on the synthetic
benchmark, and what the library needs to run them.

Four checkpoints ship in ``catts_graph/organism/checkpoints/``: ``base`` (the offline default base
model of ``catts run``), ``expert`` (larger), ``base-cdrl`` (the base after CDRL) and ``clip`` (the
CLIP organism CDRL steers its noise with). The models answer :mod:`catts_graph.eval.synthetic`
questions under their own short prompt (declared in the checkpoint's ``catts.json``): a description
of the scene, then ``\\boxed{X}``. Neither speaks the expert prompts' JSON: the expert roles are
played by :class:`~catts_graph.organism.expert.OrganismExpert` (Voter and Critic from the model's
own probabilities and answers; no Planner), around the base organism itself or the larger one.

Here, what the library runs: :mod:`~catts_graph.organism.checkpoint` (where the checkpoints lie, the
format they are written in), :mod:`~catts_graph.organism.language` (the prompt, the reply, the
vocabulary), :mod:`~catts_graph.organism.steps` (the step truth and the expert's critique),
:mod:`~catts_graph.organism.expert` and :mod:`~catts_graph.organism.clip` (loading the CLIP
organism). Training the organisms, tuning on them and reproducing ``docs/organism.md`` is an
application on top of the library: :mod:`catts_experiments` (``catts train organism``,
``catts reproduce``, ...).
"""

from __future__ import annotations

from typing import Any

from catts_graph.organism.checkpoint import CDRL_ORGANISM, SHIPPED, organism_path

__all__ = ["CDRL_ORGANISM", "SHIPPED", "organism_model", "organism_path"]


def organism_model(which: str = "base") -> Any:
    """The shipped organism model ``which`` as a :class:`~catts_graph.models.TransformersVLM`."""
    from catts_graph.models import TransformersVLM

    path = organism_path(which)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no organism checkpoint at {str(path)!r}; build it with `catts train organism --which {which}`"
        )
    return TransformersVLM.from_pretrained(path, device="cpu")
