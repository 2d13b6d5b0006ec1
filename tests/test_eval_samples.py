"""Bring your own samples: responses drawn live with the tiny model, dumped to JSON lines (ours and
vLLM's logprobs format), and evaluated from the file give the same result rows as the live run."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from catts_graph.eval.datasets import Item, load_benchmark
from catts_graph.eval.methods import draw_pool
from catts_graph.eval.runner import run_eval
from catts_graph.eval.store import ResultStore
from catts_graph.models.base import Sample
from catts_graph.models.replay import ReplayVLM
from catts_graph.task import item_seed
from tests.test_eval_runner import (
    MAX_NEW_TOKENS,
    AnsweringVLM,
    _config,
    _eval_args,
    comparable,
    scripted_expert,
    write_mmstar,
)

METHODS = [
    "greedy",
    "majority",
    "deepconf_lowest_group+eta",
    "deepconf_online",
    "catts_paper",
    "catts_adaptive",
]


def ours(item_id: str, sample: Sample) -> dict[str, Any]:
    return {
        "id": item_id,
        "text": sample.text,
        "token_logprobs": sample.logprobs,
        "top_logprobs": sample.top_logprobs,
        "entropies": sample.entropies,
        "tokens": sample.tokens,
        "finish_reason": sample.finish_reason,
    }


def vllm(item_id: str, sample: Sample) -> dict[str, Any]:
    """A vLLM chat-completion choice as the server sends it: the stop token that ended the sample is
    listed (``stop_reason`` null: EOS), top log-probs are objects, in no particular order."""
    content = [
        {
            "token": token,
            "logprob": lp,
            "bytes": list(token.encode()),
            "top_logprobs": [{"token": "", "logprob": v} for v in reversed(top)],
        }
        for token, lp, top in zip(
            sample.tokens or [], sample.logprobs, sample.top_logprobs or [], strict=True
        )
    ]
    if sample.finish_reason == "stop":
        content.append(
            {"token": "<|im_end|>", "logprob": -0.01, "top_logprobs": [{"token": "", "logprob": -0.01}]}
        )
    return {
        "id": item_id,
        "index": 0,
        "message": {"role": "assistant", "content": sample.text},
        "logprobs": {"content": content},
        "finish_reason": sample.finish_reason,
        "stop_reason": None,
    }


def dump(path: Path, items: list[Item], model: Any, *, n: int, seed: int, fmt: Any) -> Path:
    """Each item's responses drawn live, as the evaluation draws them, one JSON line each."""
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            pool = draw_pool(
                model, item.graph_input(), n=n, config=_config(), seed=item_seed(seed, item.id), greedy=False
            )
            for sample in pool.raw or []:
                out.write(json.dumps(fmt(item.id, sample)) + "\n")
    return path


def without_entropy(value: Any) -> Any:
    """Records or rows without what rests on the full-vocabulary entropy (vLLM reports none): the
    mean entropy, each step's entropy signal, and how the steps were fused (which names it)."""
    if isinstance(value, list):
        return [without_entropy(v) for v in value]
    if not isinstance(value, dict):
        return value
    dropped = ("mean_entropy", "entropy_over", "step_fusion", "entropy")
    return {k: without_entropy(v) for k, v in value.items() if k not in dropped}


def test_a_file_of_live_samples_gives_the_live_rows_in_both_formats(tmp_path, tiny_vlm):
    items = load_benchmark("mmstar", source=str(write_mmstar(tmp_path, 2)))
    model = AnsweringVLM(tiny_vlm)
    settings: dict[str, Any] = dict(
        methods=METHODS, ns=[1, 2], seed=7, config=_config(), console=Console(file=io.StringIO())
    )
    live = run_eval(items, base_model=model, expert=scripted_expert(), run_dir=tmp_path / "live", **settings)
    for fmt in (ours, vllm):
        path = dump(tmp_path / f"{fmt.__name__}.jsonl", items, model, n=2, seed=7, fmt=fmt)
        draws = model.draws
        replay = ReplayVLM.from_jsonl(path, model)
        replayed = run_eval(
            items, base_model=replay, expert=scripted_expert(), run_dir=tmp_path / fmt.__name__, **settings
        )
        assert model.draws == draws, "the answer-prompt samples came from the file, none were drawn"
        with ResultStore(live) as a, ResultStore(replayed) as b:
            rows = a.results()
            assert len(rows) == 2 * len(METHODS) * 2
            ran = {m for r in rows for m in r["modules"]}
            assert {"self_reflection", "visual_self_check"} <= ran, "the file's rows rest on both"
            expected, got = comparable(rows), comparable(b.results())
            if fmt is vllm:
                expected, got = without_entropy(expected), without_entropy(got)
            assert got == expected, fmt.__name__
            for item in items:
                replayed_pool, live_pool = comparable(b.get_pool(item.id)), comparable(a.get_pool(item.id))
                if fmt is vllm:
                    # vLLM reports no full-vocabulary entropy: its responses fall back to the top-k.
                    assert "top_k" in {r["entropy_over"] for r in replayed_pool}
                    replayed_pool, live_pool = without_entropy(replayed_pool), without_entropy(live_pool)
                assert replayed_pool == live_pool


