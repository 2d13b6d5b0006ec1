"""The synthetic benchmark: deterministic, disjoint splits, every kind, answers right by construction."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from catts_graph.eval.datasets import BENCHMARKS, Item, load_benchmark
from catts_graph.eval.synthetic import (
    COLOURS,
    HARD_LEVEL,
    IMAGE_SIZE,
    KINDS,
    LEVELS,
    MIXED_LEVELS,
    POSITIONS,
    Digit,
    Scene,
    Shape,
    answer_of,
    describe_scene,
    load_synthetic,
    make_question,
    render,
)
from catts_graph.images import decode_image, read_reference


def test_same_seed_same_items_in_another_process() -> None:
    items = load_synthetic("test", limit=10)
    assert load_synthetic("test", limit=10) == items
    code = (
        "from catts_graph.eval.synthetic import load_synthetic;"
        "print(repr([(i.question, i.answer, i.images[0][-40:]) for i in load_synthetic('test', limit=10)]))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == repr([(i.question, i.answer, i.images[0][-40:]) for i in items])
    assert load_synthetic("test", limit=10, seed=1) != items


def test_an_item_does_not_depend_on_how_many_were_asked() -> None:
    assert load_synthetic("validation", limit=12)[:5] == load_synthetic("validation", limit=5)


def test_splits_are_disjoint() -> None:
    scenes = {
        split: {repr((q.question, q.scene)) for q in (make_question(split, i) for i in range(400))}
        for split in ("train", "validation", "test")
    }
    assert not scenes["train"] & scenes["test"]
    assert not scenes["train"] & scenes["validation"]
    assert not scenes["validation"] & scenes["test"]


def test_every_kind_and_level_is_present_and_balanced() -> None:
    questions = [make_question("test", i) for i in range(300)]
    kinds = Counter(q.kind for q in questions)
    assert set(kinds) == set(KINDS) and set(kinds.values()) == {60}
    # The mix draws levels 1-3; the hard level is only ever asked for.
    assert {(q.kind, q.level) for q in questions} == {(k, lv) for k in KINDS for lv in MIXED_LEVELS}
    assert (*MIXED_LEVELS, HARD_LEVEL) == LEVELS
    assert {q.options is None for q in questions} == {True, False}  # numeric and multiple choice


@pytest.mark.parametrize("level", [None, HARD_LEVEL])
def test_answers_are_right_by_construction(level: int | None) -> None:
    """Recount each answer from the scene description, independently of the generator."""
    for index in range(250):
        q = make_question("train", index, level=level)
        shapes = q.scene.shapes
        if q.kind == "colour":
            (only,) = [s for s in shapes if s.shape == q.question.split()[-1].rstrip("?")]
            assert q.options[ord(q.answer) - 65] == only.colour
        elif q.kind == "count":
            colour, shape = q.question.split()[2:4]
            assert int(q.answer) == sum(s.colour == colour and s.shape + "s" == shape for s in shapes)
        elif q.kind == "compare":
            first, second = q.question.split()[3], q.question.split()[6]
            more = sum(s.colour == first for s in shapes) > sum(s.colour == second for s in shapes)
            assert q.options[ord(q.answer) - 65] == ("yes" if more else "no")
        elif q.kind == "position":
            colour, shape = q.question.rstrip("?").split()[-2:]
            (only,) = [s for s in shapes if s.colour == colour and s.shape == shape]
            row = "top" if only.y < IMAGE_SIZE / 2 else "bottom"
            column = "left" if only.x < IMAGE_SIZE / 2 else "right"
            assert q.options[ord(q.answer) - 65] == f"{row} {column}"
            assert q.options == POSITIONS
        else:
            assert int(q.answer) == sum(d.value for d in q.scene.digits)
        assert answer_of(q.kind, q.scene, q.target, q.options) == q.answer


def test_shapes_do_not_overlap_and_are_drawn_in_their_colour() -> None:
    for index in range(60):
        q = make_question("test", index)
        pixels = np.asarray(render(q.scene))
        assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        for i, a in enumerate(q.scene.shapes):
            for b in q.scene.shapes[i + 1 :]:
                assert (a.x - b.x) ** 2 + (a.y - b.y) ** 2 >= (a.r + b.r) ** 2
            if not q.scene.lines:  # the centre pixel has the shape's colour
                assert tuple(pixels[a.y + a.r // 3, a.x]) == COLOURS[a.colour]


def test_loads_through_the_harness() -> None:
    assert "synthetic" in BENCHMARKS
    items = load_benchmark("synthetic", split="test", limit=20)
    assert len(items) == 20 and all(isinstance(i, Item) for i in items)
    assert {i.benchmark for i in items} == {"synthetic"}
    assert {i.category for i in items} == set(KINDS)
    assert {i.answer_type for i in items} == {"choice", "integer"}
    image = decode_image(read_reference(items[0].images[0], name="item"), name="item")
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert items[0].graph_input()["image"].startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="split"):
        load_benchmark("synthetic", split="testmini")
    with pytest.raises(ValueError, match="generated"):
        load_benchmark("synthetic", source="/tmp")


def test_filters_keep_ids_of_the_full_split() -> None:
    digits = load_synthetic("test", limit=6, kinds=["digits"], levels=[1])
    assert {i.category for i in digits} == {"digits"} and {i.metadata["level"] for i in digits} == {1}
    full = {i.id: i for i in load_synthetic("test", limit=200)}
    assert all(full[i.id] == i for i in digits)


def test_describe_scene_lists_objects_in_reading_order() -> None:
    scene = Scene(
        shapes=(
            Shape("square", "blue", 180, 180, 20),  # bottom right
            Shape("circle", "red", 150, 40, 20),  # top right
            Shape("triangle", "green", 30, 30, 20),  # top left
            Shape("circle", "yellow", 80, 60, 20),  # top left, further right
        ),
        lines=((0, 0, 10, 10),),
    )
    assert describe_scene(scene) == (
        "triangle green top left; circle yellow top left; circle red top right; square blue bottom right."
    )
    assert describe_scene(Scene(digits=(Digit(7, 170, 100), Digit(3, 50, 100)))) == "digits 3 and 7."
    assert describe_scene(Scene(digits=(Digit(5, 100, 100),))) == "digit 5."
    assert describe_scene(Scene()) == "nothing."


def test_the_description_determines_every_answer_it_could_support() -> None:
    """Counting the described objects gives the gold count: the reasoning the organism learns is
    enough to answer, so nothing it is taught contradicts the image."""
    for index in range(0, 200, 5):
        question = make_question("test", index + 1, kind="count")
        text = describe_scene(question.scene)
        wanted = f"{question.target['shape']} {question.target['colour']} "
        assert text.count(wanted) == int(question.answer)


def test_describe_focus_lists_the_asked_objects_numbered() -> None:
    from catts_graph.eval.synthetic import Question, describe_focus

    scene = Scene(
        shapes=(
            Shape("circle", "red", 180, 180, 20),  # bottom right
            Shape("circle", "red", 30, 30, 20),  # top left
            Shape("square", "blue", 150, 40, 20),  # top right
        )
    )

    def ask(kind: str, target: dict) -> str | None:
        return describe_focus(Question(kind, 1, "?", None, "0", scene, target))

    assert ask("count", {"colour": "red", "shape": "circle"}) == (
        "red circles: 1 circle red top left; 2 circle red bottom right."
    )
    assert ask("count", {"colour": "green", "shape": "circle"}) == "green circles: none."
    assert ask("colour", {"shape": "square"}) == "square: 1 square blue top right."
    assert ask("position", {"colour": "blue", "shape": "square"}) == "blue square: 1 square blue top right."
    assert ask("compare", {"colours": ["blue", "green"]}) == (
        "blue shapes: 1 square blue top right. green shapes: none."
    )
    assert describe_focus(Question("digits", 1, "?", None, "3", Scene(digits=(Digit(3, 9, 9),)), {})) is None


def test_the_focus_line_ends_on_the_answer_for_counts_and_comparisons() -> None:
    """The last number of a count's focus list is the gold count; a comparison's lists compare as
    its gold answer says: the step the organism writes before answering is enough to answer."""
    from catts_graph.eval.synthetic import describe_focus

    for index in range(0, 300, 3):
        question = make_question("test", index, kind="count")
        focus = describe_focus(question)
        numbers = [int(n) for n in re.findall(r"(?:: |; )(\d+) ", focus)]
        assert numbers == list(range(1, len(numbers) + 1))
        assert (numbers[-1] if numbers else 0) == int(question.answer), focus
        question = make_question("test", index, kind="compare")
        sizes = [len(re.findall(r"(?:: |; )(\d+) ", part)) for part in describe_focus(question).split(". ")]
        assert ("yes" if sizes[0] > sizes[1] else "no") == question.options["AB".index(question.answer)]


def test_levels_1_to_3_are_those_the_organisms_were_measured_on() -> None:
    """The mixed regime and every explicit level 1-3, in every split and two seeds, exactly as the
    generator drew them before the hard level existed (the hash of main's questions, commit e08a117):
    the organisms' documented numbers depend on these scenes."""
    questions = [
        make_question(split, i, seed=seed, level=level)
        for split in ("train", "validation", "test")
        for seed in (0, 1)
        for level in (None, 1, 2, 3)
        for i in range(25)
    ]
    digest = hashlib.sha256(repr(questions).encode()).hexdigest()
    assert digest == "51b22af37b78f9c144287fe5e246c700eeefda11ffa1c85b48731987148e4363"


def test_the_hard_level_is_deterministic_and_its_own_stream() -> None:
    items = load_synthetic("validation", limit=10, level=HARD_LEVEL)
    assert load_synthetic("validation", limit=10, level=HARD_LEVEL) == items
    assert [i.id for i in items[:2]] == ["validation-0-level4", "validation-1-level4"]
    assert {i.metadata["level"] for i in items} == {HARD_LEVEL}
    assert {i.category for i in items} == set(KINDS)
    code = (
        "from catts_graph.eval.synthetic import load_synthetic;"
        "print(repr([(i.question, i.answer, i.images[0][-40:]) for i in load_synthetic('validation', "
        "limit=10, level=4)]))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == repr([(i.question, i.answer, i.images[0][-40:]) for i in items])
    assert load_synthetic("validation", limit=10, level=HARD_LEVEL, seed=1) != items
    assert make_question("test", 3, level=HARD_LEVEL) == make_question("test", 3, level=HARD_LEVEL)
    with pytest.raises(ValueError, match="level 5"):
        load_synthetic("test", limit=2, level=5)
    with pytest.raises(ValueError, match="the hard level: level=4"):
        load_synthetic("test", limit=2, levels=[HARD_LEVEL])
    with pytest.raises(ValueError, match="filters the mix"):
        load_synthetic("test", limit=2, levels=[3], level=HARD_LEVEL)


def test_the_hard_level_has_more_smaller_objects_close_counts_and_clutter() -> None:
    questions = [make_question("test", i, level=HARD_LEVEL) for i in range(200)]
    level_3 = [make_question("test", i, level=3) for i in range(200)]
    for q in questions:
        if q.kind == "digits":
            assert len(q.scene.digits) == 2 and all(0 <= d.value <= 9 for d in q.scene.digits)
            assert len(q.scene.lines) == 6
            continue
        assert len(q.scene.shapes) == 8 and len(q.scene.lines) == 6
        assert all(10 <= s.r <= 14 for s in q.scene.shapes)
        if q.kind == "compare":
            first, second = (sum(s.colour == c for s in q.scene.shapes) for c in q.target["colours"])
            assert abs(first - second) == 1
    radii = [s.r for q in questions for s in q.scene.shapes]
    radii_3 = [s.r for q in level_3 for s in q.scene.shapes]
    assert max(radii) < sum(radii_3) / len(radii_3)
    answers = Counter(q.answer for q in questions if q.kind == "compare")
    assert set(answers) == {"A", "B"} and min(answers.values()) >= 15


@pytest.mark.parametrize("level", [None, 1, HARD_LEVEL])
def test_an_item_id_names_its_question_at_its_level(level: int | None) -> None:
    """The reproduction rebuilds a question from its item's id: mixed ids and level ids alike."""
    from catts_graph.eval.synthetic import item_id, item_question, parse_item_id

    for item in load_synthetic("validation", limit=3, seed=2, level=level):
        split, index, parsed = parse_item_id(item.id)
        assert (split, parsed) == ("validation", level) and item_id(split, index, parsed) == item.id
        question = item_question(item.id, seed=2)
        assert (question.question, question.answer, question.level) == (
            item.question,
            item.answer,
            item.metadata["level"],
        )


@pytest.mark.parametrize("text", ["test", "test-x", "dev-3", "test-3-level9", "test-3-levelx", "test-3-4"])
def test_a_malformed_item_id_is_refused_by_name(text: str) -> None:
    from catts_graph.eval.synthetic import parse_item_id

    with pytest.raises(ValueError, match=f"item id {text!r}"):
        parse_item_id(text)
