"""Bad input gets a clear error naming the input, before any model call."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import os
import sqlite3
import threading
import time
import typing
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from PIL import Image

from catts_graph import CATTSConfig, ConfigError, InputError, build_graph, images
from catts_graph.images import ImageCache
from catts_graph.task import check_question
from catts_graph.testing import ScriptedVLM
from tests.conftest import png_bytes


@pytest.fixture
def vlm() -> ScriptedVLM:
    return ScriptedVLM.answering("\\boxed{1}")


def run(vlm: ScriptedVLM, config: CATTSConfig | None = None, **inputs):
    return build_graph(vlm, config=config or CATTSConfig(n_samples=2)).invoke(inputs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"question": "   "}, "question: is empty"),
        ({}, "question: missing"),
        ({"question": 42}, "question: got int"),
        ({"question": "Q", "options": []}, "options: given but empty"),
        ({"question": "Q", "options": "A"}, "options: got str"),
        ({"question": "Q", "options": ["A", " "]}, r"options\[1\]"),
    ],
)
def test_bad_question_or_options(vlm, image_path, inputs, message):
    with pytest.raises(InputError, match=message):
        run(vlm, image=image_path, **inputs)
    assert vlm.calls == []


def test_missing_image(vlm):
    with pytest.raises(InputError, match="image: missing"):
        run(vlm, question="Q")
    assert vlm.calls == []


def test_image_and_images_together(vlm, image_path):
    with pytest.raises(InputError, match="not both"):
        run(vlm, question="Q", image=image_path, images=[image_path])


def test_path_that_does_not_exist(vlm, tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(InputError, match="image: no file at .*nope.png"):
        run(vlm, question="Q", image=missing)
    assert vlm.calls == []


def test_bytes_that_are_not_an_image(vlm):
    with pytest.raises(InputError, match="image: the bytes given are not an image"):
        run(vlm, question="Q", image=b"definitely not a png")
    assert vlm.calls == []


def test_file_that_is_not_an_image(vlm, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(InputError, match="image: not an image PIL can read"):
        run(vlm, question="Q", image=str(path))


def test_second_of_several_images_is_named(vlm, image_path, tmp_path):
    with pytest.raises(InputError, match=r"images\[1\]: no file"):
        run(vlm, question="Q", images=[image_path, str(tmp_path / "gone.png")])


def test_image_over_the_pixel_limit_is_refused_before_decoding(vlm, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(size=(400, 300)))
    config = CATTSConfig(n_samples=2, max_image_pixels=100_000)
    with pytest.raises(InputError, match="400x300 = 120000 pixels is over the limit of 100000"):
        run(vlm, config, question="Q", image=str(path))
    assert vlm.calls == []


def test_decompression_bomb_header(vlm):
    # A tiny file that declares a 30000 x 30000 image: refused from its header alone.
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG")
    with pytest.raises(InputError, match="over the limit"):
        run(vlm, question="Q", image=buffer.getvalue())


def test_data_uri_and_pil_inputs_are_accepted(vlm):
    uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    assert run(vlm, question="Q", image=uri)["answer"] == "1"
    assert run(vlm, question="Q", image=Image.new("RGB", (8, 8)))["answer"] == "1"


def test_bad_data_uri(vlm):
    with pytest.raises(InputError, match="not valid base64"):
        run(vlm, question="Q", image="data:image/png;base64,@@@")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_samples": 0}, "n_samples must be an integer >= 1"),
        ({"tau2": 1.5}, r"tau2 must be in \[0, 1\]"),
        ({"tau1": -0.5}, r"tau1 must be >= 0"),
        ({"tau3": -0.1}, r"tau3 must be in \[0, 1\]"),
        ({"policy": "random"}, "policy must be one of"),
        ({"n_samples": 8, "max_samples": 4}, "max_samples"),
        ({"weighting": "tail"}, "needs token confidence"),
        ({"nmlp_floor": 0.0}, r"nmlp_floor must be > 0 or None \(off\), got 0.0"),
        ({"deepconf_tail": 0}, "deepconf_tail must be an integer >= 1"),
        # Values that used to pass the config and fail after the model calls:
        ({"noise_step": 999.5}, "noise_step must be an integer, got 999.5"),
        ({"noise_step": "500"}, "noise_step must be an integer, got '500'"),
        ({"vcd_alpha": float("nan")}, "vcd_alpha must be a finite number, got nan"),
        ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
        ({"temperature": "1.0"}, "temperature must be a finite number, got '1.0'"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"tau1": True}, "tau1 must be a finite number, got True"),
        ({"max_image_pixels": 10**9}, "max_image_pixels must be at most 178956970 .PIL's own limit"),
    ],
)
def test_config_out_of_range(changes, message):
    with pytest.raises(ConfigError, match=message):
        CATTSConfig(**changes)


@pytest.mark.parametrize("name", list(CATTSConfig.model_fields))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None, [1]])
def test_every_field_refuses_a_value_of_the_wrong_type(name, bad):
    """The class: any field, any value outside its type, is a ConfigError naming the field."""
    hint = typing.get_type_hints(CATTSConfig)[name]
    if bad is None and type(None) in typing.get_args(hint):
        return
    if isinstance(bad, str) and typing.get_origin(hint) is typing.Literal:
        return  # a Literal field takes strings; its own check names the allowed values
    if isinstance(bad, str) and str in (hint, *typing.get_args(hint)):
        return  # a string field (a path) takes any non-empty string
    with pytest.raises(ConfigError, match=name):
        CATTSConfig(**{name: bad})


def test_a_nan_from_the_environment_is_refused():
    with pytest.raises(ConfigError, match="temperature must be a finite number"):
        CATTSConfig.from_env({"CATTS_TEMPERATURE": "nan"})


def test_bad_context_at_invoke(vlm, image_path):
    graph = build_graph(vlm)
    with pytest.raises(ConfigError, match="n_samples"):
        graph.invoke({"image": image_path, "question": "Q"}, context={"n_samples": 0})
    assert vlm.calls == []


class ImageServer:
    """A loopback HTTP server for the URL tests. Paths:

    /ok.png (a small PNG), /big.png (over a 1000-byte limit), /slow.png (answers after 2 s),
    /trickle.png (a 30-byte body, a byte every 0.2 s: no single read waits long, the whole takes 6 s),
    /headers (its status line and headers a byte every 0.2 s), /redirect?to=URL (a 302 to URL),
    /loop (a 302 to itself),
    /colour.png (a PNG of ``colour``, which a test may change). ``hits`` counts requests by path.
    """

    def __init__(self) -> None:
        self.colour = (200, 30, 30)
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path, _, query = self.path.partition("?")
                server.hits[path] = server.hits.get(path, 0) + 1
                if path in ("/redirect", "/loop"):
                    self.send_response(302)
                    self.send_header("Location", urllib.parse.unquote(query.removeprefix("to=")) or "/loop")
                    self.end_headers()
                    return
                if path == "/headers":
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                if path == "/slow.png":
                    threading.Event().wait(2.0)
                body = {
                    "/big.png": png_bytes() + b"\0" * 5000,
                    "/colour.png": png_bytes(colour=server.colour),
                    "/trickle.png": b"x" * 30,
                }.get(path, png_bytes())
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path == "/trickle.png":
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

            def handle(self) -> None:
                with contextlib.suppress(OSError):  # the client hung up at its deadline
                    super().handle()

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    thread = threading.Thread(target=server.http.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.http.shutdown()


LOCAL_URLS = CATTSConfig(n_samples=2, allow_url_fetch=True, allow_private_urls=True)


def test_url_is_fetched_only_when_allowed(vlm, image_server):
    with pytest.raises(InputError, match="URL fetching is off; pass --allow-url on the command line"):
        run(vlm, question="Q", image=f"{image_server.url}/ok.png")
    assert run(vlm, LOCAL_URLS, question="Q", image=f"{image_server.url}/ok.png")["answer"] == "1"


def test_url_size_and_time_limits(vlm, image_server):
    small = LOCAL_URLS.replace(url_max_bytes=1000)
    with pytest.raises(InputError, match="over the limit of 1000"):
        run(vlm, small, question="Q", image=f"{image_server.url}/big.png")
    hasty = LOCAL_URLS.replace(url_timeout=0.3)
    with pytest.raises(InputError, match="slow.png"):
        run(vlm, hasty, question="Q", image=f"{image_server.url}/slow.png")
    assert vlm.calls == []


@pytest.mark.parametrize("path", ["/trickle.png", "/headers"])
def test_the_url_timeout_is_a_deadline_for_the_whole_download(vlm, image_server, path):
    """A server that sends a byte every 0.2 s never trips a per-read timeout of 1 s."""
    started = time.monotonic()
    with pytest.raises(InputError, match=r"took longer than 1 s \(url_timeout\)"):
        run(vlm, LOCAL_URLS.replace(url_timeout=1.0), question="Q", image=image_server.url + path)
    assert time.monotonic() - started < 2.5
    assert vlm.calls == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:{port}/ok.png", "loopback"),
        ("http://localhost:{port}/ok.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://192.168.0.1/x.png", "private"),
        ("http://0.0.0.0:{port}/ok.png", "unspecified"),
        ("http://[::ffff:127.0.0.1]:{port}/ok.png", "loopback"),
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused_unless_allowed(vlm, image_server, url, kind):
    url = url.format(port=image_server.http.server_address[1])
    public_only = LOCAL_URLS.replace(allow_private_urls=False)
    with pytest.raises(InputError, match=f"an? {kind} address; .*--allow-private-urls"):
        run(vlm, public_only, question="Q", image=url)
    assert image_server.hits == {} and vlm.calls == []


@pytest.fixture
def loopback_is_public(monkeypatch):
    """127.0.0.1 treated as a public address (this machine has no other server to test against)."""
    real = images._non_public
    monkeypatch.setattr(
        images, "_non_public", lambda address: None if address == "127.0.0.1" else real(address)
    )


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/ok.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/ok.png",
    ],
)
def test_every_redirect_is_checked_again(vlm, image_server, loopback_is_public, target):
    target = target.format(port=image_server.http.server_address[1])
    url = f"{image_server.url}/redirect?to={urllib.parse.quote(target)}"
    public_only = LOCAL_URLS.replace(allow_private_urls=False)
    with pytest.raises(InputError, match=r"\(redirected from .*/redirect.*\) resolves to .* address"):
        run(vlm, public_only, question="Q", image=url)
    assert image_server.hits == {"/redirect": 1}


def test_redirects_are_followed_within_limits(vlm, image_server):
    hop = f"{image_server.url}/redirect?to={urllib.parse.quote(image_server.url + '/ok.png')}"
    assert run(vlm, LOCAL_URLS, question="Q", image=hop)["answer"] == "1"
    with pytest.raises(InputError, match="not an http.s. URL"):
        run(vlm, LOCAL_URLS, question="Q", image=f"{image_server.url}/redirect?to=file:///etc/passwd")
    with pytest.raises(InputError, match="redirected more than 5 times"):
        run(vlm, LOCAL_URLS, question="Q", image=f"{image_server.url}/loop")


def test_a_url_is_fetched_once_per_run_and_never_answered_from_an_old_run(image_server):
    colours = ScriptedVLM(lambda call: [f"\\boxed{{{call.images[0].getpixel((0, 0))[2]}}}"] * call.n)
    graph = build_graph(colours, config=LOCAL_URLS.replace(close_margin=0.0))
    url = f"{image_server.url}/colour.png"
    assert graph.invoke({"image": url, "question": "Q"})["answer"] == "30"
    image_server.colour = (0, 0, 250)
    assert graph.invoke({"image": url, "question": "Q"})["answer"] == "250"
    assert image_server.hits == {"/colour.png": 2}


# --- no stale image, a bounded cache (issue 11, item 1) ---------------------------------------


def colour_reader() -> ScriptedVLM:
    """A base model that answers the blue channel of the image's first pixel."""
    return ScriptedVLM(lambda call: [f"\\boxed{{{call.images[0].getpixel((0, 0))[2]}}}"] * call.n)


