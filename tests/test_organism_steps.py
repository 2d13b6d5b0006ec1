"""Step ground truth on the organism: reference steps, multiset labelling, and step signals of a
real organism reply."""

from __future__ import annotations

import math

import pytest

from catts_experiments.step_calibration import sample_steps
from catts_graph.eval.synthetic import load_synthetic, make_question
from catts_graph.organism.language import reply_text
from catts_graph.organism.steps import label_steps, reference_steps
from catts_graph.step_confidence import StepCalibrator


def test_reference_steps_are_the_clauses_of_the_generator_reply():
    question = make_question("validation", 1, kind="count", level=3)
    assert reference_steps(question) == [
        "triangle yellow top left",
        "triangle yellow top left",
        "triangle yellow top right",
        "circle blue top right",
        "triangle purple top right",
        "triangle yellow bottom right",
        "yellow triangles: 1 triangle yellow top left",
        "2 triangle yellow top left",
        "3 triangle yellow top right",
        "4 triangle yellow bottom right",
        "\\boxed{4}",
    ]
    assert reply_text(question).endswith("\\boxed{4}")


def test_labels_match_each_reference_step_once_by_hand():
    reference = ["circle red top left", "circle red top left", "square blue bottom right", "\\boxed{2}"]
    steps = [
        "Circle red top left;",
        "circle red top left, and I am fairly sure of it;",
        "circle red top left;",  # a third one: the scene has two
        "triangle blue bottom right.",
        "\\boxed{2}",
    ]
    assert label_steps(steps, reference) == [True, True, False, False, True]


def test_empty_levels_take_the_overall_validation_accuracy():
    rows = [{"probability": 0.5}] * 8 + [{"probability": 0.9}] * 2
    calibrator = StepCalibrator.fit(rows, [True, False] * 4 + [True, True])
    assert 0 in calibrator.level_counts
    empty = calibrator.level_counts.index(0)
    assert calibrator.level_accuracy[empty] == pytest.approx(0.6)


def test_sample_steps_of_a_real_organism_reply():
    from catts_graph.organism import organism_model

    vlm = organism_model("base")
    (item,) = load_synthetic("validation", limit=1)
    question = make_question("validation", 0)
    rows = sample_steps(vlm, question, item, similarity=lambda text, variants: [0.5] * len(variants))
    assert rows and all(row["item"] == item.id for row in rows)
    for row in rows:
        assert 0 < row["probability"] <= 1 and row["entropy"] >= 0 and math.isfinite(row["tokensar"])
        assert row["clipscore"] is None and isinstance(row["correct"], bool)


def test_sample_steps_ask_clip_once_per_reply_and_floor_its_cosines():
    from catts_graph.organism import organism_model

    vlm = organism_model("base")
    (item,) = load_synthetic("validation", limit=1)
    question = make_question("validation", 0)
    calls: list[tuple[int, list[str]]] = []

    def clip(images, texts):
        calls.append((len(images), list(texts)))
        return [0.3 if k % 2 else -0.2 for k in range(len(texts))]

    rows = sample_steps(vlm, question, item, clip=clip)
    assert len(calls) == 1 and calls[0][0] == 1
    cosines = dict(zip(calls[0][1], [0.3 if k % 2 else -0.2 for k in range(len(calls[0][1]))], strict=True))
    for row in rows:
        assert row["clipscore"] == max(cosines[row["text"]], 0.0)  # floored at 0


def test_the_clip_organism_scores_a_scenes_own_objects_above_absent_ones():
    """CLIPScore from the shipped CLIP organism: the cosines equal those of open_clip's own
    encode_image / encode_text computed here, and a phrase naming an object of the scene scores
    higher than one naming an object it lacks."""
    import torch
    import torch.nn.functional as F

    from catts_graph.eval.synthetic import describe_scene, render
    from catts_graph.organism.clip import clip_organism

    clip = clip_organism()
    hits = seen = 0
    for index in range(30):
        question = make_question("test", index, level=1)
        if not question.scene.shapes:
            continue
        seen += 1
        image = render(question.scene)
        present = describe_scene(question.scene).rstrip(".").split("; ")[0]
        shape, colour, place = present.split(" ", 2)
        other = next(
            c
            for c in ("red", "blue", "green", "yellow", "purple", "orange")
            if c not in describe_scene(question.scene)
        )
        absent = f"{shape} {other} {place}"
        scores = clip([image], [present, absent])
        with torch.no_grad():
            e_image = F.normalize(clip.model.encode_image(clip._pixels(image)[None]).float(), dim=-1)[0]
            e_text = F.normalize(clip.model.encode_text(clip.tokenizer([present, absent])).float(), dim=-1)
        assert scores == pytest.approx((e_text @ e_image).tolist(), abs=1e-5)
        hits += scores[0] > scores[1]
    assert seen >= 15 and hits >= 0.8 * seen, (hits, seen)
    assert clip([image], []) == []
    with pytest.raises(ValueError, match="images"):
        clip([], ["x"])
