"""The probing experiment: rows written by the real tiny model, resume, and the summary by hand."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from catts_graph.commands.evaluate import add_probe
from catts_graph.commands.registry import parser_for
from catts_graph.eval.datasets import Item
from catts_graph.eval.probe import parse_levels, parse_perturbs, probe_model, probe_summary, run_probe
from catts_graph.eval.store import ResultStore
from catts_graph.models.base import Sample
from catts_graph.testing import Reply, ScriptCall, ScriptedVLM

# -- helpers ------------------------------------------------------------------------------------------


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


class RecordingVLM:
    """Delegates to a real base model and records what each ``sample`` call saw."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def sample(self, images: Sequence[Image.Image], prompt: str, n: int, **kwargs: Any) -> list[Sample]:
        self.calls.append({"images": [digest(i) for i in images], "prompt": prompt, "n": n, **kwargs})
        return self.inner.sample(images, prompt, n, **kwargs)

    def score(self, images: Sequence[Image.Image], prompt: str, continuations: Sequence[str]) -> Any:
        return self.inner.score(images, prompt, continuations)


def make_items(tmp_path: Path, image: Image.Image) -> list[Item]:
    path = tmp_path / "chart.png"
    image.save(path)
    return [
        Item(
            id="q1",
            benchmark="mathvision",
            images=[str(path)],
            question="Which colour dominates?",
            options=["red", "blue"],
            answer="A",
            answer_type="choice",
            category="colour",
        ),
        Item(
            id="q2",
            benchmark="mathvision",
            images=[str(path)],
            question="How many dots are there?",
            options=None,
            answer="12",
            answer_type="integer",
            category="counting",
        ),
    ]


def probe_rows(path: Path) -> dict[tuple[str, str, float], tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT item_id, perturb, level, answer, gold, correct, confidence, nmlp, category FROM probe"
        ).fetchall()
    return {(r[0], r[1], r[2]): r[3:] for r in rows}


# -- the real tiny model end to end --------------------------------------------------------------------


def test_probe_with_the_tiny_model_writes_every_key_and_resumes(tmp_path, tiny_vlm, tiny_image):
    items = make_items(tmp_path, tiny_image)
    model = RecordingVLM(tiny_vlm)
    store = tmp_path / "run" / "results.sqlite"
    options = {
        "perturbs": ("noise", "occlusion"),
        "levels": (0, 1),
        "n": 1,
        "seed": 3,
        "store_path": store,
        "max_new_tokens": 6,
    }

    run = run_probe(items, base_model=model, **options)

    assert (run.written, run.skipped) == (2 * (1 + 2), 0)
    rows = probe_rows(store)
    assert set(rows) == {
        (item.id, kind, level)
        for item in items
        for kind, level in (("clean", 0.0), ("gaussian", 1.0), ("occlusion", 1.0))
    }
    for (item_id, _, _), (_, gold, correct, confidence, nmlp, category) in rows.items():
        item = next(i for i in items if i.id == item_id)
        assert gold == item.answer and category == item.category and correct in (0, 1)
        assert nmlp >= 0 and confidence == pytest.approx(math.exp(-nmlp))  # n == 1: one greedy answer
    # Greedy, one call per key; clean images at level 0, damaged (and different) ones above it.
    assert len(model.calls) == 6 and all(c["temperature"] == 0.0 and c["n"] == 1 for c in model.calls)
    clean = digest(tiny_image)
    seen = [c["images"][0] for c in model.calls]
    assert seen.count(clean) == 2
    assert seen[0] == clean and seen[3] == clean  # each item's clean row first
    assert "How many dots" in model.calls[-1]["prompt"] and "(none)" in model.calls[-1]["prompt"]

    # A rerun skips every stored key; a lost row is answered again, identically.
    again = run_probe(items, base_model=model, **options)
    assert (again.written, again.skipped) == (0, 6) and len(model.calls) == 6
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM probe WHERE item_id = 'q2' AND perturb = 'occlusion' AND level = 1.0")
    resumed = run_probe(items, base_model=model, **options)
    assert (resumed.written, resumed.skipped) == (1, 5)
    assert probe_rows(store) == rows

    # Resuming with other settings would mix two experiments: refused, naming the difference.
    with pytest.raises(ValueError, match="seed: stored 3, now 4"):
        run_probe(items, base_model=model, **{**options, "seed": 4})

    summary = probe_summary(store)
    assert [(r.perturb, r.level, r.items) for r in summary] == [
        ("gaussian", 0.0, 2),
        ("gaussian", 1.0, 2),
        ("occlusion", 0.0, 2),
        ("occlusion", 1.0, 2),
    ]
    assert summary[0].confidence_drop == 0.0 and summary[0].confidence_drop_nmlp == 0.0


