"""A local :class:`~catts_graph.models.TransformersVLM` behind enough of vLLM's OpenAI-compatible API.

It lets :class:`~catts_graph.models.openai_compatible.OpenAICompatibleVLM` (and any OpenAI client)
talk to a local model: the tests run the client against the tiny Qwen2.5-VL through it, and a user
can try a remote-style setup on one machine::

    python -m catts_graph.models.loopback_server /path/to/checkpoint --port 8000

    OpenAICompatibleVLM("http://127.0.0.1:8000/v1", "local")

Endpoints, in vLLM's wire format: ``GET /v1/models``, ``GET /health``, ``POST /tokenize``
(``prompt``, ``add_special_tokens``) and ``POST /v1/chat/completions`` with ``n``, ``seed``,
``temperature``, ``top_p``, ``top_k``, ``max_tokens`` / ``max_completion_tokens``, ``logprobs``,
``top_logprobs``, ``return_token_ids``, ``skip_special_tokens``; with a final assistant message and
``add_generation_prompt: false, continue_final_message: true`` it writes on from that message
(``TransformersVLM.continue_reply``), and with ``prompt_logprobs: 0`` as well it scores it instead.

What it does not do, by design (it is a dev server, not vLLM):

- Sampling takes one user message: its images (``data:`` URIs only, never URLs or paths), then its
  text, as ``TransformersVLM`` renders them. No streaming, no tools, no system turn.
- ``prompt_logprobs`` are computed for the final assistant message only (through
  ``TransformersVLM.score``); the prompt positions before it are ``null``, as is each ``rank``.
  Such a request generates nothing: its one choice is empty.
- ``top_logprobs`` entries carry the log-prob values with empty token strings:
  ``TransformersVLM`` keeps the top-k values per step, not the tokens (O(T * k) memory).
- Like OpenAI's API, and unlike vLLM, the stop token is not listed in the log-probs, and choices
  have no ``stop_reason`` (by which a client tells vLLM's listing apart).

No authentication: it binds to 127.0.0.1 unless told otherwise. Requests run on threads; the
model serialises them.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from PIL import Image

from catts_graph.images import InputError, load_image

if TYPE_CHECKING:
    from catts_graph.models.transformers_vlm import TransformersVLM

__all__ = ["LoopbackServer", "serve"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_TOKENS = 512


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error reply with ``status``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LoopbackServer(ThreadingHTTPServer):
    """The HTTP server returned by :func:`serve`; :meth:`stop` shuts it down and frees the port."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], vlm: TransformersVLM, model_name: str) -> None:
        super().__init__(address, _Handler)
        self.vlm = vlm
        self.model_name = model_name

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def serve(
    vlm: TransformersVLM,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str = "local",
) -> tuple[LoopbackServer, str]:
    """Serve ``vlm`` on a background thread; the server and its base URL (``http://host:port/v1``).

    ``port=0`` picks a free port. Stop it with ``server.stop()``.
    """
    server = LoopbackServer((host, port), vlm, model_name)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="catts-loopback", daemon=True
    )
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    return server, f"http://{bound_host}:{bound_port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._reply(HTTPStatus.OK, _models(self.server))
        elif self.path == "/health":
            self._reply(HTTPStatus.OK, {})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {self.path}")

    def do_POST(self) -> None:
        routes = {"/v1/chat/completions": _chat_completions, "/tokenize": _tokenize}
        route = routes.get(self.path)
        if route is None:
            self._error(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
            return
        try:
            body = self._read_json()
            _check_model(body, self.server.model_name)
            reply = route(self.server, body)
        except RequestError as err:
            self._error(err.status, err.message)
        except (ValueError, TypeError, InputError) as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        except Exception as err:  # a dev server reports the failure instead of dropping the connection
            logger.exception("loopback server failed on POST %s", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}")
        else:
            self._reply(HTTPStatus.OK, reply)

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except json.JSONDecodeError as err:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _reply(self, status: HTTPStatus, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str) -> None:
        error = {"message": message, "type": status.phrase.replace(" ", "") + "Error", "param": None}
        self._reply(status, {"error": {**error, "code": int(status)}})


def _models(server: LoopbackServer) -> dict[str, Any]:
    card = {"id": server.model_name, "object": "model", "created": 0, "owned_by": "catts-graph"}
    return {"object": "list", "data": [card]}


def _check_model(body: Mapping[str, Any], served: str) -> None:
    model = body.get("model")
    if model is not None and model != served:
        raise RequestError(
            HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist; this server has `{served}`"
        )


def _tokenize(server: LoopbackServer, body: Mapping[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "prompt: expected a string (chat messages are not supported)"
        )
    add_special = bool(body.get("add_special_tokens", True))
    ids = server.vlm.tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    return {"count": len(ids), "max_model_len": int(server.vlm.tokenizer.model_max_length), "tokens": ids}


def _chat_completions(server: LoopbackServer, body: Mapping[str, Any]) -> dict[str, Any]:
    if body.get("stream"):
        raise RequestError(HTTPStatus.BAD_REQUEST, "stream=true is not supported by the loopback server")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(HTTPStatus.BAD_REQUEST, "messages: expected a non-empty list")
    prefix: str | None = None
    if body.get("continue_final_message"):
        if body.get("prompt_logprobs") is not None:
            return _score_final_message(server, body, messages)
        prefix = _final_message(body, messages)
    elif body.get("prompt_logprobs") is not None:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            "prompt_logprobs: the loopback server computes them only for a final assistant message "
            "(continue_final_message=true, add_generation_prompt=false)",
        )
    elif len(messages) != 1:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"messages: expected one user message, got {len(messages)}"
        )
    images, prompt = _user_turn(messages[0])
    logprobs = bool(body.get("logprobs"))
    top_logprobs = _int(body, "top_logprobs", 0)
    if top_logprobs and not logprobs:
        raise RequestError(HTTPStatus.BAD_REQUEST, "top_logprobs needs logprobs=true")
    top_k = _int(body, "top_k", 0)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    vlm = server.vlm
    draw = vlm.sample if prefix is None else functools.partial(vlm.continue_reply, prefix=prefix)
    samples = draw(
        images,
        prompt,
        n=_int(body, "n", 1),
        temperature=_float(body, "temperature", 1.0),
        top_p=_float(body, "top_p", 1.0),
        top_k=0 if top_k == -1 else top_k,  # vLLM spells "off" as -1 or 0
        max_new_tokens=max_tokens,
        seed=body.get("seed"),
        top_logprobs=top_logprobs if logprobs else 0,
    )
    skip_special = bool(body.get("skip_special_tokens", True))
    choices = []
    for index, sample in enumerate(samples):
        text = (
            vlm.tokenizer.decode(sample.token_ids, skip_special_tokens=True) if skip_special else sample.text
        )
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": {
                "content": _logprobs_content(vlm, sample.token_ids, sample.logprobs, sample.top_logprobs)
            }
            if logprobs
            else None,
            "finish_reason": sample.finish_reason,
        }
        if body.get("return_token_ids"):
            choice["token_ids"] = list(sample.token_ids)
        choices.append(choice)
    prompt_ids = vlm.prompt_ids(images, prompt)
    if prefix:
        prompt_ids += vlm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    completion_tokens = sum(len(s.token_ids) for s in samples)
    return _completion(
        server,
        choices,
        prompt_ids,
        completion_tokens,
        prompt_token_ids=prompt_ids if body.get("return_token_ids") else None,
    )


