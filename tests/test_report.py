"""``catts report``: the Markdown tables checked against the database, and the plots' files.

The database is built by hand with the schema of the issue-4 spec, so these tests do not depend on
the runner; every number in the report is recomputed here with SQL or plain Python.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catts_graph import metrics
from catts_graph.commands.evaluate import add_report
from catts_graph.commands.registry import parser_for
from catts_graph.eval import plots
from catts_graph.eval.report import write_report
from catts_graph.eval.store import ResultStore

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE pools(item_id TEXT PRIMARY KEY, samples TEXT, seconds REAL, tokens INTEGER);
CREATE TABLE results(item_id TEXT, method TEXT, n INTEGER, answer TEXT, gold TEXT, correct INTEGER,
        confidence REAL, category TEXT, tokens INTEGER, expert_calls INTEGER, seconds REAL,
        modules TEXT, trace TEXT, official INTEGER, PRIMARY KEY (item_id, method, n));
CREATE TABLE probe(item_id TEXT, perturb TEXT, level REAL, answer TEXT, gold TEXT, correct INTEGER,
      confidence REAL, nmlp REAL, category TEXT, PRIMARY KEY (item_id, perturb, level));
"""

METHODS = {"greedy": [1], "majority": [1, 2, 4], "catts_adaptive": [1, 2, 4]}
ITEMS = [f"item-{i}" for i in range(8)]
CATTS_MODULES = ["prepare", "base_model", "planner", "self_consistency", "voter", "aggregate"]


def build_run(run_dir: Path, *, results: bool = True, probe: bool = True, official: bool = True) -> Path:
    """A run directory whose results.sqlite has a few items, methods, Ns and probe rows; the
    official verdict is the strict one or a lucky guess (NULL everywhere when not ``official``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.sqlite"
    rng = np.random.default_rng(7)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        meta = {
            "benchmark": "mathvista",
            "model": "tiny",
            "expert": "self",
            "seed": 0,
            "ns": [1, 2, 4],
            "methods": list(METHODS),
            "config": {"policy": "adaptive"},
            "scorer": {"headline": "mathvista_official", "beside": "strict"},
        }
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        if results:
            for method, ns in METHODS.items():
                for n, item in itertools.product(ns, ITEMS):
                    correct = int(rng.random() < 0.3 + 0.1 * n)
                    lucky = int(correct or rng.random() < 0.3) if official else None
                    modules = []
                    if method == "catts_adaptive":
                        modules = CATTS_MODULES[:4] + (["voter", "critic"] if rng.random() < 0.5 else [])
                        modules.append("aggregate")
                    db.execute(
                        "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            item,
                            method,
                            n,
                            "A",
                            "A" if correct else "B",
                            correct,
                            float(rng.random()),
                            "algebra",
                            int(rng.integers(50, 500)) * n,
                            int(rng.integers(0, 3)) if method == "catts_adaptive" else 0,
                            float(rng.random() * n),
                            json.dumps(modules),
                            None,
                            lucky,
                        ),
                    )
        if probe:
            for item in ITEMS[:5]:
                db.execute(
                    "INSERT INTO probe VALUES (?, 'clean', 0, 'A', 'A', ?, ?, ?, 'algebra')",
                    (item, int(rng.random() < 0.8), 0.9, 0.1 + rng.random() / 10),
                )
                for kind, level in (("gaussian", 0.5), ("gaussian", 1.0), ("occlusion", 1.0)):
                    conf = float(rng.random())
                    db.execute(
                        "INSERT INTO probe VALUES (?, ?, ?, 'B', 'A', ?, ?, ?, 'algebra')",
                        (item, kind, level, int(rng.random() < 0.4), conf, -math.log(conf)),
                    )
    return path


def section(report: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``## heading``, as lists of cell texts."""
    lines = report.split("## " + heading, 1)[1].splitlines()
    table = list(
        itertools.takewhile(
            lambda line: line.startswith("|"),
            itertools.dropwhile(lambda line: not line.startswith("|"), lines),
        )
    )
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [header] + [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


def plain_ece(conf: list[float], hits: list[int], n_bins: int = 15) -> tuple[float, float]:
    """ECE and MCE by a loop over bins, independent of catts_graph.metrics."""
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        members = [i for i, c in enumerate(conf) if min(int(c * n_bins), n_bins - 1) == b]
        if members:
            accuracy = sum(hits[i] for i in members) / len(members)
            gap = abs(accuracy - sum(conf[i] for i in members) / len(members))
            ece += len(members) / len(conf) * gap
            mce = max(mce, gap)
    return ece, mce


def plain_auroc(conf: list[float], hits: list[int]) -> float:
    pos = [c for c, y in zip(conf, hits, strict=True) if y]
    neg = [c for c, y in zip(conf, hits, strict=True) if not y]
    if not pos or not neg:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def check_number(cell: str, expected: float, digits: int) -> None:
    if math.isnan(expected):
        assert cell == "n/a"
    else:
        assert float(cell) == pytest.approx(expected, abs=0.51 * 10**-digits), (cell, expected)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, sqlite3.Connection]]:
    run_dir = tmp_path_factory.mktemp("run")
    path = build_run(run_dir)
    report = write_report(run_dir)
    assert report == run_dir / "report.md"
    db = sqlite3.connect(path)
    yield run_dir, report.read_text(), db
    db.close()


