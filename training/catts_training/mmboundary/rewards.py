"""MMBoundary's rewards, as plain callables with TRL's reward signature, and their formulas.

MMBoundary's RL stage optimises ``R = a R_KA + b R_EC + g R_CS`` with PPO and GAE; its code and
reward formulas were not released, and TRL removed ``PPOTrainer`` in 1.13, so these are *our*
definitions, optimised with GRPO (:mod:`catts_training.mmboundary.train`). Every reward is a mean of
per-step values over one response (GRPO has no per-token value model to assign step rewards to
tokens, as GAE would). Steps are read by :func:`~catts_training.mmboundary.stated.read_steps`; the
*statement steps* are every step but the one holding the ``\\boxed{}`` answer. With ``T`` steps,
``s_t`` / ``y_t`` a step's score / correctness from the judge (:mod:`catts_training.mmboundary.reference`),
``e_t`` the level its statement expresses (None: none parsed), ``c(e)`` the confidence of level
``e`` (the level's measured validation accuracy, :func:`level_confidences`) and ``i_t`` the step's
internal level:

- ``knowledge_accuracy`` (:func:`knowledge_accuracy`): ``sum_t s_t / max(T, R)`` with ``R`` the
  number of reference steps (``cover_reference``, the default; a missing reference step counts as
  a wrong step, so leaving out what one is unsure of does not pay) or ``sum_t s_t / T``. ``None``
  for an item without a reference chain.
- ``expected_calibration`` (:func:`expected_calibration`): over statement steps,
  ``1 - 2 (c(e_t) - y_t)^2`` (CDRL's Brier form, :func:`catts_training.cdrl.rewards.calibration_reward`,
  a proper scoring rule: stating the level whose confidence is nearest one's real chance of being
  right pays most), ``-1`` for a step without a parseable statement; the mean. ``None`` without a
  reference chain.
- ``self_calibration`` (:func:`self_calibration`): over statement steps, ``-|e_t - i_t| / 4`` (0 when
  the statement says the level the model's own signals give, -1 at the far end), ``-1`` without a
  parseable statement; the mean. ``i_t`` is the :class:`~catts_graph.step_confidence.StepCalibrator`
  level of the step's content tokens' signals (statement tokens left out) under the policy being
  trained, teacher-forced (:class:`~catts_training.cdrl.rewards.PolicyScorer`), the calibrator being the
  one the SFT data's levels came from.
- ``format`` (:func:`statement_format`): the share of statement steps carrying a parseable statement
  (0 for a response with none).
- ``accuracy``: CDRL's :class:`~catts_training.cdrl.rewards.AccuracyReward` (1 if the final answer is
  right): the paper reports accuracy rising with MMBoundary, and nothing else here looks at the
  answer.

A response with no statement step scores -1 on the two calibration rewards, as if every step lacked
its statement. Logged per step: ``mmboundary/parsed_share``, ``mmboundary/expressed_entropy`` (nats,
over the five levels of the batch's parsed statements; ln 5 = 1.61 is uniform),
``mmboundary/expressed_level``, ``mmboundary/internal_level``, ``mmboundary/step_accuracy``.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any

from catts_graph.statements import StatementReader
from catts_graph.step_confidence import LEVELS, StepCalibrator
from catts_training.cdrl.rewards import (
    AccuracyReward,
    calibration_reward,
    completion_text,
    log_mean,
    reward_column,
)
from catts_training.mmboundary.reference import StepJudge, StepTruth
from catts_training.mmboundary.stated import TRAINING_SIGNALS, StatedStep, content_signals, read_steps

__all__ = [
    "DEFAULT_LEVEL_CONFIDENCE",
    "REWARD_NAMES",
    "ExpectedCalibrationReward",
    "KnowledgeAccuracyReward",
    "SelfCalibrationReward",
    "StatementFormatReward",
    "StepReader",
    "build_rewards",
    "checked_level_confidence",
    "expected_calibration",
    "expressed_entropy",
    "knowledge_accuracy",
    "level_confidences",
    "self_calibration",
    "statement_format",
]

REWARD_NAMES: tuple[str, ...] = (
    "knowledge_accuracy",
    "expected_calibration",
    "self_calibration",
    "format",
    "accuracy",
)
"""The reward components, in the order :func:`build_rewards` returns them (and TRL logs them)."""

DEFAULT_LEVEL_CONFIDENCE: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
"""The confidence of each level when the calibrator was fitted without labels: the midpoints of
five equal bins of [0, 1]."""

UNPARSED = -1.0
"""A calibration reward's value for a statement step whose statement is missing or unparsed."""


