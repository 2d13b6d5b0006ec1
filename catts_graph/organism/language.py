"""The organisms' language: the prompt they are asked in, the reply they are taught to give, and
their word-level vocabulary (the pieces of the synthetic benchmark's language).

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
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catts_graph.eval.synthetic import Question

__all__ = [
    "ANSWER_PROMPT",
    "MAX_NEW_TOKENS",
    "answer_text",
    "organism_prompt",
    "organism_words",
    "reply_text",
    "spoken_answer",
]


ANSWER_PROMPT = "answer_short"
"""The prompt template the organism models are trained on and declare in ``catts.json``."""

MAX_NEW_TOKENS = 256
"""Enough for an organism's longest scene description and the boxed answer."""

_SPECIAL = re.compile(r"<\|[a-z_]+\|>")


def organism_words(items_per_kind_and_level: int = 200) -> list[str]:
    """Every multi-byte pre-split piece of the organisms' prompts and replies, most frequent first
    (ties alphabetical), from ``items_per_kind_and_level`` training questions of each kind and level.

    Deterministic: the questions are the train split's, seeded.
    """
    from tokenizers import pre_tokenizers

    from catts_graph.eval.synthetic import KINDS, MIXED_LEVELS, make_question

    split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    counts: Counter[str] = Counter()

    def add(text: str) -> None:
        for part in _SPECIAL.split(text):
            counts.update(piece for piece, _ in split.pre_tokenize_str(part) if len(piece) > 1)

    index = 0
    for kind in KINDS:
        for level in MIXED_LEVELS:
            for _ in range(items_per_kind_and_level):
                question = make_question("train", index, kind=kind, level=level)
                index += 1
                options = list(question.options) if question.options else None
                add(f"user\n{organism_prompt(question.question, options)}\nassistant\n")
                add(reply_text(question))
    return [piece for piece, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def answer_text(answer: str) -> str:
    """The final answer as the organism writes it."""
    return f"\\boxed{{{answer}}}"


def spoken_answer(question: Question) -> str:
    """The answer as the organism says it: the chosen option's *text* for a multiple-choice
    question (``red``, ``top left``), the number otherwise.

    Why not the letter: a letter is a lookup in the prompt's option list, which a model this small
    learns slowly (measured with letters: on level-1 colour questions the description was right in
    36% of items, the boxed letter in 18%). The answer extractor maps an option's text to its letter
    (:func:`catts_graph.answers.option_letter`), as benchmark harnesses do for real models.
    """
    if question.options:
        return question.options["ABCDEFGH".index(question.answer)]
    return question.answer


def reply_text(question: Question) -> str:
    """The whole reply the organism is trained to give, one step a line: what it sees
    (:func:`~catts_graph.eval.synthetic.describe_scene`), the objects the question is about
    (:func:`~catts_graph.eval.synthetic.describe_focus`; not for digit questions), the boxed answer.
    """
    from catts_graph.eval.synthetic import describe_focus, describe_scene

    focus = describe_focus(question)
    lines = [
        describe_scene(question.scene),
        *([focus] if focus else []),
        answer_text(spoken_answer(question)),
    ]
    return "\n".join(lines)


def organism_prompt(question: str, options: Sequence[str] | None) -> str:
    """The user turn the organism models learned (after the image): ``prompts/answer_short.txt``."""
    from catts_graph.prompts import format_options, render_prompt

    return render_prompt(ANSWER_PROMPT, question=question, options=format_options(options))