def test_accuracy_table_matches_the_database(full_run):
    _, report, db = full_run
    header, *rows = section(report, "Accuracy and test-time scaling")
    assert header[0] == "method" and header[1:4] == ["N=1", "N=2", "N=4"]
    assert [r[0] for r in rows] == list(METHODS)  # the run's order from meta
    for row in rows:
        method = row[0]
        curve = []
        for n, cell in zip((1, 2, 4), row[1:4], strict=True):
            if n not in METHODS[method]:
                assert cell == "—"
                continue
            acc, strict = db.execute(
                "SELECT 100.0 * AVG(official), 100.0 * AVG(correct) FROM results WHERE method = ? AND n = ?",
                (method, n),
            ).fetchone()
            points = [
                100.0 * c
                for (c,) in db.execute(
                    "SELECT official FROM results WHERE method = ? AND n = ? ORDER BY item_id", (method, n)
                )
            ]
            low, high = metrics.bootstrap_interval(points, n_boot=1000, level=0.95, seed=0)
            value, interval = cell.split(" [")
            check_number(value, acc, 1)
            interval, shown_strict = interval.split("] (strict ")
            check_number(shown_strict.rstrip(")"), strict, 1)
            shown_low, shown_high = interval.split(", ")
            check_number(shown_low, low, 1)
            check_number(shown_high, high, 1)
            assert low <= acc <= high
            curve.append((n, acc))
        expected_slope = (
            np.polyfit(np.log2([n for n, _ in curve]), [a for _, a in curve], 1)[0]
            if len(curve) > 1
            else math.nan
        )
        check_number(row[4], expected_slope, 2)
        assert int(row[5]) == len(ITEMS)


def test_calibration_table_matches_plain_python(full_run):
    _, report, db = full_run
    header, *rows = section(report, "Calibration")
    assert header == ["method", "N", "items", "ECE", "MCE", "Brier", "AUROC"]
    for method, n, items, ece, mce, brier, auroc in rows:
        assert int(n) == max(METHODS[method])
        data = db.execute(
            "SELECT confidence, correct FROM results WHERE method = ? AND n = ?", (method, int(n))
        ).fetchall()
        conf, hits = [c for c, _ in data], [y for _, y in data]
        assert int(items) == len(data)
        plain = plain_ece(conf, hits)
        check_number(ece, plain[0], 3)
        check_number(mce, plain[1], 3)
        check_number(brier, sum((c - y) ** 2 for c, y in data) / len(data), 3)
        check_number(auroc, plain_auroc(conf, hits), 3)


def test_cost_table_matches_the_database(full_run):
    _, report, db = full_run
    header, *rows = section(report, "Module usage and cost")
    assert header[:5] == ["method", "N", "tokens", "expert calls", "seconds"]
    modules = header[5:]
    assert modules == ["prepare", "base_model", "planner", "self_consistency", "voter", "critic", "aggregate"]
    for row in rows:
        method, n = row[0], int(row[1])
        tokens, calls, seconds = db.execute(
            "SELECT AVG(tokens), AVG(expert_calls), AVG(seconds) FROM results WHERE method = ? AND n = ?",
            (method, n),
        ).fetchone()
        check_number(row[2], tokens, 1)
        check_number(row[3], calls, 2)
        check_number(row[4], seconds, 2)
        ran = [
            set(json.loads(m))
            for (m,) in db.execute("SELECT modules FROM results WHERE method = ? AND n = ?", (method, n))
        ]
        for module, cell in zip(modules, row[5:], strict=True):
            if method == "catts_adaptive":
                assert cell == f"{100 * sum(module in r for r in ran) / len(ran):.0f}%"
            else:
                assert cell == "—" and not any(ran)


