"""CDRL's rewards, as plain callables with TRL's reward signature.

Each reward is ``reward(prompts, completions, completion_ids, **columns) -> list[float | None]``: one
value per completion, ``None`` where it is undefined (TRL turns that into NaN and leaves it out of
the means). ``columns`` are the dataset's columns, repeated per completion (``answer``, ``options``,
``images``, ``pair_id``, ``variant``), plus TRL's ``log_metric``. Each item is two prompt rows, its
original image and a noised copy (``variant`` "original" / "noised", a shared ``pair_id``; see
:func:`catts_training.cdrl.data.to_grpo_dataset`), so GRPO samples rollouts on both and ``images`` is
each row's own prompt image. The classes are *not* ``nn.Module``s: TRL would take one for a reward
model. Each instance carries a ``__name__``, which TRL uses to log it as ``rewards/<name>/mean``,
so every component shows up separately in the training logs.

- :class:`AccuracyReward`: 1 if the extracted final answer is equivalent to the gold one
  (:func:`catts_graph.answers.extract_answer` and :func:`~catts_graph.answers.is_equivalent`, the
  project's one answer checker, with ``math-verify``), else 0.
- :class:`FormatReward`: 1 if the response ends with a non-empty ``\\boxed{...}`` answer, else 0.
- :class:`PerceptualSensitivityReward` (noised rows; ``None`` on original rows): each rollout's own
  NMLP under its noised image against the mean NMLP of the same pair's original-image rollouts,
  as a hinge (:func:`sensitivity_reward`): ``r = -max(0, mean_nmlp_original + margin -
  own_nmlp_noised)``. The model is paid for being less sure of *its own answer* to the noised
  image, which is what the probe measures.
- :class:`CalibrationReward` (every row): with ``c = exp(-NMLP)`` and ``y`` = correct,
  :func:`calibration_reward`: ``brier`` (default) ``r = 1 - 2 (c - y)^2``, a proper scoring rule;
  ``signed``: ``r = c`` if correct else ``-c``.

NMLP is the mean negative log-probability of the completion's tokens (stop tokens excluded, as in
:func:`catts_graph.confidence.nmlp`), under the raw distribution (no temperature), of each
completion under its own prompt and image. The two confidence rewards read it through one path
(a :class:`PolicyScorer`, which caches the last batches, so each completion is scored once per
step, not once per reward); it scores through the teacher forcing of
:meth:`catts_graph.models.TransformersVLM.score`, so sampling, evaluation and training read one
log-probability.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from catts_graph.answers import extract_answer
from catts_graph.confidence import confidence_from_nmlp, nmlp
from catts_graph.metrics import confidence_drop
from catts_graph.models.replay import images_key
from catts_graph.task import answer_matches
from catts_training.cdrl.data import ORIGINAL, VARIANTS

__all__ = [
    "CALIBRATION_VARIANTS",
    "DEFAULT_SENSITIVITY_MARGIN",
    "REWARD_NAMES",
    "AccuracyReward",
    "CalibrationReward",
    "ConfidenceScorer",
    "FormatReward",
    "PerceptualSensitivityReward",
    "PolicyScorer",
    "build_rewards",
    "calibration_reward",
    "completion_text",
    "is_correct",
    "log_mean",
    "reward_column",
    "sensitivity_reward",
]

REWARD_NAMES: tuple[str, ...] = ("accuracy", "format", "perceptual_sensitivity", "calibration")
"""The reward components, in the order :func:`build_rewards` returns them (and TRL logs them)."""


# -- shared helpers -----------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or a conversation whose last turn is the response
    (content a string or a list of ``{"type": "text", "text": ...}`` parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise TypeError(
        f"completion: got {type(completion).__name__}, expected a string or a list of chat messages"
    )


def _options(value: Any) -> list[str] | None:
    """Options as stored in a dataset row: None or an empty list mean an open question."""
    if value is None:
        return None
    options = [str(option) for option in value]
    return options or None


def is_correct(text: str, gold: str, options: Sequence[str] | None = None) -> bool:
    """Whether the final answer in ``text`` matches ``gold`` (an option letter for multiple choice),
    by the project's one rule (:func:`catts_graph.task.answer_matches`)."""
    answer_type = "choice" if options else "text"
    return answer_matches(extract_answer(text, options), [str(gold)], answer_type=answer_type)