def test_a_new_picture_at_the_same_path_is_the_one_answered_about(tmp_path):
    path = tmp_path / "picture.png"
    graph = build_graph(colour_reader(), config=CATTSConfig(n_samples=2, close_margin=0.0))
    path.write_bytes(png_bytes(colour=(0, 0, 10)))
    stamp = path.stat().st_mtime_ns
    assert graph.invoke({"image": str(path), "question": "Q"})["answer"] == "10"
    # Same path, same size, even the same modification time (a coarse clock): new pixels.
    path.write_bytes(png_bytes(colour=(0, 0, 20)))
    os.utime(path, ns=(stamp, stamp))
    assert graph.invoke({"image": str(path), "question": "Q"})["answer"] == "20"


def solid_png(index: int, size: tuple[int, int]) -> bytes:
    return png_bytes(size=size, colour=(index % 256, index // 256 % 256, 7))


def test_the_image_cache_is_bounded_in_bytes_of_pixels():
    cache = ImageCache()
    config = CATTSConfig(image_cache_bytes=3 * 100 * 100 * 3)  # three 100x100 RGB images
    images = [cache.load(solid_png(i, (100, 100)), name="image", config=config) for i in range(8)]
    assert len(cache) == 3 and cache.nbytes == 3 * 100 * 100 * 3
    # The most recent three stay; a hit returns the same object without decoding again.
    assert cache.load(solid_png(7, (100, 100)), name="image", config=config) is images[7]
    assert cache.load(solid_png(0, (100, 100)), name="image", config=config) is not images[0]
    # An image over the whole budget is decoded, not kept; a budget of 0 keeps nothing.
    cache.load(solid_png(9, (400, 400)), name="image", config=config)
    assert cache.nbytes <= config.image_cache_bytes
    cache.load(solid_png(1, (10, 10)), name="image", config=config.replace(image_cache_bytes=0))
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_held_image_is_encoded_as_png_once_and_its_encoding_goes_with_it():
    cache = ImageCache()
    config = CATTSConfig(image_cache_bytes=2 * 100 * 100 * 3)
    image = cache.load(solid_png(1, (100, 100)), name="image", config=config)
    encoded = cache.base64_png(image)
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).tobytes() == image.tobytes()
    assert cache.base64_png(image) is encoded and cache.nbytes == 100 * 100 * 3 + len(encoded)
    # An image the cache does not hold (a copy, here) is encoded on every call, and not kept.
    copy = image.copy()
    assert cache.base64_png(copy) == encoded and cache.base64_png(copy) is not encoded
    # Evicted, the image takes its encoding with it.
    for index in (2, 3):
        cache.load(solid_png(index, (100, 100)), name="image", config=config)
    assert len(cache) == 2 and cache.nbytes == 2 * 100 * 100 * 3
    assert cache.base64_png(image) == encoded and cache.nbytes == 2 * 100 * 100 * 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=12),
    st.integers(0, 20_000),
)
def test_any_sequence_of_images_keeps_the_cache_within_budget_and_answers_by_content(loads, budget):
    cache = ImageCache()
    config = CATTSConfig(image_cache_bytes=budget)
    for index, width, height in loads:
        image = cache.load(solid_png(index, (width, height)), name="image", config=config)
        assert image.size == (width, height) and image.getpixel((0, 0)) == (index, 0, 7)
        assert cache.nbytes <= budget


