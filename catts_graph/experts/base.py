"""Calling an expert chat model: retries with backoff, a per-attempt timeout, usage, JSON parsing.

Every role (Planner, Voter, Critic) builds an :class:`ExpertRequest` (messages, a ``parse``
function and a pydantic schema of the answer), then goes through :func:`call_expert` (or
:func:`acall_expert`). The retries are LangChain's ``with_retry`` around one attempt; a provider
model is asked through ``with_structured_output``, a model without it (the base model as its own
expert, the organism expert) in text. Model errors, timeouts and malformed answers never raise:
they are retried, and the final :class:`ExpertResult` says what happened on each attempt so the
graph can fall back and record why.

An expert is another program's output, so everything it returns is bounded here, on one path: the
reply's length (``max_reply_chars``), its text (lone surrogates replaced), the JSON parse
(:func:`parse_json_object`: nesting depth, integer size), every number a role reads
(:func:`finite_number`) and the token counts it reports. A reply that breaks a bound is a malformed
answer like any other: retried, then reported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableLambda
from PIL import Image
from pydantic import BaseModel

from catts_graph.images import to_base64_png
from catts_graph.redaction import redact

T = TypeVar("T")

_MAX_ERROR_CHARS = 500
_MAX_ECHO_CHARS = 4000
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
DEFAULT_MAX_REPLY_CHARS = 50_000
"""The default of ``max_reply_chars`` (``CATTSConfig.max_expert_reply_chars``)."""
_MAX_JSON_DEPTH = 32
"""Deepest nesting parsed. The answers asked for nest two levels; ``'{"a":' * 100000`` would
otherwise exhaust the parser's recursion (a RecursionError, not a malformed answer)."""
_MAX_INT_DIGITS = 20
"""A longer JSON integer is read as a float (so it is infinite, then refused, when too large for
one): Python's int would take it whole, and a 401-digit int overflows float arithmetic later."""
_MAX_TOKEN_COUNT = 10**9
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class MalformedAnswer(ValueError):
    """The expert answered, but not in the form asked for; the message says what is wrong."""


