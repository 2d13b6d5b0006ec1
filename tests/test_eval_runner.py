"""The runner end to end on the tiny real model: every method, the store, resume after a kill."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console

from catts_graph.eval.datasets import Item, load_benchmark
from catts_graph.eval.methods import method_names
from catts_graph.eval.runner import run_eval
from catts_graph.eval.store import MetaMismatch, ResultStore, RunDirectoryBusy, run_lock
from catts_graph.models.base import Sample
from catts_graph.task import item_seed
from catts_graph.testing import ScriptedExpert

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 8


class AnsweringVLM:
    """The tiny random model made to state an answer: each response gets one more token,
    ``" \\boxed{X}"``, with X picked from the response's own token ids, so votes, the Voter, the
    Critic and the self-check all have candidates. Deterministic, and keeps the backend's prefix
    property. ``delay`` seconds are slept before each answer-prompt draw (to give a test time to
    kill a run); ``draws`` counts those draws."""

    def __init__(self, inner: Any, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.draws = 0
        self._lock = threading.Lock()

    def sample(self, images, prompt, n, **kwargs) -> list[Sample]:
        if kwargs.get("temperature", 1.0) > 0 and "<critique>" not in prompt:
            with self._lock:
                self.draws += 1
            time.sleep(self.delay)
        k = kwargs.get("top_logprobs", 0)
        return [self._answered(s, k) for s in self.inner.sample(images, prompt, n, **kwargs)]

    @staticmethod
    def _answered(sample: Sample, k: int) -> Sample:
        suffix = " \\boxed{" + "AB"[sum(sample.token_ids) % 2] + "}"
        return dataclasses.replace(
            sample,
            token_ids=[*sample.token_ids, 0],
            logprobs=[*sample.logprobs, -0.5],
            tokens=[*(sample.tokens or []), suffix],
            text=sample.text + suffix,
            top_logprobs=[*sample.top_logprobs, [-0.5 - j for j in range(k)]] if k else None,
            entropies=[*sample.entropies, 0.5] if sample.entropies is not None else None,
        )

    def score(self, images, prompt, continuations):
        return self.inner.score(images, prompt, continuations)


def scripted_expert() -> ScriptedExpert:
    """Planner (the paper order), Voter (first candidate 0.6) and Critic, instantly and deterministically."""

    def vote(messages, attempt):
        count = int(messages[0].text.split("with exactly ")[1].split()[0])
        probabilities = [0.6] + [0.4 / (count - 1)] * (count - 1) if count > 1 else [1.0]
        return json.dumps({"probabilities": probabilities})

    return ScriptedExpert(
        replies={
            "planner": json.dumps(
                {"modules": ["self_consistency", "self_reflection", "visual_self_check"], "reason": "r"}
            ),
            "voter": vote,
            "critic": json.dumps({"critique": "Check the colour again.", "verdict": "incorrect"}),
        }
    )


def answering_tiny_model() -> AnsweringVLM:
    """``--model tests.test_eval_runner:answering_tiny_model`` (directory and delay from the environment)."""
    from catts_graph.models.transformers_vlm import TransformersVLM

    inner = TransformersVLM.from_pretrained(os.environ["CATTS_TEST_TINY_MODEL"], device="cpu")
    return AnsweringVLM(inner, delay=float(os.environ.get("CATTS_TEST_DELAY", "0")))


def write_mmstar(folder: Path, count: int) -> Path:
    """A local MMStar export (JSONL, options in columns A-C, image files beside it)."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    lines = []
    for i in range(count):
        Image.new("RGB", (56, 56), colours[i % 3]).save(folder / f"img{i}.png")
        lines.append(
            json.dumps(
                {
                    "index": i,
                    "question": f"What colour is image {i}?",
                    "A": "red",
                    "B": "green",
                    "C": "blue",
                    "answer": "ABC"[i % 3],
                    "image": f"img{i}.png",
                    "category": ["coarse", "fine"][i % 2],
                    "l2_category": "colour",
                }
            )
        )
    path = folder / "mmstar.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without wall-clock times (``seconds`` and every duration inside the trace)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("seconds", "duration_s")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(row) for row in rows]


def same(left: Any, right: Any, path: str = "") -> None:
    """Assert equal structures, floats to a relative 1e-6: a run in another process may use another
    torch thread count, whose float sums differ in the last bits (seen: 0.0087317838 vs ...843)."""
    if isinstance(left, float) or isinstance(right, float):
        assert isinstance(left, (int, float)) and isinstance(right, (int, float)), path
        assert math.isclose(left, right, rel_tol=1e-6, abs_tol=1e-12), f"{path}: {left} != {right}"
    elif isinstance(left, dict) and isinstance(right, dict):
        assert left.keys() == right.keys(), f"{path}: {sorted(left)} != {sorted(right)}"
        for key in left:
            same(left[key], right[key], f"{path}.{key}")
    elif isinstance(left, list) and isinstance(right, list):
        assert len(left) == len(right), f"{path}: {len(left)} != {len(right)} entries"
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            same(a, b, f"{path}[{index}]")
    else:
        assert left == right, f"{path}: {left!r} != {right!r}"