# --- bounded inputs, valid text, early checks (items 3, 4, 7) --------------------------------


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"question": "Q" * 100_000},
            r"question: 100000 characters, over the limit of 20000 \(max_question_chars\)",
        ),
        (
            {"question": "Q", "options": ["a", "b" * 3000]},
            r"options\[1\]: 3000 characters, over the limit of 2000",
        ),
        (
            {"question": "bad \udcff\udcfe bytes"},
            r"question: not valid UTF-8 text \('\\udcff' at character 4\)",
        ),
        ({"question": "lone \ud800"}, "question: not valid UTF-8 text"),
        ({"question": "Q", "options": ["ok", "\udcff"]}, r"options\[1\]: not valid UTF-8 text"),
        (
            {"question": "Q", "options": ["red", "blue", " Red "]},
            r"options\[2\]: 'Red' is the same option as options\[0\]",
        ),
        (
            {"question": "Q", "options": ["1,000", "1000"]},
            r"options\[1\]: '1000' is the same option as options\[0\]",
        ),
    ],
)
def test_unbounded_or_invalid_text_is_refused_before_any_model_call(vlm, image_path, inputs, message):
    with pytest.raises(InputError, match=message):
        run(vlm, image=image_path, **inputs)
    assert vlm.calls == []


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(exclude_categories=()), max_size=60), st.integers(1, 50))
def test_any_question_is_accepted_as_utf8_within_the_limit_or_refused_naming_it(question, limit):
    try:
        checked = check_question(question, limit)
    except InputError as err:
        assert str(err).startswith("question: ")
        return
    checked.encode("utf-8")
    assert 0 < len(checked) <= limit


