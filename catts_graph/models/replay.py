"""A base model that answers from recorded responses: the one replay and memo wrapper.

A call to :class:`ReplayVLM` is answered from what it holds when it can, and passed to the inner
model (if any) when it cannot. What it holds comes three ways:

- *A served pool.* Inside ``with replay.serving(samples, prompt=..., params=...):`` the answer-prompt
  sampling calls (that prompt, temperature > 0) get ``samples`` in order: the first wave the first N,
  a later wave the next ones, as fresh draws would be. Every other call (the greedy re-answer of
  self-reflection, the visual self-check's scoring, the base model as its own expert) goes to the
  inner model. The pool being served is a context variable, which LangGraph carries into its worker
  threads, so one instance (and one compiled graph) serves many items at once, each run seeing only
  its own pool. This is how an evaluation runs every method and every N on one drawing.
- *Responses generated elsewhere* (:meth:`ReplayVLM.from_jsonl`): one JSON line per response, keyed
  by the item's id; :meth:`ReplayVLM.responses` gives an item's in file order, to be served as a pool.
  CA-TTS voting, DeepConf and the self-check's scoring then run on them without generating anything.
- *Memory* (``memo_max_n > 0``): a repeated seeded or greedy ``sample`` with ``n <= memo_max_n``, and a
  repeated ``score`` or ``score_answers``, is answered with what the inner model answered the first
  time. A seeded backend gives such a call one answer, and evaluations ask the same thing at every N
  and method. Unseeded sampling is never remembered (it is meant to differ), nor are big calls
  (pools with top-k log-probs are large).

``score`` can never come from a file: it needs the model. Without an inner model, a call that nothing
recorded answers raises :class:`NotRecordedError`; the evaluation runner turns the modules that need
the model (self-reflection, the visual self-check) off up front and says so in each run's trace.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from catts_graph.models.base import (
    MAX_ENTROPY,
    BaseVLM,
    Sample,
    SamplingParams,
    TokenLogprobs,
    align_tokens,
    answer_scorer_of,
    check_n,
    check_spelling,
    checked_logprob,
    checked_number,
    checked_text,
    checked_token_id,
    shown,
)
from catts_graph.models.openai_compatible import sample_from_choice

__all__ = ["NotRecordedError", "RecordedFile", "ReplayVLM", "images_key", "read_responses"]


class NotRecordedError(LookupError):
    """A call that no recorded response answers reached a :class:`ReplayVLM` with no inner model."""


def images_key(images: Sequence[Image.Image]) -> str:
    """A digest of the images' pixels, sizes and modes."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass
