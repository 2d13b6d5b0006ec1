"""Statement pre-training of the organisms (catts_training/mmboundary/pretrain.py): the teacher-forced
signals, the estimated levels by hand, and real optimizer steps on the shipped organism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from catts_graph.eval.synthetic import make_question, render
from catts_graph.organism import organism_path
from catts_graph.organism.language import reply_text
from catts_graph.statements import STATEMENTS, StatementReader
from catts_graph.step_confidence import StepCalibrator
from catts_training.mmboundary.pretrain import (
    MANIFEST_KEY,
    PretrainConfig,
    estimated_levels,
    pretrain_statements,
    stated_spans,
    teacher_forced,
)
from catts_training.mmboundary.stated import read_steps
from catts_training.mmboundary.vocabulary import extend_vocabulary
from tests.conftest_models import checkpoint_weights

# Normalisation is the mid-rank CDF among the reference values: with references [0.2, 0.4, 0.6, 0.8]
# a confidence of 0.5 sits above two of four -> 0.5; 0.9 above all -> 1.0; 0.1 below all -> 0.0.
CALIBRATOR = StepCalibrator.from_dict(
    {
        "reference": {
            "probability": [0.2, 0.4, 0.6, 0.8],
            "entropy": [0.2, 0.4, 0.6, 0.8],
            "tokensar": [0.5],
        },
        "weights": {"probability": 3.0, "entropy": 1.0, "tokensar": 4.0},
        "cuts": [0.2, 0.4, 0.6, 0.8],
        "level_accuracy": [0.5, 0.6, 0.7, 0.8, 0.9],
        "level_counts": [1, 1, 1, 1, 1],
    }
)


def test_estimated_levels_by_hand() -> None:
    text = "a red circle; a blue square.\n\\boxed{B}"
    tokens = ["a", " red", " circle", ";", " a", " blue", " square", ".", "\n", "\\boxed{B}"]
    # Step 1 (a red circle;): mean log-prob log(0.9) -> probability 0.9 -> normalised 1.0; entropy
    # 2.0 -> confidence exp(-2) = 0.135 -> 0.0. TokenSAR is absent: fused = (3 * 1.0 + 1 * 0.0) / 4
    # = 0.75 -> level 4 (above the cuts 0.2, 0.4, 0.6).
    # Step 2 (a blue square.): probability 0.5 -> 0.5; entropy 0.0 -> confidence 1 -> 1.0;
    # fused (1.5 + 1.0) / 4 = 0.625 -> level 4; the answer step is not stated.
    logprobs = [math.log(0.9)] * 4 + [math.log(0.5)] * 4 + [0.0, 0.0]
    entropies = [2.0] * 4 + [0.0] * 4 + [0.0, 0.0]
    spans, levels = estimated_levels(text, tokens, logprobs, entropies, CALIBRATOR)
    assert spans == [(0, 13), (14, 28)]  # a step starts at its first non-space character
    assert levels == [4, 4]
    logprobs[4:8] = [math.log(0.3)] * 4  # probability 0.3 -> 0.25; fused (0.75 + 1.0) / 4 = 0.4375
    assert estimated_levels(text, tokens, logprobs, entropies, CALIBRATOR)[1] == [4, 3]
    assert stated_spans(text) == spans
    assert stated_spans(text, stated_lines=1) == spans
    with pytest.raises(ValueError, match="do not spell the reply"):
        estimated_levels(text + " ", tokens, logprobs, entropies, CALIBRATOR)


def test_teacher_forcing_reads_what_the_sampler_recorded() -> None:
    """The levels of the pre-training come from the same log-probs and entropies the data stage
    reads off the organism's own greedy reply."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from catts_graph.models import TransformersVLM
    from catts_graph.organism.checkpoint import encode_examples
    from catts_graph.organism.language import organism_prompt
    from catts_graph.task import base_prompt

    path = organism_path("base")
    side = json.loads((path / "organism.json").read_text())["config"]["image_side"]
    question = make_question("validation", 5)
    image = render(question.scene).resize((side, side))
    vlm = TransformersVLM.from_pretrained(path, device="cpu")
    (sample,) = vlm.sample(
        [image], base_prompt(question.question, question.options, vlm), 1, temperature=0.0, max_new_tokens=96
    )
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    prompt = organism_prompt(question.question, list(question.options) if question.options else None)
    batch = encode_examples(processor, [(prompt, sample.text, question.scene)], side)
    ((tokens, logprobs, entropies),) = teacher_forced(model, batch, processor.tokenizer)
    assert "".join(tokens) == sample.text
    n = len(tokens)
    assert logprobs == pytest.approx(sample.logprobs[:n], abs=2e-3)
    assert entropies == pytest.approx(sample.entropies[:n], abs=2e-3)


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extend_vocabulary(organism_path("base"), tmp_path_factory.mktemp("vocab") / "base")