def test_probe_table_matches_the_database(full_run):
    _, report, db = full_run
    header, *rows = section(report, "Probe: confidence under perturbation")
    assert header[:4] == ["perturb", "level", "items", "accuracy %"]
    assert [(r[0], float(r[1])) for r in rows] == [
        ("gaussian", 0.0),
        ("gaussian", 0.5),
        ("gaussian", 1.0),
        ("occlusion", 0.0),
        ("occlusion", 1.0),
    ]
    for kind, level, items, accuracy, confidence, *_ in rows:
        stored = "clean" if float(level) == 0 else kind
        count, acc, conf = db.execute(
            "SELECT COUNT(*), 100.0 * AVG(correct), AVG(confidence) FROM probe "
            "WHERE perturb = ? AND level = ?",
            (stored, float(level)),
        ).fetchone()
        assert int(items) == count
        check_number(accuracy, acc, 1)
        check_number(confidence, conf, 3)


def test_plots_exist_are_linked_and_open(full_run):
    run_dir, report, _ = full_run
    for name in ("scaling", "reliability", "probe", "cost"):
        png = run_dir / "plots" / f"{name}.png"
        assert f"](plots/{name}.png)" in report
        assert png.stat().st_size > 5_000
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG"


def test_probe_only_run_has_only_the_probe_section(tmp_path):
    build_run(tmp_path, results=False)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "scaling.png").write_bytes(b"from an earlier report")
    report = write_report(tmp_path).read_text()
    assert "## Probe" in report
    assert "## Accuracy" not in report and "## Calibration" not in report and "## Module usage" not in report
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["probe.png"]


def test_rows_without_an_official_verdict_are_scored_strictly(tmp_path):
    path = build_run(tmp_path, probe=False, official=False)
    header, *rows = section(write_report(tmp_path).read_text(), "Accuracy and test-time scaling")
    with sqlite3.connect(path) as db:
        (greedy,) = db.execute("SELECT 100.0 * AVG(correct) FROM results WHERE method = 'greedy'").fetchone()
    assert rows[0][0] == "greedy" and rows[0][1].endswith("(strict only)")
    check_number(rows[0][1].split(" [")[0], greedy, 1)
    assert all(cell.endswith("(strict only)") for row in rows for cell in row[1:4] if cell != "—")


def test_auroc_is_na_when_every_answer_is_right(tmp_path):
    path = build_run(tmp_path, probe=False)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE results SET correct = 1 WHERE method = 'greedy'")
    rows = section(write_report(tmp_path).read_text(), "Calibration")[1:]
    greedy = next(r for r in rows if r[0] == "greedy")
    assert greedy[-1] == "n/a"
    assert greedy[3] != "n/a"


def test_report_command(tmp_path, capsys):
    build_run(tmp_path)
    parser = parser_for(add_report, "catts report")
    args = parser.parse_args([str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "report.md" in out and "catts_adaptive" in out
    # Both scorers' accuracies at the largest N: the official headline, the strict beside it.
    assert "mathvista_official" in out and "strict %" in out
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        official, strict = db.execute(
            "SELECT 100.0 * AVG(official), 100.0 * AVG(correct) FROM results WHERE method = 'greedy'"
        ).fetchone()
    greedy = next(line for line in out.splitlines() if "greedy" in line)
    assert f"{official:.1f}" in greedy and f"{strict:.1f}" in greedy and official != strict
    missing = parser.parse_args([str(tmp_path / "nowhere")])
    assert missing.func(missing) == 2
    printed = capsys.readouterr()
    assert "no results.sqlite" in printed.err and not printed.out


def test_write_report_names_the_missing_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.sqlite"):
        write_report(tmp_path)


def test_scaling_plot_takes_a_single_n_and_rejects_mismatched_curves(tmp_path):
    single = plots.plot_scaling({"greedy": plots.ScalingCurve([1], [40.0])}, tmp_path / "one.png")
    assert single.stat().st_size > 5_000
    with pytest.raises(ValueError, match="one accuracy per N"):
        plots.plot_scaling({"bad": plots.ScalingCurve([1, 2], [40.0])}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_cost({}, tmp_path / "none.png")


def test_the_hand_built_schema_is_the_stores(tmp_path):
    """The tables built here by hand are those ResultStore creates, column for column."""
    ResultStore(tmp_path / "store.sqlite").close()
    hand = sqlite3.connect(tmp_path / "hand.sqlite")
    hand.executescript(SCHEMA)
    store = sqlite3.connect(tmp_path / "store.sqlite")
    for table in ("meta", "pools", "results", "probe"):
        columns = f"PRAGMA table_info({table})"
        assert store.execute(columns).fetchall() == hand.execute(columns).fetchall(), table
    hand.close()
    store.close()