def test_every_method_end_to_end_on_the_tiny_model_then_resume_does_nothing(tmp_path, tiny_vlm):
    items = load_benchmark("mmstar", source=str(write_mmstar(tmp_path, 2)))
    model = AnsweringVLM(tiny_vlm)
    output = io.StringIO()
    settings: dict[str, Any] = dict(
        methods=method_names(),
        ns=[2, 1],
        base_model=model,
        expert=scripted_expert(),
        run_dir=tmp_path / "run",
        seed=7,
        concurrency=2,
        config=_config(),
        console=Console(file=output, width=240),
    )
    path = run_eval(items, **settings)
    store = ResultStore(path)
    rows = store.results()
    assert len(rows) == 2 * 20 * 2
    assert {(r["item_id"], r["method"], r["n"]) for r in rows} == {
        (i.id, m, n) for i in items for m in method_names() for n in (1, 2)
    }
    assert model.draws == 2, "one pool draw per item, whatever the methods and Ns"
    for item in items:
        pool = store.get_pool(item.id)
        assert [r["source"] for r in pool] == ["sample", "sample", "greedy"]
        by = {(r["method"], r["n"]): r for r in rows if r["item_id"] == item.id}
        # Majority at N = 1 is the first sample; its tokens are the first sample's.
        assert by["majority", 1]["answer"] == pool[0]["answer"]
        assert by["majority", 1]["tokens"] == pool[0]["n_tokens"]
        assert by["majority", 2]["tokens"] == pool[0]["n_tokens"] + pool[1]["n_tokens"]
        assert by["greedy", 1]["answer"] == by["greedy", 2]["answer"] == pool[2]["answer"]
        for n in (1, 2):
            paper = by["catts_paper", n]
            assert paper["tokens"] >= by["majority", n]["tokens"]
            assert paper["trace"][0]["module"] == "prepare" and paper["trace"][-1]["module"] == "aggregate"
            assert "critic" not in by["catts_paper-no_self_reflection", n]["modules"]
            assert "visual_self_check" not in by["catts_paper-no_visual_self_check", n]["modules"]
            assert by["catts_paper-no_self_consistency", n]["expert_calls"] <= paper["expert_calls"]
        assert all(r["gold"] == item.answer and r["category"] == item.category for r in by.values())
    meta = store.meta
    assert (meta["benchmark"], meta["seed"], meta["ns"]) == ("mmstar", 7, [1, 2])
    assert meta["config"]["max_new_tokens"] == MAX_NEW_TOKENS
    text = output.getvalue()
    assert "mmstar: Overall accuracy (%) by N, 2 items" in text and "catts_paper-no_self_check_boost" in text
    # Resuming a complete run draws nothing and changes nothing.
    run_eval(items, **settings)
    assert model.draws == 2
    assert comparable(store.results()) == comparable(rows)
    assert "resuming" in output.getvalue() and "2 of 2 items already stored" in output.getvalue()
    with pytest.raises(MetaMismatch, match="seed"):
        run_eval(items, **{**settings, "seed": 8})
    store.close()


def _config():
    from catts_graph import CATTSConfig

    return CATTSConfig(max_new_tokens=MAX_NEW_TOKENS, expert_retries=0, expert_backoff=0.0)


def test_the_pool_replays_exactly_what_the_real_model_would_sample(tmp_path, tiny_vlm):
    """TransformersVLM's prefix property: CA-TTS at N from a pool drawn at a larger N is the same run
    as the graph drawing its own N samples with the same seed."""
    from catts_graph import build_graph
    from catts_graph.eval.methods import CATTSGraphs, draw_pool

    (item,) = load_benchmark("mmstar", source=str(write_mmstar(tmp_path, 1)))
    model, config = AnsweringVLM(tiny_vlm), _config()
    pool = draw_pool(model, item.graph_input(), n=4, config=config, seed=11, greedy=False)
    via_pool = CATTSGraphs(model, scripted_expert(), config).run(pool, 3, item.graph_input(), policy="paper")
    direct_config = config.replace(policy="paper", n_samples=3, max_samples=3, seed=11)
    direct = build_graph(model, expert=scripted_expert(), config=direct_config).invoke(item.graph_input())
    assert [s["text"] for s in direct["samples"][:3]] == [r["text"] for r in pool.records[:3]]
    assert (via_pool.answer, via_pool.tokens, via_pool.expert_calls) == (
        direct["answer"],
        direct["usage"]["generated_tokens"],
        direct["usage"]["expert_calls"],
    )
    assert via_pool.confidence == pytest.approx(direct["confidence"])
    assert comparable(via_pool.trace) == comparable(direct["trace"])