def reward_column(kwargs: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    """The dataset column ``name`` as TRL passes it to reward ``reward``, checked to hold ``n`` rows."""
    if name not in kwargs:
        raise KeyError(f"reward {reward!r} needs the dataset column {name!r}; got columns {sorted(kwargs)}")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: column {name!r} has {len(values)} rows, expected {n}")
    return values


def log_mean(kwargs: dict[str, Any], name: str, values: Sequence[float | None]) -> None:
    """Log the mean of the defined values through TRL's ``log_metric`` (absent outside the trainer)."""
    log_metric = kwargs.get("log_metric")
    defined = [v for v in values if v is not None and math.isfinite(v)]
    if log_metric is not None and defined:
        log_metric(name, sum(defined) / len(defined))


# -- task rewards -------------------------------------------------------------------------------


class AccuracyReward:
    """1.0 when the completion's final answer is equivalent to ``answer``, else 0.0."""

    def __init__(self, *, answer_column: str = "answer", options_column: str = "options") -> None:
        self.__name__ = "accuracy"
        self.answer_column = answer_column
        self.options_column = options_column

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        golds = reward_column(kwargs, self.answer_column, len(completions), self.__name__)
        options = kwargs.get(self.options_column) or [None] * len(completions)
        return [
            float(is_correct(completion_text(c), gold, _options(o)))
            for c, gold, o in zip(completions, golds, options, strict=True)
        ]


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TRAILER = re.compile(r"[\s.$*]*")


class FormatReward:
    """1.0 when the response ends with a non-empty ``\\boxed{...}`` (only whitespace, ``.``, ``$``
    or ``*`` after it), else 0.0: the answer format the graph's extractor reads first."""

    def __init__(self) -> None:
        self.__name__ = "format"

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        return [float(ends_with_boxed(completion_text(c))) for c in completions]


def ends_with_boxed(text: str) -> bool:
    """Whether ``text``'s last ``\\boxed{...}`` is balanced, non-empty and ends the response."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return False
    start = matches[-1].end()
    depth = 1
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return bool(text[start:index].strip()) and _TRAILER.fullmatch(text[index + 1 :]) is not None
    return False


# -- confidence scoring -------------------------------------------------------------------------


class ConfidenceScorer(Protocol):
    """What the confidence rewards need: each completion's NMLP under given images."""

    def nmlp(
        self, prompts: Sequence[Any], completion_ids: Sequence[Sequence[int]], images: Sequence[Any]
    ) -> list[float | None]:
        """NMLP of ``completion_ids[i]`` after ``prompts[i]`` shown with ``images[i]`` (None if empty)."""
        ...


_CACHE_SIZE = 4


class PolicyScorer:
    """Teacher-forced NMLP of completions under the *current* policy, for any images.

    The prompt is rendered exactly as TRL renders it for generation (the processor's chat template on
    the conversational prompt, images first); the completion's token ids are scored as they were
    sampled, cut at the first stop token (:func:`~catts_graph.models.transformers_vlm.response_ids`,
    the rule :class:`~catts_graph.models.TransformersVLM` ends a sample by), through
    :func:`~catts_graph.models.transformers_vlm.teacher_forced_statistics`, the teacher forcing of
    :meth:`TransformersVLM.score`. Rows that share a prompt and images (GRPO's completions of one
    prompt) are one call: their prefix, vision tower included, runs once, with at most
    ``batch_size`` completions per call. On the training model: dropout is off for the pass,
    gradients are never kept.

    Built before the trainer (the rewards go into it), then :meth:`bind` to the trainer's model. Each
    call is two forward passes, but how many calls a process makes depends on its rows, while
    ZeRO-3's collective parameter gathering needs every process to make the same ones: in a
    distributed run the processes first agree on the largest count (one all-reduce), and a process
    with fewer calls repeats its last one and discards the result.
    """

    def __init__(self, processor: Any, *, batch_size: int = 4) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        self._model_getter: Callable[[], Any] | None = None
        self._stop_ids: set[int] | None = None
        # The last few (key, images, values): both confidence rewards of a step ask for the same rows.
        self._cache: list[tuple[tuple[Any, ...], list[Any], list[float | None]]] = []

    def bind(self, model: Any | Callable[[], Any]) -> PolicyScorer:
        """Score with ``model``, or with what ``model()`` returns at each call (e.g. ``lambda:
        trainer.model``, so a model re-wrapped by the trainer is followed)."""
        self._model_getter = model if callable(model) and not hasattr(model, "forward") else (lambda: model)
        return self

    def nmlp(
        self, prompts: Sequence[Any], completion_ids: Sequence[Sequence[int]], images: Sequence[Any]
    ) -> list[float | None]:
        key = (
            tuple(tuple(int(i) for i in ids) for ids in completion_ids),
            tuple(id(i) for group in images for i in _as_list(group)),
        )
        # The cache keeps the images alive, so their ids cannot be reused by another batch.
        for cached_key, _, cached in self._cache:
            if cached_key == key:
                return list(cached)
        values = [nmlp(lps) if lps else None for lps in self.token_logprobs(prompts, completion_ids, images)]
        self._cache = [*self._cache[-(_CACHE_SIZE - 1) :], (key, list(images), values)]
        return list(values)

    def token_logprobs(
        self, prompts: Sequence[Any], completion_ids: Sequence[Sequence[int]], images: Sequence[Any]
    ) -> list[list[float]]:
        """Raw log-probs of each completion token (cut at the first stop token), row by row."""
        return [lps for _, lps, _ in self.token_statistics(prompts, completion_ids, images, entropies=False)]

    def token_statistics(
        self,
        prompts: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        images: Sequence[Any],
        *,
        entropies: bool = True,
    ) -> list[tuple[list[int], list[float], list[float] | None]]:
        """Per row: the completion's token ids cut at the first stop token, their raw log-probs and,
        with ``entropies``, the full-vocabulary entropy at each of them (MMBoundary's step signals)."""
        import torch

        from catts_graph.models.transformers_vlm import response_ids, teacher_forced_statistics

        if not len(prompts) == len(completion_ids) == len(images):
            raise ValueError(
                f"prompts, completion_ids and images: got {len(prompts)}, {len(completion_ids)} and "
                f"{len(images)} rows, expected one each per completion"
            )
        model = self._model()
        stop_ids = self._stop_token_ids(model)
        rows = [response_ids(ids, stop_ids) for ids in completion_ids]
        groups: dict[tuple[str, str], list[int]] = {}
        for index, (prompt, group) in enumerate(zip(prompts, images, strict=True)):
            groups.setdefault((_prompt_key(prompt), images_key(_as_list(group))), []).append(index)
        calls = [
            members[start : start + self.batch_size]
            for members in groups.values()
            for start in range(0, len(members), self.batch_size)
        ]
        parameter = next(model.parameters())
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[tuple[list[int], list[float], list[float] | None]] = [
            (row, [], [] if entropies else None) for row in rows
        ]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                agreed = _agreed_count(len(calls), parameter.device)
                for number in range(agreed):
                    members = calls[min(number, len(calls) - 1)]
                    first = members[0]
                    prefix = self._encode(prompts[first], _as_list(images[first]), parameter)
                    values, spread = teacher_forced_statistics(
                        model,
                        prefix,
                        [rows[i] for i in members],
                        pad_token_id=int(pad_id),
                        entropies=entropies,
                    )
                    if number < len(calls):  # a repeated call only keeps the processes in step
                        for k, index in enumerate(members):
                            out[index] = (rows[index], values[k], None if spread is None else spread[k])
        finally:
            model.train(was_training)
        return out

    def _model(self) -> Any:
        if self._model_getter is None:
            raise RuntimeError("PolicyScorer is not bound to a model: call scorer.bind(model) first")
        return self._model_getter()

    def _stop_token_ids(self, model: Any) -> set[int]:
        from catts_graph.models.transformers_vlm import stop_token_ids

        if self._stop_ids is None:
            self._stop_ids = stop_token_ids(model, self.tokenizer)
        return self._stop_ids

    def _encode(self, prompt: Any, images: list[Any], parameter: Any) -> dict[str, Any]:
        """The batch-1 processor inputs of one prompt as TRL renders it, on the model's device."""
        import torch

        encoded = self.processor.apply_chat_template(
            [_with_images(prompt, images)],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        return {
            name: value.to(
                device=parameter.device, dtype=parameter.dtype if torch.is_floating_point(value) else None
            )
            for name, value in encoded.items()
            if isinstance(value, torch.Tensor)
        }


def _prompt_key(prompt: Any) -> str:
    """What identifies a prompt for grouping rows: its JSON, image parts reduced to a placeholder
    (the images are compared by their pixels)."""
    return json.dumps(prompt, sort_keys=True, default=lambda _: "<image>")


def _agreed_count(count: int, device: Any) -> int:
    """The largest ``count`` over the processes of a distributed run (``count`` itself otherwise)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    total = torch.tensor([count], device=device)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return int(total.item())


def _as_list(images: Any) -> list[Any]:
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _with_images(prompt: Any, images: list[Any]) -> list[dict[str, Any]]:
    """``prompt`` (a conversation) with its image parts holding ``images``, in order.

    A prompt whose image parts are filled (as TRL passes it) has them replaced; a plain-text prompt
    gets the images inserted before the first user text, as TRL does.
    """
    from trl.data_utils import prepare_multimodal_messages

    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    slots = [
        part
        for message in prompt
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    ]
    if not slots:
        return prepare_multimodal_messages(prompt, images=images)
    if len(slots) != len(images):
        raise ValueError(f"the prompt has {len(slots)} image parts but {len(images)} images were given")
    queue = iter(images)
    out = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            content = [
                {**part, "image": next(queue)}
                if isinstance(part, dict) and part.get("type") == "image"
                else part
                for part in content
            ]
        out.append({**message, "content": content})
    return out


# -- confidence rewards -------------------------------------------------------------------------

DEFAULT_SENSITIVITY_MARGIN = 1.0
"""NMLP units. After CDRL the paper's model is 1.1-1.4 NMLP less sure under perturbation (its
probe), so the reward keeps pushing until the gap is about that large."""

CALIBRATION_VARIANTS: tuple[str, ...] = ("brier", "signed")


def sensitivity_reward(own_nmlp_noised: float, mean_nmlp_original: float, margin: float) -> float:
    """The perceptual-sensitivity reward of one rollout on a noised image, a hinge with a margin:

    ``r = -max(0, mean_nmlp_original + margin - own_nmlp_noised)``

    ``own_nmlp_noised`` is the rollout's own NMLP under its own (noised) prompt image and
    ``mean_nmlp_original`` the mean NMLP of the same item's rollouts on the original image, in the
    same step. ``r`` is 0 once the model is at least ``margin`` NMLP less sure of its own answer to
    the noised image than of its answers to the original, and minus the shortfall before that. It
    does not look at the answer: becoming unsure is what is paid for, whether the answer is kept or
    changed (the calibration reward judges the answer).

    Why a hinge: GRPO normalises rewards within each prompt's group of rollouts, and every rollout of
    a noised group shares ``mean_nmlp_original``. A linear ``own - mean_original`` would lose that
    reference in the normalisation and mean "raise NMLP on noised images" without limit, paying for
    ever vaguer answers. The hinge keeps the reference: past the margin a vaguer answer earns nothing
    more, and a group whose rollouts are all past it gets no advantage from this reward (below the
    margin, rollouts are still ranked by their own NMLP; the reference decides where paying stops,
    and it moves with the model's confidence on the original image). The clipped
    ``min(own - mean_original, margin)`` is the same reward plus the constant ``margin``, which the
    normalisation removes.

    >>> sensitivity_reward(2.0, 0.5, 1.0)  # 1.5 NMLP less sure than on the original: past the margin
    0.0
    >>> sensitivity_reward(0.75, 0.5, 1.0)  # only 0.25 less sure: 0.75 short
    -0.75
    >>> sensitivity_reward(0.25, 0.5, 1.0)  # surer than on the original
    -1.25
    """
    for name, value in (("own_nmlp_noised", own_nmlp_noised), ("mean_nmlp_original", mean_nmlp_original)):
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r}: expected a finite NMLP")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin={margin!r}: expected a finite number >= 0 (NMLP units)")
    return min(0.0, own_nmlp_noised - (mean_nmlp_original + margin))  # the hinge, without a -0.0


def calibration_reward(confidence: float, correct: bool, variant: str = "brier") -> float:
    """Confident and right is rewarded, confident and wrong penalised; ``c = exp(-NMLP)`` in [0, 1].

    ``brier`` (default): ``1 - 2 (c - y)^2`` with ``y`` = 1 if correct else 0, the negative Brier
    score mapped onto [-1, 1]. A proper scoring rule: if the answer is right with probability ``p``,
    the expected reward is highest at ``c = p``. ``signed``: ``c`` if correct else ``-c``, whose
    expectation ``(2p - 1) c`` is highest at ``c = 1`` whenever ``p > 1/2`` and at ``c = 0``
    otherwise: it pushes confidence to the extremes instead of to ``p``.

    >>> calibration_reward(0.5, False)
    0.5
    >>> calibration_reward(0.5, False, "signed")
    -0.5
    """
    if variant not in CALIBRATION_VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {CALIBRATION_VARIANTS}")
    if not 0 <= confidence <= 1:
        raise ValueError(f"confidence={confidence!r}: expected a number in [0, 1]")
    if variant == "signed":
        return confidence if correct else -confidence
    return 1.0 - 2.0 * (confidence - float(correct)) ** 2


class _OwnConfidenceReward:
    """What the two confidence rewards share: each completion's NMLP under its *own* prompt images
    (column ``images``: the original or the noised copy), from one :class:`ConfidenceScorer`. Both
    rewards ask for the same rows, so in a step the second reads the scorer's cache."""

    def __init__(self, name: str, scorer: ConfidenceScorer, images_column: str) -> None:
        self.__name__ = name
        self.scorer = scorer
        self.images_column = images_column

    def _own_nmlp(
        self, prompts: Sequence[Any], completion_ids: Sequence[Sequence[int]], kwargs: dict[str, Any]
    ) -> list[float | None]:
        images = reward_column(kwargs, self.images_column, len(completion_ids), self.__name__)
        return self.scorer.nmlp(prompts, completion_ids, images)


@dataclass
class _PairRows:
    """The NMLPs of one pair's rollouts in a generation batch, and the processes they came from."""

    original: list[float] = field(default_factory=list)
    noised: list[float] = field(default_factory=list)
    has_original: bool = False
    processes: set[int] = field(default_factory=set)


class PerceptualSensitivityReward(_OwnConfidenceReward):
    """On noised rows, :func:`sensitivity_reward` of each rollout's own NMLP against the mean NMLP of
    the same pair's rollouts on the original image in this step; ``None`` on original rows.

    Rows are matched by the ``pair_id`` column and told apart by ``variant``. TRL hands a reward
    function only its own process's rows, and a pair's two groups may sit on different processes
    (:class:`~catts_training.cdrl.data.PairedRepeatSampler` keeps them in one generation batch), so the
    rows' ``(pair_id, variant, NMLP)`` are first gathered from every process (one small
    ``all_gather_object``; nothing in a single process). A noised row whose pair has no original
    rows in the gathered batch is an error, not a silent ``None``.

    Logged over the whole generation batch (every process logs the same values):
    ``cdrl/nmlp_original`` and ``cdrl/nmlp_noised`` (mean NMLP of the rollouts of each variant);
    ``cdrl/confidence_drop``, the mean over pairs of ``mean exp(-NMLP)`` of the noised rollouts minus
    that of the original rollouts (what the probe measures, negative when confidence falls);
    ``cdrl/confidence_drop_nmlp``, the same with ``-NMLP`` (the paper's unit); and
    ``cdrl/pairs_across_processes``, the fraction of pairs whose rollouts came from more than one
    process (the pairs whose reward needed the gather).
    """

    def __init__(
        self,
        scorer: ConfidenceScorer,
        *,
        margin: float = DEFAULT_SENSITIVITY_MARGIN,
        images_column: str = "images",
        pair_column: str = "pair_id",
        variant_column: str = "variant",
    ) -> None:
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin={margin!r}: expected a finite number >= 0 (NMLP units)")
        super().__init__("perceptual_sensitivity", scorer, images_column)
        self.margin = float(margin)
        self.pair_column = pair_column
        self.variant_column = variant_column

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(completion_ids)
        own = self._own_nmlp(prompts, completion_ids, kwargs)
        pair_ids = reward_column(kwargs, self.pair_column, n, self.__name__)
        variants = reward_column(kwargs, self.variant_column, n, self.__name__)
        unknown = sorted({str(v) for v in variants} - set(VARIANTS))
        if unknown:
            raise ValueError(
                f"reward {self.__name__!r}: column {self.variant_column!r} has {unknown}; expected {VARIANTS}"
            )
        pairs = _pair_rows(_gather_rows(list(zip(pair_ids, variants, own, strict=True))))
        _log_pairs(kwargs, pairs)
        rewards: list[float | None] = []
        for pair_id, variant, value in zip(pair_ids, variants, own, strict=True):
            if variant == ORIGINAL:
                rewards.append(None)
                continue
            rows = pairs[pair_id]
            if not rows.has_original:
                raise ValueError(
                    f"reward {self.__name__!r}: pair_id {pair_id!r} has noised rollouts but no original "
                    "ones in this generation batch; both rows of a pair must be sampled together "
                    "(catts_training.cdrl.trainer.CDRLTrainer's PairedRepeatSampler)"
                )
            if value is None or not rows.original:
                rewards.append(None)  # an empty completion, or no original rollout had one token
                continue
            reference = sum(rows.original) / len(rows.original)
            rewards.append(sensitivity_reward(value, reference, self.margin))
        return rewards


def _gather_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``rows`` of every process of a distributed run, in process order, each with its process
    index in front (this process's rows alone, with index 0, outside one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [(0, *row) for row in rows]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    return [(process, *row) for process, part in enumerate(gathered) for row in part]


def _pair_rows(batch: Sequence[tuple[Any, ...]]) -> dict[Any, _PairRows]:
    """``(process, pair_id, variant, nmlp)`` rows grouped by pair (NMLPs that are None left out)."""
    pairs: dict[Any, _PairRows] = {}
    for process, pair_id, variant, value in batch:
        rows = pairs.setdefault(pair_id, _PairRows())
        rows.processes.add(int(process))
        if variant == ORIGINAL:
            rows.has_original = True
        if value is not None:
            (rows.original if variant == ORIGINAL else rows.noised).append(float(value))
    return pairs


def _log_pairs(kwargs: dict[str, Any], pairs: dict[Any, _PairRows]) -> None:
    """The batch-wide metrics of :class:`PerceptualSensitivityReward` (see its docstring)."""
    log_metric = kwargs.get("log_metric")
    if log_metric is None or not pairs:
        return
    log_mean(kwargs, "cdrl/nmlp_original", [v for rows in pairs.values() for v in rows.original])
    log_mean(kwargs, "cdrl/nmlp_noised", [v for rows in pairs.values() for v in rows.noised])
    both = [rows for rows in pairs.values() if rows.original and rows.noised]
    if both:
        clean = [_mean([confidence_from_nmlp(v) for v in rows.original]) for rows in both]
        noised = [_mean([confidence_from_nmlp(v) for v in rows.noised]) for rows in both]
        log_metric("cdrl/confidence_drop", confidence_drop(clean, noised))
        log_metric(
            "cdrl/confidence_drop_nmlp",
            confidence_drop([-_mean(rows.original) for rows in both], [-_mean(rows.noised) for rows in both]),
        )
    log_metric(
        "cdrl/pairs_across_processes", _mean([float(len(rows.processes) > 1) for rows in pairs.values()])
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class CalibrationReward(_OwnConfidenceReward):
    """:func:`calibration_reward` of ``c = exp(-NMLP)``, the completion's own NMLP under its own
    prompt images, on every row (on a noised row, confident and wrong is penalised too).
    ``variant``: ``brier`` (default, proper) or ``signed``. Logs ``cdrl/confidence``."""

    def __init__(
        self,
        scorer: ConfidenceScorer,
        *,
        variant: str = "brier",
        answer_column: str = "answer",
        options_column: str = "options",
        images_column: str = "images",
    ) -> None:
        if variant not in CALIBRATION_VARIANTS:
            raise ValueError(f"variant={variant!r}: expected one of {CALIBRATION_VARIANTS}")
        super().__init__("calibration", scorer, images_column)
        self.variant = variant
        self.answer_column = answer_column
        self.options_column = options_column

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(completions)
        golds = reward_column(kwargs, self.answer_column, n, self.__name__)
        options = kwargs.get(self.options_column) or [None] * n
        values = self._own_nmlp(prompts, completion_ids, kwargs)
        confidences = [None if v is None else confidence_from_nmlp(v) for v in values]
        log_mean(kwargs, "cdrl/confidence", confidences)
        rewards: list[float | None] = []
        for completion, gold, option, c in zip(completions, golds, options, confidences, strict=True):
            correct = c is not None and is_correct(completion_text(completion), gold, _options(option))
            rewards.append(None if c is None else calibration_reward(c, correct, self.variant))
        return rewards


def build_rewards(
    scorer: ConfidenceScorer,
    *,
    sensitivity_margin: float = DEFAULT_SENSITIVITY_MARGIN,
    calibration_variant: str = "brier",
) -> list[Any]:
    """The four CDRL rewards in :data:`REWARD_NAMES` order, the two confidence ones sharing ``scorer``."""
    return [
        AccuracyReward(),
        FormatReward(),
        PerceptualSensitivityReward(scorer, margin=sensitivity_margin),
        CalibrationReward(scorer, variant=calibration_variant),
    ]
