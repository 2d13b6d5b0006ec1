"""CDRL data: CLIP relevance maps, noised pairs steered by them, saving, the contact sheet, items."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catts_graph.eval.datasets import Item
from catts_graph.perturb import region_weights
from catts_graph.relevance import ClipRelevance, relevance_query, top_fraction_mask
from training.cdrl.data import (
    CONTACT_SHEET,
    NoiseConfig,
    build_pairs,
    load_items,
    load_pairs,
    save_pairs,
    to_grpo_dataset,
    training_prompt,
)
from training.cdrl.train import add_train_command

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="module")
def relevance() -> ClipRelevance:
    return ClipRelevance.tiny(seed=0)


@pytest.fixture()
def items(tmp_path: Path) -> list[Item]:
    image = Image.new("RGB", (84, 56), (240, 240, 240))
    image.paste((200, 20, 20), (10, 10, 40, 40))
    image.save(tmp_path / "square.png")
    rows = [
        {
            "id": "a",
            "image": "square.png",
            "question": "What colour is the square?",
            "options": ["red", "blue"],
            "answer": "A",
        },
        {
            "id": "b",
            "images": ["square.png", "square.png"],
            "question": "How many squares?",
            "answer": "2",
            "answer_type": "integer",
        },
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return load_items(str(tmp_path / "items.jsonl"))


def test_relevance_map_is_a_normalised_patch_grid(relevance: ClipRelevance) -> None:
    image = Image.new("RGB", (90, 60), (10, 120, 200))
    image.paste((250, 250, 0), (0, 0, 30, 30))
    single = relevance.relevance_map(image, "the yellow corner")
    assert single.shape == (8, 8)  # 64 px input, 8 px patches
    assert single.min() == pytest.approx(0.0) and single.max() == pytest.approx(1.0)
    batched = relevance.relevance_maps([image, image], ["the yellow corner", "something else"])
    np.testing.assert_allclose(batched[0], single, atol=1e-5)
    assert relevance_query("What  is\nit?", ["a b", "c"]) == "What is it? a b c"


def test_top_fraction_mask_keeps_the_most_relevant_patches() -> None:
    grid = np.array([[0.1, 0.9], [0.5, 0.3]])
    np.testing.assert_array_equal(top_fraction_mask(grid, 0.5), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(top_fraction_mask(grid, 0.1), [[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="top_fraction"):
        top_fraction_mask(grid, 0.0)


def test_noise_goes_only_where_the_map_says(items: list[Item], relevance: ClipRelevance) -> None:
    pairs = build_pairs(
        items, relevance, NoiseConfig(kind="gaussian", strength=1.0, top_fraction=0.25, seed=1)
    )
    assert [len(p.noised) for p in pairs] == [1, 2]
    pair = pairs[0]
    original = np.asarray(pair.images[0], dtype=np.int16)
    noised = np.asarray(pair.noised[0], dtype=np.int16)
    weights = region_weights(top_fraction_mask(pair.relevance[0], 0.25), pair.images[0].size)
    untouched = weights == 0
    assert untouched.any() and (~untouched).any()
    assert (original[untouched] == noised[untouched]).all()
    assert (original[weights == 1] != noised[weights == 1]).any()
    again = build_pairs(
        items[:1], relevance, NoiseConfig(kind="gaussian", strength=1.0, top_fraction=0.25, seed=1)
    )
    assert np.array_equal(np.asarray(again[0].noised[0]), np.asarray(pair.noised[0]))  # seeded


@pytest.mark.parametrize("kind", ["occlusion", "viewpoint"])
def test_other_perturbations(items: list[Item], relevance: ClipRelevance, kind: str) -> None:
    pairs = build_pairs(items[:1], relevance, NoiseConfig(kind=kind, strength=0.5))
    assert pairs[0].noised[0].size == pairs[0].images[0].size
    assert not np.array_equal(np.asarray(pairs[0].noised[0]), np.asarray(pairs[0].images[0]))


def test_save_load_and_contact_sheet(items: list[Item], relevance: ClipRelevance, tmp_path: Path) -> None:
    pairs = build_pairs(items, relevance, NoiseConfig(kind="occlusion", strength=0.3))
    path = save_pairs(pairs, tmp_path / "pairs", sheet_items=2)
    sheet = Image.open(tmp_path / "pairs" / CONTACT_SHEET)
    assert sheet.height > 3 * 100 and sheet.width > 3 * 160  # three image rows, three columns
    loaded = load_pairs(path.parent)
    assert [p.item.id for p in loaded] == ["a", "b"]
    assert loaded[1].item.answer_type == "integer"
    for old, new in zip(pairs, loaded, strict=True):
        for a, b in zip(old.noised, new.noised, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(old.relevance[0], new.relevance[0])


def test_grpo_dataset_columns(items: list[Item], relevance: ClipRelevance) -> None:
    dataset = to_grpo_dataset(build_pairs(items, relevance))
    row = dataset[1]
    assert set(dataset.column_names) == {
        "id",
        "prompt",
        "images",
        "noised_images",
        "answer",
        "options",
        "answer_type",
    }
    assert row["prompt"] == [{"role": "user", "content": training_prompt(items[1])}]
    assert "\\boxed{}" in row["prompt"][0]["content"]
    assert len(row["images"]) == len(row["noised_images"]) == 2
    assert isinstance(row["noised_images"][0], Image.Image)
    assert dataset[0]["options"] == ["red", "blue"] and row["options"] == []


def test_item_file_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x", "question": "q", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match="'image' or 'images'"):
        load_items(str(tmp_path / "bad.jsonl"))
    (tmp_path / "gone.jsonl").write_text(json.dumps({"image": "nope.png", "question": "q", "answer": "1"}))
    with pytest.raises(ValueError, match="not found"):
        load_items(str(tmp_path / "gone.jsonl"))
    with pytest.raises(ValueError, match="benchmark"):
        load_items("x", benchmark="imagenet")


def test_pairs_command_writes_the_contact_sheet(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "smoke-pairs"
    args = parser.parse_args(
        [
            "train",
            "pairs",
            "--config",
            str(CONFIGS / "smoke_cpu.yaml"),
            "--out",
            str(out),
            "--sheet-items",
            "3",
        ]
    )
    assert args.func(args) == 0
    assert (out / CONTACT_SHEET).stat().st_size > 1000
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 8


def test_relevance_spec() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        ClipRelevance.from_spec({"model": "tiny", "weights": "x"})
    assert isinstance(ClipRelevance.from_spec({"model": "tiny"}), ClipRelevance)
