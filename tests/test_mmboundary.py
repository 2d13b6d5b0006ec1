"""MMBoundary training, the parts without a real model: the reward formulas against hand-computed
values, reading stated replies back, the data builder on scripted organism replies (statements at the
right places, levels read back equal to the inserted ones), the probe's figures and the configs."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from catts_graph.eval.synthetic import load_synthetic, make_question
from catts_graph.metrics import auroc, expected_calibration_error
from catts_graph.organism.language import reply_text
from catts_graph.statements import STATEMENTS, StatementReader
from catts_graph.step_confidence import StepCalibrator, step_signals
from catts_graph.testing import Reply, ScriptCall, ScriptedVLM, tokenize
from catts_training.config import ConfigError
from catts_training.mmboundary.config import MMBoundaryConfig, load_config
from catts_training.mmboundary.data import (
    assess_replies,
    fit_calibrator,
    load_data,
    sample_replies,
    save_data,
    stated_examples,
    to_grpo_dataset,
    to_sft_dataset,
)
from catts_training.mmboundary.probe import probe_figures
from catts_training.mmboundary.reference import ExactJudge, reference_chain
from catts_training.mmboundary.rewards import (
    DEFAULT_LEVEL_CONFIDENCE,
    ExpectedCalibrationReward,
    KnowledgeAccuracyReward,
    SelfCalibrationReward,
    StatementFormatReward,
    StepReader,
    expected_calibration,
    expressed_entropy,
    knowledge_accuracy,
    level_confidences,
    self_calibration,
    statement_format,
)
from catts_training.mmboundary.stated import content_signals, content_tokens, read_steps, statement_expected

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"

# A stated organism reply: two described objects with statements of levels 5 and 1, the answer.
STATED = (
    "circle red top left, with total certainty; square blue bottom left, but this is only a guess.\n"
    "\\boxed{red}"
)
PLAIN = "circle red top left; square blue bottom left.\n\\boxed{red}"


def pieces(text: str) -> list[str]:
    """Words, punctuation marks and runs of white space, as a BPE tokenizer splits them."""
    return re.findall(r"\w+|[^\w\s]|\s+", text)


# -- the formulas, by hand ------------------------------------------------------------------------


def test_knowledge_accuracy_by_hand() -> None:
    assert knowledge_accuracy([1.0, 0.0, 1.0]) == pytest.approx(2 / 3)
    # Four reference steps, three written: the missing one counts as a wrong step.
    assert knowledge_accuracy([1.0, 0.0, 1.0], reference_steps=4) == pytest.approx(2 / 4)
    # More steps than the reference: the steps are the denominator.
    assert knowledge_accuracy([0.5, 0.5, 1.0], reference_steps=2) == pytest.approx(2 / 3)
    assert knowledge_accuracy([], reference_steps=3) == 0.0
    with pytest.raises(ValueError, match="scores"):
        knowledge_accuracy([1.5])


def test_expected_calibration_by_hand() -> None:
    # 1 - 2 (0.9 - 1)^2 = 0.98 and 1 - 2 (0.3 - 1)^2 = 0.02: mean 0.5.
    assert expected_calibration([0.9, 0.3], [True, True]) == pytest.approx(0.5)
    # 1 - 2 (0.9 - 0)^2 = -0.62, an unparsed step -1: mean -0.81.
    assert expected_calibration([0.9, None], [False, True]) == pytest.approx(-0.81)
    assert expected_calibration([], []) == -1.0
    with pytest.raises(ValueError, match="got 2 and 1"):
        expected_calibration([0.5, 0.5], [True])


def test_expected_calibration_is_proper_the_level_nearest_the_true_chance_pays_most() -> None:
    levels = DEFAULT_LEVEL_CONFIDENCE
    for p in (0.05, 0.32, 0.5, 0.74, 0.95):
        expected = [
            p * expected_calibration([c], [True]) + (1 - p) * expected_calibration([c], [False])
            for c in levels
        ]
        best = max(range(len(levels)), key=expected.__getitem__)
        assert best == min(range(len(levels)), key=lambda k: abs(levels[k] - p))


def test_self_calibration_by_hand() -> None:
    assert self_calibration([5, 2, 3], [5, 4, 3]) == pytest.approx(-2 / 4 / 3)
    assert self_calibration([1], [5]) == -1.0
    assert self_calibration([None, 3], [2, 3]) == pytest.approx(-0.5)
    assert self_calibration([], []) == -1.0
    with pytest.raises(ValueError, match="level 6"):
        self_calibration([6], [1])


def test_statement_format_and_expressed_entropy_by_hand() -> None:
    assert statement_format([3, None, 5, 1]) == 0.75
    assert statement_format([]) == 0.0
    assert expressed_entropy([1, 2, 3, 4, 5]) == pytest.approx(math.log(5))
    assert expressed_entropy([2, 2, 4, 4]) == pytest.approx(math.log(2))
    assert expressed_entropy([4, 4, 4]) == 0.0


def test_level_confidences_come_from_the_config_then_the_calibrator() -> None:
    labelled = StepCalibrator.fit(
        [{"probability": p} for p in (0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)],
        [False, False, True, False, True, True, True, True, True, True],
    )
    assert level_confidences(labelled) == tuple(labelled.level_accuracy)
    unlabelled = StepCalibrator.fit([{"probability": p} for p in (0.1, 0.5, 0.9)])
    assert level_confidences(unlabelled) == DEFAULT_LEVEL_CONFIDENCE
    assert level_confidences(unlabelled, [0, 0.25, 0.5, 0.75, 1]) == (0, 0.25, 0.5, 0.75, 1)
    with pytest.raises(ValueError, match="level_confidence"):
        level_confidences(unlabelled, [0.5, 0.5])


# -- reading stated replies -----------------------------------------------------------------------


def test_read_steps_finds_statements_levels_and_the_answer_step() -> None:
    steps = read_steps(STATED, StatementReader())
    assert [s.content for s in steps] == ["circle red top left;", "square blue bottom left.", "\\boxed{red}"]
    assert [s.expressed for s in steps] == [5, 1, None]
    assert [s.is_answer for s in steps] == [False, False, True]
    first = steps[0]
    assert STATED[first.statement[0] : first.statement[1]] == ", with total certainty"
    # A comma that introduces no statement leaves the step whole.
    (plain,) = read_steps("a cat, sitting on a mat.", StatementReader())
    assert plain.expressed is None and plain.content == "a cat, sitting on a mat." and plain.statement is None


def test_stated_lines_keep_statements_to_the_first_lines() -> None:
    text = "circle red top left; square blue.\nred circles: 1 circle red top left.\n\\boxed{1}"
    spans = [(0, 21), (21, 34), (34, 70), (70, len(text))]
    assert [statement_expected(text, a, b) for a, b in spans] == [True, True, True, False]
    assert [statement_expected(text, a, b, stated_lines=1) for a, b in spans] == [True, True, False, False]
    assert [statement_expected(text, a, b, stated_lines=2) for a, b in spans] == [True, True, True, False]
    # The organism's reply read with one stated line: the focus line's steps expect no statement.
    reply = reply_text(make_question("test", 3))
    steps = read_steps(reply, StatementReader(), stated_lines=1)
    first_line = reply.index("\n")
    assert [not s.is_answer for s in steps] == [s.start < first_line for s in steps]
    assert any(s.is_answer and "\\boxed" not in s.text for s in steps)


def test_content_tokens_leave_the_statement_tokens_out() -> None:
    tokens = pieces(STATED)
    steps = read_steps(STATED, StatementReader())
    groups = content_tokens(steps, tokens)
    texts = ["".join(tokens[i] for i in group) for group in groups]
    assert texts == ["circle red top left; ", "square blue bottom left.\n", "\\boxed{red}"]


def test_content_signals_equal_the_signals_of_the_reply_without_statements() -> None:
    """The internal level of a stated step is that of the same step before a statement was written."""
    plain_tokens = pieces(PLAIN)
    plain_logprobs = [-0.1 * (k + 1) for k in range(len(plain_tokens))]
    entropies = [0.2 * (k + 1) for k in range(len(plain_tokens))]
    expected = step_signals(plain_tokens, plain_logprobs, entropies)
    # The stated reply's tokens: the plain ones (same log-probs), and statement tokens at -9.
    stated_tokens = pieces(STATED)
    lookup = iter(zip(plain_tokens, plain_logprobs, entropies, strict=True))
    logprobs, stated_entropies, pending = [], [], next(lookup)
    for token in stated_tokens:
        if pending is not None and token == pending[0]:
            logprobs.append(pending[1])
            stated_entropies.append(pending[2])
            pending = next(lookup, None)
        else:
            logprobs.append(-9.0)
            stated_entropies.append(9.0)
    rows = content_signals(
        read_steps(STATED, StatementReader()),
        stated_tokens,
        logprobs,
        stated_entropies,
        signals=("probability", "entropy"),
    )
    assert [row["probability"] for row in rows] == pytest.approx([s.probability for s in expected])
    assert [row["entropy"] for row in rows] == pytest.approx([s.entropy for s in expected])
    assert all(row["tokensar"] is None and row["clipscore"] is None for row in rows)


# -- the reward callables -------------------------------------------------------------------------

REFERENCE = [
    "circle red top left",
    "square blue bottom left",
    "red circles: 1 circle red top left",
    "\\boxed{red}",
]


def test_knowledge_accuracy_reward_by_hand() -> None:
    reward = KnowledgeAccuracyReward(ExactJudge(), StepReader(StatementReader()))
    wrong = STATED.replace("square blue", "square green")
    logged: dict[str, float] = {}
    values = reward(
        [None] * 3,
        [STATED, [{"role": "assistant", "content": wrong}], STATED],
        reference=[REFERENCE, REFERENCE, []],
        log_metric=logged.__setitem__,
    )
    # 3 of 3 steps right over max(3, 4) = 4; 2 of 3 over 4; no reference chain: None.
    assert values == [0.75, 0.5, None]
    assert logged["mmboundary/step_accuracy"] == pytest.approx(5 / 6)
    uncovered = KnowledgeAccuracyReward(ExactJudge(), StepReader(StatementReader()), cover_reference=False)
    assert uncovered([None], [STATED], reference=[REFERENCE]) == [1.0]


def test_expected_calibration_reward_by_hand() -> None:
    confidence = (0.1, 0.3, 0.5, 0.7, 0.9)
    reward = ExpectedCalibrationReward(ExactJudge(), StepReader(StatementReader()), confidence)
    wrong = STATED.replace("square blue", "square green")
    unparsed = STATED.replace("but this is only a guess", "perhaps")
    values = reward([None] * 3, [STATED, wrong, unparsed], reference=[REFERENCE] * 3)
    right_5, right_1, wrong_1 = 1 - 2 * 0.1**2, 1 - 2 * 0.9**2, 1 - 2 * 0.1**2
    assert values == pytest.approx([(right_5 + right_1) / 2, (right_5 + wrong_1) / 2, (right_5 - 1) / 2])


def test_format_reward_by_hand_and_its_metrics() -> None:
    reward = StatementFormatReward(StepReader(StatementReader()))
    unparsed = STATED.replace("but this is only a guess", "perhaps")
    logged: dict[str, float] = {}
    values = reward([None] * 3, [STATED, unparsed, "\\boxed{red}"], log_metric=logged.__setitem__)
    assert values == [1.0, 0.5, 0.0]
    assert logged["mmboundary/parsed_share"] == pytest.approx(3 / 4)
    assert logged["mmboundary/expressed_entropy"] == pytest.approx(
        -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    )
    assert logged["mmboundary/expressed_level"] == pytest.approx((5 + 1 + 5) / 3)


class _WordTokenizer:
    """Ids of the :func:`pieces` of a text, decoded back."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(token, len(self.vocab)) for token in pieces(text)]

    def batch_decode(self, sequences: list[list[int]], **_: Any) -> list[str]:
        words = {i: w for w, i in self.vocab.items()}
        return ["".join(words[i] for i in ids) for ids in sequences]