def test_real_steps_state_the_estimated_levels_and_a_second_call_reuses_them(
    extended: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    lines: list[str] = []
    config = PretrainConfig(
        steps=2, batch_size=3, learning_rate=1e-3, warmup_steps=2, freeze=("model.visual",)
    )
    out = pretrain_statements(extended, tmp_path / "pre", config, calibrator=CALIBRATOR, log=lines.append)
    record = json.loads((out / "organism.json").read_text())[MANIFEST_KEY]
    # Every non-answer step of the 6 gold replies got a statement of one of the five levels.
    stated = sum(
        len(stated_spans(reply_text(make_question("train", i))))
        for i in range(config.start, config.start + 6)
    )
    assert sum(record["level_counts"]) == stated > 0
    assert record["settings"]["levels"] == "estimated"
    assert record["settings"]["calibrator"]["cuts"] == CALIBRATOR.cuts
    before, after = checkpoint_weights(extended), checkpoint_weights(out)
    changed = {k for k in before if not torch.equal(before[k].to(after[k].dtype), after[k])}
    # On disk the vision tower is "visual.*" and the language layers "model.layers.*".
    assert any(k.startswith("visual.") for k in before)
    assert changed and not any(k.startswith("visual.") for k in changed)
    assert any(k.startswith("model.layers.") for k in changed)
    assert (out / "vocabulary.json").is_file() and (out / "catts.json").is_file()
    assert any("step 2/2" in line for line in lines)

    lines.clear()
    assert (
        pretrain_statements(extended, tmp_path / "pre", config, calibrator=CALIBRATOR, log=lines.append)
        == out
    )
    assert lines == [f"statement pre-training: reusing {out}"]
    random_levels = pretrain_statements(
        extended,
        tmp_path / "random",
        PretrainConfig(steps=1, batch_size=2, levels="random"),
        log=lines.append,
    )
    counts = json.loads((random_levels / "organism.json").read_text())[MANIFEST_KEY]["level_counts"]
    assert sum(counts) > 0


def test_what_the_stage_refuses(extended: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the data's calibrator"):
        pretrain_statements(extended, tmp_path / "x", PretrainConfig(steps=1))
    with pytest.raises(ValueError, match="no organism.json"):
        pretrain_statements(tmp_path, tmp_path / "x", PretrainConfig(steps=1), calibrator=CALIBRATOR)
    with pytest.raises(ValueError, match="'model.vision' matches no parameter"):
        pretrain_statements(
            extended, tmp_path / "x", PretrainConfig(steps=1, levels="random", freeze=("model.vision",))
        )
    with pytest.raises(ValueError, match="freeze"):
        PretrainConfig(freeze="model.visual")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="levels"):
        PretrainConfig(levels="gold")
    with pytest.raises(ValueError, match="steps"):
        PretrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        PretrainConfig.model_validate({"lr": 1e-4})
    assert PretrainConfig.model_validate({"learning_rate": "5e-4"}).learning_rate == 5e-4


def test_a_stated_gold_reply_reads_back_its_levels() -> None:
    """What the stage trains on is what the probe and the rewards read."""
    from catts_graph.statements import insert_statements

    text = reply_text(make_question("train", 3_000_000))
    spans = stated_spans(text)
    levels = [1 + k % 5 for k in range(len(spans))]
    steps = read_steps(insert_statements(text, spans, levels, seed=1), StatementReader(None))
    assert [s.expressed for s in steps if not s.is_answer] == levels
    assert all(s.phrase in STATEMENTS[s.expressed] for s in steps if not s.is_answer)
