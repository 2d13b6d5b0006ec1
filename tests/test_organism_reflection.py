"""The organism's reflection: critiques in its language, the wrong step they name, the training
examples, and the expert organism's critique."""

from __future__ import annotations

import json
import random

import pytest

from catts_experiments.reflection import (
    REFLECTION_PROMPT,
    ReflectionBatches,
    ReflectionConfig,
    corrupted_step,
    critique_message,
    named_step,
    reflection_prompt_text,
)
from catts_graph.eval.synthetic import COLOURS, POSITIONS, SHAPES, describe_scene, make_question
from catts_graph.organism.language import reply_text
from catts_graph.organism.steps import critique_text, first_wrong_step, reference_steps, reply_steps


def test_a_critique_names_one_step_and_reads_back() -> None:
    from catts_graph.experts.critic import parse_critique

    assert critique_text("Circle red top left;") == "wrong: circle red top left."
    # What the organism trains on is what the graph's Critic hands to Self-Reflection.
    message = critique_message("wrong: circle red top left.")
    assert message == "wrong: circle red top left.\nVerdict: incorrect"
    assert message == parse_critique(
        json.dumps({"critique": "wrong: circle red top left.", "verdict": "incorrect"})
    )
    assert critique_message("wrong: none.", "correct") == "wrong: none.\nVerdict: correct"
    assert critique_text(None) == "wrong: none."
    assert named_step("wrong: circle red top left.") == "circle red top left"
    assert named_step("wrong: none.") is None and named_step("The answer is 3.") is None


def test_the_first_wrong_step_is_the_first_the_reference_lacks() -> None:
    reference = [
        "circle red top left",
        "square blue bottom right",
        "red circles: 1 circle red top left",
        "\\boxed{1}",
    ]
    right = "circle red top left; square blue bottom right.\nred circles: 1 circle red top left.\n\\boxed{1}"
    assert first_wrong_step(right, reference) is None
    misread = (
        "circle red top left; square green bottom right.\nred circles: 1 circle red top left.\n\\boxed{1}"
    )
    assert first_wrong_step(misread, reference) == "square green bottom right"
    # A step said twice matches its reference once: the repeat is the wrong one.
    twice = "circle red top left; circle red top left.\n\\boxed{1}"
    assert first_wrong_step(twice, reference) == "circle red top left"
    wrong_answer = (
        "circle red top left; square blue bottom right.\nred circles: 1 circle red top left.\n\\boxed{2}"
    )
    assert first_wrong_step(wrong_answer, reference) == "\\boxed{2}"
    question = make_question("validation", 3)
    assert first_wrong_step(reply_text(question), reference_steps(question)) is None
    assert reply_steps(reply_text(question)) == reference_steps(question)


def test_a_corruption_changes_one_attribute_of_a_described_object() -> None:
    rng = random.Random(0)
    seen = 0
    for index in range(60):
        question = make_question("train", index)
        step = corrupted_step(question, rng)
        if not question.scene.shapes:
            assert step is None
            continue
        seen += 1
        shape, colour, place = step.split(" ", 2)
        assert shape in SHAPES and colour in COLOURS and place in POSITIONS
        # It matches no object of the scene, and differs from one object in exactly one field.
        objects = [(s.shape, s.colour, s.quadrant) for s in question.scene.shapes]
        assert (shape, colour, place) not in objects or describe_scene(question.scene).count(step) > 0
        assert any(sum(a != b for a, b in zip((shape, colour, place), o, strict=True)) == 1 for o in objects)
    assert seen > 30


def test_reflection_batches_mix_answer_and_reflection_examples() -> None:
    from transformers import AutoProcessor

    from catts_graph.organism import organism_path

    processor = AutoProcessor.from_pretrained(organism_path("base"))
    config = ReflectionConfig(batch_size=8, reflection_share=0.5, own_share=1.0, agree_share=0.0)
    pool = [{"index": 1_000_000, "critique": "wrong: circle red top left."}]
    batches = ReflectionBatches(processor, config, pool, side=112)
    batch = batches.next()
    texts = processor.batch_decode(batch["input_ids"])
    assert sum("wrong: circle red top left.\nVerdict: incorrect" in text for text in texts) == 4
    question = make_question("train", 1_000_000)
    for text, labels in zip(texts, batch["labels"], strict=True):
        target = processor.tokenizer.decode(labels[labels != -100])
        assert target.endswith("<|im_end|>")  # the loss is on the reply only
        if "wrong:" in text:
            assert target == reply_text(question) + "<|im_end|>"
    prompt = reflection_prompt_text(question.question, list(question.options or []) or None, "wrong: none.")
    assert prompt.startswith(question.question) and prompt.rstrip().endswith("wrong: none.")


def test_the_expert_organism_names_the_step_its_reading_lacks() -> None:
    from catts_graph.eval.synthetic import load_synthetic
    from catts_graph.images import decode_image, read_reference
    from catts_graph.organism.expert import organism_expert

    expert = organism_expert()
    index = next(k for k in range(10) if make_question("test", k).scene.shapes)
    item = load_synthetic("test", limit=index + 1)[index]
    question = make_question("test", index)
    image = decode_image(read_reference(item.images[0], name=item.id), name=item.id)
    options = list(question.options) if question.options else None
    truth = reply_text(question)
    agreeing = json.loads(expert._critique([image], question.question, options, truth))
    assert agreeing == {"critique": "wrong: none.", "verdict": "correct"}  # the expert reads it right
    # Misread the first object's colour and box another answer: the critique names that object.
    shape, colour, place = reference_steps(question)[0].split(" ", 2)
    other = next(c for c in COLOURS if c != colour)
    misread = truth.replace(f"{shape} {colour} {place}", f"{shape} {other} {place}", 1)
    misread = misread[: misread.index("\\boxed{")] + "\\boxed{nothing}"
    reply = json.loads(expert._critique([image], question.question, options, misread))
    assert reply == {"critique": f"wrong: {shape} {other} {place}.", "verdict": "incorrect"}


def test_the_reflection_prompt_is_shipped() -> None:
    from catts_graph.prompts import load_prompt

    assert "$critique" in load_prompt(REFLECTION_PROMPT).template
    with pytest.raises(Exception, match="critique"):
        reflection_prompt_text("q", None, critique=None)  # type: ignore[arg-type]
    text = reflection_prompt_text("How many?", None, "wrong: none.")
    assert text.splitlines()[0] == "How many?" and text.rstrip().endswith("wrong: none.")