@dataclass
class ExpertResult(Generic[T]):
    """Outcome of one expert request across all its attempts.

    ``value`` is the parsed answer when ``ok``, else None. ``errors`` holds one line per failed
    attempt ("attempt 1: malformed answer: ..."). ``seconds`` is wall time including backoff.
    Token counts are summed over every attempt whose reply carried ``usage_metadata``.
    """

    value: T | None
    ok: bool
    attempts: int
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    def record(self, role: str) -> dict[str, Any]:
        """A JSON-serialisable summary for the graph's trace (the value itself is not included)."""
        return {
            "role": role,
            "ok": self.ok,
            "attempts": self.attempts,
            "errors": list(self.errors),
            "seconds": round(self.seconds, 3),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


def image_blocks(images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """LangChain v1 standard image content blocks (PNG, base64); OpenAI and Gemini both accept them."""
    return [{"type": "image", "base64": to_base64_png(image), "mime_type": "image/png"} for image in images]


def user_message(text: str, images: Sequence[Image.Image] = ()) -> HumanMessage:
    """One user turn: the images first (as vision models are usually prompted), then the text."""
    if not images:
        return HumanMessage(content=text)
    return HumanMessage(content=[*image_blocks(images), {"type": "text", "text": text}])


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in an expert's answer.

    Accepted, in this order: the whole answer as JSON, a fenced ```json block, the first ``{...}``
    object inside prose. Anything else raises :class:`MalformedAnswer`; so does an object nested
    deeper than 32 levels. Integers of more than 20 digits are read as floats, so no number in the
    result overflows a float conversion (an infinite one is refused by :func:`finite_number`).
    """
    stripped = text.strip()
    if not stripped:
        raise MalformedAnswer("the answer is empty")
    too_deep = False
    for chunk in [stripped, *(m.group(1).strip() for m in _FENCE.finditer(text))]:
        if _too_deep(chunk, 0):
            too_deep = True
            continue
        try:
            value = json.loads(chunk, parse_int=_json_int)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder(parse_int=_json_int)
    for match in re.finditer(r"\{", text):
        if _too_deep(text, match.start()):
            too_deep = True
            continue
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    if too_deep:
        raise MalformedAnswer(f"the JSON in the answer is nested deeper than {_MAX_JSON_DEPTH} levels")
    raise MalformedAnswer(f"no JSON object in the answer: {_preview(stripped)}")


def _too_deep(text: str, start: int) -> bool:
    """Whether the JSON value at ``start`` nests deeper than :data:`_MAX_JSON_DEPTH`.

    Brackets inside JSON strings do not count, as for the parser; the scan ends where the value
    does (depth back to zero), so text after the value is not held against it.
    """
    depth = 0
    for match in _JSON_TOKEN.finditer(text, start):
        bracket = match.group()
        if bracket in "[{":
            depth += 1
            if depth > _MAX_JSON_DEPTH:
                return True
        elif bracket in "]}":
            depth -= 1
            if depth <= 0:
                return False
    return False


def _json_int(digits: str) -> int | float:
    return int(digits) if len(digits.lstrip("-")) <= _MAX_INT_DIGITS else float(digits)


def finite_number(value: Any, what: str) -> float:
    """``value`` (from an expert's JSON) as a finite float, or :class:`MalformedAnswer` naming ``what``.

    Booleans are not numbers here; NaN, infinities and integers too large for a float are refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedAnswer(f"{what} is {_short(repr(value))}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise MalformedAnswer(f"{what} is an integer of {value.bit_length()} bits, too large") from None
    if not math.isfinite(number):
        raise MalformedAnswer(f"{what} is {number!r}, not finite")
    return number


def truncate_middle(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end (the final answer)."""
    if len(text) <= limit:
        return text
    head = limit // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[-tail:]}"


def bound_text(text: str, limit: int, what: str) -> tuple[str, str | None]:
    """``text`` cut in the middle to about ``limit`` characters (:func:`truncate_middle`), and a note
    for the trace when it was cut; the cut is marked in the text, so a model reading it knows."""
    if len(text) <= limit:
        return text, None
    return truncate_middle(text, limit), f"{what} cut from {len(text)} to {limit} characters"


def _preview(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _reply_text(reply: Any) -> str:
    """The reply's text, with lone surrogates (not UTF-8, so neither a tokenizer nor a checkpointer
    takes them) replaced by ``?``."""
    if isinstance(reply, str):
        text = reply
    elif isinstance(reply, BaseMessage):
        text = str(reply.text)
    else:
        raise TypeError(f"the expert model returned {type(reply).__name__}, expected a message")
    return text.encode("utf-8", "replace").decode("utf-8")


def _token_count(value: Any) -> int:
    """A token count from a reply's usage; anything but a plausible count (None, NaN, negative,
    text, absurdly large) counts 0 instead of breaking the run's usage."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    # The range test comes first: it holds for ints of any size, and is False for NaN.
    if not 0 <= value <= _MAX_TOKEN_COUNT:
        return 0
    return int(value)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _check_settings(retries: int, backoff: float, timeout: float | None, max_reply_chars: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if isinstance(max_reply_chars, bool) or not isinstance(max_reply_chars, int) or max_reply_chars < 1:
        raise ValueError(f"max_reply_chars must be an integer >= 1, got {max_reply_chars!r}")
    if backoff < 0:
        raise ValueError(f"backoff must be >= 0 seconds, got {backoff!r}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")


class _FailedAttempt(Exception):
    """One attempt failed in a way worth retrying (recorded already); the only exception retried."""


class _Attempts(Generic[T]):
    """Book-keeping of one request across its attempts, shared by the sync and async paths.

    The message list can change between attempts (a malformed reply is shown back to the model),
    so :class:`~langchain_core.runnables.RunnableRetry` re-runs :meth:`attempt` on this book
    rather than on a fixed input.
    """

    def __init__(
        self,
        model: BaseChatModel,
        messages: Sequence[BaseMessage],
        parse: Callable[[str], T],
        schema: type[BaseModel] | None,
        timeout: float | None,
        max_reply_chars: int,
    ) -> None:
        self.asker = structured_asker(model, schema) or model
        self.base = list(messages)
        self.messages = list(messages)
        self.parse = parse
        self.timeout = timeout or None
        self.max_reply_chars = max_reply_chars
        self.errors: list[str] = []
        self.count = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.start = time.monotonic()

    def attempt(self, _: Any = None) -> T:
        """One sync attempt, under a deadline of ``timeout`` seconds (:func:`_invoke_in_thread`)."""
        self.count += 1
        try:
            if self.timeout:
                reply = _invoke_in_thread(self.asker, self.messages, self.timeout)
            else:
                reply = self.asker.invoke(self.messages)
        except Exception as err:
            return self.settle(err)
        return self.settle(reply)

    async def aattempt(self, _: Any = None) -> T:
        """One async attempt; on the deadline the call is cancelled, not abandoned."""
        self.count += 1
        try:
            reply = await asyncio.wait_for(self.asker.ainvoke(self.messages), self.timeout)
        except Exception as err:
            return self.settle(err)
        return self.settle(reply)

    def settle(self, outcome: Any) -> T:
        """The parsed value of a reply, or :class:`_FailedAttempt` after recording why not.

        ``outcome`` is the model's reply (a message, or structured output's ``{"raw", "parsed",
        "parsing_error"}``) or the exception the call raised.
        """
        if isinstance(outcome, (_AttemptTimeout, TimeoutError)) and self.timeout:
            self.failed(f"timed out after {self.timeout:g} s")
            raise _FailedAttempt
        if isinstance(outcome, Exception):
            self.failed(_describe(outcome))
            raise _FailedAttempt
        ok, value = self.accept(outcome)
        if not ok:
            raise _FailedAttempt
        return value  # type: ignore[return-value]

    def failed(self, reason: str) -> None:
        """Record why attempt ``count`` failed. The text goes to the trace, the checkpoint and the
        evaluation store: credentials a provider echoed in its error are redacted first."""
        self.errors.append(f"attempt {self.count}: {_short(redact(reason))}")

    def accept(self, reply: Any) -> tuple[bool, T | None]:
        """Parse one reply; on a malformed answer, retry with the reason shown to the model."""
        structured = isinstance(reply, Mapping) and "raw" in reply
        raw = reply["raw"] if structured else reply
        usage = getattr(raw, "usage_metadata", None)
        if isinstance(usage, Mapping):
            self.input_tokens += _token_count(usage.get("input_tokens"))
            self.output_tokens += _token_count(usage.get("output_tokens"))
        try:
            text = _structured_text(reply) if structured else _reply_text(reply)
        except TypeError as err:
            self.failed(_describe(err))
            return False, None
        except MalformedAnswer as err:
            return self._malformed(err, _reply_text(raw) if isinstance(raw, BaseMessage) else "")
        try:
            if len(text) > self.max_reply_chars:
                raise MalformedAnswer(
                    f"the reply is {len(text)} characters, over the limit of {self.max_reply_chars} "
                    "(max_expert_reply_chars)"
                )
            return True, self.parse(text)
        except MalformedAnswer as err:
            return self._malformed(err, text)

    def _malformed(self, err: MalformedAnswer, text: str) -> tuple[bool, None]:
        self.failed(f"malformed answer: {err}")
        # Greedy experts (the base model as its own expert) would repeat the same reply to the
        # same prompt: show it the reply and why it was rejected instead.
        self.messages = [
            *self.base,
            AIMessage(content=text[:_MAX_ECHO_CHARS]),
            HumanMessage(
                content=f"That reply could not be used: {_short(str(err))}. Reply again, with "
                "only the JSON object asked for above."
            ),
        ]
        return False, None

    def result(self, value: T | None, ok: bool) -> ExpertResult[T]:
        return ExpertResult(
            value=value,
            ok=ok,
            attempts=self.count,
            errors=self.errors,
            seconds=time.monotonic() - self.start,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
        )


def structured_asker(model: BaseChatModel, schema: type[BaseModel] | None) -> Runnable[Any, Any] | None:
    """``model.with_structured_output(schema, include_raw=True)``, or None when the model has none.

    A model supports structured output when its ``with_structured_output`` does not raise
    NotImplementedError: LangChain's default raises it for every model that does not implement
    ``bind_tools``, while providers (``ChatOpenAI``, ``ChatGoogleGenerativeAI``) implement both.
    The base model as its own expert and the organism expert implement neither, so they are asked
    in text and their JSON is parsed from it. ``include_raw`` keeps the reply's token usage and
    turns a reply that does not fit ``schema`` into a ``parsing_error`` instead of an exception.
    """
    if schema is None:
        return None
    try:
        return model.with_structured_output(schema, include_raw=True)
    except NotImplementedError:
        return None


def _structured_text(reply: Mapping[str, Any]) -> str:
    """Structured output as JSON text, so it goes through the role's one parser and its bounds.

    ``allow_nan`` keeps a NaN a provider let through visible to :func:`finite_number`, which refuses it.
    """
    error = reply.get("parsing_error")
    if error is not None:
        raise MalformedAnswer(f"the reply does not fit the schema: {_describe(error)}")
    parsed = reply.get("parsed")
    if isinstance(parsed, BaseModel):
        parsed = parsed.model_dump(mode="python")
    if not isinstance(parsed, Mapping):
        raise MalformedAnswer(f"no structured answer in the reply (got {type(parsed).__name__})")
    return json.dumps(parsed, ensure_ascii=False, allow_nan=True, default=str)


class _AttemptTimeout(Exception):
    """Our own wait ran out (kept apart from a TimeoutError raised by the provider)."""


class _DaemonWorkers:
    """A bounded pool of daemon threads for expert calls.

    Threads are reused (starting one per call cost milliseconds on a loaded machine, twice per
    graph run) and at most ``limit`` exist, so hung provider calls cannot pile up threads without
    bound. They are daemons, unlike ``ThreadPoolExecutor``'s, whose exit handler would wait for a
    hung call at interpreter exit. A call queued behind ``limit`` busy ones waits its turn, and its
    deadline counts the wait.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0 and self._threads < self.limit
            if start:
                self._threads += 1
            else:
                self._idle -= 1 if self._idle else 0
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name="catts-expert-call", daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            job()
            with self._lock:
                self._idle += 1


_EXPERT_WORKERS = _DaemonWorkers(limit=32)


def _invoke_in_thread(model: Runnable[Any, Any], messages: list[BaseMessage], timeout: float) -> Any:
    """``model.invoke`` on a worker thread (:class:`_DaemonWorkers`), waited on for at most
    ``timeout`` seconds.

    Raises :class:`_AttemptTimeout` when the wait runs out. Python cannot stop a thread: the
    provider call keeps running in the background until it returns or hits the provider's own
    timeout (which :func:`catts_graph.experts.providers.make_chat_model` sets to the same value).
    The caller's context (LangGraph config, callbacks, tracing) is carried into the thread.
    """
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(context.run(model.invoke, messages))
        except BaseException as err:  # handed to the waiting caller, who decides
            future.set_exception(err)

    _EXPERT_WORKERS.submit(work)
    done, _ = concurrent.futures.wait([future], timeout=timeout)
    if not done:
        future.cancel()  # still queued: never started
        raise _AttemptTimeout
    return future.result()


def _retrying(run: _Attempts[T], retries: int, backoff: float) -> Runnable[Any, T]:
    """``run``'s attempts under LangChain's ``with_retry``: up to ``1 + retries`` attempts.

    Before retry k it waits ``backoff * 2**(k-1)`` seconds plus a uniform jitter in
    ``[0, backoff]``, so that parallel runs retrying a rate-limited provider spread out. Only a
    recorded failure is retried (model error, timeout, malformed answer); any other exception,
    such as a bug in a parser, propagates at once.
    """
    attempts = RunnableLambda(run.attempt, afunc=run.aattempt, name="expert_attempt")
    return attempts.with_retry(
        retry_if_exception_type=(_FailedAttempt,),
        stop_after_attempt=1 + retries,
        wait_exponential_jitter=True,
        exponential_jitter_params={"initial": backoff, "exp_base": 2, "jitter": backoff},
    )


def call_expert(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    parse: Callable[[str], T],
    *,
    retries: int,
    backoff: float,
    timeout: float | None,
    max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
    schema: type[BaseModel] | None = None,
) -> ExpertResult[T]:
    """Ask ``model`` and parse its answer, retrying failures; never raises for model or parse errors.

    With a ``schema``, a model that supports structured output (:func:`structured_asker`) is asked
    through it, and its answer is parsed by ``parse`` as JSON text like any other. Up to
    ``1 + retries`` attempts, spaced as :func:`_retrying` says. An attempt fails when the model
    raises, when it does not answer within ``timeout`` seconds (``None`` or 0 = no limit), when its
    reply does not fit ``schema``, is longer than ``max_reply_chars``, or when ``parse`` raises
    :class:`MalformedAnswer`; in the last cases the next attempt shows the model its reply and the
    reason it was rejected. Any other exception from ``parse`` is a bug and propagates.
    """
    _check_settings(retries, backoff, timeout, max_reply_chars)
    run = _Attempts(model, messages, parse, schema, timeout, max_reply_chars)
    try:
        value = _retrying(run, retries, backoff).invoke(None)
    except _FailedAttempt:
        return run.result(None, False)
    return run.result(value, True)


async def acall_expert(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    parse: Callable[[str], T],
    *,
    retries: int,
    backoff: float,
    timeout: float | None,
    max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
    schema: type[BaseModel] | None = None,
) -> ExpertResult[T]:
    """:func:`call_expert` awaiting ``ainvoke``: no thread is held while the model answers."""
    _check_settings(retries, backoff, timeout, max_reply_chars)
    run = _Attempts(model, messages, parse, schema, timeout, max_reply_chars)
    try:
        value = await _retrying(run, retries, backoff).ainvoke(None)
    except _FailedAttempt:
        return run.result(None, False)
    return run.result(value, True)


@dataclass(frozen=True)
class ExpertRequest(Generic[T]):
    """One question for an expert role: the messages, the parser of the answer and its schema.

    Built by a role (e.g. :meth:`Voter.request`) and answered by :meth:`ExpertRole.ask` or
    :meth:`ExpertRole.aask`, so that the code around a call is written once for sync and async.
    """

    role: ExpertRole
    messages: list[BaseMessage]
    parse: Callable[[str], T]
    schema: type[BaseModel] | None = None


class ExpertRole:
    """A role played by an expert chat model, with its retry settings.

    Subclasses build an :class:`ExpertRequest` (messages, parser, schema); :meth:`ask` and
    :meth:`aask` answer it through :func:`call_expert` / :func:`acall_expert`.
    """

    role: str = "expert"

    def __init__(
        self,
        model: BaseChatModel,
        *,
        retries: int = 2,
        backoff: float = 0.5,
        timeout: float | None = 120.0,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
    ) -> None:
        if not isinstance(model, BaseChatModel):
            raise TypeError(
                f"{type(self).__name__}: model must be a LangChain BaseChatModel, got {type(model).__name__}"
            )
        _check_settings(retries, backoff, timeout, max_reply_chars)
        self.model = model
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.max_reply_chars = max_reply_chars

    @classmethod
    def from_config(cls, model: BaseChatModel, config: Any) -> Self:
        """The role with ``config.expert_retries / expert_backoff / expert_timeout /
        max_expert_reply_chars`` (a CATTSConfig)."""
        return cls(
            model,
            retries=config.expert_retries,
            backoff=config.expert_backoff,
            timeout=config.expert_timeout,
            max_reply_chars=config.max_expert_reply_chars,
        )

    def ask(self, request: ExpertRequest[T]) -> ExpertResult[T]:
        """Answer ``request`` (:func:`call_expert`)."""
        return call_expert(
            self.model,
            request.messages,
            request.parse,
            retries=self.retries,
            backoff=self.backoff,
            timeout=self.timeout,
            max_reply_chars=self.max_reply_chars,
            schema=request.schema,
        )

    async def aask(self, request: ExpertRequest[T]) -> ExpertResult[T]:
        """Answer ``request`` awaiting the model (:func:`acall_expert`)."""
        return await acall_expert(
            self.model,
            request.messages,
            request.parse,
            retries=self.retries,
            backoff=self.backoff,
            timeout=self.timeout,
            max_reply_chars=self.max_reply_chars,
            schema=request.schema,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, retries={self.retries}, "
            f"backoff={self.backoff}, timeout={self.timeout})"
        )