class _FixedScorer:
    """Token statistics as a scorer would give them: content words at log 0.95, statements at -9."""

    def __init__(self, tokenizer: _WordTokenizer) -> None:
        self.tokenizer = tokenizer
        self.calls: list[bool] = []

    def token_statistics(
        self, prompts: Any, completion_ids: Any, images: Any, *, entropies: bool = True
    ) -> Any:
        self.calls.append(entropies)
        statement_words = {w for pool in STATEMENTS.values() for p in pool for w in p.split()}
        out = []
        for ids in completion_ids:
            words = self.tokenizer.batch_decode([[i] for i in ids])
            lps = [-9.0 if w in statement_words or w == "," else math.log(0.95) for w in words]
            out.append((list(ids), lps, None))
        return out


def test_self_calibration_reward_by_hand() -> None:
    # Validation probabilities 0.1 .. 0.9: a step at 0.95 is above them all (level 5), one at 0.05
    # below them all (level 1).
    calibrator = StepCalibrator(
        reference={"probability": [0.1, 0.3, 0.5, 0.7, 0.9]},
        weights={"probability": 1.0},
        cuts=[0.2, 0.4, 0.6, 0.8],
        level_accuracy=[0.1, 0.3, 0.5, 0.7, 0.9],
        level_counts=[1, 1, 1, 1, 1],
    )
    tokenizer = _WordTokenizer()
    scorer = _FixedScorer(tokenizer)
    reward = SelfCalibrationReward(
        scorer, StepReader(StatementReader()), calibrator, signals=("probability",)
    )
    logged: dict[str, float] = {}
    no_statement = PLAIN
    values = reward(
        [None, None],
        [STATED, no_statement],
        [tokenizer.ids(STATED), tokenizer.ids(no_statement)],
        images=[[], []],
        log_metric=logged.__setitem__,
    )
    # Both content steps sit at 0.95 (level 5): stated 5 -> 0, stated 1 -> -1; mean -0.5. No
    # statements: -1 each.
    assert values == [pytest.approx(-0.5), -1.0]
    assert logged["mmboundary/internal_level"] == 5.0
    assert scorer.calls == [False]  # the probability signal alone needs no entropies


