"""Benchmark loaders on small fixture exports in each layout: JSON, JSONL, parquet, Hub snapshot
folders, ``save_to_disk`` folders and (faked) Hub rows; images as files and as embedded bytes."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catts_graph.eval import datasets as eval_datasets
from catts_graph.eval.datasets import (
    HUB_BENCHMARKS,
    DatasetUnavailable,
    Item,
    load_benchmark,
    split_inline_options,
)
from catts_graph.images import load_image


@dataclass(frozen=True)
class Img:
    """An image in a fixture row; each layout writes it its own way."""

    name: str
    color: tuple[int, int, int]
    size: tuple[int, int] = (6, 4)

    def png(self) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", self.size, self.color).save(buffer, format="PNG")
        return buffer.getvalue()


def mathvista_rows() -> list[dict[str, Any]]:
    meta = {
        "category": "math-targeted-vqa",
        "context": "geometry diagram",
        "grade": "high school",
        "img_height": 4,
        "img_width": 6,
        "language": "english",
        "source": "Geometry3K",
        "split": "testmini",
        "task": "geometry problem solving",
    }
    return [
        {
            "pid": "1",
            "question": "What is x?",
            "image": "images/1.png",
            "decoded_image": Img("1", (255, 0, 0)),
            "choices": None,
            "unit": None,
            "precision": None,
            "answer": "5",
            "question_type": "free_form",
            "answer_type": "integer",
            "metadata": {**meta, "skills": ["geometry reasoning", "algebraic reasoning"]},
            "query": "Hint: Please answer the question requiring an integer answer.\nQuestion: What is x?",
        },
        {
            "pid": "2",
            "question": "The derivative at x=2 is ____ that at x=5",
            "image": "images/2.png",
            "decoded_image": Img("2", (0, 255, 0)),
            "choices": ["larger than", "equal to", "smaller than"],
            "unit": None,
            "precision": None,
            "answer": "equal to",
            "question_type": "multi_choice",
            "answer_type": "text",
            "metadata": {**meta, "task": "textbook question answering", "skills": ["algebraic reasoning"]},
            "query": "Hint: ...\nQuestion: ...\nChoices:\n(A) larger than\n(B) equal to\n(C) smaller than",
        },
        {
            "pid": "3",
            "question": "How much money does Luca need?",
            "image": "images/3.png",
            "decoded_image": Img("3", (0, 0, 255)),
            "choices": None,
            "unit": "$",
            "precision": 2.0,
            "answer": "1.45",
            "question_type": "free_form",
            "answer_type": "float",
            "metadata": {**meta, "task": "math word problem", "skills": ["arithmetic reasoning"]},
            "query": "Hint: two decimal places.\nQuestion: How much money does Luca need?",
        },
    ]


def mathvision_rows() -> list[dict[str, Any]]:
    base = {"solution": None, "level": 2, "subject": "metric geometry - angle"}
    return [
        {
            **base,
            "id": "1",
            "question": "<image1>\nWhich shape is shaded?",
            "options": ["A", "B", "C", "D", "E"],
            "image": "images/1.png",
            "decoded_image": Img("v1", (10, 20, 30)),
            "answer": "C",
        },
        {
            **base,
            "id": "2",
            "question": "How many dots?",
            "options": [],
            "image": "images/2.png",
            "decoded_image": Img("v2", (40, 50, 60)),
            "answer": "14",
            "subject": "counting",
            "level": 1,
        },
        {
            **base,
            "id": "3",
            "question": "Which number?",
            "options": ["3", "4", "5", "6", "7"],
            "image": "images/3.png",
            "decoded_image": Img("v3", (70, 80, 90)),
            "answer": "D",
        },
        {
            **base,
            "id": "4",
            "question": "Length?",
            "options": [],
            "image": "images/4.png",
            "decoded_image": Img("v4", (100, 110, 120)),
            "answer": "2.5",
        },
    ]


MMSTAR_Q0 = (
    "Which option describe the object relationship in the image correctly?\nOptions: A: The "
    "suitcase is on the book., B: The suitcase is beneath the cat., C: The suitcase is beneath the "
    "bed., D: The suitcase is beneath the book."
)


def mmstar_rows() -> list[dict[str, Any]]:
    return [
        {
            "index": 0,
            "question": MMSTAR_Q0,
            "image": Img("s0", (1, 2, 3)),
            "answer": "A",
            "category": "instance reasoning",
            "l2_category": "cross-instance relation reasoning",
            "meta_info": {"source": "MMBench", "split": "val", "image_path": "images/0.jpg"},
        },
        {
            "index": 1,
            "question": "How many apples are there?\nOptions: A: 1, B: 2, C: 3, D: 4",
            "image": Img("s1", (4, 5, 6)),
            "answer": "C",
            "category": "fine-grained perception",
            "l2_category": "object counting",
            "meta_info": {"source": "SEEDBench", "split": "val", "image_path": "images/1.jpg"},
        },
    ]


def mmmu_rows() -> list[dict[str, Any]]:
    empty = {f"image_{k}": None for k in range(1, 8)}
    base = {
        "explanation": "",
        "img_type": "['Tables']",
        "topic_difficulty": "Medium",
        "subfield": "Financial Accounting",
    }
    return [
        {
            **base,
            **empty,
            "id": "validation_Accounting_1",
            "question": "<image 1> What is the cost?",
            "options": "['$6', '$7', '$8', '$9']",
            "image_1": Img("m1", (9, 9, 9)),
            "answer": "B",
            "question_type": "multiple-choice",
        },
        {
            **base,
            **empty,
            "id": "validation_Art_Theory_2",
            "question": "Compare <image 1> and <image 2>. Which is older?",
            "options": "['<image 1>', '<image 2>']",
            "image_1": Img("m2a", (20, 0, 0)),
            "image_2": Img("m2b", (0, 20, 0)),
            "answer": "A",
            "question_type": "multiple-choice",
            "subfield": "Art History",
        },
        {
            **base,
            **empty,
            "id": "validation_Math_3",
            "question": "<image 1> Find n.",
            "options": "[]",
            "image_1": Img("m3", (30, 30, 0)),
            "answer": "12",
            "question_type": "open",
            "subfield": "Algebra",
        },
        {
            **base,
            **empty,
            "id": "validation_Physics_4",
            "question": "<image 1> Speed in m/s?",
            "options": "[]",
            "image_1": Img("m4", (0, 30, 30)),
            "answer": "['1.5', '1.50']",
            "question_type": "open",
            "subfield": "Mechanics",
        },
    ]


ROWS = {"mathvista": mathvista_rows, "mathvision": mathvision_rows, "mmstar": mmstar_rows, "mmmu": mmmu_rows}


def as_files(rows: list[dict[str, Any]], image_folder: Path, relative_to: Path) -> list[dict[str, Any]]:
    """Rows with every Img written to ``image_folder`` and replaced by its path relative to
    ``relative_to``; MathVista / MathVision keep only the ``image`` path column, as in their repos."""
    image_folder.mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        new = {}
        for key, value in row.items():
            if isinstance(value, Img):
                path = image_folder / f"{value.name}.png"
                path.write_bytes(value.png())
                if key == "decoded_image":
                    new["image"] = str(path.relative_to(relative_to))
                    continue
                new[key] = str(path.relative_to(relative_to))
            elif key != "image" or "decoded_image" not in row:
                new[key] = value
        out.append(new)
    return out


def as_bytes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every Img as the ``{"bytes", "path"}`` struct parquet exports of ``datasets`` hold."""
    return [
        {k: {"bytes": v.png(), "path": f"{v.name}.png"} if isinstance(v, Img) else v for k, v in row.items()}
        for row in rows
    ]


