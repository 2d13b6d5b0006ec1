"""Bad input gets a clear error naming the input, before any model call."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import io
import threading
import typing
from collections.abc import Iterator

import pytest
from PIL import Image

from catts_graph import CATTSConfig, ConfigError, InputError, build_graph
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
        ({"tau1": 1.5}, r"tau1 must be in \[0, 1\]"),
        ({"tau3": -0.1}, r"tau3 must be in \[0, 1\]"),
        ({"policy": "random"}, "policy must be one of"),
        ({"n_samples": 8, "max_samples": 4}, "max_samples"),
        ({"weighting": "tail"}, "needs token confidence"),
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


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(CATTSConfig)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None, [1]])
def test_every_field_refuses_a_value_of_the_wrong_type(name, bad):
    """The class: any field, any value outside its type, is a ConfigError naming the field."""
    hint = typing.get_type_hints(CATTSConfig)[name]
    if bad is None and type(None) in typing.get_args(hint):
        return
    if isinstance(bad, str) and typing.get_origin(hint) is typing.Literal:
        return  # a Literal field takes strings; its own check names the allowed values
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


@pytest.fixture
def image_server() -> Iterator[str]:
    """A loopback HTTP server: /ok.png (a small PNG), /big.png (over the size limit), /slow.png."""
    payload = png_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/slow.png":
                threading.Event().wait(2.0)
            body = payload if self.path != "/big.png" else payload + b"\0" * 5000
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_url_is_fetched_only_when_allowed(vlm, image_server):
    with pytest.raises(InputError, match="URL fetching is off"):
        run(vlm, question="Q", image=f"{image_server}/ok.png")
    allowed = CATTSConfig(n_samples=2, allow_url_fetch=True)
    assert run(vlm, allowed, question="Q", image=f"{image_server}/ok.png")["answer"] == "1"


def test_url_size_and_time_limits(vlm, image_server):
    small = CATTSConfig(n_samples=2, allow_url_fetch=True, url_max_bytes=1000)
    with pytest.raises(InputError, match="over the limit of 1000"):
        run(vlm, small, question="Q", image=f"{image_server}/big.png")
    hasty = CATTSConfig(n_samples=2, allow_url_fetch=True, url_timeout=0.3)
    with pytest.raises(InputError, match="slow.png"):
        run(vlm, hasty, question="Q", image=f"{image_server}/slow.png")
    assert vlm.calls == []