def _final_message(body: Mapping[str, Any], messages: Sequence[Any]) -> str:
    """The final assistant message a ``continue_final_message`` request continues (after one user
    message), checked as vLLM checks it."""
    if body.get("add_generation_prompt", True):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "continue_final_message=true needs add_generation_prompt=false"
        )
    roles = [m.get("role") if isinstance(m, Mapping) else None for m in messages]
    if roles != ["user", "assistant"]:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"messages: expected roles [user, assistant], got {roles}")
    return _text_of(messages[1], "messages[1]")


def _score_final_message(
    server: LoopbackServer, body: Mapping[str, Any], messages: Sequence[Any]
) -> dict[str, Any]:
    continuation = _final_message(body, messages)
    if body.get("prompt_logprobs") != 0:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"prompt_logprobs={body.get('prompt_logprobs')!r}: the loopback server supports 0 "
            "(the log-prob of each prompt token, no alternatives)",
        )
    images, prompt = _user_turn(messages[0])
    vlm = server.vlm
    (scored,) = vlm.score(images, prompt, [continuation])
    prompt_ids = vlm.prompt_ids(images, prompt)
    tokens = _decode_each(vlm, scored.token_ids)
    tail = [
        {str(token_id): {"logprob": lp, "rank": None, "decoded_token": token}}
        for token_id, lp, token in zip(scored.token_ids, scored.logprobs, tokens, strict=True)
    ]
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": "length",
    }
    reply = _completion(server, [choice], prompt_ids + list(scored.token_ids), 0)
    reply["prompt_logprobs"] = [None] * len(prompt_ids) + tail
    return reply