def test_catts_eval_samples_end_to_end(tmp_path, tiny_vlm, tiny_model_dir, monkeypatch):
    from catts_graph.cli import main

    monkeypatch.setenv("CATTS_TEST_TINY_MODEL", str(tiny_model_dir))
    data = write_mmstar(tmp_path, 3)
    items = load_benchmark("mmstar", source=str(data))
    path = dump(tmp_path / "vllm.jsonl", items, AnsweringVLM(tiny_vlm), n=2, seed=3, fmt=vllm)
    assert main(_eval_args(data, tmp_path / "live")) == 0
    # With the model that generated them: it re-answers and scores; the rows are the live ones.
    assert main([*_eval_args(data, tmp_path / "file"), "--samples", str(path)]) == 0
    with (
        ResultStore(tmp_path / "live" / "results.sqlite") as a,
        ResultStore(tmp_path / "file" / "results.sqlite") as b,
    ):
        live_rows = a.results()
        # vLLM-format responses carry no full-vocabulary entropy (see without_entropy).
        assert without_entropy(comparable(b.results())) == without_entropy(comparable(live_rows))
        assert b.meta["model"] == f"samples:{path} scored by tests.test_eval_runner:answering_tiny_model"

    # Without a model: no expert by default; the vote-only methods are unchanged, and CA-TTS runs with
    # self-reflection and the visual self-check off, saying why in its trace.
    offline = [
        "eval", "--benchmark", "mmstar", "--source", str(data), "--n", "1,2", "--seed", "3",
        "--method", "majority,deepconf_online,catts_paper", "--samples", str(path),
        "--run-dir", str(tmp_path / "offline"), "--max-new-tokens", str(MAX_NEW_TOKENS),
    ]  # fmt: skip
    assert main(offline) == 0
    with ResultStore(tmp_path / "offline" / "results.sqlite") as store:
        rows = store.results()
        assert store.meta["expert"] == "none"
    keep = {(r["item_id"], r["method"], r["n"]): r for r in live_rows}
    for row in rows:
        if row["method"] != "catts_paper":
            live = keep[row["item_id"], row["method"], row["n"]]
            assert without_entropy(comparable([row])) == without_entropy(comparable([live]))
            continue
        first = row["trace"][0]
        assert first["module"] == "replay" and "no base model was given" in first["reason"]
        assert str(path) in first["reason"]
        assert not {"self_reflection", "visual_self_check", "critic"} & set(row["modules"])
        # At N = 1 no module runs at all (skip_modules_at_one_sample), so none is skipped by name.
        said = "skip_modules_at_one_sample" if row["n"] == 1 else "skipped self_reflection (disabled)"
        assert any(said in e["reason"] for e in row["trace"])


def test_samples_errors_before_any_work(tmp_path, capsys):
    from catts_graph.cli import main

    data = write_mmstar(tmp_path, 2)
    path = tmp_path / "r.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": "0", "text": f"\\boxed{{A}} {i}", "token_logprobs": [-0.5]}) for i in range(2)
        )
        + "\n"
    )

    def run(*extra: str) -> str:
        args = ["eval", "--benchmark", "mmstar", "--source", str(data), "--samples", str(path)]
        assert main([*args, "--run-dir", str(tmp_path / "run"), *extra]) == 2
        assert not (tmp_path / "run" / "results.sqlite").exists()
        return capsys.readouterr().err.replace("\n", " ")

    assert "no responses for 1 of the 2 items ('1')" in run("--method", "majority", "--n", "1")
    path.write_text(path.read_text() + json.dumps({"id": 1, "text": "x", "token_logprobs": [-1.0]}) + "\n")
    assert "N=2 needs 2 responses per item" in run("--method", "majority", "--n", "1,2")
    assert "1 for item '1'" in run("--method", "majority", "--n", "2")
    assert "greedy needs the model's temperature-0 response" in run("--method", "greedy", "--n", "1")
    assert "response 0 of item '0' in" in run("--method", "majority,deepconf_online", "--n", "1")
    assert "expert 'self'" in run("--method", "catts_paper", "--n", "1", "--expert", "self")
    path.write_text("{not json\n")
    assert "r.jsonl:1: not valid JSON" in run("--method", "majority", "--n", "1")


def samples_eval(data: Path, path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "eval", "--benchmark", "mmstar", "--source", str(data), "--samples", str(path),
        "--method", "majority", "--n", "1", "--concurrency", "1", "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip


def answers(path: Path, *letters: str) -> Path:
    rows = [{"id": i, "text": f"\\boxed{{{a}}}", "token_logprobs": [-0.5]} for i, a in enumerate(letters)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_changed_samples_file_is_not_resumed(tmp_path, capsys):
    from catts_graph.cli import main

    data = write_mmstar(tmp_path, 3)
    path = answers(tmp_path / "r.jsonl", "C", "C", "C")  # the gold answers are A, B, C
    assert main(samples_eval(data, path, tmp_path / "run", "--limit", "2")) == 0
    with ResultStore(tmp_path / "run" / "results.sqlite") as store:
        recorded = store.meta["samples"]
    assert recorded == {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
    }
    answers(path, "A", "B", "C")  # fixed in place: same path, other bytes
    capsys.readouterr()
    assert main(samples_eval(data, path, tmp_path / "run", "--limit", "3")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds a run with other settings (samples: stored {" in err and recorded["sha256"] in err
    assert "use a new --run-dir" in err
    assert main(samples_eval(data, path, tmp_path / "fresh", "--limit", "3")) == 0


def test_every_line_is_checked_before_any_row_is_stored(tmp_path, capsys):
    from catts_graph.cli import main

    data = write_mmstar(tmp_path, 3)
    path = answers(tmp_path / "r.jsonl", "A", "B")
    bad = {"id": 2, "text": "C", "logprobs": {"content": [{"token": "C", "logprob": float("nan")}]}}
    path.write_text(path.read_text() + json.dumps(bad) + "\n", encoding="utf-8")
    assert main(samples_eval(data, path, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: logprobs.content[0].logprob=nan: expected a log-probability" in err
    assert not (tmp_path / "run" / "results.sqlite").exists()


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