def write_layout(benchmark: str, layout: str, folder: Path) -> dict[str, Any]:
    """Write the benchmark's fixture in ``layout``; return the load_benchmark arguments."""
    rows = ROWS[benchmark]()
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "json":  # images as files beside the data file
        path = folder / "data.json"
        path.write_text(json.dumps(as_files(rows, folder / "images", folder)))
        return {"source": str(path)}
    if layout == "jsonl":  # images as files in a separate folder, found through image_dir
        image_dir = folder / "elsewhere"
        path = folder / "data.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in as_files(rows, image_dir, image_dir)) + "\n")
        return {"source": str(path), "image_dir": str(image_dir)}
    if layout == "parquet":  # images embedded as bytes
        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(as_bytes(rows)), path)
        return {"source": str(path)}
    raise AssertionError(layout)


def check_images(items: list[Item]) -> None:
    for item in items:
        for reference in item.images:
            image = load_image(reference)
            assert image.size == (6, 4)


def check_mathvista(items: list[Item]) -> None:
    assert [i.id for i in items] == ["1", "2", "3"]
    first, choice, decimal = items
    assert first.answer_type == "integer" and first.answer == "5" and first.options is None
    assert first.question.startswith("Hint: Please answer the question requiring an integer")
    assert first.category == "geometry problem solving"
    assert first.metadata["skills"] == ["geometry reasoning", "algebraic reasoning"]
    assert first.metadata["category"] == "math-targeted-vqa"
    # The option text "equal to" is the second option: gold letter B.
    assert choice.answer_type == "choice" and choice.answer == "B"
    assert choice.options == ["larger than", "equal to", "smaller than"]
    assert choice.question == "The derivative at x=2 is ____ that at x=5"
    assert decimal.answer_type == "float" and decimal.precision == 2 and decimal.answer == "1.45"
    assert decimal.metadata["unit"] == "$"
    assert load_image(first.images[0]).getpixel((0, 0)) == (255, 0, 0)


