"""OpenAICompatibleVLM against the tiny Qwen2.5-VL served on loopback in vLLM's wire format.

The loopback server wraps the same ``TransformersVLM`` the direct calls use, so every result over
HTTP must equal the direct one. Retries, timeouts and error messages run against a scripted stub
server; vLLM's own quirks (stop token listed, ``token_id:N`` strings, chosen-first top log-probs)
against a canned vLLM reply.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from catts_graph.models.base import BaseVLM, Sample
from catts_graph.models.loopback_server import LoopbackServer, serve
from catts_graph.models.openai_compatible import (
    OpenAICompatibleVLM,
    ServerError,
    align_tokens,
    sample_from_choice,
)
from catts_graph.models.transformers_vlm import TransformersVLM
from tests.conftest_models import *  # noqa: F403  (tiny_vlm, tiny_image, tiny_model_dir)

PROMPT = "What colour is the square?"
ATOL = 1e-4  # float32 on CPU; JSON carries floats exactly, so this only covers batch-shape effects


@pytest.fixture(scope="module")
def loopback(tiny_vlm: TransformersVLM) -> Iterator[tuple[LoopbackServer, str]]:
    server, base_url = serve(tiny_vlm, model_name="tiny")
    yield server, base_url
    server.stop()


@pytest.fixture(scope="module")
def client(loopback: tuple[LoopbackServer, str]) -> Iterator[OpenAICompatibleVLM]:
    with OpenAICompatibleVLM(loopback[1], "tiny", timeout=30, max_retries=0) as vlm:
        yield vlm


def _close(a: list[float], b: list[float], atol: float = ATOL) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= atol for x, y in zip(a, b, strict=True))


# -- round trips through the loopback server ---------------------------------------------------


def test_sample_round_trip_equals_direct(
    client: OpenAICompatibleVLM, tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    assert isinstance(client, BaseVLM)
    kwargs: dict[str, Any] = {"max_new_tokens": 10, "seed": 3, "top_logprobs": 3, "top_k": 50, "top_p": 0.95}
    remote = client.sample([tiny_image], PROMPT, 4, **kwargs)
    direct = tiny_vlm.sample([tiny_image], PROMPT, 4, **kwargs)
    assert len(remote) == 4 and all(isinstance(s, Sample) for s in remote)
    for index, (r, d) in enumerate(zip(remote, direct, strict=True)):
        assert r.token_ids == d.token_ids and r.text == d.text and r.finish_reason == d.finish_reason
        assert _close(r.logprobs, d.logprobs, 1e-9)
        assert r.tokens is not None and "".join(r.tokens) == r.text
        assert len(r.tokens) == len(r.token_ids) == len(r.logprobs) <= 10
        assert r.top_logprobs is not None and len(r.top_logprobs) == len(r.token_ids)
        for top, chosen in zip(r.top_logprobs, r.logprobs, strict=True):
            assert len(top) == 3 and top == sorted(top, reverse=True) and top[0] >= chosen - 1e-6
        assert r.top_logprobs == d.top_logprobs
        assert r.extra == {"seed": 3, "index": index}


def test_seeds_reproduce_and_differ(client: OpenAICompatibleVLM, tiny_image: Image.Image) -> None:
    first = client.sample([tiny_image], PROMPT, 3, max_new_tokens=6, seed=11)
    again = client.sample([tiny_image], PROMPT, 3, max_new_tokens=6, seed=11)
    other = client.sample([tiny_image], PROMPT, 3, max_new_tokens=6, seed=12)
    assert [s.token_ids for s in first] == [s.token_ids for s in again]
    assert [s.logprobs for s in first] == [s.logprobs for s in again]
    assert [s.token_ids for s in first] != [s.token_ids for s in other]
    assert first[0].top_logprobs is None


def test_greedy_is_one_request_copied(
    client: OpenAICompatibleVLM, tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    samples = client.sample([tiny_image], PROMPT, 3, temperature=0, max_new_tokens=8)
    direct = tiny_vlm.sample([tiny_image], PROMPT, 1, temperature=0, max_new_tokens=8)[0]
    assert [s.token_ids for s in samples] == [direct.token_ids] * 3
    assert [s.extra["index"] for s in samples] == [0, 1, 2]


def test_score_round_trip_equals_direct(
    client: OpenAICompatibleVLM, tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    # "é" and "猫" are split over byte tokens: the server names each byte "\ufffd".
    continuations = ["red", "The answer is \\boxed{blue}.", "é猫!"]
    remote = client.score([tiny_image], PROMPT, [*continuations, ""])
    direct = tiny_vlm.score([tiny_image], PROMPT, continuations)
    for text, r, d in zip(continuations, remote, direct, strict=False):
        assert r.token_ids == d.token_ids
        assert _close(r.logprobs, d.logprobs)
        assert r.tokens is not None and "".join(r.tokens) == text
    assert remote[2].tokens == ["", "", "", "", "é猫", "!"]  # the run of byte tokens ends with its text
    assert remote[3].token_ids == [] and remote[3].logprobs == []


def test_sample_logprobs_equal_teacher_forced_score(
    client: OpenAICompatibleVLM, tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    samples = client.sample([tiny_image], PROMPT, 16, max_new_tokens=3, seed=0)
    # Random bytes are often not UTF-8, and their text does not tokenise back to the same ids.
    exact = [
        s
        for s in samples
        if s.token_ids and tiny_vlm.tokenizer(s.text, add_special_tokens=False)["input_ids"] == s.token_ids
    ]
    assert len(exact) >= 2
    scored = client.score([tiny_image], PROMPT, [s.text for s in exact])
    for sample, score in zip(exact, scored, strict=True):
        assert score.token_ids == sample.token_ids
        assert _close(score.logprobs, sample.logprobs)
        assert abs(sum(score.logprobs) - sum(sample.logprobs)) <= ATOL * len(sample.logprobs)


def test_continue_reply_round_trip_equals_direct(
    client: OpenAICompatibleVLM, tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    """The prefix travels as a final assistant message with continue_final_message (as vLLM takes
    it); what comes back is the direct continuation, new tokens only."""
    kwargs: dict[str, Any] = {"max_new_tokens": 8, "seed": 4}
    remote = client.continue_reply([tiny_image], PROMPT, "The square is red;", 3, **kwargs)
    direct = tiny_vlm.continue_reply([tiny_image], PROMPT, "The square is red;", 3, **kwargs)
    for r, d in zip(remote, direct, strict=True):
        assert r.token_ids == d.token_ids and r.text == d.text
        assert _close(r.logprobs, d.logprobs, 1e-9)


def test_standard_fields_only(
    loopback: tuple[LoopbackServer, str], tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    plain = OpenAICompatibleVLM(loopback[1], "tiny", max_retries=0, vllm_extensions=False)
    remote = plain.sample([tiny_image], PROMPT, 4, max_new_tokens=12, seed=5)
    direct = tiny_vlm.sample([tiny_image], PROMPT, 4, max_new_tokens=12, seed=5)
    for r, d in zip(remote, direct, strict=True):
        assert r.token_ids == [-1] * len(d.token_ids)
        assert _close(r.logprobs, d.logprobs, 1e-9)
        # The server now skips special tokens in the text but still lists them per token.
        assert r.text == tiny_vlm.tokenizer.decode(d.token_ids, skip_special_tokens=True)
        assert r.tokens is not None and "".join(r.tokens) == r.text
    with pytest.raises(ValueError, match="top_k"):
        plain.sample([tiny_image], PROMPT, 1, top_k=5)
    with pytest.raises(RuntimeError, match="prompt_logprobs"):
        plain.score([tiny_image], PROMPT, ["red"])
    with pytest.raises(NotImplementedError, match="continue_final_message"):
        plain.continue_reply([tiny_image], PROMPT, "The square", 1)
    plain.close()


def test_official_openai_client_reads_the_loopback_server(
    loopback: tuple[LoopbackServer, str], tiny_image: Image.Image
) -> None:
    openai = pytest.importorskip("openai")
    from catts_graph.images import to_base64_png

    sdk = openai.OpenAI(base_url=loopback[1], api_key="EMPTY", max_retries=0)
    assert [m.id for m in sdk.models.list().data] == ["tiny"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + to_base64_png(tiny_image)}}
    reply = sdk.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [image, {"type": "text", "text": PROMPT}]}],
        n=2,
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
        seed=1,
    )
    assert len(reply.choices) == 2 and reply.usage is not None and reply.usage.prompt_tokens > 6
    assert all(len(c.logprobs.content[0].top_logprobs) == 2 for c in reply.choices if c.logprobs.content)


def test_loopback_errors_surface_the_server_message(
    loopback: tuple[LoopbackServer, str], tiny_image: Image.Image
) -> None:
    wrong = OpenAICompatibleVLM(loopback[1], "no-such-model", max_retries=0)
    with pytest.raises(ServerError, match="no-such-model` does not exist") as info:
        wrong.sample([tiny_image], PROMPT, 1, max_new_tokens=2)
    assert info.value.status_code == 404 and loopback[1] in str(info.value)
    response = httpx.post(
        loopback[1] + "/chat/completions",
        json={
            "model": "tiny",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}
            ],
        },
    )
    assert response.status_code == 400 and "only data: URIs" in response.json()["error"]["message"]


# -- the graph end to end ----------------------------------------------------------------------


def test_graph_end_to_end_on_the_server(client: OpenAICompatibleVLM, tiny_image: Image.Image) -> None:
    from catts_graph import CATTSConfig, build_graph

    graph = build_graph(client, config=CATTSConfig(n_samples=2, max_samples=2, max_new_tokens=8))
    result = graph.invoke({"image": tiny_image, "question": "What colour?"})
    assert len(result["samples"]) == 2
    assert all(s["n_tokens"] <= 8 for s in result["samples"])
    assert result["trace"] and result["trace"][0]["module"] in {"prepare", "base_model"}
    assert 0.0 <= result["confidence"] <= 1.0


# -- retries, timeouts and errors against a scripted stub --------------------------------------

CANNED = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "stub",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ab"},
            "logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -0.25}]},
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


class _Stub(ThreadingHTTPServer):
    """Replies from a script of (status, JSON body, delay in seconds); the last entry repeats."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, Any, float]]) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.script = script
        self.hits = 0
        self.lock = threading.Lock()


