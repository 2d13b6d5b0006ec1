"""The base-model protocol every backend implements.

A base model does two things for CA-TTS: it *samples* N responses to one (images, prompt) pair, and it
*scores* given continuations teacher-forced under one (images, prompt) pair. Both return the
statistics the confidence estimators in :mod:`catts_graph.confidence` need, so no estimator ever
has to go back to the model. How a call samples is one :class:`SamplingParams`, described and
validated here for every backend.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from catts_graph.vcd import answer_logprob


@dataclass(frozen=True)
class TokenLogprobs:
    """Per-token statistics of one piece of generated or teacher-forced text.

    ``logprobs[t]`` is the log-probability of ``token_ids[t]`` under the model's *raw* distribution
    (the softmax of the logits, before temperature, top-k or top-p). ``tokens[t]`` is the decoded text
    of that token, so that ``"".join(tokens)`` reproduces the text; it lets step-level confidence map
    characters back to tokens without the tokenizer.
    """

    token_ids: list[int]
    logprobs: list[float]
    tokens: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"token_ids has {len(self.token_ids)} entries but logprobs has {len(self.logprobs)}"
            )
        if self.tokens is not None and len(self.tokens) != len(self.token_ids):
            raise ValueError(f"tokens has {len(self.tokens)} entries but token_ids has {len(self.token_ids)}")


@dataclass(frozen=True)
class Sample(TokenLogprobs):
    """One sampled response.

    ``top_logprobs[t]`` holds the k largest raw log-probabilities at step t (descending), when the
    caller asked for them (DeepConf's token confidence); capturing them costs O(T * k) per sample.
    ``entropies[t]`` is the entropy of step t's raw distribution over the whole vocabulary,
    ``H_t = -sum_v p_t(v) log p_t(v)`` in nats, when the backend computes it (one float per step,
    O(T)); None when it does not (an API reports top-k log-probs only). ``finish_reason`` is
    ``"stop"`` when the model ended the response itself and ``"length"`` when it hit
    ``max_new_tokens``.
    """

    text: str = ""
    top_logprobs: list[list[float]] | None = None
    finish_reason: str = "stop"
    extra: dict[str, object] = field(default_factory=dict)
    entropies: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.entropies is not None and len(self.entropies) != len(self.token_ids):
            raise ValueError(
                f"entropies has {len(self.entropies)} steps but token_ids has {len(self.token_ids)}"
            )

    def numbered(self, index: int) -> Sample:
        """A copy of this sample, its lists its own, numbered ``index`` in ``extra``: how a backend
        returns n samples when sampling is greedy and one decode gives them all."""
        return dataclasses.replace(
            self,
            token_ids=list(self.token_ids),
            logprobs=list(self.logprobs),
            tokens=list(self.tokens) if self.tokens is not None else None,
            top_logprobs=[list(t) for t in self.top_logprobs] if self.top_logprobs is not None else None,
            entropies=list(self.entropies) if self.entropies is not None else None,
            extra={**self.extra, "index": index},
        )


@dataclass(frozen=True)
class SamplingParams:
    """How :meth:`BaseVLM.sample` draws: the one description of the sampling settings, validated once.

    Every backend reads its settings through this class (``SamplingParams.of(params, **settings)``),
    and the replay wrapper compares calls with it, so a new setting is added here and nowhere else.
    Each step draws from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
    tokens (0: all) and then to the smallest set whose mass reaches ``top_p``; ``temperature == 0``
    is greedy. The log-probs a backend reports are always those of the *raw* distribution
    (``log softmax(logits)``), whatever these settings: they only decide which token is drawn.
    """

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Draw among the k most likely tokens; 0 disables it."""
    max_new_tokens: int = 512
    """The longest response, in tokens (the stop token not counted)."""
    seed: int | None = None
    """Seed of the call (a backend draws sample i from ``(seed, i)``); None: a fresh random seed."""
    top_logprobs: int = 0
    """How many of the largest raw log-probs to keep per step (DeepConf); 0: none."""

    def __post_init__(self) -> None:
        if not is_number(self.temperature) or not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature!r}: expected a number >= 0 (0 means greedy)")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r}: expected a number in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r}: expected an int >= 0 (0 disables it)")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: expected an int >= 1")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed={self.seed!r}: expected None or an int >= 0")
        if not _is_int(self.top_logprobs) or self.top_logprobs < 0:
            raise ValueError(f"top_logprobs={self.top_logprobs!r}: expected an int >= 0")

    @classmethod
    def of(cls, params: SamplingParams | None = None, /, **settings: Any) -> SamplingParams:
        """``params`` (default: all defaults) with ``settings`` given by keyword overriding it.

        The keyword form is how :meth:`BaseVLM.sample` has always been called
        (``sample(images, prompt, n, temperature=0.7, seed=1)``); an unknown keyword is a TypeError
        that lists the valid ones.
        """
        if params is not None and not isinstance(params, SamplingParams):
            raise TypeError(f"params: got {type(params).__name__}, expected SamplingParams or None")
        unknown = sorted(set(settings) - _FIELDS)
        if unknown:
            raise TypeError(f"unknown sampling setting(s) {unknown}; valid: {sorted(_FIELDS)}")
        base = params if params is not None else cls()
        return dataclasses.replace(base, **settings) if settings else base

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (``temperature == 0``): every sample of a call is the same."""
        return self.temperature == 0

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` (validated like the constructor)."""
        return SamplingParams.of(self, **changes)

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments, for a backend called the keyword way."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