def check_mathvision(items: list[Item]) -> None:
    assert [i.id for i in items] == ["1", "2", "3", "4"]
    assert items[0].answer == "C" and items[0].options == ["A", "B", "C", "D", "E"]
    assert items[0].category == "metric geometry - angle" and items[0].metadata["level"] == 2
    assert (items[1].answer_type, items[1].answer, items[1].options) == ("integer", "14", None)
    assert items[2].answer == "D" and items[2].options == ["3", "4", "5", "6", "7"]
    assert (items[3].answer_type, items[3].precision) == ("float", None)


def check_mmstar(items: list[Item]) -> None:
    assert [i.id for i in items] == ["0", "1"]
    first, second = items
    assert first.question == "Which option describe the object relationship in the image correctly?"
    assert first.options == [
        "The suitcase is on the book.",
        "The suitcase is beneath the cat.",
        "The suitcase is beneath the bed.",
        "The suitcase is beneath the book.",
    ]
    assert (first.answer, first.answer_type, first.category) == ("A", "choice", "instance reasoning")
    assert first.metadata["l2_category"] == "cross-instance relation reasoning"
    assert first.metadata["source"] == "MMBench"
    assert second.options == ["1", "2", "3", "4"] and second.answer == "C"


def check_mmmu(items: list[Item]) -> None:
    assert [i.id for i in items] == [
        "validation_Accounting_1",
        "validation_Art_Theory_2",
        "validation_Math_3",
        "validation_Physics_4",
    ]
    accounting, art, math, physics = items
    assert accounting.options == ["$6", "$7", "$8", "$9"] and accounting.answer == "B"
    assert accounting.category == "Accounting" and accounting.metadata["discipline"] == "Business"
    assert len(art.images) == 2 and art.metadata["image_numbers"] == [1, 2]
    assert art.category == "Art_Theory" and art.metadata["discipline"] == "Art & Design"
    assert load_image(art.images[1]).getpixel((0, 0)) == (0, 20, 0)
    assert (math.options, math.answer, math.answer_type) == (None, "12", "integer")
    assert math.metadata["discipline"] == "Science"
    assert (physics.answer, physics.answer_type) == ("1.5", "float")
    assert physics.metadata["accepted_answers"] == ["1.5", "1.50"]


CHECKS = {
    "mathvista": check_mathvista,
    "mathvision": check_mathvision,
    "mmstar": check_mmstar,
    "mmmu": check_mmmu,
}