# -- the formulas ---------------------------------------------------------------------------------


def knowledge_accuracy(scores: Sequence[float], reference_steps: int | None = None) -> float:
    """``sum_t s_t / max(T, R)`` (``R = reference_steps``), or ``sum_t s_t / T`` when ``R`` is None;
    0 for an empty response.

    >>> knowledge_accuracy([1.0, 0.0, 1.0])
    0.6666666666666666
    >>> knowledge_accuracy([1.0, 0.0, 1.0], reference_steps=4)  # one reference step left out
    0.5
    """
    if any(not 0 <= s <= 1 for s in scores):
        raise ValueError(f"scores: expected values in [0, 1], got {list(scores)}")
    if reference_steps is not None and reference_steps < 0:
        raise ValueError(f"reference_steps={reference_steps!r}: expected an int >= 0")
    denominator = max(len(scores), reference_steps or 0)
    return sum(scores) / denominator if denominator else 0.0


def expected_calibration(confidences: Sequence[float | None], correct: Sequence[bool]) -> float:
    """Mean over statement steps of ``1 - 2 (c_t - y_t)^2``, ``-1`` where ``c_t`` is None (no parseable
    statement); ``-1`` for no step.

    >>> expected_calibration([0.9, 0.3], [True, True])  # (1 - 2*0.01 + 1 - 2*0.49) / 2
    0.5
    >>> expected_calibration([0.9, None], [False, True])  # (1 - 2*0.81 - 1) / 2
    -0.81
    """
    if len(confidences) != len(correct):
        raise ValueError(f"confidences and correct: got {len(confidences)} and {len(correct)} steps")
    if not confidences:
        return UNPARSED
    values = [
        UNPARSED if c is None else calibration_reward(c, bool(y))
        for c, y in zip(confidences, correct, strict=True)
    ]
    return sum(values) / len(values)


def self_calibration(expressed: Sequence[int | None], internal: Sequence[int | None]) -> float:
    """Mean over statement steps of ``-|e_t - i_t| / 4``, ``-1`` where either level is None; ``-1``
    for no step.

    >>> self_calibration([5, 2, 3], [5, 4, 3])  # (0 - 2/4 + 0) / 3
    -0.16666666666666666
    >>> self_calibration([1, None], [5, 3])  # (-1 - 1) / 2
    -1.0
    """
    if len(expressed) != len(internal):
        raise ValueError(f"expressed and internal: got {len(expressed)} and {len(internal)} steps")
    if not expressed:
        return UNPARSED
    values = []
    for e, i in zip(expressed, internal, strict=True):
        for level in (e, i):
            if level is not None and not 1 <= level <= LEVELS:
                raise ValueError(f"level {level!r}: expected 1..{LEVELS} or None")
        values.append(UNPARSED if e is None or i is None else -abs(e - i) / (LEVELS - 1))
    return sum(values) / len(values)


def statement_format(expressed: Sequence[int | None]) -> float:
    """The share of statement steps whose statement parsed; 0 for no step.

    >>> statement_format([3, None, 5, 1])
    0.75
    """
    return sum(e is not None for e in expressed) / len(expressed) if expressed else 0.0


def expressed_entropy(levels: Sequence[int]) -> float:
    """``-sum_k p_k ln p_k`` of the levels' empirical distribution (nats; ln 5 when uniform over the
    five levels, 0 when one level only); 0 for no level.

    >>> round(expressed_entropy([1, 2, 3, 4, 5]), 4)
    1.6094
    >>> expressed_entropy([4, 4, 4])
    0.0
    """
    if not levels:
        return 0.0
    counts = Counter(levels)
    n = len(levels)
    return float(-sum(c / n * math.log(c / n) for c in counts.values()) + 0.0)


