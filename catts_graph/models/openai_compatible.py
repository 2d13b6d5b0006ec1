"""The base model behind an OpenAI-compatible chat server; vLLM is the reference.

This is how CA-TTS scales past one GPU: serve the model with vLLM (tensor / pipeline parallel, as
many replicas as you like behind one URL) and point :class:`OpenAICompatibleVLM` at it::

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --tensor-parallel-size 4 --max-logprobs 20

    from catts_graph import build_graph
    from catts_graph.models.openai_compatible import OpenAICompatibleVLM

    vlm = OpenAICompatibleVLM("http://gpu-host:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct")
    graph = build_graph(vlm)

What goes over the wire:

- ``sample``: one ``POST {base_url}/chat/completions`` with ``n``, ``temperature``, ``top_p``,
  ``seed``, ``max_tokens``, ``logprobs: true`` and ``top_logprobs`` (OpenAI caps it at 20; vLLM at its
  ``--max-logprobs``, default 20). The user turn holds the images as PNG data URIs, then the prompt.
  vLLM extensions ride along unless ``vllm_extensions=False``: ``top_k`` (when > 0),
  ``return_token_ids`` (exact token ids), ``skip_special_tokens: false`` (the text keeps special
  tokens, as :class:`~catts_graph.models.TransformersVLM` does).
- ``continue_reply`` (``step_repair``): the same request with an assistant turn holding the prefix
  after the user turn, rendered with ``add_generation_prompt: false, continue_final_message: true``,
  so the server writes on from the prefix (vLLM only).
- ``score``: teacher-forced log-probs through vLLM's *prompt* log-probs. For each continuation, the
  messages are the user turn and an assistant turn holding the continuation, rendered with
  ``add_generation_prompt: false, continue_final_message: true`` (the prompt ends with the
  continuation, no end-of-turn token), ``prompt_logprobs: 0``, ``max_tokens: 1``. The continuation's
  tokens are the tail of the prompt; their count and ids come from vLLM's ``POST /tokenize`` (at the
  server root, next to ``/v1``), and each id is checked against the one the server scored. The K
  continuations go out as K concurrent requests (a thread pool of ``max_concurrency``); vLLM's prefix
  cache shares the image+prompt prefix between them. Scoring needs vLLM: plain OpenAI servers have
  no prompt log-probs.

Caveats:

- *Raw log-probs.* CA-TTS wants each token's log-probability under the raw distribution (before
  temperature, top-k, top-p). vLLM reports that only with ``--logprobs-mode raw_logprobs``, the
  default of vLLM >= 0.10; older versions (and ``processed_logprobs``) report log-probs after the
  sampling transforms, which makes NMLP depend on the temperature. OpenAI does not document which.
- *Token ids.* With vLLM the ids are exact (``return_token_ids``, or ``token_id:123`` token strings
  from a server started with ``--return-tokens-as-token-ids``). A server that gives neither yields
  ``-1`` for every id; the text, log-probs and per-token strings are still exact.
- *Stop token.* vLLM reports the token that ended a sample (``<|im_end|>``, EOS) in the log-probs
  but not in the text; it is dropped (recognised by vLLM's ``stop_reason`` field), so that, as with
  ``TransformersVLM``, a sample excludes its stop token. OpenAI's API does not list it.
- *Top log-probs.* vLLM lists the chosen token first; when the chosen token is outside the top k, its
  list is the chosen token and the top k-1, so the k-th value may be the chosen token's. The values
  are returned sorted, as the protocol asks.
- *Timeouts.* A non-streaming request sends nothing back until all n samples are done, so
  ``timeout`` must cover the longest generation, not just the connection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx
from PIL import Image

from catts_graph.images import to_base64_png
from catts_graph.models.base import (
    MAX_TOKEN_ID,
    Sample,
    SamplingParams,
    TokenLogprobs,
    align_tokens,
    check_n,
    check_spelling,
    checked_logprob,
    checked_text,
    checked_token_id,
    shown,
)

__all__ = ["OpenAICompatibleVLM", "ServerError", "align_tokens", "sample_from_choice"]

_TOKEN_ID_PREFIX = "token_id:"
_RETRY_AFTER_CAP_S = 60.0


class ServerError(RuntimeError):
    """A request to the server failed; the message names the URL, the status and the server's words.

    ``status_code`` is None when no HTTP response came back (connection refused, timeout).
    """

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class OpenAICompatibleVLM:
    """A base model served over the OpenAI chat completions API with logprobs (vLLM, see module doc).

    ``base_url`` is the API root including ``/v1`` (``http://host:8000/v1``); ``model`` the served
    model name. ``api_key`` defaults to ``$OPENAI_API_KEY``, else ``"EMPTY"`` (vLLM without
    ``--api-key`` ignores it). ``timeout`` is in seconds per request (see the timeouts caveat).
    Connection errors, timeouts, HTTP 429 and 5xx are retried ``max_retries`` times, waiting
    ``backoff * 2**attempt`` seconds (or the server's ``Retry-After``); other errors raise
    :class:`ServerError` at once. ``vllm_extensions=False`` sends only standard OpenAI fields, for
    servers that reject unknown ones: then ``top_k`` must be 0, token ids are -1 and ``score`` is
    unavailable. ``extra_body`` is merged into every chat request (e.g. ``{"mm_processor_kwargs":
    {...}}``). The instance is thread-safe; :meth:`close` (or ``with``) releases its connections.
    """

    answer_prompt: str | None = None
    reflection_prompt: str | None = None
    """A served model is asked in the library's prompts (a server does not declare its own)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 8,
        vllm_extensions: bool = True,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: expected an http(s) URL such as http://host:8000/v1")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r}: expected the served model name")
        if not timeout > 0:
            raise ValueError(f"timeout={timeout!r}: expected seconds > 0")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r}: expected an int >= 0")
        if not backoff >= 0:
            raise ValueError(f"backoff={backoff!r}: expected seconds >= 0")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r}: expected an int >= 1")
        self.base_url = base_url.rstrip("/")
        # vLLM serves /tokenize at the server root, beside /v1.
        root = self.base_url.removesuffix("/v1")
        self.chat_url = f"{self.base_url}/chat/completions"
        self.tokenize_url = f"{root}/tokenize"
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_concurrency = max_concurrency
        self.vllm_extensions = vllm_extensions
        self.extra_body = dict(extra_body or {})
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "EMPTY")
        self._client = httpx.Client(
            timeout=self.timeout,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=max_concurrency + 2),
        )

    def __repr__(self) -> str:
        return f"OpenAICompatibleVLM(base_url={self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.close()

    def __enter__(self) -> OpenAICompatibleVLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol -------------------------------------------------------------------------------

    def sample(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        n: int,
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        """Draw ``n`` responses in one request (the server encodes the image+prompt prefix once).

        Settings: ``SamplingParams.of(params, **settings)``. ``temperature == 0`` is greedy: one
        response is requested and copied ``n`` times. ``extra`` holds ``seed`` and ``index``.
        """
        return self._sample([_user_message(images, prompt)], n, SamplingParams.of(params, **settings))

    def continue_reply(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        prefix: str,
        n: int,
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        """Draw ``n`` continuations of an assistant reply that begins with ``prefix``, in one request.

        The messages are the user turn and an assistant turn holding ``prefix``, rendered with vLLM's
        ``add_generation_prompt: false, continue_final_message: true`` (the prompt ends with the
        prefix, no end-of-turn token), so the server writes on from it; each sample holds the new
        text and its tokens only. Needs vLLM (``vllm_extensions=True``): a plain OpenAI server would
        answer a new turn instead, so without the extensions this raises ``NotImplementedError``.
        """
        if not self.vllm_extensions:
            raise NotImplementedError(
                f"{self!r}: continue_reply needs vLLM's continue_final_message; construct with "
                "vllm_extensions=True"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: got {type(prefix).__name__}, expected str")
        messages = [_user_message(images, prompt)]
        extra: dict[str, Any] = {}
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
            extra = {"add_generation_prompt": False, "continue_final_message": True}
        return self._sample(messages, n, SamplingParams.of(params, **settings), extra)

    def _sample(
        self,
        messages: list[dict[str, Any]],
        n: int,
        params: SamplingParams,
        extra: Mapping[str, Any] | None = None,
    ) -> list[Sample]:
        n = check_n(n)
        if params.top_k and not self.vllm_extensions:
            raise ValueError(
                f"top_k={params.top_k}: needs vllm_extensions=True (top_k is not an OpenAI field)"
            )
        rows = 1 if params.greedy else n
        body: dict[str, Any] = {
            **self.extra_body,
            **(extra or {}),
            "model": self.model,
            "messages": messages,
            "n": rows,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "logprobs": True,
        }
        if params.top_logprobs:
            body["top_logprobs"] = params.top_logprobs
        if params.seed is not None:
            body["seed"] = params.seed
        if self.vllm_extensions:
            body.update(return_token_ids=True, skip_special_tokens=False, spaces_between_special_tokens=False)
            if params.top_k:
                body["top_k"] = params.top_k
        reply = self._post(self.chat_url, body)
        choices = reply.get("choices")
        if not isinstance(choices, list) or len(choices) != rows:
            got = len(choices) if isinstance(choices, list) else choices
            raise ServerError(f"POST {self.chat_url}: expected {rows} choices, got {got}", url=self.chat_url)
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        samples = []
        for i, choice in enumerate(choices):
            try:
                sample = sample_from_choice(choice, top_logprobs=params.top_logprobs)
            except ValueError as err:
                raise ServerError(f"POST {self.chat_url}: {err}", url=self.chat_url) from err
            samples.append(replace(sample, extra={"seed": params.seed, "index": i}))
        if rows == 1 and n > 1:
            samples = [samples[0].numbered(i) for i in range(n)]
        return samples

    def score(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        continuations: Sequence[str],
    ) -> list[TokenLogprobs]:
        """Teacher-forced raw log-probs of each continuation as the assistant's reply.

        One tokenize and one chat request per continuation, K continuations in parallel (at most
        ``max_concurrency`` at a time). Raises ``ValueError`` when the server tokenises a
        continuation differently inside the chat prompt than alone (the chat template or the
        tokenizer merged it with the text before it, e.g. a continuation starting with a newline).
        """
        if not self.vllm_extensions:
            raise RuntimeError(
                f"{self!r}: score needs vLLM's prompt_logprobs; construct with vllm_extensions=True"
            )
        for index, continuation in enumerate(continuations):
            if not isinstance(continuation, str):
                raise TypeError(f"continuations[{index}]: got {type(continuation).__name__}, expected str")
        user = _user_message(images, prompt)
        if len(continuations) <= 1:
            return [self._score_one(user, c, i) for i, c in enumerate(continuations)]
        workers = min(len(continuations), self.max_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="catts-score") as pool:
            futures = [pool.submit(self._score_one, user, c, i) for i, c in enumerate(continuations)]
            return [f.result() for f in futures]

    # -- internals ------------------------------------------------------------------------------

    def _score_one(self, user: dict[str, Any], continuation: str, index: int) -> TokenLogprobs:
        if not continuation:
            return TokenLogprobs(token_ids=[], logprobs=[], tokens=[])
        tokenized = self._post(
            self.tokenize_url,
            {"model": self.model, "prompt": continuation, "add_special_tokens": False},
        )
        ids = tokenized.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise ServerError(
                f"POST {self.tokenize_url}: expected a 'tokens' list of ints, got {str(tokenized)[:200]}",
                url=self.tokenize_url,
            )
        if not ids:
            return TokenLogprobs(token_ids=[], logprobs=[], tokens=[])
        body = {
            **self.extra_body,
            "model": self.model,
            "messages": [user, {"role": "assistant", "content": continuation}],
            "add_generation_prompt": False,
            "continue_final_message": True,
            "prompt_logprobs": 0,
            "max_tokens": 1,
            "temperature": 0.0,
        }
        reply = self._post(self.chat_url, body)
        prompt_logprobs = reply.get("prompt_logprobs")
        if not isinstance(prompt_logprobs, list):
            raise ServerError(
                f"POST {self.chat_url}: no prompt_logprobs in the reply; scoring needs a vLLM server",
                url=self.chat_url,
            )
        if len(prompt_logprobs) < len(ids) + 1:
            raise ServerError(
                f"POST {self.chat_url}: {len(prompt_logprobs)} prompt log-probs for a prompt that ends "
                f"with a {len(ids)}-token continuation",
                url=self.chat_url,
            )
        logprobs: list[float] = []
        pieces: list[str] = []
        for position, (expected, entry) in enumerate(zip(ids, prompt_logprobs[-len(ids) :], strict=True)):
            scored = entry.get(str(expected)) if isinstance(entry, Mapping) else None
            if scored is None:
                got = sorted(entry) if isinstance(entry, Mapping) else entry
                raise ValueError(
                    f"continuations[{index}]: token {position} is id {expected} when tokenised alone, "
                    f"but the server's prompt has {got} there; the chat template or tokenizer joined "
                    f"the continuation {continuation[:40]!r} to the text before it"
                )
            logprobs.append(float(scored["logprob"]))
            pieces.append(scored.get("decoded_token") or "")
        return TokenLogprobs(
            token_ids=list(ids), logprobs=logprobs, tokens=align_tokens(pieces, continuation)
        )

    def _post(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST JSON with retries on connection errors, timeouts, 429 and 5xx; the reply as a dict."""
        attempts = self.max_retries + 1
        failure = ""
        status: int | None = None
        cause: BaseException | None = None
        for attempt in range(attempts):
            delay = self.backoff * 2**attempt
            try:
                response = self._client.post(url, json=body)
            except httpx.TimeoutException as err:
                failure, status, cause = f"timed out after {self.timeout:g} s", None, err
            except httpx.TransportError as err:
                failure, status, cause = f"connection failed ({type(err).__name__}: {err})", None, err
            else:
                if response.status_code < 400:
                    return _json_object(response, url)
                status, cause = response.status_code, None
                failure = f"HTTP {status}: {_server_message(response)}"
                if status != 429 and status < 500:
                    raise ServerError(f"POST {url} failed with {failure}", url=url, status_code=status)
                delay = _retry_after(response, default=delay)
            if attempt + 1 < attempts:
                time.sleep(delay)
        raise ServerError(
            f"POST {url} failed after {attempts} attempt{'s' if attempts > 1 else ''}: {failure}",
            url=url,
            status_code=status,
        ) from cause


def sample_from_choice(
    choice: Mapping[str, Any], *, top_logprobs: int | None = 0, spelled: bool = False
) -> Sample:
    """One OpenAI chat-completion choice, as a server sends it, as a :class:`Sample`.

    Reads ``message.content`` (or ``text``, as a completions choice or a saved response has it),
    ``logprobs.content`` (``[{token, logprob, bytes, top_logprobs: [{token, logprob}, ...]}, ...]``),
    ``finish_reason``, and vLLM's ``token_ids`` and ``stop_reason`` (see the module doc for the
    quirks; the listed stop token is dropped). ``top_logprobs``: how many top log-probs each step
    must have (the largest, sorted; 0: none kept); None keeps all the entries give, sorted.

    Every field read is checked, and a ValueError names the first that is wrong: the text a string
    (a choice with neither ``message`` nor ``text`` has none), each entry's ``token`` a string,
    ``logprob`` and the top ones log-probabilities (:func:`~catts_graph.models.base.checked_logprob`),
    ``bytes`` byte values, ``token_ids`` one token id per entry, ``finish_reason`` ``"stop"`` or
    ``"length"`` (absent: ``"stop"``; an aborted or filtered generation is no sample),
    ``stop_reason`` absent, null, a string or an integer. With ``spelled`` (a recorded file) the
    tokens must also spell the text (:func:`~catts_graph.models.base.check_spelling`; after a stop
    string they may go past it); a live server's are aligned to its text instead (a stop string,
    a skipped special token).
    """
    if not isinstance(choice, Mapping):
        raise ValueError(f"expected a choice object, got {type(choice).__name__}")
    if "message" in choice:
        message = choice["message"]
        if not isinstance(message, Mapping):
            raise ValueError(f"message={shown(message)}: expected {{'content': <the response text>}}")
        text = checked_text(message.get("content"), "message.content", "the response text, a string")
    elif "text" in choice:
        text = checked_text(choice["text"], "text", "the response text, a string")
    else:
        raise ValueError("the choice has neither 'message' nor 'text': expected the response text in one")
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        raise ValueError(
            "the reply has no log-probs (logprobs.content); CA-TTS needs each token's log-prob: ask with "
            "logprobs=true a server that returns them (vLLM, or an OpenAI model that supports logprobs)"
        )
    entries = [_entry(entry, f"logprobs.content[{step}]") for step, entry in enumerate(content)]
    ids = choice.get("token_ids")
    if ids is not None:
        if not isinstance(ids, list) or len(ids) != len(entries):
            raise ValueError(
                f"token_ids={shown(ids)}: expected {len(entries)} token ids, one per logprobs.content entry"
            )
        ids = [checked_token_id(v, f"token_ids[{i}]") for i, v in enumerate(ids)]
    finish = choice.get("finish_reason")
    finish = "stop" if finish is None else finish
    if not isinstance(finish, str) or finish not in ("stop", "length"):
        raise ValueError(
            f"finish_reason={shown(finish)}: expected 'stop' or 'length' (an aborted or filtered "
            "generation is no sample)"
        )
    stop = choice.get("stop_reason")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, (str, int))):
        raise ValueError(f"stop_reason={shown(stop)}: expected null, a stop string or a stop token id")
    # vLLM (the server that sends `stop_reason`) lists the EOS / stop-token-id that ended a sample;
    # a stop *string* (str stop_reason) is not a token of its own.
    if finish == "stop" and entries and "stop_reason" in choice and not isinstance(stop, str):
        entries.pop()
        if ids is not None:
            ids.pop()
    if ids is None:
        ids = [entry.token_id for entry in entries]
    if text and not entries:
        raise ValueError("the reply has text but no per-token log-probs")
    tokens = [entry.text for entry in entries]
    if spelled:
        check_spelling(tokens, text, tail=finish == "stop" and isinstance(stop, str))
    tops: list[list[float]] | None = None
    if top_logprobs or (top_logprobs is None and any(entry.tops for entry in entries)):
        tops = []
        for step, entry in enumerate(entries):
            values = sorted(entry.tops, reverse=True)
            if top_logprobs is None and not values:
                raise ValueError(f"logprobs.content[{step}] has no top log-probs while other steps have them")
            if top_logprobs is not None and len(values) < top_logprobs:
                raise ValueError(f"{len(values)} top log-probs at step {step}, {top_logprobs} were asked for")
            tops.append(values if top_logprobs is None else values[:top_logprobs])
    return Sample(
        token_ids=ids,
        logprobs=[entry.logprob for entry in entries],
        tokens=align_tokens(tokens, text),
        text=text,
        top_logprobs=tops,
        finish_reason=finish,
    )


@dataclass(frozen=True)
class _Entry:
    """One checked ``logprobs.content`` entry: the token's text (from ``bytes`` in vLLM's
    ``token_id:N`` form), its id (-1 unless that form gives it), its log-prob and its top ones."""

    text: str
    token_id: int
    logprob: float
    tops: list[float]


def _entry(entry: Any, where: str) -> _Entry:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}={shown(entry)}: expected {{'token': ..., 'logprob': <number>}}")
    token = checked_text(entry.get("token"), f"{where}.token", "the token's text, a string")
    logprob = checked_logprob(entry.get("logprob"), f"{where}.logprob")
    raw = entry.get("bytes")
    if raw is not None and (not isinstance(raw, list) or not all(_is_byte(b) for b in raw)):
        raise ValueError(
            f"{where}.bytes={shown(raw)}: expected the token's UTF-8 bytes, a list of integers in [0, 255]"
        )
    listed = entry.get("top_logprobs")
    if listed is not None and not isinstance(listed, list):
        raise ValueError(
            f"{where}.top_logprobs={shown(listed)}: expected a list of {{'token', 'logprob'}} objects"
        )
    tops = []
    for j, top in enumerate(listed or []):
        if not isinstance(top, Mapping):
            raise ValueError(f"{where}.top_logprobs[{j}]={shown(top)}: expected {{'token', 'logprob'}}")
        checked_text(top.get("token"), f"{where}.top_logprobs[{j}].token", "the token's text, a string")
        tops.append(checked_logprob(top.get("logprob"), f"{where}.top_logprobs[{j}].logprob"))
    if not token.startswith(_TOKEN_ID_PREFIX):
        return _Entry(token, -1, logprob, tops)
    # vLLM --return-tokens-as-token-ids: "token_id:N", the token's text in bytes.
    number = token[len(_TOKEN_ID_PREFIX) :]
    token_id = -1
    if number.isdigit():
        if len(number) > len(str(MAX_TOKEN_ID)):
            raise ValueError(
                f"{where}.token={shown(token)}: expected token_id:N with N at most {MAX_TOKEN_ID}"
            )
        token_id = checked_token_id(int(number), f"{where}.token")
    return _Entry(bytes(raw).decode("utf-8", errors="replace") if raw else "", token_id, logprob, tops)


def _is_byte(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _user_message(images: Sequence[Image.Image], prompt: str) -> dict[str, Any]:
    """The user turn: each image as a PNG data URI, then the prompt text."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: got {type(prompt).__name__}, expected str")
    parts: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images[{i}]: got {type(image).__name__}, expected a PIL image")
        parts.append(
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + to_base64_png(image)}}
        )
    parts.append({"type": "text", "text": prompt})
    return {"role": "user", "content": parts}


def _json_object(response: httpx.Response, url: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise ServerError(
            f"POST {url}: HTTP {response.status_code} reply is not JSON: {response.text[:200]!r}",
            url=url,
            status_code=response.status_code,
        ) from None
    if not isinstance(data, dict):
        raise ServerError(f"POST {url}: expected a JSON object, got {type(data).__name__}", url=url)
    return data


def _server_message(response: httpx.Response) -> str:
    """The error text of an OpenAI (``{"error": {"message"}}``) or vLLM (``{"message"}``) reply."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return str(data["detail"])
    return str(data)[:500]


def _retry_after(response: httpx.Response, *, default: float) -> float:
    value = response.headers.get("Retry-After")
    try:
        return min(max(float(value), 0.0), _RETRY_AFTER_CAP_S) if value is not None else default
    except ValueError:
        return default