# -- the data builder on scripted organism replies -------------------------------------------------


def _organism_script(items: list[Any]) -> Any:
    """Replies to ``items`` in the order they are asked: the generator's own reply for even items, a
    wrong colour (or digit) in the first step for odd ones; log-probs that vary with the item, so the
    steps spread over the levels."""

    def script(call: ScriptCall) -> list[Reply]:
        item = items[call.index]
        split, _, number = item.id.rpartition("-")
        index = int(number)
        text = reply_text(make_question(split, index, seed=0))
        if index % 2:
            text = text.replace(text.split(" ")[1], "purple", 1)
        tokens = tokenize(text)
        return [Reply(text, [-0.02 * (1 + (index * 7 + k) % 13) for k in range(len(tokens))])]

    return script


@pytest.fixture(scope="module")
def organism_data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    validation = load_synthetic("validation", limit=12)
    train = load_synthetic("train", limit=6)
    vlm = ScriptedVLM(_organism_script(validation + train), answer_prompt="answer_short")
    judge = ExactJudge()
    fitted = sample_replies(vlm, validation, judge=judge, signals=("probability",))
    calibrator = fit_calibrator(fitted, use_labels=True)
    replies = sample_replies(vlm, train, judge=judge, signals=("probability",))
    assess_replies(replies, calibrator)
    examples = stated_examples(train, replies, seed=3)
    folder = tmp_path_factory.mktemp("mmboundary-data")
    save_data(folder, train, examples, calibrator, {"note": "scripted"})
    return {
        "train": train,
        "replies": replies,
        "examples": examples,
        "calibrator": calibrator,
        "folder": folder,
    }