def test_probe_command_end_to_end(tmp_path, tiny_model_dir, tiny_image, capsys):
    tiny_image.save(tmp_path / "a.png")
    rows = [
        {
            "id": str(i),
            "question": f"Question {i}?",
            "options": ["3", "4"],
            "image": "a.png",
            "answer": "B",
            "subject": "counting",
        }
        for i in range(3)
    ]
    source = tmp_path / "mathvision.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows))
    parser = parser_for(add_probe, "catts probe")
    run_dir = tmp_path / "run"
    args = parser.parse_args(
        [
            "--benchmark",
            "mathvision",
            "--source",
            str(source),
            "--limit",
            "2",
            "--perturb",
            "noise,mosaic",
            "--levels",
            "0,1",
            "--model",
            str(tiny_model_dir),
            "--run-dir",
            str(run_dir),
            "--seed",
            "1",
            "--max-new-tokens",
            "4",
        ]
    )

    assert args.func(args) == 0

    out = capsys.readouterr().out
    assert "6 rows answered" in out and "gaussian" in out and "mosaic" in out and "AUROC" in out
    assert len(probe_rows(run_dir / "results.sqlite")) == 2 * (1 + 2)
    bad = parser.parse_args(
        [
            "--benchmark",
            "mathvision",
            "--source",
            str(source),
            "--perturb",
            "fog",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert bad.func(bad) == 2
    printed = capsys.readouterr()
    assert "unknown kind 'fog'" in printed.err and "fog" not in printed.out  # errors go to stderr


def test_an_interrupted_probe_resumes_to_the_uninterrupted_table(tmp_path, tiny_image):
    items = make_items(tmp_path, tiny_image)

    def script(call: ScriptCall) -> list[Reply]:
        # The answer's confidence follows the image, so every key has its own numbers.
        darkness = 1.0 - float(np.asarray(call.images[0].convert("L")).mean()) / 255.0
        return [Reply("\\boxed{A}", -darkness)] * call.n

    class Crashing(ScriptedVLM):
        def sample(self, *args: Any, **kwargs: Any) -> list[Sample]:
            if len(self.calls) == 4:
                raise KeyboardInterrupt
            return super().sample(*args, **kwargs)

    options = {"perturbs": "noise,mosaic,viewpoint", "levels": "0,0.5,1", "seed": 5}
    run_probe(items, base_model=ScriptedVLM(script), store_path=tmp_path / "whole.sqlite", **options)
    with pytest.raises(KeyboardInterrupt):
        run_probe(items, base_model=Crashing(script), store_path=tmp_path / "cut.sqlite", **options)
    assert len(probe_rows(tmp_path / "cut.sqlite")) == 4
    resumed = run_probe(items, base_model=ScriptedVLM(script), store_path=tmp_path / "cut.sqlite", **options)

    assert (resumed.written, resumed.skipped) == (2 * (1 + 3 * 2) - 4, 4)
    assert probe_rows(tmp_path / "cut.sqlite") == probe_rows(tmp_path / "whole.sqlite")


# -- several samples: majority answer, mean confidence ------------------------------------------------


def test_samples_give_the_majority_answer_and_mean_confidence(tmp_path, tiny_image):
    items = make_items(tmp_path, tiny_image)[:1]
    clean = digest(tiny_image)
    sampling: list[tuple[float, int | None]] = []

    def script(call: ScriptCall) -> list[Reply]:
        sampling.append((call.temperature, call.seed))
        if digest(call.images[0]) == clean:
            return [Reply("It is red. \\boxed{A}", -0.1)] * call.n
        return [Reply("\\boxed{B}", -0.5), Reply("\\boxed{blue}", -0.5), Reply("\\boxed{A}", -2.0)]

    model = ScriptedVLM(script)
    store = tmp_path / "results.sqlite"
    run_probe(items, base_model=model, perturbs=["blur"], levels=[1], n=3, seed=0, store_path=store)

    rows = probe_rows(store)
    answer, _, correct, confidence, nmlp, _ = rows[("q1", "clean", 0.0)]
    assert (answer, correct) == ("A", 1)
    assert confidence == pytest.approx(math.exp(-0.1)) and nmlp == pytest.approx(0.1)
    answer, _, correct, confidence, nmlp, _ = rows[("q1", "blur", 1.0)]
    assert (answer, correct) == ("B", 0)  # "blue" is option B's text: two votes for B
    assert confidence == pytest.approx((2 * math.exp(-0.5) + math.exp(-2.0)) / 3)
    assert nmlp == pytest.approx((0.5 + 0.5 + 2.0) / 3)
    # Sampled (temperature 1) with the same seed at every level: only the image differs.
    assert [c[2] for c in model.calls] == [3, 3]
    assert sampling[0] == sampling[1] and sampling[0][0] == 1.0


def test_probe_model_runs_in_a_temporary_store(tiny_image, tmp_path):
    items = make_items(tmp_path, tiny_image)
    model = ScriptedVLM.answering(Reply("\\boxed{A}", -0.2), Reply("\\boxed{12}", -0.2))
    summary = probe_model(model, items[:1], perturbs="viewpoint", levels="0,1")
    assert [(r.perturb, r.level, r.accuracy) for r in summary] == [
        ("viewpoint", 0.0, 1.0),
        ("viewpoint", 1.0, 1.0),
    ]
    assert math.isnan(summary[0].auroc)  # every item right: undefined


# -- the summary by hand -------------------------------------------------------------------------------

# item: (correct, confidence, nmlp) clean, and under gaussian at level 1 (item d has no noised row).
CLEAN = {"a": (1, 0.9, 0.1), "b": (1, 0.8, 0.2), "c": (0, 0.7, 0.4), "d": (0, 0.6, 0.5)}
NOISED = {"a": (1, 0.5, 0.7), "b": (0, 0.4, 0.9), "c": (0, 0.3, None)}


def test_summary_by_hand(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as db:
        for perturb, level, rows in (("clean", 0.0, CLEAN), ("gaussian", 1.0, NOISED)):
            for item, (correct, confidence, nmlp) in rows.items():
                db.execute(
                    "INSERT INTO probe VALUES (?, ?, ?, 'x', 'y', ?, ?, ?, NULL)",
                    (item, perturb, level, correct, confidence, nmlp),
                )
        for item in CLEAN:  # every item right under occlusion: AUROC undefined
            db.execute(
                "INSERT INTO probe VALUES (?, 'occlusion', 0.5, 'x', 'x', 1, 0.5, 0.69, NULL)", (item,)
            )

    gauss0, gauss1, occ0, occ = probe_summary(path)

    assert (gauss0.perturb, gauss0.level, gauss0.items) == ("gaussian", 0.0, 4)
    assert gauss0.accuracy == 0.5 and gauss0.mean_confidence == pytest.approx(0.75)
    assert gauss0.mean_nmlp == pytest.approx(0.3)
    # Each confidence sits alone in its bin: ECE = mean |y - c| = (0.1 + 0.2 + 0.7 + 0.6) / 4.
    assert gauss0.ece == pytest.approx(0.4)
    assert gauss0.auroc == 1.0 and gauss0.confidence_drop == 0.0
    assert (occ0.perturb, occ0.level, occ0.accuracy) == ("occlusion", 0.0, 0.5)

    assert (gauss1.level, gauss1.items) == (1.0, 3)
    assert gauss1.accuracy == pytest.approx(1 / 3)
    assert gauss1.mean_confidence == pytest.approx(0.4)
    assert gauss1.mean_nmlp == pytest.approx(0.8)  # c has no NMLP
    # Paired over a, b, c: mean(0.5, 0.4, 0.3) - mean(0.9, 0.8, 0.7).
    assert gauss1.confidence_drop == pytest.approx(-0.4)
    # NMLP units, confidence = -NMLP, paired over a, b: mean(0.1, 0.2) - mean(0.7, 0.9).
    assert gauss1.confidence_drop_nmlp == pytest.approx(-0.65)
    assert gauss1.ece == pytest.approx((0.5 + 0.4 + 0.3) / 3)
    assert gauss1.auroc == 1.0

    assert (occ.level, occ.accuracy) == (0.5, 1.0)
    assert math.isnan(occ.auroc)
    assert occ.ece == pytest.approx(0.5)
    assert occ.confidence_drop == pytest.approx(0.5 - 0.75)


def test_summary_of_clean_rows_only_and_of_an_empty_store(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    assert probe_summary(path) == []
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO probe VALUES ('a', 'clean', 0, 'x', 'x', 1, 0.9, 0.1, NULL)")
    (row,) = probe_summary(path)
    assert (row.perturb, row.level, row.items, row.accuracy) == ("clean", 0.0, 1, 1.0)
    with pytest.raises(FileNotFoundError, match="no database"):
        probe_summary(tmp_path / "missing.sqlite")


# -- arguments ------------------------------------------------------------------------------------------


def test_perturbs_and_levels_are_parsed_and_checked():
    assert parse_perturbs("noise, Occlusion,gaussian") == ("gaussian", "occlusion")
    assert parse_perturbs(["viewpoint", "mosaic"]) == ("viewpoint", "mosaic")
    assert parse_levels("1,0,0.5,0.50") == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="unknown kind 'fog'"):
        parse_perturbs("noise,fog")
    with pytest.raises(ValueError, match="outside"):
        parse_levels("0,1.5")
    with pytest.raises(ValueError, match="not a number"):
        parse_levels("0,high")


def test_run_probe_checks_its_arguments(tmp_path, tiny_image):
    items = make_items(tmp_path, tiny_image)
    model = ScriptedVLM.answering("\\boxed{A}")
    with pytest.raises(ValueError, match="n=0"):
        run_probe(items, base_model=model, n=0, store_path=tmp_path / "a.sqlite")
    with pytest.raises(ValueError, match="ids must be unique"):
        run_probe([items[0], items[0]], base_model=model, store_path=tmp_path / "b.sqlite")