def _completion(
    server: LoopbackServer,
    choices: list[dict[str, Any]],
    prompt_ids: list[int],
    completion_tokens: int,
    *,
    prompt_token_ids: list[int] | None = None,
) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": server.model_name,
        "choices": choices,
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt_ids) + completion_tokens,
        },
        "prompt_logprobs": None,
    }
    if prompt_token_ids is not None:
        reply["prompt_token_ids"] = prompt_token_ids
    return reply


def _logprobs_content(
    vlm: TransformersVLM,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    top_logprobs: Sequence[Sequence[float]] | None,
) -> list[dict[str, Any]]:
    """vLLM's per-token entries: each token decoded alone, as vLLM does (so a byte of a multi-byte
    character reads as "\\ufffd")."""
    entries = []
    for step, (token, lp) in enumerate(zip(_decode_each(vlm, token_ids), logprobs, strict=True)):
        top = top_logprobs[step] if top_logprobs is not None else []
        entries.append(
            {
                "token": token,
                "logprob": lp,
                "bytes": list(token.encode("utf-8", errors="replace")),
                "top_logprobs": [{"token": "", "logprob": value, "bytes": []} for value in top],
            }
        )
    return entries


def _decode_each(vlm: TransformersVLM, token_ids: Sequence[int]) -> list[str]:
    return list(
        vlm.tokenizer.batch_decode(
            [[i] for i in token_ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
    )


def _user_turn(message: Any) -> tuple[list[Image.Image], str]:
    """A user message's images (data URIs) and text, in the order ``TransformersVLM`` renders them."""
    if not isinstance(message, Mapping) or message.get("role") != "user":
        raise RequestError(HTTPStatus.BAD_REQUEST, "messages[0]: expected a user message")
    content = message.get("content")
    if isinstance(content, str):
        return [], content
    if not isinstance(content, list):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "messages[0].content: expected a string or a list of parts"
        )
    images: list[Image.Image] = []
    texts: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        where = f"messages[0].content[{i}]"
        if kind == "image_url":
            if texts:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"{where}: images must come before the text (as the model renders)",
                )
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str) or not url.startswith("data:"):
                raise RequestError(HTTPStatus.BAD_REQUEST, f"{where}: only data: URIs are accepted")
            images.append(load_image(url, name=where))
        elif kind == "text":
            texts.append(str(part.get("text", "")))
        else:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{where}: unsupported part type {kind!r}")
    return images, "".join(texts)


def _text_of(message: Any, where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(HTTPStatus.BAD_REQUEST, f"{where}.content: expected text")


def _int(body: Mapping[str, Any], key: str, default: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{key}={value!r}: expected an integer")
    return value


def _float(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{key}={value!r}: expected a number")
    return float(value)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m catts_graph.models.loopback_server CHECKPOINT [--host H] [--port P] [--model-name M]``."""
    from catts_graph.models.transformers_vlm import TransformersVLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="local folder or hub id of an image-text-to-text model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default="local", help="the name clients pass as `model`")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    vlm = TransformersVLM.from_pretrained(args.checkpoint, device=args.device)
    server, base_url = serve(vlm, args.host, args.port, model_name=args.model_name)
    print(f"serving {args.checkpoint} as {args.model_name!r} at {base_url} (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