@pytest.mark.parametrize("layout", ["json", "jsonl", "parquet"])
@pytest.mark.parametrize("benchmark", HUB_BENCHMARKS)
def test_each_benchmark_in_each_layout(benchmark: str, layout: str, tmp_path: Path) -> None:
    kwargs = write_layout(benchmark, layout, tmp_path / "export")
    items = load_benchmark(benchmark, image_cache=str(tmp_path / "cache"), **kwargs)
    CHECKS[benchmark](items)
    check_images(items)
    assert all(i.benchmark == benchmark for i in items)
    json.dumps([i.metadata for i in items])  # metadata is plain JSON-able data
    if layout == "parquet":  # embedded bytes land in the cache, content-addressed
        assert all(Path(ref).parent == tmp_path / "cache" for i in items for ref in i.images)
    # Loading again gives the same items (stable ids and image references).
    assert load_benchmark(benchmark, image_cache=str(tmp_path / "cache"), **kwargs) == items


def test_hub_snapshot_folder_picks_the_split(tmp_path: Path) -> None:
    # A folder laid out like `hf download AI4Math/MathVista`: data/testmini-*.parquet, data/test-*.
    data = tmp_path / "MathVista" / "data"
    data.mkdir(parents=True)
    rows = as_bytes(mathvista_rows())
    pq.write_table(pa.Table.from_pylist(rows[:2]), data / "testmini-00000-of-00001.parquet")
    unanswered = [{**r, "pid": "9" + r["pid"], "answer": None} for r in rows]
    pq.write_table(pa.Table.from_pylist(unanswered), data / "test-00000-of-00001.parquet")
    (tmp_path / "MathVista" / "dataset_infos.json").write_text("{}")  # Hub metadata, not rows
    items = load_benchmark(
        "mathvista", source=str(tmp_path / "MathVista"), image_cache=str(tmp_path / "cache")
    )
    assert [i.id for i in items] == ["1", "2"]


def test_mathvista_json_keyed_by_pid(tmp_path: Path) -> None:
    # MathVista's own testmini.json is {pid: row}.
    rows = as_files(mathvista_rows(), tmp_path / "images", tmp_path)
    (tmp_path / "testmini.json").write_text(json.dumps({r["pid"]: r for r in rows}))
    items = load_benchmark("mathvista", source=str(tmp_path / "testmini.json"))
    assert [i.id for i in items] == ["1", "2", "3"]
    assert items[0].images == [str((tmp_path / "images" / "1.png").resolve())]


def image_dataset(rows: list[dict[str, Any]], image_columns: list[str]) -> datasets.Dataset:
    dataset = datasets.Dataset.from_list(as_bytes(rows))
    for column in image_columns:
        dataset = dataset.cast_column(column, datasets.Image())
    return dataset


def test_save_to_disk_folder_with_decoded_pil_images(tmp_path: Path) -> None:
    image_dataset(mmstar_rows(), ["image"]).save_to_disk(str(tmp_path / "mmstar"))
    items = load_benchmark("mmstar", source=str(tmp_path / "mmstar"), image_cache=str(tmp_path / "c"))
    check_mmstar(items)
    check_images(items)