def test_statements_go_after_each_step_and_read_back_to_the_inserted_levels(organism_data: Any) -> None:
    reader = StatementReader()
    for example in organism_data["examples"]:
        reply = example.reply
        steps = read_steps(example.completion, reader)
        assert len(steps) == len(reply.steps)
        for step, record in zip(steps, reply.steps, strict=True):
            if record.is_answer:
                assert step.expressed is None and step.text == record.text and "\\boxed{" in step.text
                continue
            # The statement of the step's assessed level, after its words, before its closing mark.
            assert step.expressed == record.level
            assert step.content == record.text
            closing = record.text[-1] if record.text[-1] in ".;" else ""
            assert step.text == f"{record.text[: len(record.text) - len(closing)]}, {step.phrase}{closing}"
            assert step.phrase in STATEMENTS[record.level]
        # Nothing else changed: without the statements the completion is the reply.
        assert "".join(_without_statements(example.completion, steps)) == reply.text
        assert example.completion.endswith(reply.text.rsplit("\n", 1)[1])  # the answer stays last


def _without_statements(text: str, steps: list[Any]) -> list[str]:
    pieces, cursor = [], 0
    for step in steps:
        if step.statement is not None:
            pieces.append(text[cursor : step.statement[0]])
            cursor = step.statement[1]
    pieces.append(text[cursor:])
    return pieces