def level_confidences(calibrator: StepCalibrator, given: Sequence[float] | None = None) -> tuple[float, ...]:
    """The confidence each level stands for: ``given`` (:func:`checked_level_confidence`), else the
    calibrator's measured validation accuracy per level when it was fitted with labels, else
    :data:`DEFAULT_LEVEL_CONFIDENCE`."""
    if given is not None:
        return checked_level_confidence(given)
    measured = tuple(calibrator.level_accuracy)
    if len(measured) == LEVELS and all(math.isfinite(v) for v in measured):
        return measured
    return DEFAULT_LEVEL_CONFIDENCE


def checked_level_confidence(given: Sequence[float]) -> tuple[float, ...]:
    """``given`` as five confidences in [0, 1], one per level, or a ValueError naming it."""
    values = tuple(float(v) for v in given)
    if len(values) != LEVELS or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"rewards.level_confidence: expected {LEVELS} numbers in [0, 1], got {list(given)}")
    return values


# -- reading completions --------------------------------------------------------------------------


class StepReader:
    """Completions read into :class:`~catts_training.mmboundary.stated.StatedStep` lists, through one
    :class:`~catts_graph.statements.StatementReader`; the last few hundred texts are cached, since
    every reward of a step reads the same completions (and an encoder call per unparsed phrase
    costs)."""

    def __init__(
        self, reader: StatementReader, cache_size: int = 512, stated_lines: int | None = None
    ) -> None:
        self.reader = reader
        self.cache_size = cache_size
        self.stated_lines = stated_lines
        self._cache: OrderedDict[str, list[StatedStep]] = OrderedDict()

    def steps(self, text: str) -> list[StatedStep]:
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        steps = read_steps(text, self.reader, self.stated_lines)
        self._cache[text] = steps
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return steps


def _statement_steps(steps: Sequence[StatedStep]) -> list[StatedStep]:
    return [step for step in steps if not step.is_answer]


class _JudgedReward:
    """What the two reference rewards share: each completion's steps and their truth."""

    def __init__(self, name: str, judge: StepJudge, steps: StepReader, reference_column: str) -> None:
        self.__name__ = name
        self.judge = judge
        self.step_reader = steps
        self.reference_column = reference_column

    def _judged(
        self, completions: Sequence[Any], kwargs: dict[str, Any]
    ) -> list[tuple[list[StatedStep], list[StepTruth], int] | None]:
        references = reward_column(kwargs, self.reference_column, len(completions), self.__name__)
        out: list[tuple[list[StatedStep], list[StepTruth], int] | None] = []
        for completion, reference in zip(completions, references, strict=True):
            if not reference:
                out.append(None)
                continue
            steps = self.step_reader.steps(completion_text(completion))
            out.append((steps, self.judge.judge([s.text for s in steps], list(reference)), len(reference)))
        return out


class KnowledgeAccuracyReward(_JudgedReward):
    """:func:`knowledge_accuracy` of each completion's steps against its row's ``reference`` chain
    (None for a row without one). Logs ``mmboundary/step_accuracy`` (share of steps judged right)."""

    def __init__(
        self,
        judge: StepJudge,
        steps: StepReader,
        *,
        cover_reference: bool = True,
        reference_column: str = "reference",
    ) -> None:
        super().__init__("knowledge_accuracy", judge, steps, reference_column)
        self.cover_reference = cover_reference

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        rewards: list[float | None] = []
        right: list[float] = []
        for judged in self._judged(completions, kwargs):
            if judged is None:
                rewards.append(None)
                continue
            _, truths, size = judged
            right += [float(t.correct) for t in truths]
            rewards.append(
                knowledge_accuracy([t.score for t in truths], size if self.cover_reference else None)
            )
        log_mean(kwargs, "mmboundary/step_accuracy", [sum(right) / len(right)] if right else [])
        return rewards


class ExpectedCalibrationReward(_JudgedReward):
    """:func:`expected_calibration` of each completion's statement steps: the confidence of the level
    each states (``level_confidence[e - 1]``) against the step's correctness (None for a row
    without a reference chain)."""

    def __init__(
        self,
        judge: StepJudge,
        steps: StepReader,
        level_confidence: Sequence[float],
        *,
        reference_column: str = "reference",
    ) -> None:
        if len(level_confidence) != LEVELS:
            raise ValueError(f"level_confidence: expected {LEVELS} values, got {len(level_confidence)}")
        super().__init__("expected_calibration", judge, steps, reference_column)
        self.level_confidence = tuple(float(c) for c in level_confidence)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        rewards: list[float | None] = []
        for judged in self._judged(completions, kwargs):
            if judged is None:
                rewards.append(None)
                continue
            steps, truths, _ = judged
            pairs = [(s, t) for s, t in zip(steps, truths, strict=True) if not s.is_answer]
            rewards.append(
                expected_calibration(
                    [
                        None if s.expressed is None else self.level_confidence[s.expressed - 1]
                        for s, _ in pairs
                    ],
                    [t.correct for _, t in pairs],
                )
            )
        return rewards