LOGPROB_TOLERANCE = 1e-3
"""How far above 0 a reported log-probability may be: a server's float32 rounding of a near-certain
token (read as 0). Above it, a "probability" would exceed 1."""
LOGPROB_FLOOR = -1e5
"""The lowest log-probability read (servers write about -9999 for a masked token); a lower one,
-1e308 say, is no measurement, and sums of a few such overflow to -inf."""
MAX_ENTROPY = 1e5
"""The largest entropy read, in nats (a whole vocabulary is at most ~12 nats)."""
MAX_TOKEN_ID = 2**31 - 1


def checked_number(value: Any, field: str, low: float, high: float, expected: str) -> float:
    """``value`` as a float in ``[low, high]``; a ValueError naming ``field`` and ``expected``
    otherwise (a bool, a string, NaN, an infinity, an integer too large for a float)."""
    if is_number(value):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            number = math.nan
        if low <= number <= high:  # NaN compares false
            return number
    raise ValueError(f"{field}={shown(value)}: expected {expected}")


def checked_logprob(value: Any, field: str) -> float:
    """A reported log-probability: a number in [:data:`LOGPROB_FLOOR`, :data:`LOGPROB_TOLERANCE`],
    read as at most 0; a ValueError naming ``field`` otherwise."""
    expected = f"a log-probability, a number in [{LOGPROB_FLOOR:g}, 0]"
    return min(checked_number(value, field, LOGPROB_FLOOR, LOGPROB_TOLERANCE, expected), 0.0)


def checked_token_id(value: Any, field: str) -> int:
    """A token id: an integer in [-1, :data:`MAX_TOKEN_ID`] (-1: unknown); a ValueError naming
    ``field`` otherwise."""
    if not _is_int(value) or not -1 <= value <= MAX_TOKEN_ID:
        raise ValueError(f"{field}={shown(value)}: expected a token id, an integer in [-1, {MAX_TOKEN_ID}]")
    return int(value)


def checked_text(value: Any, field: str, expected: str = "a string") -> str:
    """``value`` if it is a string that is valid UTF-8 (JSON's ``"\\ud800"`` escapes are not); a
    ValueError naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"{field}={shown(value)}: expected {expected}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{field}: not valid UTF-8 text (a lone surrogate {value[error.start]!r} at character "
            f"{error.start})"
        ) from None
    return value


def shown(value: Any) -> str:
    """``value`` for an error message, at most about 50 characters (a bad value can be huge)."""
    if _is_int(value) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, (dict, list)):
        return f"<a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} entries>"
    text = repr(value)
    return text if len(text) <= 50 else f"{text[:30]}...<{len(text)} characters>"


def input_size_of(model: Any) -> Callable[[Image.Image], tuple[int, int] | None] | None:
    """The backend's ``input_size(image) -> (width, height) | None``, or None when it declares none.

    ``input_size`` is optional: the size the backend's processor resizes an image to before the
    model sees it (:meth:`TransformersVLM.input_size`). Perturbations are applied at that size
    (:func:`catts_graph.perturb.perturbed_views`); a backend that cannot say (a remote server) has
    its images perturbed at their own size.
    """
    function = getattr(model, "input_size", None)
    return function if callable(function) else None


Continue = Callable[..., list[Sample]]
"""A backend's ``continue_reply(images, prompt, prefix, n, params=None, **settings)``."""