def test_levels_labels_and_the_calibrator_of_the_data(organism_data: Any) -> None:
    replies, calibrator = organism_data["replies"], organism_data["calibrator"]
    for reply in replies:
        index = int(reply.item_id.rsplit("-", 1)[1])
        labels = [step.correct for step in reply.steps]
        # The generator's reply is right at every step; the odd items' first object is wrong.
        assert labels[0] is (index % 2 == 0) and all(labels[1:-1])
        for step in reply.steps:
            assessed = calibrator.assess(step.signals)
            assert (step.level, step.fused) == (assessed["level"], assessed["fused"])
            assert step.confidence == calibrator.level_accuracy[step.level - 1]
            assert step.signals["entropy"] is None  # the scripted backend reports no entropies
    assert sum(calibrator.level_counts) > 0 and all(math.isfinite(a) for a in calibrator.level_accuracy)
    used = {level for reply in replies for level in (s.level for s in reply.steps)}
    assert len(used) >= 3


def test_data_folder_round_trip_and_trl_datasets(organism_data: Any) -> None:
    data = load_data(organism_data["folder"])
    assert [e.completion for e in data.examples] == [e.completion for e in organism_data["examples"]]
    assert [s.level for e in data.examples for s in e.reply.steps] == [
        s.level for e in organism_data["examples"] for s in e.reply.steps
    ]
    assert data.calibrator.to_dict() == organism_data["calibrator"].to_dict()
    sft = to_sft_dataset(data)
    row = sft[0]
    assert row["prompt"] == [{"role": "user", "content": data.examples[0].reply.prompt}]
    assert row["completion"] == [{"role": "assistant", "content": data.examples[0].completion}]
    assert len(row["images"]) == 1 and row["images"][0].size == (224, 224)
    grpo = to_grpo_dataset(data)
    assert len(grpo) == len({e.item.id for e in data.examples})
    assert grpo[0]["reference"] == reference_chain(data.items[0])
    assert grpo[0]["reference"][-1].startswith("\\boxed{")


def test_sample_replies_refuses_greedy_repeats_and_unknown_signals() -> None:
    vlm = ScriptedVLM.answering("a.")
    with pytest.raises(ValueError, match="greedy replies"):
        sample_replies(vlm, [], samples=2, temperature=0.0)
    with pytest.raises(ValueError, match="unknown"):
        sample_replies(vlm, [], signals=("loudness",))


# -- the probe's figures ---------------------------------------------------------------------------


def test_probe_figures_by_hand() -> None:
    rows = [
        {"is_answer": False, "expressed": 5, "internal": 5, "fused": 0.9, "correct": True},
        {"is_answer": False, "expressed": 5, "internal": 4, "fused": 0.7, "correct": False},
        {"is_answer": False, "expressed": 1, "internal": 2, "fused": 0.2, "correct": False},
        {"is_answer": False, "expressed": None, "internal": 3, "fused": 0.5, "correct": True},
        {"is_answer": True, "expressed": None, "internal": 5, "fused": 0.95, "correct": True},
    ]
    confidence = (0.1, 0.3, 0.5, 0.7, 0.9)
    figures = probe_figures(rows, [True, False], confidence)
    assert figures["items"] == 2 and figures["answer_accuracy"] == 0.5
    assert figures["statement_steps"] == 4 and figures["parsed_share"] == 0.75
    assert figures["expressed_counts"] == [1, 0, 0, 0, 2]
    assert figures["expressed_entropy"] == pytest.approx(
        -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)
    )
    assert figures["level_gap"] == pytest.approx((0 + 1 + 1) / 3)
    assert figures["step_accuracy"] == 0.5
    # Parsed, labelled steps: confidences 0.9 (right), 0.9 (wrong), 0.1 (wrong).
    assert figures["expressed_ece"] == pytest.approx(
        expected_calibration_error([0.9, 0.9, 0.1], [True, False, False])
    )
    assert figures["expressed_ece"] == pytest.approx((2 / 3) * 0.4 + (1 / 3) * 0.1)
    assert figures["expressed_auroc"] == pytest.approx(0.75)  # 5 vs 5 ties, 5 vs 1 wins
    # Internal: every labelled statement step, the unparsed one too.
    assert figures["internal_ece"] == pytest.approx(
        expected_calibration_error([0.9, 0.7, 0.3, 0.5], [True, False, False, True])
    )
    assert figures["internal_auroc"] == pytest.approx(auroc([0.9, 0.7, 0.2, 0.5], [True, False, False, True]))
    assert figures["internal_auroc"] == 0.75  # right 0.9 and 0.5 against wrong 0.7 and 0.2: 3 of 4 pairs