class _Serving:
    samples: Sequence[Sample]
    prompt: str | None
    params: SamplingParams | None
    served: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReplayVLM:
    """Answers ``sample`` and ``score`` from recorded responses, else from ``inner`` (see module doc).

    ``inner`` is any :class:`~catts_graph.models.base.BaseVLM`, or None when everything comes from
    recorded responses (then ``score`` and unrecorded calls raise :class:`NotRecordedError`).
    ``responses`` maps item ids to their recorded responses (:meth:`from_jsonl` fills it; ``source``
    names where they came from, for messages; ``recorded`` the file's path, digest and size, which
    an evaluation's metadata keeps). ``memo_max_n > 0`` remembers repeated deterministic
    calls; ``hits`` and ``misses`` count them. The prompt templates the inner model declares
    (``answer_prompt``, ``reflection_prompt``) and any other attribute (``generate_vcd``, the
    tokenizer, ...) are the inner model's.
    """

    def __init__(
        self,
        inner: BaseVLM | None = None,
        *,
        responses: Mapping[str, Sequence[Sample]] | None = None,
        source: str = "recorded responses",
        memo_max_n: int = 0,
        recorded: RecordedFile | None = None,
    ) -> None:
        if isinstance(memo_max_n, bool) or not isinstance(memo_max_n, int) or memo_max_n < 0:
            raise ValueError(f"memo_max_n={memo_max_n!r}: expected an int >= 0 (0: remember nothing)")
        if inner is None and responses is None:
            raise ValueError("ReplayVLM needs an inner model, recorded responses, or both")
        self.inner = inner
        self.source = source
        self.recorded = recorded
        self.memo_max_n = memo_max_n
        self.answer_prompt = getattr(inner, "answer_prompt", None)
        self.reflection_prompt = getattr(inner, "reflection_prompt", None)
        self.hits = 0
        self.misses = 0
        self._responses = {str(k): list(v) for k, v in (responses or {}).items()}
        self._memo: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()
        self._serving: ContextVar[_Serving | None] = ContextVar(f"catts_replay_{id(self)}", default=None)

    @classmethod
    def from_jsonl(
        cls, path: str | os.PathLike[str], inner: BaseVLM | None = None, *, memo_max_n: int = 0
    ) -> ReplayVLM:
        """Responses generated elsewhere, read from a JSON-lines file (format: :func:`read_responses`).

        ``inner`` scores (the visual self-check) and answers what the file cannot (the greedy
        re-answer of self-reflection, the base model as its own expert); without it those modules
        cannot run.
        """
        responses, recorded = _read_responses(path)
        return cls(inner, responses=responses, source=str(path), memo_max_n=memo_max_n, recorded=recorded)

    def __repr__(self) -> str:
        return f"ReplayVLM(source={self.source!r}, inner={type(self.inner).__name__ if self.inner else None})"

    # -- recorded responses ---------------------------------------------------------------------

    @property
    def item_ids(self) -> list[str]:
        """The ids of the items with recorded responses, in the order they first appear."""
        return list(self._responses)

    def has_responses(self) -> bool:
        """Whether this replay holds recorded responses (not only an inner model and its memory)."""
        return bool(self._responses)

    def responses(self, item_id: str) -> list[Sample]:
        """The recorded responses of ``item_id``, in file order; a clear error when there are none,
        never an empty list (which would be a silent empty vote)."""
        found = self._responses.get(str(item_id))
        if not found:
            known = ", ".join(repr(i) for i in self.item_ids[:5])
            raise ValueError(
                f"{self.source}: no responses for item {str(item_id)!r}; the file has "
                f"{len(self._responses)} items ({known}{', ...' if len(self._responses) > 5 else ''})"
            )
        return list(found)

    @contextmanager
    def serving(
        self,
        samples: Sequence[Sample],
        *,
        prompt: str | None = None,
        params: SamplingParams | None = None,
    ) -> Iterator[list[int]]:
        """Serve ``samples``, in order, to the sampling calls (temperature > 0) made in this context.

        ``prompt``: only calls with this prompt are served (None: every sampling call). ``params``:
        the settings the samples were drawn with; a served call must ask the same temperature, top_p,
        top_k and max_new_tokens and at most as many top log-probs (the seed may differ: a later
        wave asks another). None (responses generated elsewhere): any settings. Yields the served
        indices, growing as calls are served.
        """
        state = _Serving(list(samples), prompt, params)
        token = self._serving.set(state)
        try:
            yield state.served
        finally:
            self._serving.reset(token)

    # -- protocol -------------------------------------------------------------------------------

    def sample(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        n: int,
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        params = SamplingParams.of(params, **settings)
        n = check_n(n)
        state = self._serving.get()
        if state is not None and not params.greedy and state.prompt in (None, prompt):
            return self._serve(state, n, params)
        if self.memo_max_n and n <= self.memo_max_n and (params.greedy or params.seed is not None):
            key = ("sample", images_key(images), prompt, n, params)
            return self._remembered(key, lambda: self._sample_inner(images, prompt, n, params))
        return self._sample_inner(images, prompt, n, params)

    def score(
        self, images: Sequence[Image.Image], prompt: str, continuations: Sequence[Any]
    ) -> list[TokenLogprobs]:
        if self.memo_max_n:
            key = ("score", images_key(images), prompt, tuple(_hashable(c) for c in continuations))
            return self._remembered(key, lambda: self._inner("score").score(images, prompt, continuations))
        return self._inner("score").score(images, prompt, continuations)

    def score_answers(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        continuations: Sequence[str],
        spans: Sequence[tuple[int, int]],
    ) -> list[float | None]:
        """The inner model's answer log-probs (:func:`~catts_graph.models.base.answer_scorer_of`),
        remembered like ``score``."""
        score_answers = answer_scorer_of(self._inner("score_answers"))
        if self.memo_max_n:
            key = (
                "score_answers",
                images_key(images),
                prompt,
                tuple(continuations),
                tuple(map(tuple, spans)),
            )
            return self._remembered(key, lambda: score_answers(images, prompt, continuations, spans))
        return score_answers(images, prompt, continuations, spans)

    def __getattr__(self, name: str) -> Any:
        # Anything else (generate_vcd, detokenize, the processor, ...) is the inner model's.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (and no inner model)")
        return getattr(inner, name)

    # -- internals ------------------------------------------------------------------------------

    def _serve(self, state: _Serving, n: int, params: SamplingParams) -> list[Sample]:
        if state.params is not None:
            recorded, asked = state.params, params
            keys = ("temperature", "top_p", "top_k", "max_new_tokens")
            if any(getattr(asked, k) != getattr(recorded, k) for k in keys) or (
                asked.top_logprobs > recorded.top_logprobs
            ):
                raise ValueError(
                    f"a sampling call asked {asked} but the served samples were drawn with {recorded}"
                )
        with state.lock:
            start = len(state.served)
            if start + n > len(state.samples):
                raise ValueError(
                    f"the graph asked for samples {start}..{start + n - 1}, only {len(state.samples)} are "
                    "served: draw (or record) as many as the largest budget"
                )
            state.served.extend(range(start, start + n))
        return list(state.samples[start : start + n])

    def _sample_inner(
        self, images: Sequence[Image.Image], prompt: str, n: int, params: SamplingParams
    ) -> list[Sample]:
        # By keyword: an inner backend written to the keyword protocol keeps working.
        return list(self._inner("sample").sample(images, prompt, n, **params.as_kwargs()))

    def _inner(self, call: str) -> BaseVLM:
        if self.inner is None:
            raise NotRecordedError(
                f"{self!r}: no recorded response answers this {call}() call and there is no inner model "
                f"to ask; responses from {self.source} can be voted on, but {call}() needs the model"
            )
        return self.inner

    def _remembered(self, key: tuple[Any, ...], compute: Any) -> list[Any]:
        with self._lock:
            found = self._memo.get(key)
            if found is not None:
                self.hits += 1
                return list(found)
        found = list(compute())
        with self._lock:
            self.misses += 1
            self._memo[key] = found
        return list(found)


def _hashable(continuation: Any) -> Any:
    """A memo key part for a continuation: text, or the token ids of a Sample or of a list."""
    if isinstance(continuation, str):
        return continuation
    if isinstance(continuation, TokenLogprobs):
        return ("ids", tuple(continuation.token_ids))
    return ("ids", tuple(continuation))


# -- the JSON-lines format ------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedFile:
    """The file a replay's responses were read from: its path, the SHA-256 of its bytes and its size.

    An evaluation keeps them in its run's metadata, so a run is resumed only from the same bytes: a
    file changed since (fixed, regenerated, another one at the same path) is refused.
    """

    path: str
    sha256: str
    bytes: int


def read_responses(path: str | os.PathLike[str]) -> dict[str, list[Sample]]:
    """Responses per item id, in file order, from a JSON-lines file: one response per line.

    Each line is an object with ``id`` (the item's id, a string or an integer) and either

    - ``text``, ``token_logprobs`` (each generated token's log-probability under the model's raw
      distribution, before temperature / top-k / top-p), and optionally ``top_logprobs`` (per step,
      the largest raw log-probs: a list of numbers, a list of ``{"token", "logprob"}`` objects, or an
      object from token to log-prob), ``tokens`` (per-token strings; they make step-level confidence
      exact), ``entropies`` (per step, the entropy of the raw distribution over the whole
      vocabulary, in nats), ``token_ids`` and ``finish_reason``; or
    - vLLM's OpenAI-format log-probs as they come: a ``logprobs`` object with ``content: [{token,
      logprob, top_logprobs: [{token, logprob}, ...]}, ...]``, the text as ``text`` or
      ``message.content``, and optionally ``finish_reason``, ``stop_reason`` and ``token_ids`` (a
      whole saved choice reads as :class:`~catts_graph.models.OpenAICompatibleVLM` reads a reply:
      the stop token vLLM lists is dropped).

    Every field read is checked, in both formats, and the whole file before any response is
    returned; the first error names the file, the line and the field. A log-prob is a number in
    [-1e5, 0] (up to 1e-3 above 0 is rounding, read as 0), an entropy a number in [0, 1e5], a token
    id an integer in [-1, 2**31 - 1], ``finish_reason`` ``"stop"`` or ``"length"``; NaN, infinities,
    integers too long for a float, text that is not UTF-8 and JSON nested deeper than Python parses
    are refused. Per-token strings (``tokens``, or vLLM's ``token``) must spell the text
    (:func:`~catts_graph.models.base.check_spelling`: a character split across byte-level tokens, a
    special token the text leaves out and, in vLLM's format, a stop string cut from the text are
    the only differences allowed); without them the text and the log-probs are trusted as given.
    Other keys are ignored. Blank lines are skipped.
    """
    return _read_responses(path)[0]


def _read_responses(path: str | os.PathLike[str]) -> tuple[dict[str, list[Sample]], RecordedFile]:
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"responses file {str(source)!r} does not exist")
    responses: dict[str, list[Sample]] = {}
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as lines:  # bytes: the digest is of what was read, and a bad byte is named
        for number, raw in enumerate(lines, start=1):
            digest.update(raw)
            size += len(raw)
            if not raw.strip():
                continue
            where = f"{source}:{number}"
            try:
                item_id, sample = _response(raw)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            responses.setdefault(item_id, []).append(sample)
    if not responses:
        raise ValueError(f"responses file {str(source)!r} holds no responses")
    return responses, RecordedFile(str(source), digest.hexdigest(), size)