def continuation_of(model: Any) -> Continue | None:
    """The backend's ``continue_reply``, or None when it declares none.

    ``continue_reply`` is optional: draw ``n`` continuations of an assistant reply that begins with
    ``prefix`` (text), under the same user turn as :meth:`BaseVLM.sample` and the same
    :class:`SamplingParams`. The model reads the user turn, the generation prompt, then the
    prefix's tokens, and writes on; each :class:`Sample` holds the *new* tokens only (text, ids,
    raw log-probs, entropies of what follows the prefix), so ``prefix + sample.text`` is the
    whole reply. ``step_repair`` needs it (:class:`~catts_graph.models.TransformersVLM`, vLLM
    through :class:`~catts_graph.models.OpenAICompatibleVLM`, and the test double have it); a
    backend that has the method but cannot serve it (a server without the extension) raises
    ``NotImplementedError`` saying why.
    """
    function = getattr(model, "continue_reply", None)
    return function if callable(function) else None


AnswerScorer = Callable[
    [Sequence[Image.Image], str, Sequence[str], Sequence[tuple[int, int]]], list[float | None]
]
"""``score_answers(images, prompt, continuations, spans)``: each continuation's answer log-prob."""


def answer_scorer_of(model: Any) -> AnswerScorer:
    """The backend's ``score_answers``, or the same numbers from its ``score`` when it declares none.

    ``score_answers(images, prompt, continuations, spans)`` returns, for each continuation (text)
    and its answer's characters ``spans[i] = (start, end)``, the answer's log-probability
    teacher-forced as the assistant's reply under the user turn (:func:`catts_graph.vcd.answer_logprob`:
    the answer's tokens and the token that closes it), or None when the backend gave no token
    strings to find the answer by. It is optional: what the visual self-check needs of
    :meth:`BaseVLM.score`, which a backend can compute for less (:class:`~catts_graph.models.TransformersVLM`
    stops each continuation after its answer's closing token and encodes a shared prefix once).
    """
    function = getattr(model, "score_answers", None)
    if callable(function):
        return function  # type: ignore[no-any-return]

    def from_score(
        images: Sequence[Image.Image],
        prompt: str,
        continuations: Sequence[str],
        spans: Sequence[tuple[int, int]],
    ) -> list[float | None]:
        check_spans(continuations, spans)
        scored = model.score(images, prompt, continuations)
        return [
            None
            if not s.logprobs or s.tokens is None
            else answer_logprob(align_tokens(s.tokens, text), s.logprobs, *span)
            for s, text, span in zip(scored, continuations, spans, strict=True)
        ]

    return from_score


def check_spans(continuations: Sequence[str], spans: Sequence[tuple[int, int]]) -> None:
    """Raise unless ``spans`` holds one non-empty ``(start, end)`` inside each continuation."""
    if len(spans) != len(continuations):
        raise ValueError(f"spans: got {len(spans)} for {len(continuations)} continuations; expected one each")
    for i, (text, span) in enumerate(zip(continuations, spans, strict=True)):
        if not isinstance(text, str):
            raise TypeError(f"continuations[{i}]: got {type(text).__name__}, expected str")
        start, end = span
        if not (_is_int(start) and _is_int(end) and 0 <= start < end <= len(text)):
            raise ValueError(
                f"spans[{i}]={span!r}: expected 0 <= start < end <= {len(text)} (a non-empty answer)"
            )


def check_n(n: Any) -> int:
    """``n`` if it is an int >= 1 (the number of responses :meth:`BaseVLM.sample` draws)."""
    if not _is_int(n) or n < 1:
        raise ValueError(f"n={n!r}: expected an int >= 1")
    return int(n)