def test_probe_figures_without_labels_or_statements() -> None:
    rows = [{"is_answer": False, "expressed": None, "internal": 2, "fused": 0.3, "correct": None}]
    figures = probe_figures(rows, [False], DEFAULT_LEVEL_CONFIDENCE)
    assert figures["parsed_share"] == 0.0 and figures["expressed_entropy"] == 0.0
    assert (
        figures["expressed_ece"] is None
        and figures["internal_ece"] is None
        and figures["step_accuracy"] is None
    )


# -- the configs -----------------------------------------------------------------------------------

MMBOUNDARY_CONFIGS = sorted(CONFIGS.glob("mmboundary_*.yaml"))


@pytest.mark.parametrize("path", MMBOUNDARY_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_mmboundary_config_loads(path: Path) -> None:
    config = load_config(path)
    assert len(config.reward_weights()) == 5
    assert config.sft_config(use_cpu=True).output_dir.endswith("sft")
    assert config.grpo_config(use_cpu=True).reward_weights == config.reward_weights()


def test_the_organism_config_trains_the_new_organism() -> None:
    config = load_config(CONFIGS / "mmboundary_organism.yaml")
    assert config.model == "catts_graph/organism/checkpoints/base"
    assert config.judge.kind == "exact" and config.use_labels()
    assert load_config(CONFIGS / "mmboundary_organism.yaml", model="elsewhere").model == "elsewhere"


def test_config_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    """The checks across keys and sections, and the messages that say what to do instead (every
    key's type and every section's unknown keys: tests/test_training_config.py)."""
    base = "model: tiny\noutput_dir: x\ndata: {benchmark: synthetic}\nvalidation: {benchmark: synthetic}\n"
    cases = [
        ("signals: [clipscore]\n", "signals: clipscore is not used in training"),
        ("signals: [tokensar]\n", "signals: tokensar needs a sentence encoder; set encoder: minilm"),
        ("judge: {kind: similarity}\n", "judge.kind: similarity needs a sentence encoder"),
        ("judge: {kind: fuzzy}\n", "judge.kind: expected one of exact, similarity, got 'fuzzy'"),
        ("encoder: bert\n", "encoder: expected one of minilm, got 'bert'"),
        ("sft: {output_dir: y}\n", "sft.output_dir: set output_dir at the top level"),
        (
            "rewards: {level_confidence: [0.5, 0.5]}\n",
            "rewards.level_confidence: expected at least 5 entries",
        ),
        ("freeze: [model.visual]\nlora: {r: 8}\n", "freeze: not with lora"),
        ("statements: {lines: 0}\n", "statements.lines: expected a value >= 1, got 0"),
        ("statements: {pretrain: {levels: gold}}\n", "statements.pretrain.levels: expected one of estimated"),
        (
            "rewards: {weights: {format: 0, accuracy: 0, knowledge_accuracy: 0, expected_calibration: 0, "
            "self_calibration: 0}}\n",
            "rewards.weights: expected at least one non-zero weight",
        ),
    ]
    path = tmp_path / "c.yaml"
    for extra, message in cases:
        path.write_text(base + extra)
        with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {re.escape(message)}"):
            load_config(path)
    path.write_text("model: tiny\noutput_dir: x\ndata: {}\nvalidation: {benchmark: synthetic}\n")
    with pytest.raises(ConfigError, match="data: give source and/or benchmark"):
        load_config(path)
    config = MMBoundaryConfig.model_validate(
        {
            "model": "tiny",
            "output_dir": "x",
            "data": {"benchmark": "synthetic"},
            "validation": {"benchmark": "synthetic"},
        }
    )
    assert config.use_labels() and config.signals == ["probability", "entropy"]
    assert config.statements.lines is None and config.statements.pretrain is None