def _response(raw: bytes) -> tuple[str, Sample]:
    """One line's item id and response; a ValueError naming the field that is wrong."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
    try:
        row = json.loads(line, parse_int=_json_int)
    except RecursionError:
        raise ValueError("JSON nested deeper than can be read") from None
    except ValueError as err:
        raise ValueError(f"not valid JSON ({err})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    item_id = row.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
        raise ValueError(f"id={shown(item_id)}: expected the item's id, a string or an integer")
    if isinstance(item_id, str):
        checked_text(item_id, "id")
    if "logprobs" in row and "token_logprobs" not in row:
        return str(item_id), sample_from_choice(row, top_logprobs=None, spelled=True)
    return str(item_id), _sample_from_row(row)


def _json_int(text: str) -> int | float:
    """A JSON integer: as an int up to 20 digits, else as a float (inf beyond its range), which
    every numeric field refuses by name; Python refuses to parse ints of over 4,300 digits."""
    return int(text) if len(text) <= 20 else float(text)


def _sample_from_row(row: Mapping[str, Any]) -> Sample:
    text = checked_text(row.get("text"), "text", "the response text, a string")
    logprobs = row.get("token_logprobs")
    if not isinstance(logprobs, list):
        raise ValueError(
            f"token_logprobs={shown(logprobs)}: expected a list of log-probs, one per generated token"
        )
    values = [checked_logprob(v, f"token_logprobs[{t}]") for t, v in enumerate(logprobs)]
    if text and not values:
        raise ValueError("token_logprobs is empty but text is not")
    count = len(values)
    tokens = _per_token(row, "tokens", count)
    if tokens is not None:
        tokens = [checked_text(t, f"tokens[{t_}]") for t_, t in enumerate(tokens)]
        check_spelling(tokens, text)
        tokens = align_tokens(tokens, text)
    token_ids = _per_token(row, "token_ids", count)
    ids = (
        [-1] * count
        if token_ids is None
        else [checked_token_id(v, f"token_ids[{t}]") for t, v in enumerate(token_ids)]
    )
    tops = _per_token(row, "top_logprobs", count)
    entropies = _per_token(row, "entropies", count)
    expected = f"an entropy in nats, a number in [0, {MAX_ENTROPY:g}]"
    finish = row.get("finish_reason", "stop")
    if not isinstance(finish, str) or finish not in ("stop", "length"):
        raise ValueError(f"finish_reason={shown(finish)}: expected 'stop' or 'length'")
    return Sample(
        token_ids=ids,
        logprobs=values,
        tokens=tokens,
        text=text,
        top_logprobs=None
        if tops is None
        else [_top_values(step, f"top_logprobs[{t}]") for t, step in enumerate(tops)],
        entropies=None
        if entropies is None
        else [
            checked_number(v, f"entropies[{t}]", 0.0, MAX_ENTROPY, expected) for t, v in enumerate(entropies)
        ],
        finish_reason=finish,
    )


def _per_token(row: Mapping[str, Any], key: str, count: int) -> list[Any] | None:
    """``row[key]``, a list of one entry per generated token, or None when absent."""
    value = row.get(key)
    if value is not None and (not isinstance(value, list) or len(value) != count):
        raise ValueError(f"{key}={shown(value)}: expected {count} entries, one per entry of token_logprobs")
    return value


def _top_values(step: Any, field: str) -> list[float]:
    """One step's top log-probs, sorted descending, from any of the accepted shapes."""
    if isinstance(step, Mapping):
        values = [checked_logprob(v, f"{field}[{k!r}]") for k, v in step.items()]
    elif isinstance(step, list) and any(isinstance(v, Mapping) for v in step):
        values = []
        for j, top in enumerate(step):
            if not isinstance(top, Mapping) or not isinstance(top.get("token", ""), str):
                raise ValueError(
                    f"{field}[{j}]={shown(top)}: expected {{'token': <string>, 'logprob': <number>}}"
                )
            values.append(checked_logprob(top.get("logprob"), f"{field}[{j}].logprob"))
    elif isinstance(step, list):
        values = [checked_logprob(v, f"{field}[{j}]") for j, v in enumerate(step)]
    else:
        values = []
    if not values:
        raise ValueError(
            f"{field}={shown(step)}: expected a non-empty list of log-probs, of {{'token', 'logprob'}} "
            "objects, or an object from token to log-prob"
        )
    return sorted(values, reverse=True)
