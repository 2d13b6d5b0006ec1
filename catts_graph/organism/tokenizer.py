"""The organisms' word-level vocabulary: the pieces of the synthetic benchmark's language.

A byte-level tokenizer spends a token on every byte: a scene description is ~150 tokens, and the
organisms' training and sampling pay for each. The generator's language is tiny (colours, shapes,
places, digits, a few question templates), so the organisms' tokenizer adds every piece of it as
one token on top of the byte alphabet (:func:`~catts_graph.models.tiny.build_tiny_qwen25vl`'s
``words``): measured, a training example went from 212 to 73 tokens. Text outside the language
still encodes, byte by byte. The vocabulary is saved with each checkpoint (``tokenizer.json``), so
a checkpoint never depends on this module again.

The pieces are those of the GPT-2-style byte-level pre-split, so a word carries its leading space
(``"Ġcircle"``) and ``\\boxed{...}`` decodes back exactly.
"""

from __future__ import annotations

import re
from collections import Counter

__all__ = ["organism_words"]

_SPECIAL = re.compile(r"<\|[a-z_]+\|>")


def organism_words(items_per_kind_and_level: int = 200) -> list[str]:
    """Every multi-byte pre-split piece of the organisms' prompts and replies, most frequent first
    (ties alphabetical), from ``items_per_kind_and_level`` training questions of each kind and level.

    Deterministic: the questions are the train split's, seeded.
    """
    from tokenizers import pre_tokenizers

    from catts_graph.eval.synthetic import KINDS, LEVELS, make_question
    from catts_graph.organism.train import organism_prompt, reply_text

    split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    counts: Counter[str] = Counter()

    def add(text: str) -> None:
        for part in _SPECIAL.split(text):
            counts.update(piece for piece, _ in split.pre_tokenize_str(part) if len(piece) > 1)

    index = 0
    for kind in KINDS:
        for level in LEVELS:
            for _ in range(items_per_kind_and_level):
                question = make_question("train", index, kind=kind, level=level)
                index += 1
                options = list(question.options) if question.options else None
                add(f"user\n{organism_prompt(question.question, options)}\nassistant\n")
                add(reply_text(question))
    return [piece for piece, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