def test_hub_loading_streams_the_asked_split_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, str | None, str]] = []
    read: list[str] = []
    extra_accounting = {**mmmu_rows()[0], "id": "validation_Accounting_5"}
    hub = {
        "AI4Math/MathVista": image_dataset(mathvista_rows(), ["decoded_image"]),
        "Lin-Chen/MMStar": image_dataset(mmstar_rows(), ["image"]),
        "MMMU/MMMU": image_dataset([*mmmu_rows(), extra_accounting], [f"image_{k}" for k in (1, 2)]),
    }

    def rows(path: str, name: str | None) -> list[dict[str, Any]]:
        found = list(hub[path])
        return (
            [r for r in found if re.fullmatch(rf"validation_{name}_\d+", r["id"])]
            if path == "MMMU/MMMU"
            else found
        )

    def fake_load_dataset(path: str, name: str | None = None, *, split: str, streaming: bool) -> Any:
        assert streaming, "a non-streaming load_dataset downloads every split"
        calls.append((path, name, split))
        for row in rows(path, name):  # lazily, as a stream: the rows read are counted
            read.append(row.get("id") or str(row.get("pid", row.get("index"))))
            yield row

    def fake_builder(path: str, name: str | None = None) -> Any:
        splits = {"testmini": SimpleNamespace(num_examples=len(rows(path, name)), num_bytes=2_500_000)}
        return SimpleNamespace(info=SimpleNamespace(splits=splits if path == "AI4Math/MathVista" else None))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "load_dataset_builder", fake_builder)
    monkeypatch.setattr(eval_datasets, "hub_unreachable", lambda: None)  # the fake Hub answers
    cache = str(tmp_path / "cache")
    check_mathvista(load_benchmark("mathvista", image_cache=cache))
    # The size comes first, from the Hub card.
    assert "AI4Math/MathVista split 'testmini': 3 rows, 2.5 MB, streamed" in capsys.readouterr().err
    check_mmstar(load_benchmark("mmstar", image_cache=cache))
    assert "size not given by the Hub card" in capsys.readouterr().err
    assert calls == [("AI4Math/MathVista", None, "testmini"), ("Lin-Chen/MMStar", "val", "val")]
    calls.clear()
    read.clear()
    assert [i.id for i in load_benchmark("mathvista", limit=1, image_cache=cache)] == ["1"]
    assert read == ["1"], "a limit stops the stream"
    calls.clear()
    mmmu = load_benchmark("mmmu", image_cache=cache)
    check_mmmu([i for i in mmmu if i.id != "validation_Accounting_5"])
    # All 30 subjects are asked for, one config each, split validation.
    assert len(calls) == 30 and {c[2] for c in calls} == {"validation"}
    assert {c[1] for c in calls} == {s for ss in eval_datasets.MMMU_DISCIPLINES.values() for s in ss}
    # With a limit the subjects take turns: not the first two rows (both Accounting).
    limited = load_benchmark("mmmu", limit=2, image_cache=cache)
    assert [i.id for i in limited] == ["validation_Accounting_1", "validation_Art_Theory_2"]


def test_offline_hub_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'MathLLMs/MathVision' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(datasets, "load_dataset_builder", offline)
    monkeypatch.setattr(eval_datasets, "hub_unreachable", lambda: None)  # reachable, then failing
    with pytest.raises(DatasetUnavailable) as caught:
        load_benchmark("mathvision", split="test")
    message = str(caught.value)
    assert "mathvision" in message and "MathLLMs/MathVision" in message and "'test'" in message
    assert "source=" in message and "hf download MathLLMs/MathVision" in message


def test_limit_and_graph_input(tmp_path: Path) -> None:
    kwargs = write_layout("mmmu", "parquet", tmp_path)
    items = load_benchmark("mmmu", limit=2, image_cache=str(tmp_path / "cache"), **kwargs)
    assert len(items) == 2
    single, double = items
    assert single.graph_input() == {
        "image": single.images[0],
        "question": "<image 1> What is the cost?",
        "options": ["$6", "$7", "$8", "$9"],
    }
    assert double.graph_input()["images"] == double.images and "image" not in double.graph_input()
    open_item = load_benchmark("mmmu", image_cache=str(tmp_path / "cache"), **kwargs)[2]
    assert open_item.graph_input()["options"] is None


def test_split_inline_options() -> None:
    assert split_inline_options("How many?\nOptions: A: 1, B: 2, C: 3") == ("How many?", ["1", "2", "3"])
    assert split_inline_options("Pick.\nChoices:\n(A) red\n(B) blue") == ("Pick.", ["red", "blue"])
    # Commas inside an option stay in it; only ", B:" style markers split.
    assert split_inline_options("Q?\nOptions: A: red, green, B: blue") == ("Q?", ["red, green", "blue"])
    assert split_inline_options("No options here") == ("No options here", [])
    assert split_inline_options("Options: A: only one") == ("Options: A: only one", [])
    # At most A-D, and each marker after a separator in A's style: "E. coli" is D's text.
    assert split_inline_options("Q?\nOptions: A: yeast, B: fern, C: moss, D: E. coli") == (
        "Q?",
        ["yeast", "fern", "moss", "E. coli"],
    )
    assert split_inline_options("Q?\nOptions: A: the C. elegans worm, B: a fly") == (
        "Q?",
        ["the C. elegans worm", "a fly"],
    )
    assert split_inline_options("Q?\nOptions: A: 1, B: 2, C: 3, D: 4, E: 5")[1] == ["1", "2", "3", "4, E: 5"]


