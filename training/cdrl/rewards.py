"""CDRL's rewards, as plain callables with TRL's reward signature.

Each reward is ``reward(prompts, completions, completion_ids, **columns) -> list[float | None]``: one
value per completion, ``None`` where it is undefined (TRL turns that into NaN and leaves it out of
the means). ``columns`` are the dataset's columns, repeated per completion (``answer``, ``options``,
``images``, ``noised_images``), plus TRL's ``log_metric``. The classes are *not* ``nn.Module``s:
TRL would take one for a reward model. Each instance carries a ``__name__``, which TRL uses to log
it as ``rewards/<name>/mean``, so every component shows up separately in the training logs.

- :class:`AccuracyReward`: 1 if the extracted final answer is equivalent to the gold one
  (:func:`catts_graph.answers.extract_answer` and :func:`~catts_graph.answers.is_equivalent`, the
  project's one answer checker, with ``math-verify``), else 0.
- :class:`FormatReward`: 1 if the response ends with a non-empty ``\\boxed{...}`` answer, else 0.
- :class:`PerceptualSensitivityReward`: the same completion is re-scored by the *current* policy under
  the noised image; ``r = scale * clip(NMLP_noised - NMLP_orig, low, high)``. Positive when the model
  is less sure of its own answer once the evidence is gone.
- :class:`CalibrationReward`: with ``c = exp(-NMLP_orig)`` and ``y`` = correct,
  ``signed``: ``r = c`` if correct else ``-c``; ``brier``: ``r = 1 - 2 (c - y)^2`` (the negative Brier
  score mapped onto the same [-1, 1] range).

NMLP is the mean negative log-probability of the completion's tokens (stop tokens excluded, as in
:func:`catts_graph.confidence.nmlp`), under the raw distribution (no temperature). The two confidence
rewards share a :class:`PolicyScorer`, which caches the last batch, so the original image is scored
once per step, not once per reward; it scores through the teacher forcing of
:meth:`catts_graph.models.TransformersVLM.score`, so sampling, evaluation and training read one
log-probability.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from catts_graph.answers import extract_answer
from catts_graph.confidence import confidence_from_nmlp, nmlp
from catts_graph.models.replay import images_key
from catts_graph.task import answer_matches

__all__ = [
    "AccuracyReward",
    "CalibrationReward",
    "ConfidenceScorer",
    "FormatReward",
    "PerceptualSensitivityReward",
    "PolicyScorer",
    "REWARD_NAMES",
    "build_rewards",
    "completion_text",
    "is_correct",
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


def _column(kwargs: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    if name not in kwargs:
        raise KeyError(f"reward {reward!r} needs the dataset column {name!r}; got columns {sorted(kwargs)}")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: column {name!r} has {len(values)} rows, expected {n}")
    return values


def _log(kwargs: dict[str, Any], name: str, values: Sequence[float | None]) -> None:
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
        golds = _column(kwargs, self.answer_column, len(completions), self.__name__)
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
    :func:`~catts_graph.models.transformers_vlm.teacher_forced_logprobs`, the teacher forcing of
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
        # The last few (key, images, values): one step scores the original and the noised images, and
        # the calibration reward asks for the original again.
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
        import torch

        from catts_graph.models.transformers_vlm import response_ids, teacher_forced_logprobs

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
        out: list[list[float]] = [[] for _ in rows]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                agreed = _agreed_count(len(calls), parameter.device)
                for number in range(agreed):
                    members = calls[min(number, len(calls) - 1)]
                    first = members[0]
                    prefix = self._encode(prompts[first], _as_list(images[first]), parameter)
                    values = teacher_forced_logprobs(
                        model, prefix, [rows[i] for i in members], pad_token_id=int(pad_id)
                    )
                    if number < len(calls):  # a repeated call only keeps the processes in step
                        for index, logprobs in zip(members, values, strict=True):
                            out[index] = logprobs
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


class PerceptualSensitivityReward:
    """``scale * clip(NMLP_noised - NMLP_orig, low, high)`` for each completion.

    The completion is scored by ``scorer`` under the original images (column ``images``) and the
    noised ones (column ``noised_images``). Logs ``cdrl/nmlp_original``, ``cdrl/nmlp_noised`` and
    ``cdrl/nmlp_gap`` (before clipping).
    """

    def __init__(
        self,
        scorer: ConfidenceScorer,
        *,
        scale: float = 1.0,
        clip: tuple[float, float] = (-1.0, 1.0),
        images_column: str = "images",
        noised_column: str = "noised_images",
    ) -> None:
        low, high = clip
        if not low < high:
            raise ValueError(f"clip={clip!r}: expected (low, high) with low < high")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale={scale!r}: expected a positive number")
        self.__name__ = "perceptual_sensitivity"
        self.scorer = scorer
        self.scale = float(scale)
        self.clip = (float(low), float(high))
        self.images_column = images_column
        self.noised_column = noised_column

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(completions)
        originals = _column(kwargs, self.images_column, n, self.__name__)
        noised = _column(kwargs, self.noised_column, n, self.__name__)
        before = self.scorer.nmlp(prompts, completion_ids, originals)
        after = self.scorer.nmlp(prompts, completion_ids, noised)
        gaps = [
            b - a if a is not None and b is not None else None for a, b in zip(before, after, strict=True)
        ]
        _log(kwargs, "cdrl/nmlp_original", before)
        _log(kwargs, "cdrl/nmlp_noised", after)
        _log(kwargs, "cdrl/nmlp_gap", gaps)
        low, high = self.clip
        return [None if g is None else self.scale * min(high, max(low, g)) for g in gaps]


class CalibrationReward:
    """Confident and right is rewarded, confident and wrong penalised; ``c = exp(-NMLP_orig)``.

    ``variant="signed"``: ``c`` if correct else ``-c``. ``variant="brier"``: ``1 - 2 (c - y)^2``
    with ``y`` = 1 if correct else 0. Logs ``cdrl/confidence``.
    """

    def __init__(
        self,
        scorer: ConfidenceScorer,
        *,
        variant: Literal["signed", "brier"] = "signed",
        answer_column: str = "answer",
        options_column: str = "options",
        images_column: str = "images",
    ) -> None:
        if variant not in ("signed", "brier"):
            raise ValueError(f"variant={variant!r}: expected 'signed' or 'brier'")
        self.__name__ = "calibration"
        self.scorer = scorer
        self.variant = variant
        self.answer_column = answer_column
        self.options_column = options_column
        self.images_column = images_column

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(completions)
        golds = _column(kwargs, self.answer_column, n, self.__name__)
        options = kwargs.get(self.options_column) or [None] * n
        originals = _column(kwargs, self.images_column, n, self.__name__)
        values = self.scorer.nmlp(prompts, completion_ids, originals)
        confidences = [None if v is None else confidence_from_nmlp(v) for v in values]
        _log(kwargs, "cdrl/confidence", confidences)
        rewards: list[float | None] = []
        for completion, gold, option, c in zip(completions, golds, options, confidences, strict=True):
            if c is None:
                rewards.append(None)
                continue
            correct = is_correct(completion_text(completion), gold, _options(option))
            if self.variant == "signed":
                rewards.append(c if correct else -c)
            else:
                rewards.append(1.0 - 2.0 * (c - float(correct)) ** 2)
        return rewards


def build_rewards(
    scorer: ConfidenceScorer,
    *,
    sensitivity_scale: float = 1.0,
    sensitivity_clip: tuple[float, float] = (-1.0, 1.0),
    calibration_variant: Literal["signed", "brier"] = "signed",
) -> list[Any]:
    """The four CDRL rewards in :data:`REWARD_NAMES` order, the two confidence ones sharing ``scorer``."""
    return [
        AccuracyReward(),
        FormatReward(),
        PerceptualSensitivityReward(scorer, scale=sensitivity_scale, clip=sensitivity_clip),
        CalibrationReward(scorer, variant=calibration_variant),
    ]