class _StubHandler(BaseHTTPRequestHandler):
    server: _Stub

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            status, body, delay = self.server.script[min(self.server.hits, len(self.server.script) - 1)]
            self.server.hits += 1
        time.sleep(delay)
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)


@pytest.fixture
def stub() -> Iterator[Any]:
    servers: list[_Stub] = []

    def start(*script: tuple[int, Any, float]) -> tuple[_Stub, str]:
        server = _Stub(list(script))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


BUSY = (503, {"error": {"message": "engine busy", "code": 503}}, 0.0)


def test_retries_a_503_then_succeeds(stub: Any, tiny_image: Image.Image) -> None:
    server, url = stub(BUSY, (200, CANNED, 0.0))
    vlm = OpenAICompatibleVLM(url, "stub", max_retries=2, backoff=0.01)
    (sample,) = vlm.sample([tiny_image], PROMPT, 1, max_new_tokens=2)
    assert server.hits == 2
    assert sample.text == "ab" and sample.tokens == ["a", "b"] and sample.logprobs == [-0.5, -0.25]
    assert sample.token_ids == [-1, -1] and sample.finish_reason == "length"


def test_gives_up_after_the_retries_naming_url_and_status(stub: Any, tiny_image: Image.Image) -> None:
    server, url = stub(BUSY)
    vlm = OpenAICompatibleVLM(url, "stub", max_retries=2, backoff=0.0)
    with pytest.raises(ServerError, match="after 3 attempts: HTTP 503: engine busy") as info:
        vlm.sample([tiny_image], PROMPT, 1)
    assert server.hits == 3 and info.value.status_code == 503 and url in str(info.value)


