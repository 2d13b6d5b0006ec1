"""The result store: the agreed schema, per-item transactions, meta checks, reopening after a kill."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from catts_graph.eval.store import DB_FILENAME, MetaMismatch, ResultStore, db_path

ROOT = Path(__file__).resolve().parents[1]


def row(item_id: str, method: str = "majority", n: int = 1, **changes) -> dict:
    values = {
        "item_id": item_id,
        "method": method,
        "n": n,
        "answer": "A",
        "gold": "A",
        "correct": True,
        "confidence": 0.75,
        "category": "cat",
        "tokens": 12,
        "expert_calls": 0,
        "seconds": 0.5,
        "modules": [],
        "trace": None,
    }
    return values | changes


def test_schema_is_the_agreed_one(tmp_path):
    ResultStore(db_path(tmp_path)).close()
    assert db_path(tmp_path).name == DB_FILENAME == "results.sqlite"
    connection = sqlite3.connect(db_path(tmp_path))
    columns = {
        table: [(c[1], c[2], c[5]) for c in connection.execute(f"PRAGMA table_info({table})")]
        for table in ("meta", "pools", "results", "probe")
    }
    assert columns["meta"] == [("key", "TEXT", 1), ("value", "TEXT", 0)]
    assert columns["pools"] == [
        ("item_id", "TEXT", 1),
        ("samples", "TEXT", 0),
        ("seconds", "REAL", 0),
        ("tokens", "INTEGER", 0),
    ]
    assert columns["results"] == [
        ("item_id", "TEXT", 1),
        ("method", "TEXT", 2),
        ("n", "INTEGER", 3),
        ("answer", "TEXT", 0),
        ("gold", "TEXT", 0),
        ("correct", "INTEGER", 0),
        ("confidence", "REAL", 0),
        ("category", "TEXT", 0),
        ("tokens", "INTEGER", 0),
        ("expert_calls", "INTEGER", 0),
        ("seconds", "REAL", 0),
        ("modules", "TEXT", 0),
        ("trace", "TEXT", 0),
        ("official", "INTEGER", 0),
    ]
    assert [c[0] for c in columns["probe"]] == [
        "item_id",
        "perturb",
        "level",
        "answer",
        "gold",
        "correct",
        "confidence",
        "nmlp",
        "category",
    ]
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pools_and_results_round_trip_and_a_key_is_stored_once(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        samples = [{"index": 0, "answer": "A", "nmlp": 0.25}, {"index": 1, "answer": None, "nmlp": None}]
        store.put_pool("q1", samples, seconds=1.5, tokens=30)
        assert store.get_pool("q1") == samples
        assert store.get_pool("q2") is None
        store.put_result(**row("q1", modules=["voter"], trace=[{"module": "voter"}]))
        store.put_result(**row("q1", "catts_paper", 2, answer=None, correct=False))
        store.put_result(**row("q1", "catts_paper", 2, answer="B", correct=False, official=True))  # replaces
        assert store.has("q1", "majority", 1) and not store.has("q1", "majority", 2)
        assert store.result_keys("q1") == {("majority", 1), ("catts_paper", 2)}
        rows = store.results()
        assert [(r["method"], r["n"], r["answer"]) for r in rows] == [
            ("catts_paper", 2, "B"),
            ("majority", 1, "A"),
        ]
        assert rows[1]["modules"] == ["voter"] and rows[1]["trace"] == [{"module": "voter"}]
        assert rows[1]["correct"] is True and rows[0]["trace"] is None
        assert rows[0]["official"] is True and rows[1]["official"] is None  # None: not scored officially
        assert store.results("majority") == [rows[1]]
        assert store.item_ids() == ["q1"]


def test_a_store_from_before_the_official_column_gains_it(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE results(item_id TEXT, method TEXT, n INTEGER, answer TEXT, gold TEXT, "
            "correct INTEGER, confidence REAL, category TEXT, tokens INTEGER, expert_calls INTEGER, "
            "seconds REAL, modules TEXT, trace TEXT, PRIMARY KEY (item_id, method, n))"
        )
        db.execute(
            "INSERT INTO results VALUES ('q1', 'majority', 1, 'A', 'A', 1, 0.5, NULL, 3, 0, 0.1, '[]', NULL)"
        )
    with ResultStore(path) as store:
        assert [(r["item_id"], r["correct"], r["official"]) for r in store.results()] == [("q1", True, None)]
        store.put_result(**row("q2", official=False))
        assert [r["official"] for r in store.results()] == [None, False]


def test_a_failed_transaction_leaves_nothing(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.put_pool("q1", [], seconds=0.0, tokens=0)
            store.put_result(**row("q1"))
            raise RuntimeError("killed mid-item")
        assert store.results() == [] and store.get_pool("q1") is None
        with store.transaction(), store.transaction():  # nested: one transaction
            store.put_result(**row("q2"))
        assert store.has("q2", "majority", 1)


def test_meta_is_stored_once_and_a_different_run_is_refused(tmp_path):
    settings = {"benchmark": "mmstar", "seed": 0, "ns": (1, 2), "methods": ["majority"], "config": {"a": 1.0}}
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.check_meta(settings)
        assert store.meta == {**settings, "ns": [1, 2]}
        store.check_meta(settings)  # the same run: accepted
        with pytest.raises(MetaMismatch, match=r"seed: stored 0, now 1.*new --run-dir"):
            store.check_meta({**settings, "seed": 1})
        with pytest.raises(MetaMismatch, match="methods"):
            store.check_meta({**settings, "methods": ["majority", "greedy"]})
        # Another command's keys (catts probe keeps its settings under "probe") do not interfere.
        store.set_meta({"probe": {"levels": [0, 1]}})
        store.check_meta(settings)
    with ResultStore(tmp_path / "probe-first.sqlite") as store:
        store.set_meta({"probe": {"levels": [0, 1]}})
        store.check_meta(settings)
        assert store.meta["seed"] == 0 and store.meta["probe"] == {"levels": [0, 1]}


def test_threads_write_whole_items_concurrently(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")

    def write(i: int) -> None:
        with store.transaction():
            store.put_pool(f"q{i}", [{"index": 0}], seconds=0.1, tokens=1)
            for n in (1, 2, 4):
                store.put_result(**row(f"q{i}", n=n))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.results()) == 48 and len(store.item_ids()) == 16
    store.close()


def test_a_killed_writer_loses_only_its_open_item(tmp_path):
    path = tmp_path / "r.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from catts_graph.eval.store import ResultStore
        store = ResultStore({str(path)!r})
        with store.transaction():
            store.put_pool("done", [], seconds=0.0, tokens=0)
            store.put_result(item_id="done", method="majority", n=1, answer="A", gold="A", correct=True,
                             confidence=1.0, category=None, tokens=1, expert_calls=0, seconds=0.1)
        with store.transaction():
            store.put_pool("half", [], seconds=0.0, tokens=0)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    with ResultStore(path) as store:
        assert store.item_ids() == ["done"]
        assert [r["item_id"] for r in store.results()] == ["done"]
    assert os.path.exists(path)