class StatementFormatReward:
    """:func:`statement_format` of each completion's statement steps. Logs
    ``mmboundary/parsed_share``, ``mmboundary/expressed_entropy`` and ``mmboundary/expressed_level``
    over the batch."""

    def __init__(self, steps: StepReader) -> None:
        self.__name__ = "format"
        self.step_reader = steps

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        rewards: list[float | None] = []
        expressed: list[int | None] = []
        for completion in completions:
            levels = [
                s.expressed for s in _statement_steps(self.step_reader.steps(completion_text(completion)))
            ]
            expressed += levels
            rewards.append(statement_format(levels))
        parsed = [e for e in expressed if e is not None]
        log_mean(kwargs, "mmboundary/parsed_share", [statement_format(expressed)] if expressed else [])
        log_mean(kwargs, "mmboundary/expressed_entropy", [expressed_entropy(parsed)] if parsed else [])
        log_mean(kwargs, "mmboundary/expressed_level", [float(e) for e in parsed])
        return rewards


class SelfCalibrationReward:
    """:func:`self_calibration` of each completion's statement steps: the level each states against
    the level ``calibrator`` gives the signals of its content tokens under the current policy
    (``scorer``: teacher-forced log-probs and entropies of the completion under its own prompt and
    images). Logs ``mmboundary/internal_level``."""

    def __init__(
        self,
        scorer: Any,
        steps: StepReader,
        calibrator: StepCalibrator,
        *,
        signals: Collection[str] = TRAINING_SIGNALS,
        similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
        images_column: str = "images",
    ) -> None:
        self.__name__ = "self_calibration"
        self.scorer = scorer
        self.step_reader = steps
        self.calibrator = calibrator
        self.signals = tuple(signals)
        self.similarity = similarity
        self.images_column = images_column

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float | None]:
        from catts_graph.models.tokens import detokenize_ids

        images = reward_column(kwargs, self.images_column, len(completion_ids), self.__name__)
        statistics = self.scorer.token_statistics(
            prompts, completion_ids, images, entropies="entropy" in self.signals
        )
        rewards: list[float | None] = []
        internal_levels: list[float] = []
        for ids, logprobs, entropies in statistics:
            _, tokens = detokenize_ids(self.scorer.tokenizer, ids)
            steps = self.step_reader.steps("".join(tokens))
            rows = content_signals(
                steps, tokens, logprobs, entropies, similarity=self.similarity, signals=self.signals
            )
            expressed, internal = [], []
            for step, row in zip(steps, rows, strict=True):
                if step.is_answer:
                    continue
                level = None if row is None else int(self.calibrator.assess(row)["level"])
                expressed.append(step.expressed)
                internal.append(level)
                if level is not None:
                    internal_levels.append(float(level))
            rewards.append(self_calibration(expressed, internal))
        log_mean(kwargs, "mmboundary/internal_level", internal_levels)
        return rewards


def build_rewards(
    *,
    judge: StepJudge,
    reader: StatementReader,
    calibrator: StepCalibrator,
    scorer: Any,
    level_confidence: Sequence[float] | None = None,
    cover_reference: bool = True,
    signals: Collection[str] = TRAINING_SIGNALS,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    stated_lines: int | None = None,
) -> list[Any]:
    """The rewards in :data:`REWARD_NAMES` order, sharing one :class:`StepReader`."""
    steps = StepReader(reader, stated_lines=stated_lines)
    return [
        KnowledgeAccuracyReward(judge, steps, cover_reference=cover_reference),
        ExpectedCalibrationReward(judge, steps, level_confidences(calibrator, level_confidence)),
        SelfCalibrationReward(scorer, steps, calibrator, signals=signals, similarity=similarity),
        StatementFormatReward(steps),
        AccuracyReward(),
    ]
