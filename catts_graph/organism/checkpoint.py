"""The organism checkpoint: where the shipped ones lie, what their ``catts.json`` says, how one is
written, and how a training example is encoded for it.

The library reads the shipped checkpoints (:func:`organism_path`); the applications above it write
them: :mod:`catts_experiments` trains the organisms and their reflection, ``catts_training``'s
MMBoundary pre-trains statements on them. All of them encode an example with
:func:`encode_examples` and save with :func:`save_checkpoint`, so a checkpoint reads the same
whoever wrote it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from catts_graph.organism.language import ANSWER_PROMPT

__all__ = [
    "CDRL_ORGANISM",
    "CHECKPOINTS",
    "CHECKPOINT_SETTINGS",
    "SHIPPED",
    "encode_examples",
    "organism_path",
    "save_checkpoint",
    "weights_checksum",
]

CHECKPOINT_SETTINGS = {
    "answer_prompt": ANSWER_PROMPT,
    "reflection_prompt": ANSWER_PROMPT,
    "answer_format": "option_text",
}
"""``catts.json`` of an organism checkpoint as :func:`~catts_experiments.train.train_organism` writes
it. An organism trained from scratch never learned to read a critique, so its self-reflection is
answering again, greedily, under its own prompt (re-reading the image): the reflection template
gets only the question and options it asks for. The shipped base organism was then taught to read one
(:mod:`catts_experiments.reflection`) and declares ``reflection_prompt: reflection_short``.
``answer_format: option_text``: a multiple-choice answer is boxed as the option's text (checkpoints
trained before box the letter; :func:`~catts_graph.organism.expert.organism_expert` reads which)."""

CHECKPOINTS = Path(__file__).parent / "checkpoints"
"""Where the shipped organism models live (inside the package, so they ship in the wheel)."""


CHECKPOINT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "catts.json",
    "chat_template.jinja",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
"""The files of a shipped organism's checkpoint (its ``organism.json`` record aside)."""


CDRL_ORGANISM = "base-cdrl"
"""The shipped base organism after CDRL (``catts ship cdrl``), beside the base it started from."""

SHIPPED: tuple[str, ...] = ("base", "expert", CDRL_ORGANISM)
"""Every shipped organism model folder."""


def organism_path(which: str) -> Path:
    """The shipped checkpoint folder of organism model ``which`` (``base``, ``expert`` or
    ``base-cdrl``)."""
    if which not in SHIPPED:
        raise ValueError(f"which={which!r}: expected one of {list(SHIPPED)}")
    return CHECKPOINTS / which


def weights_checksum(folder: str | Path) -> str:
    """SHA-256 of a checkpoint folder's ``model.safetensors``: which weights a derived model
    (the CDRL organism) started from."""
    import hashlib

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {str(folder)!r}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_examples(processor: Any, rows: list[tuple[str, str, Any]], side: int) -> dict[str, Any]:
    """A training batch of ``(user prompt, reply, scene)`` rows: the scene rendered at ``side``
    pixels square before the prompt, labels on the reply and its closing ``<|im_end|>`` only."""
    import torch

    from catts_graph.eval.synthetic import render

    texts, images, replies = [], [], []
    for prompt, reply_body, scene in rows:
        reply = reply_body + "<|im_end|>"
        user = [{"type": "image"}, {"type": "text", "text": prompt}]
        head = processor.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
        )
        texts.append(head + reply)
        replies.append(reply)
        images.append(render(scene).resize((side, side), _bicubic()))
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    tokenizer = processor.tokenizer
    labels = torch.full_like(inputs["input_ids"], -100)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    for row, (reply, length) in enumerate(zip(replies, lengths, strict=True)):
        n = len(tokenizer(reply, add_special_tokens=False)["input_ids"])
        labels[row, length - n : length] = inputs["input_ids"][row, length - n : length]
    return {**inputs, "labels": labels}


def _bicubic() -> Any:
    from PIL import Image

    return Image.Resampling.BICUBIC


@contextlib.contextmanager
def replaced_folder(target: str | Path) -> Iterator[Path]:
    """A fresh staging folder beside ``target`` to write into; when the block ends without an
    error it replaces ``target`` whole (a reader never sees half a checkpoint), else it is removed
    and ``target`` is left as it was.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with replaced_folder(root / "ckpt") as staging:
    ...     _ = (staging / "a.txt").write_text("new")
    >>> sorted(p.name for p in (root / "ckpt").iterdir()), sorted(p.name for p in root.iterdir())
    (['a.txt'], ['ckpt'])
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def save_checkpoint(
    model: Any,
    processor: Any,
    target: Path,
    manifest: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> None:
    """Write model (bfloat16 safetensors), processor, tokenizer, chat template and ``catts.json``
    (``settings``, default :data:`CHECKPOINT_SETTINGS`), replacing ``target``."""
    import torch

    with replaced_folder(target) as staging:
        # bfloat16 on disk halves the shipped size; loading on CPU casts back to float32.
        model.to(torch.bfloat16).save_pretrained(staging, safe_serialization=True)
        model.to(torch.float32)
        processor.save_pretrained(staging)
        (staging / "organism.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / "catts.json").write_text(json.dumps(settings or CHECKPOINT_SETTINGS, indent=2) + "\n")
