"""Confidence statements: the pools, the forward mapping, and the backward mapping with the real
packaged sentence encoder (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import numpy as np
import pytest

from catts_graph.confidence import CLAUSE_CUT, split_steps
from catts_graph.statements import (
    STATEMENTS,
    StatementReader,
    exact_level,
    insert_statements,
    split_statement,
)


@pytest.fixture(scope="module")
def encoder():
    from catts_graph.models.encoders import MiniLMEncoder

    return MiniLMEncoder()


def test_five_pools_of_distinct_phrases():
    assert sorted(STATEMENTS) == [1, 2, 3, 4, 5]
    phrases = [p for pool in STATEMENTS.values() for p in pool]
    assert len(set(phrases)) == len(phrases) and all("," not in p for p in phrases)


def test_insert_statements_by_hand_and_read_them_back():
    text = "circle red top left; square blue bottom right.\n\\boxed{red}"
    spans = split_steps(text, CLAUSE_CUT)[:2]
    out = insert_statements(text, spans, [5, 2], seed=0)
    first, second = STATEMENTS[5], STATEMENTS[2]
    head, rest = out.split(";", 1)
    assert head.startswith("circle red top left, ") and head[len("circle red top left, ") :] in first
    middle = rest.split(".\n")[0].strip()
    assert middle.startswith("square blue bottom right, ") and middle.split(", ", 1)[1] in second
    assert out.endswith(".\n\\boxed{red}")
    steps = [out[s:e] for s, e in split_steps(out, CLAUSE_CUT)[:2]]
    read = [split_statement(step) for step in steps]
    assert [content for content, _ in read] == ["circle red top left;", "square blue bottom right."]
    assert [exact_level(phrase) for _, phrase in read] == [5, 2]
    assert insert_statements(text, spans, [5, 2], seed=0) == out  # seeded


def test_insert_statements_refuses_bad_levels_and_spans():
    with pytest.raises(ValueError, match="level=6"):
        insert_statements("a.", [(0, 2)], [6])
    with pytest.raises(ValueError, match="levels: got 1 for 2"):
        insert_statements("a. b.", [(0, 2), (3, 5)], [1])
    with pytest.raises(ValueError, match="out of order"):
        insert_statements("a. b.", [(3, 5), (0, 2)], [1, 1])


def test_split_statement_without_a_comma():
    assert split_statement("circle red top left;") == ("circle red top left;", None)


def test_exact_level_ignores_case_space_and_punctuation():
    assert exact_level("  With TOTAL  certainty. ") == 5
    assert exact_level("and maybe") is None


def test_the_encoder_reads_paraphrases_and_leaves_ambiguous_phrases_unparsed(encoder):
    reader = StatementReader(encoder, margin=0.05)
    assert reader.level("with total certainty") == 5  # exact
    assert reader.level("and I am absolutely certain of this") == 5
    assert reader.level("but this is just a guess") == 1
    assert reader.level("banana") is None and reader.level("the sky is blue") is None
    assert StatementReader(encoder, margin=1.9).level("and I am absolutely certain of this") is None
    assert StatementReader().level("and I am absolutely certain of this") is None  # no encoder
    assert reader.level(None) is None


def test_encoder_similarity_is_the_cosine_of_unit_embeddings(encoder):
    rows = encoder.encode(["a red circle", "a blue square", "a red circle"])
    assert np.linalg.norm(rows, axis=1) == pytest.approx([1, 1, 1], abs=1e-5)
    sims = encoder.similarity("a red circle", ["a blue square", "a red circle"])
    assert sims == pytest.approx([float(rows[0] @ rows[1]), 1.0], abs=1e-5)
