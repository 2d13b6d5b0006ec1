"""The loaders and the official scorers on exports in each benchmark's real schema
(tests/fixtures/benchmarks), the way a user's first real run reads them: known-bad golds repaired,
MMStar's inline options, MMMU's placeholders and stratified limit, MathVista's rebuilt query, and
an evaluation run whose stored verdicts are those of the official code, case by case."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console

from catts_graph.eval.datasets import load_benchmark
from catts_graph.eval.runner import run_eval
from catts_graph.eval.store import read_store
from catts_graph.models.base import Sample
from catts_graph.models.replay import ReplayVLM

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
DATA = {
    "mathvista": "testmini.json",
    "mathvision": "test.jsonl",
    "mmstar": "val.jsonl",
    "mmmu": "validation.jsonl",
}
SPLIT = {"mathvista": "testmini", "mathvision": "test", "mmstar": "val", "mmmu": "validation"}


def rows_of(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list(json.loads(path.read_text()).values())


def export(benchmark: str, tmp_path: Path) -> Path:
    """The fixture copied to ``tmp_path`` with a tiny image written at every image path."""
    folder = shutil.copytree(FIXTURES / benchmark, tmp_path / benchmark)
    for row in rows_of(folder / DATA[benchmark]):
        for key, value in row.items():
            if (key == "image" or key.startswith("image_")) and value:
                target = folder / value
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (6, 4), (len(value), 40, 90)).save(target)
    return folder / DATA[benchmark]


def load(benchmark: str, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    items = load_benchmark(
        benchmark, source=str(export(benchmark, tmp_path)), split=SPLIT[benchmark], **kwargs
    )
    return {item.id: item for item in items}


def test_mathvista_repairs_repeated_choices_and_rebuilds_the_query(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        items = load("mathvista", tmp_path)
    assert list(items) == ["1", "2", "5", "740", "781"]
    assert items["781"].options == ["9", "12", "18"] and items["781"].answer == "C"
    assert items["740"].options == ["15", "100", "50"] and items["740"].answer == "A"
    assert "repeated choice dropped" in items["781"].metadata["gold_fix"]
    assert "repaired 2 known-bad items: 740" in caplog.text
    assert items["2"].question == (
        "Hint: Please answer the question requiring an integer answer and provide the final value, "
        "e.g., 1, 2, 3, at the end.\nQuestion: what is the total volume of the measuring cup? (Unit: g)"
    )
    assert items["1"].question.startswith(
        "Hint: Please answer the question requiring a floating-point number with one decimal place"
    )
    assert items["1"].precision == 1 and items["5"].question == "Find $m\\angle H$"


def test_mathvision_repairs_the_broken_escape_and_picture_options(tmp_path: Path) -> None:
    raw = rows_of(FIXTURES / "mathvision" / "test.jsonl")
    assert next(r for r in raw if r["id"] == "2830")["answer"] == "\x0crac{36}{13}"  # as published
    items = load("mathvision", tmp_path)
    assert items["2830"].answer == "\\frac{36}{13}" and "gold_fix" in items["2830"].metadata
    for item_id in ("59", "434"):
        assert (items[item_id].answer_type, items[item_id].answer) == ("choice", "C")
        assert items[item_id].options == ["A", "B", "C", "D", "E"]
    assert "gold_fix" not in items["1001"].metadata


def test_mmstar_keeps_to_four_options_and_skips_an_unreadable_row(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        items = load("mmstar", tmp_path)
    assert list(items) == ["0", "1"]
    assert items["0"].options == ["yeast", "fern", "moss", "E. coli"] and items["0"].answer == "D"
    assert "mmstar: skipped 1 of 3 rows" in caplog.text and "mmstar item '2'" in caplog.text


def test_mmmu_placeholders_list_golds_and_stratified_limit(tmp_path: Path) -> None:
    items = load("mmmu", tmp_path)
    biology = items["validation_Biology_1"]
    assert len(biology.images) == 1 and biology.images[0].endswith("bio1b.png")
    assert biology.metadata["image_numbers"] == [2]
    assert biology.metadata["image_placement"] == "referenced images first"
    assert items["validation_Physics_1"].metadata["accepted_answers"] == ["1.5", "1.50"]
    limited = load_benchmark("mmmu", source=str(tmp_path / "mmmu" / DATA["mmmu"]), limit=3)
    # One per subject in turn, not the first three rows (two of them Accounting).
    assert [i.id for i in limited] == [
        "validation_Accounting_1",
        "validation_Biology_1",
        "validation_Physics_1",
    ]


# Each item's one recorded response, and the verdicts (strict, official) worked out by hand from
# the official code's behaviour.
CASES: dict[str, dict[str, tuple[str, bool, bool]]] = {
    "mathvista": {
        "1": ("The answer is 1.2", True, True),
        "2": ("The answer is 1000.7", False, True),  # int(float("1000.7")) == 1000
        "5": ("I cannot tell.", False, True),  # no extraction: nearest to "" is "97", the gold
        "740": ("The answer is A", True, True),
        "781": ("The answer is C", True, True),
    },
    "mathvision": {
        "59": ("The answer is C", True, True),
        "434": ("The answer is B", False, False),
        "1001": ("The answer is 0.67", False, True),  # 2/3 and 0.67 agree at 2 decimals
        "1002": ("The answer is 6", True, True),  # the option text of D
        "2830": ("The answer is 36/13", True, True),  # right only because the gold was repaired
    },
    "mmmu": {
        "validation_Accounting_1": ("The answer is B", True, True),
        "validation_Accounting_2": ("so the answer is 6.33", False, True),
        "validation_Biology_1": ("The answer is cell transformation", False, True),
        "validation_Biology_2": ("the animal in this picture is clearly a dog", False, True),  # by text
        "validation_Physics_1": ("The answer is 1.50", True, True),
    },
    "mmstar": {
        "0": ("The answer is D", True, True),
        "1": ("The answer is B", False, False),
    },
}


@pytest.mark.parametrize("benchmark", sorted(CASES))
def test_a_run_scores_like_the_official_code(benchmark: str, tmp_path: Path) -> None:
    items = list(load(benchmark, tmp_path).values())
    cases = CASES[benchmark]
    responses = {
        item_id: [Sample(token_ids=[1, 2], logprobs=[-0.1, -0.2], text=text)]
        for item_id, (text, _, _) in cases.items()
    }
    run_dir = tmp_path / "run"
    run_eval(
        items,
        methods=["majority"],
        ns=[1],
        base_model=ReplayVLM(responses=responses),
        expert=None,
        run_dir=run_dir,
        console=Console(file=open(tmp_path / "console.txt", "w")),  # noqa: SIM115
    )
    with read_store(run_dir / "results.sqlite") as store:
        verdicts = {row["item_id"]: (row["correct"], row["official"]) for row in store.results()}
        scorer = store.meta["scorer"]
    assert verdicts == {item_id: (strict, official) for item_id, (_, strict, official) in cases.items()}
    assert scorer == {
        "headline": {"mmstar": "strict"}.get(benchmark, f"{benchmark}_official"),
        "beside": "strict",
    }
