"""Statement words as whole tokens of a word-level model (catts_training/mmboundary/vocabulary.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catts_graph.organism import organism_path
from catts_graph.statements import STATEMENTS
from catts_training.mmboundary.vocabulary import extend_vocabulary, new_pieces, statement_words


def test_statement_words_are_every_pool_word_once() -> None:
    words = statement_words()
    assert len(words) == len(set(words))
    assert {w for pool in STATEMENTS.values() for phrase in pool for w in phrase.split()} == set(words)


def test_only_missing_pieces_are_added_with_their_leading_space() -> None:
    data = {"model": {"vocab": {"Ġand": 5, "Ġsure": 6}}}
    assert new_pieces(data, ["and", "sure", "certain", "certain"]) == ["Ġcertain"]


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extend_vocabulary(organism_path("base"), tmp_path_factory.mktemp("vocab") / "base")


def test_a_statement_costs_one_token_per_word_and_nothing_else_changes(extended: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from catts_graph.eval.synthetic import make_question
    from catts_graph.organism.language import reply_text

    before = AutoProcessor.from_pretrained(organism_path("base")).tokenizer
    after = AutoProcessor.from_pretrained(extended).tokenizer
    statement = ", and I am absolutely certain"
    ids = after(statement, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 + 5  # the comma, then one token per word
    assert len(before(statement, add_special_tokens=False)["input_ids"]) > 2 * len(ids)
    assert after.decode(ids) == statement
    reply = reply_text(make_question("test", 3))
    assert (
        after(reply, add_special_tokens=False)["input_ids"]
        == before(reply, add_special_tokens=False)["input_ids"]
    )
    manifest = json.loads((extended / "vocabulary.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(extended, dtype=torch.float32)
    original = AutoModelForImageTextToText.from_pretrained(organism_path("base"), dtype=torch.float32)
    grown = model.get_input_embeddings().weight
    old = original.get_input_embeddings().weight
    assert grown.shape[0] == manifest["vocab_size"] > old.shape[0]
    assert torch.equal(grown[: old.shape[0]], old)
    # Every new row is the mean of the old ones, in the input embeddings and in the output layer.
    assert torch.allclose(grown[old.shape[0] :], old.mean(dim=0).expand_as(grown[old.shape[0] :]))
    head, old_head = model.get_output_embeddings().weight, original.get_output_embeddings().weight
    assert torch.allclose(
        head[old_head.shape[0] :], old_head.mean(dim=0).expand_as(head[old_head.shape[0] :])
    )


def test_the_extended_model_answers_as_before(extended: Path) -> None:
    from catts_graph.eval.synthetic import make_question, render
    from catts_graph.models import TransformersVLM
    from catts_graph.task import base_prompt

    question = make_question("test", 7)
    replies = []
    for path in (organism_path("base"), extended):
        vlm = TransformersVLM.from_pretrained(path, device="cpu")
        prompt = base_prompt(question.question, question.options, vlm)
        (sample,) = vlm.sample([render(question.scene)], prompt, 1, temperature=0.0, max_new_tokens=96)
        replies.append(sample.text)
    assert replies[0] == replies[1]


def test_a_reused_folder_and_a_subword_tokenizer(
    extended: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    stamp = (extended / "model.safetensors").stat().st_mtime_ns
    assert extend_vocabulary(organism_path("base"), extended) == extended
    assert (extended / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="word-level tokenizers"):
        extend_vocabulary(tiny_model_dir, tmp_path / "tiny")