def test_a_question_longer_than_the_models_context_is_an_input_error(tiny_vlm, image_path):
    assert tiny_vlm.context_length == 32768
    config = CATTSConfig(n_samples=1, max_question_chars=100_000, max_new_tokens=1)
    started = time.monotonic()
    with pytest.raises(
        InputError, match=r"question: the prompt is \d+ tokens .*over the model's context of 32768"
    ):
        build_graph(tiny_vlm, config=config).invoke({"image": image_path, "question": "Q" * 40_000})
    assert time.monotonic() - started < 30


def test_an_extreme_aspect_ratio_is_named_before_the_processor_sees_it(vlm, tmp_path):
    path = tmp_path / "thin.png"
    path.write_bytes(png_bytes(size=(20000, 1)))
    with pytest.raises(
        InputError, match=r"image: 20000x1 has an aspect ratio of 20000, over the limit of 200"
    ):
        run(vlm, question="Q", image=str(path))
    assert vlm.calls == []


def test_max_image_pixels_above_pils_warning_threshold_takes_effect(vlm, image_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns over 1000, refuses over 2000
    config = CATTSConfig(n_samples=2, max_image_pixels=1500)
    big = Image.new("RGB", (40, 30))  # 1200 pixels: within our limit, over PIL's warning threshold
    assert run(vlm, config, question="Q", image=big)["answer"] == "1"
    with pytest.raises(ConfigError, match="max_image_pixels must be at most 2000"):
        CATTSConfig(max_image_pixels=2001)


def test_a_huge_file_is_refused_by_its_size_before_it_is_read(vlm, tmp_path):
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:  # a sparse gigabyte: no disk, but a gigabyte if read
        handle.truncate(1 << 30)
    started = time.monotonic()
    with pytest.raises(
        InputError, match=r"is 1073741824 bytes, over the limit of 100000000 \(max_image_bytes\); not read"
    ):
        run(vlm, question="Q", image=str(path))
    assert time.monotonic() - started < 5 and vlm.calls == []


@pytest.mark.parametrize("form", ["bytes", "data URI"])
def test_image_bytes_and_data_uris_are_bounded(vlm, form):
    data = png_bytes(size=(64, 64))
    image = data if form == "bytes" else "data:image/png;base64," + base64.b64encode(data).decode()
    with pytest.raises(InputError, match=r"over the limit of 100 \(max_image_bytes\)"):
        run(vlm, CATTSConfig(n_samples=2, max_image_bytes=100), question="Q", image=image)


# --- a PIL image with a checkpointer (item 8) ----------------------------------------------------


@pytest.mark.parametrize("saver", ["memory", "sqlite"])
def test_a_pil_image_works_with_a_checkpointer(vlm, tmp_path, saver):
    checkpointer = (
        InMemorySaver()
        if saver == "memory"
        else SqliteSaver(sqlite3.connect(tmp_path / "c.sqlite", check_same_thread=False))
    )
    graph = build_graph(vlm, config=CATTSConfig(n_samples=2), checkpointer=checkpointer)
    thread = {"configurable": {"thread_id": "t"}}
    assert graph.invoke({"image": Image.new("RGB", (8, 8)), "question": "Q"}, thread)["answer"] == "1"
    many = {"images": [Image.new("RGB", (8, 8)), Image.new("RGB", (9, 9))], "question": "Q"}
    assert graph.invoke(many, thread)["answer"] == "1"
    assert graph.get_state(thread).values["image_refs"][1].startswith("data:image/png;base64,")