@pytest.mark.parametrize(
    ("mode", "cached_mode"), [("CMYK", "RGB"), ("P", "RGB"), ("LA", "RGBA"), ("1", "RGB")]
)
def test_decoded_images_in_any_mode_are_cached_as_png(mode: str, cached_mode: str, tmp_path: Path) -> None:
    # datasets decodes a CMYK JPEG to a CMYK image, which PNG cannot hold (OSError, the load stopped).
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (200, 30, 10)).convert(mode).save(
        buffer, format="JPEG" if mode == "CMYK" else "PNG"
    )
    row = {**mmstar_rows()[1], "image": {"bytes": buffer.getvalue(), "path": None}}
    datasets.Dataset.from_list([row]).cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "s"))
    assert datasets.load_from_disk(str(tmp_path / "s"))[0]["image"].mode == mode
    items = load_benchmark("mmstar", source=str(tmp_path / "s"), image_cache=str(tmp_path / "cache"))
    with Image.open(items[0].images[0]) as cached:
        assert (cached.format, cached.mode) == ("PNG", cached_mode)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda tmp: load_benchmark("vqa", source=str(tmp)), "benchmark 'vqa' is not one of"),
        (lambda tmp: load_benchmark("mathvista", split="test"), r"split 'test' is not available"),
        (lambda tmp: load_benchmark("mmstar", source=str(tmp / "nope.json")), "source: no file"),
        (lambda tmp: load_benchmark("mmstar", source=str(tmp), limit=0), "limit must be"),
        (lambda tmp: load_benchmark("mmstar", source=str(tmp), image_dir=str(tmp / "x")), "image_dir"),
    ],
)
def test_argument_errors(call: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        call(tmp_path)


def write_json(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_row_errors_name_the_item(tmp_path: Path) -> None:
    rows = as_files(mmstar_rows(), tmp_path / "images", tmp_path)
    with pytest.raises(ValueError, match=r"ids must be unique"):
        load_benchmark("mmstar", source=write_json(tmp_path, [rows[0], rows[0]]))
    missing = {**rows[0], "image": "images/missing.png"}
    with pytest.raises(
        ValueError, match=r"mmstar item '0': image file 'images/missing.png' not found.*image_dir"
    ):
        load_benchmark("mmstar", source=write_json(tmp_path, [missing]))
    no_options = {**rows[0], "question": "What is shown?"}
    with pytest.raises(ValueError, match=r"mmstar item '0': found no 'Options: A: \.\.\., B: \.\.\.'"):
        load_benchmark("mmstar", source=write_json(tmp_path, [no_options]))
    no_answer = {k: v for k, v in rows[0].items() if k != "answer"}
    with pytest.raises(ValueError, match=r"mmstar row 0: no value in column 'answer'"):
        load_benchmark("mmstar", source=write_json(tmp_path, [no_answer]))
    bad_gold = as_files(mathvista_rows(), tmp_path / "images", tmp_path)[1] | {"answer": "bigger"}
    with pytest.raises(ValueError, match=r"mathvista item '2': gold answer 'bigger' is neither"):
        load_benchmark("mathvista", source=write_json(tmp_path, [bad_gold]))
    (tmp_path / "bad.jsonl").write_text('{"index": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2 is not JSON"):
        load_benchmark("mmstar", source=str(tmp_path / "bad.jsonl"))


def test_item_checks_its_fields() -> None:
    good = {
        "id": "1",
        "benchmark": "mmstar",
        "images": ["a.png"],
        "question": "q",
        "options": ["x", "y"],
        "answer": "B",
        "answer_type": "choice",
    }
    assert Item(**good).answer == "B"
    with pytest.raises(ValueError, match="not a letter among A-B"):
        Item(**{**good, "answer": "C"})
    with pytest.raises(ValueError, match="answer_type 'mcq'"):
        Item(**{**good, "answer_type": "mcq"})
    with pytest.raises(ValueError, match="images must be"):
        Item(**{**good, "images": []})
    with pytest.raises(ValueError, match="precision"):
        Item(**{**good, "answer_type": "float", "options": None, "answer": "1.5", "precision": -1})