@runtime_checkable
class BaseVLM(Protocol):
    """What the graph needs from a base model (local transformers, a vLLM server, a test double).

    Two methods, and two declarations a checkpoint may make about how it is asked:
    ``answer_prompt`` and ``reflection_prompt`` name prompt templates (``prompts/<name>.txt``) it
    was trained on, as a chat template travels with a checkpoint; ``None`` means the library's
    (``answer``, ``reflection``). :class:`~catts_graph.models.TransformersVLM` reads them from the
    checkpoint's ``catts.json``; wrappers pass their inner model's on. A backend written before
    they existed (the two methods only) still works: :func:`catts_graph.task.answer_template`
    treats a missing declaration as ``None``, and ``build_graph`` checks the methods alone.
    A third method is optional: ``continue_reply`` (see :func:`continuation_of`), which
    ``step_repair`` needs; without it that module is skipped.
    """

    answer_prompt: str | None
    reflection_prompt: str | None

    def sample(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        n: int,
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        """Draw ``n`` responses to the user turn ``prompt`` with ``images``.

        The sampling settings are ``SamplingParams.of(params, **settings)``: a
        :class:`SamplingParams`, or its fields by keyword (``temperature=0.7, seed=1``), or both
        (keywords win). ``temperature == 0`` means greedy decoding; ``top_logprobs > 0`` asks for
        that many top log-probs per step. The image and prompt prefix is encoded once, not once per
        sample. The graph calls backends the keyword way, so a backend written as
        ``sample(images, prompt, n, *, temperature=..., ...)`` keeps working.
        """
        ...

    def score(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        continuations: Sequence[str],
    ) -> list[TokenLogprobs]:
        """Teacher-forced log-probs of each continuation as the assistant's reply, in one batch."""
        ...


def align_tokens(tokens: Sequence[str], text: str) -> list[str]:
    """Per-token strings that concatenate to ``text``, from per-token strings that may not.

    A token decoded alone renders a character split across byte-level tokens as replacement
    characters ("\\ufffd"), and a token left out of the text (a stop or skipped special token) still
    has its string. A token whose string matches the text where the previous one ended keeps it; a
    run of tokens that do not match gets, on its last token, the text up to where the next matching
    token is found (the token that completes a character carries it, the ones before it carry "");
    text left at the end goes to the last token.
    """
    tokens = list(tokens)
    if "".join(tokens) == text or not tokens:
        return tokens
    pieces = [""] * len(tokens)
    position = 0
    pending: list[int] = []
    for i, token in enumerate(tokens):
        if token and _REPLACEMENT not in token:
            if pending:
                found = text.find(token, position)
            else:
                found = position if text.startswith(token, position) else -1
            if found >= 0:
                if pending:
                    pieces[pending[-1]] = text[position:found]
                    pending = []
                pieces[i] = token
                position = found + len(token)
                continue
        pending.append(i)
    if position < len(text):
        pieces[pending[-1] if pending else -1] += text[position:]
    return pieces


_REPLACEMENT = "\ufffd"


_SPECIAL_TOKEN = re.compile(r"<\|?[^\s<>|]+\|?>")
"""A special token's string (``<|im_end|>``, ``</s>``, ``<eos>``): a text may leave it out."""


def check_spelling(tokens: Sequence[str], text: str, *, tail: bool = False) -> None:
    """That ``tokens``, one string per token, spell ``text``: a ValueError naming the first token
    (index and place in the text) where they do not.

    Each token's string must be the text where the tokens before it end, except:

    - a run of tokens holding ``"\\ufffd"`` (a character split across byte-level tokens, decoded
      alone) stands for the text up to the next token, which must hold the run's own ASCII
      characters and otherwise only non-ASCII ones (the split characters);
    - a special token's string (``<|im_end|>``, ``</s>``) the text leaves out is skipped;
    - with ``tail``, tokens may go on past the end of the text (a stop string the server cut).

    Text the tokens do not reach is a mismatch too.
    """
    position = 0
    split: list[int] = []
    for i, token in enumerate(tokens):
        if _REPLACEMENT in token:
            split.append(i)
            continue
        if not token:
            continue
        if split:
            found = text.find(token, position)
            if found < 0 or not _stands_for(tokens, split, text[position:found]):
                raise ValueError(_misspelt(split[0], tokens, text, position))
            position, split = found, []
        if text.startswith(token, position):
            position += len(token)
        elif tail and token.startswith(text[position:]):
            return
        elif not _SPECIAL_TOKEN.fullmatch(token):
            raise ValueError(_misspelt(i, tokens, text, position))
    if split:
        if not _stands_for(tokens, split, text[position:]):
            raise ValueError(_misspelt(split[0], tokens, text, position))
        position = len(text)
    if position < len(text):
        raise ValueError(
            f"tokens: they spell the text's first {position} of {len(text)} characters, the rest "
            f"({shown(text[position:])}) is no token's: the tokens must spell the text"
        )


def _stands_for(tokens: Sequence[str], run: Sequence[int], gap: str) -> bool:
    """Whether a run of split-character tokens may stand for ``gap``: the same ASCII characters,
    in order, and otherwise only non-ASCII ones."""
    joined = "".join(tokens[j] for j in run).replace(_REPLACEMENT, "")
    return [c for c in gap if c.isascii()] == [c for c in joined if c.isascii()]


def _misspelt(index: int, tokens: Sequence[str], text: str, position: int) -> str:
    return (
        f"tokens[{index}]={shown(tokens[index])} is not the text at character {position} "
        f"({shown(text[position : position + 20])}): the tokens must spell the text"
    )