def _choice_item(tmp_path) -> Item:
    """A two-option item whose image path lies in ``tmp_path`` (written by the test when needed)."""
    return Item(
        id="q",
        benchmark="mmstar",
        images=[str(tmp_path / "x.png")],
        question="Q?",
        options=["a", "b"],
        answer="A",
        answer_type="choice",
    )


def test_runner_rejects_bad_settings_before_any_work(tmp_path, tiny_vlm):
    item = _choice_item(tmp_path)
    kwargs: dict[str, Any] = dict(
        ns=[1], base_model=tiny_vlm, expert=None, run_dir=tmp_path, console=Console(file=io.StringIO())
    )
    with pytest.raises(ValueError, match="unknown method 'vote'"):
        run_eval([item], methods=["vote"], **kwargs)
    with pytest.raises(ValueError, match="catts_expert needs a planner"):
        run_eval([item], methods=["catts_expert"], **kwargs)
    with pytest.raises(ValueError, match="unique"):
        run_eval([item, item], methods=["greedy"], **kwargs)
    assert not (tmp_path / "results.sqlite").exists()
    assert item_seed(0, "q") == item_seed(0, "q") != item_seed(1, "q")


def _eval_args(data: Path, run_dir: Path) -> list[str]:
    return [
        "eval",
        "--benchmark",
        "mmstar",
        "--source",
        str(data),
        "--n",
        "1,2",
        "--seed",
        "3",
        "--method",
        "greedy,majority,deepconf_lowest_group+eta,deepconf_online,catts_paper,catts_paper-no_self_reflection",
        "--model",
        "tests.test_eval_runner:answering_tiny_model",
        "--expert",
        "tests.test_eval_runner:scripted_expert",
        "--run-dir",
        str(run_dir),
        "--concurrency",
        "2",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
    ]


def test_a_run_killed_midway_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir, monkeypatch):
    from catts_graph.cli import main

    data = write_mmstar(tmp_path, 6)
    env = {**os.environ, "CATTS_TEST_TINY_MODEL": str(tiny_model_dir), "PYTHONPATH": str(ROOT)}
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "catts_graph.cli", *_eval_args(data, killed_dir)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**env, "CATTS_TEST_DELAY": "0.4"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stored = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (killed_dir / "results.sqlite").exists():
                with sqlite3.connect(killed_dir / "results.sqlite", timeout=5) as connection:
                    try:
                        stored = connection.execute("SELECT COUNT(DISTINCT item_id) FROM results").fetchone()[
                            0
                        ]
                    except sqlite3.OperationalError:  # the schema is still being created
                        stored = 0
                if stored >= 2:
                    process.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()[-3000:]
    assert 2 <= stored < 6, "the kill must land midway"

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "6 items" in resumed.stdout

    monkeypatch.setenv("CATTS_TEST_TINY_MODEL", str(tiny_model_dir))
    assert main(_eval_args(data, tmp_path / "whole")) == 0

    with (
        ResultStore(killed_dir / "results.sqlite") as killed,
        ResultStore(tmp_path / "whole" / "results.sqlite") as whole,
    ):
        killed_rows, whole_rows = killed.results(), whole.results()
        assert len(whole_rows) == 6 * 6 * 2
        same(comparable(killed_rows), comparable(whole_rows))
        keys = [(r["item_id"], r["method"], r["n"]) for r in killed_rows]
        assert len(keys) == len(set(keys)) == 72
        assert killed.item_ids() == whole.item_ids() == [str(i) for i in range(6)]
        for item_id in whole.item_ids():
            same(comparable(killed.get_pool(item_id)), comparable(whole.get_pool(item_id)))


# --- what a user meets (issue 11, item 8) ---------------------------------------------------------


def test_a_second_evaluation_into_a_busy_run_directory_is_refused(tmp_path, tiny_vlm):
    item = _choice_item(tmp_path)
    Image.new("RGB", (28, 28)).save(tmp_path / "x.png")
    kwargs: dict[str, Any] = dict(
        methods=["greedy"],
        ns=[1],
        base_model=tiny_vlm,
        expert=None,
        run_dir=tmp_path / "run",
        console=Console(file=io.StringIO()),
    )
    with run_lock(tmp_path / "run"):  # what an evaluation already running there holds
        with pytest.raises(
            RunDirectoryBusy, match=rf"run_dir: '.*run' is in use by another eval \(process {os.getpid()}\)"
        ):
            run_eval([item], **kwargs)
        assert not (tmp_path / "run" / "results.sqlite").exists()
    assert run_eval([item], **kwargs).exists()  # released: the run goes ahead


def test_the_metadata_names_the_model_that_ran(tmp_path, capsys):
    from catts_graph.cli import main

    run_dir = tmp_path / "run"
    args = ["eval", "--benchmark", "synthetic", "--limit", "1", "--method", "greedy", "--n", "1"]
    assert main([*args, "--expert", "none", "--run-dir", str(run_dir), "--max-new-tokens", "4"]) == 0
    with ResultStore(run_dir / "results.sqlite") as store:
        assert store.meta["model"] == "organism:base"