def test_timeout_names_the_url(stub: Any, tiny_image: Image.Image) -> None:
    _, url = stub((200, CANNED, 1.0))
    vlm = OpenAICompatibleVLM(url, "stub", timeout=0.2, max_retries=0)
    started = time.perf_counter()
    with pytest.raises(ServerError, match="timed out after 0.2 s") as info:
        vlm.sample([tiny_image], PROMPT, 1)
    assert url + "/chat/completions" in str(info.value) and info.value.status_code is None
    assert time.perf_counter() - started < 0.9


def test_a_400_is_not_retried_and_surfaces_the_message(stub: Any, tiny_image: Image.Image) -> None:
    message = "top_logprobs (50) must be at most max_logprobs (20)"
    server, url = stub((400, {"object": "error", "message": message, "code": 400}, 0.0))
    vlm = OpenAICompatibleVLM(url, "stub", max_retries=3, backoff=0.0)
    with pytest.raises(ServerError, match=r"HTTP 400: top_logprobs \(50\)") as info:
        vlm.sample([tiny_image], PROMPT, 1, top_logprobs=50)
    assert server.hits == 1 and info.value.status_code == 400 and url in str(info.value)


def test_connection_refused_names_the_url(tiny_image: Image.Image) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # a port that was free a moment ago and is closed now
    vlm = OpenAICompatibleVLM(f"http://127.0.0.1:{port}/v1", "x", max_retries=1, backoff=0.0)
    with pytest.raises(ServerError, match=rf"127.0.0.1:{port}/v1/chat/completions failed after 2 attempts"):
        vlm.sample([tiny_image], PROMPT, 1)


