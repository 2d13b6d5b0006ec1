"""The real ``langgraph dev`` server serves the repo's graph, configured from ``CATTS_*`` variables.

The server runs in its own process group on loopback, with the graph spec read from the repo's
``langgraph.json`` (so the test checks what Studio users get), a scripted base model loaded through
``CATTS_BASE_MODEL=module:factory``, no expert, and no network: analytics and tracing are off.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catts_graph.config import CATTSConfig
from catts_graph.graph import NODES
from tests.conftest import png_bytes

langgraph_sdk = pytest.importorskip("langgraph_sdk")
pytest.importorskip("langgraph_api")

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 45.0

STUDIO_MODELS = """
from catts_graph.testing import Reply, ScriptedVLM


def base_model():
    return ScriptedVLM.answering(Reply("Two plus two makes \\\\boxed{4}", -0.05))
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def studio_config(tmp_path: Path) -> Path:
    """A copy of the repo's ``langgraph.json`` with absolute paths and no ``.env`` file."""
    repo_config = json.loads((REPO / "langgraph.json").read_text())
    graphs = {}
    for graph_id, spec in repo_config["graphs"].items():
        path, _, attribute = spec.partition(":")
        graphs[graph_id] = f"{(REPO / path).resolve()}:{attribute}"
    config = {"dependencies": [str(REPO)], "graphs": graphs, "env": {}}
    path = tmp_path / "langgraph.json"
    path.write_text(json.dumps(config))
    return path


def server_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CATTS_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        CATTS_BASE_MODEL="studio_models:base_model",
        CATTS_EXPERT="none",
        CATTS_N_SAMPLES="2",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        LANGSMITH_API_KEY="",
        LANGCHAIN_API_KEY="",
        NO_COLOR="1",
    )
    return env


def langgraph_command() -> list[str]:
    cli = Path(sys.executable).with_name("langgraph")
    return [str(cli)] if cli.exists() else [sys.executable, "-m", "langgraph_cli"]


def server_errors(log: Path) -> str:
    """The error lines of the server's log (or its tail), for assertion messages."""
    text = log.read_text(errors="replace") if log.exists() else ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    errors = [line for line in text.splitlines() if "error" in line.lower() or "Traceback" in line]
    return ("\n".join(errors) or text)[-6000:]


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode} before serving:\n{server_errors(log)}")
        try:
            if httpx.get(f"{url}/ok", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"langgraph dev did not answer /ok within {STARTUP_TIMEOUT_S} s:\n{server_errors(log)}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_langgraph_dev_serves_the_configured_graph(tmp_path: Path) -> None:
    (tmp_path / "studio_models.py").write_text(STUDIO_MODELS)
    config = studio_config(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = langgraph_command() + [
        "dev",
        "--no-browser",
        "--no-reload",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=server_env(tmp_path),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_until_ready(proc, url, log)
        client = langgraph_sdk.get_sync_client(url=url, timeout=30.0)
        assistants = client.assistants.search(graph_id="catts")
        assert assistants, f"no assistant for graph 'catts':\n{server_errors(log)}"

        # Studio's configuration panel: CATTSConfig's fields, each with its description and bounds.
        panel = client.assistants.get_schemas(assistants[0]["assistant_id"])["context_schema"]
        assert list(panel["properties"]) == list(CATTSConfig.model_fields), server_errors(log)
        n_samples = panel["properties"]["n_samples"]
        assert n_samples["description"] == CATTSConfig.model_fields["n_samples"].description
        assert (n_samples["type"], n_samples["minimum"]) == ("integer", 1)

        drawing = client.assistants.get_graph(assistants[0]["assistant_id"])
        drawn = {node["id"] for node in drawing["nodes"]}
        assert set(NODES) <= drawn, f"nodes missing from the server's drawing: {set(NODES) - drawn}"

        image = "data:image/png;base64," + base64.b64encode(png_bytes((16, 16))).decode()
        thread = client.threads.create()
        result = client.runs.wait(thread["thread_id"], "catts", input={"image": image, "question": "2+2?"})
        assert isinstance(result, dict) and "answer" in result, (
            f"run failed: {result!r}\n{server_errors(log)}"
        )
        assert result["answer"] == "4"
        assert result["confidence"] == pytest.approx(1.0)
        modules = [entry["module"] for entry in result["trace"]]
        assert modules == ["prepare", "base_model", "planner", "aggregate"], modules
        assert all(entry["reason"] for entry in result["trace"] if entry["module"] == "planner")
        # CATTS_N_SAMPLES reaches the served graph: one wave of 2 samples, not the default 8.
        assert len(result["samples"]) == 2, (
            f"CATTS_N_SAMPLES=2 was not applied: {len(result['samples'])} samples"
        )

        state = client.threads.get_state(thread["thread_id"])
        assert state["values"]["answer"] == "4", "the run's state was not checkpointed by the server"
    finally:
        stop(proc)