def test_a_reply_without_logprobs_is_an_error(stub: Any, tiny_image: Image.Image) -> None:
    choice = {**CANNED["choices"][0], "logprobs": None}
    _, url = stub((200, {**CANNED, "choices": [choice]}, 0.0))
    with pytest.raises(ServerError, match="no log-probs"):
        OpenAICompatibleVLM(url, "stub").sample([tiny_image], PROMPT, 1)


# -- vLLM's quirks, on a canned reply ----------------------------------------------------------


def test_parses_a_vllm_choice() -> None:
    """vLLM lists the stop token, names tokens ``token_id:N`` (with their text in ``bytes``) when
    started with --return-tokens-as-token-ids, and lists the chosen token first in top_logprobs."""

    def entry(token_id: int, text: str, lp: float, top: list[float]) -> dict[str, Any]:
        raw = list(text.encode("utf-8", errors="replace"))
        tops = [{"token": f"token_id:{i}", "logprob": v, "bytes": []} for i, v in enumerate(top)]
        return {"token": f"token_id:{token_id}", "logprob": lp, "bytes": raw, "top_logprobs": tops}

    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "Aé"},
        "logprobs": {
            "content": [
                entry(65, "A", -0.1, [-0.1, -2.0]),
                entry(195, "\ufffd", -3.0, [-3.0, -0.5]),  # chosen first, outside the top 1
                entry(169, "\ufffd", -0.2, [-0.2, -1.9]),
                entry(258, "<|im_end|>", -0.05, [-0.05, -4.0]),
            ]
        },
        "finish_reason": "stop",
        "stop_reason": None,
    }
    sample = sample_from_choice(choice, top_logprobs=2)
    assert sample.token_ids == [65, 195, 169]
    assert sample.tokens == ["A", "", "é"] and sample.logprobs == [-0.1, -3.0, -0.2]
    assert sample.top_logprobs == [[-0.1, -2.0], [-0.5, -3.0], [-0.2, -1.9]]
    with_ids = {**choice, "token_ids": [65, 195, 169, 258]}
    assert sample_from_choice(with_ids).token_ids == [65, 195, 169]
    by_string = {**choice, "stop_reason": "."}  # a stop string is not a listed token
    assert len(sample_from_choice(by_string).token_ids) == 4


def test_align_tokens() -> None:
    assert align_tokens(["a", "b"], "ab") == ["a", "b"]
    assert align_tokens(["x", "\ufffd", "\ufffd", "\ufffd", "y"], "x猫y") == ["x", "", "", "猫", "y"]
    assert align_tokens(["a", "<|vision_start|>", "b"], "ab") == ["a", "", "b"]  # skipped special
    assert align_tokens(["\ufffd", "\ufffd"], "\ufffd") == ["", "\ufffd"]  # an invalid byte pair
    assert align_tokens(["a", "\ufffd"], "aé") == ["a", "é"]
    assert align_tokens([], "") == []
