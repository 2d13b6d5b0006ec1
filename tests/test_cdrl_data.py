"""CDRL data: CLIP relevance maps, noised pairs steered by them at the model's input size, the
two-row GRPO dataset and the sampler that keeps a pair together, saving, the contact sheet, items."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from catts_graph.commands.registry import parser_for
from catts_graph.eval.datasets import Item
from catts_graph.models.transformers_vlm import processor_input_size
from catts_graph.perturb import perturbed_views, region_weights
from catts_graph.relevance import ClipRelevance, relevance_query, top_fraction_mask
from catts_graph.task import item_seed
from catts_training.cdrl.data import (
    CONTACT_SHEET,
    NoiseConfig,
    NoiseSpec,
    PairedRepeatSampler,
    build_pairs,
    load_items,
    load_pairs,
    pair_rows,
    save_pairs,
    to_grpo_dataset,
    training_prompt,
)
from catts_training.cdrl.train import add_pairs

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


def test_grpo_dataset_has_an_original_and_a_noised_row_per_pair(
    items: list[Item], relevance: ClipRelevance
) -> None:
    pairs = build_pairs(items, relevance)
    dataset = to_grpo_dataset(pairs)
    assert set(dataset.column_names) == {
        "id",
        "pair_id",
        "variant",
        "prompt",
        "images",
        "answer",
        "options",
        "answer_type",
        "noise_kind",
        "noise_strength",
    }
    assert dataset["noise_kind"] == ["gaussian"] * 4 and dataset["noise_strength"] == [0.8] * 4
    assert dataset["variant"] == ["original", "noised", "original", "noised"]
    assert dataset["pair_id"] == [0, 0, 1, 1]
    assert dataset["id"] == ["a", "a", "b", "b"]
    original, noised = dataset[2], dataset[3]
    assert original["prompt"] == noised["prompt"] == [{"role": "user", "content": training_prompt(items[1])}]
    assert "\\boxed{}" in original["prompt"][0]["content"]
    assert len(original["images"]) == len(noised["images"]) == 2
    for row, images in ((original, pairs[1].images), (noised, pairs[1].noised)):
        for got, expected in zip(row["images"], images, strict=True):
            assert isinstance(got, Image.Image)
            assert np.array_equal(np.asarray(got), np.asarray(expected.convert("RGB")))
    assert dataset[0]["options"] == ["red", "blue"] and original["options"] == []


def test_both_rows_are_at_the_models_input_size_and_differ_only_by_the_noise(
    items: list[Item], relevance: ClipRelevance
) -> None:
    processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 4)
    noise = NoiseConfig(kind="gaussian", strength=1.0, top_fraction=0.5, seed=2)
    pairs = build_pairs(
        items[:1], relevance, noise, input_size=lambda image: processor_input_size(processor, image)
    )
    source = Image.open(items[0].images[0]).convert("RGB")
    size = processor_input_size(processor, source)
    assert size is not None and size != source.size
    pair = pairs[0]
    assert pair.images[0].size == pair.noised[0].size == size
    views, noised = perturbed_views(
        [source],
        "gaussian",
        1.0,
        item_seed(2, "a"),
        input_size=lambda image: processor_input_size(processor, image),
        regions=[top_fraction_mask(pair.relevance[0], 0.5)],
    )
    assert np.array_equal(np.asarray(pair.images[0]), np.asarray(views[0]))
    assert np.array_equal(np.asarray(pair.noised[0]), np.asarray(noised[0]))


def test_pair_rows_reads_the_pairs_and_refuses_broken_ones() -> None:
    assert pair_rows([3, 5, 3, 5], ["noised", "original", "original", "noised"]) == [(2, 0), (1, 3)]
    with pytest.raises(ValueError, match="pair_id 3: expected an 'original' and a 'noised' row"):
        pair_rows([3, 5, 5], ["original", "original", "noised"])
    with pytest.raises(ValueError, match="two 'noised' rows"):
        pair_rows([1, 1, 1], ["original", "noised", "noised"])
    with pytest.raises(ValueError, match="variant of row 1"):
        pair_rows([1, 1], ["original", "clean"])


def test_paired_sampler_is_trls_repeat_sampler_with_pairs_kept_together() -> None:
    from trl.trainer.utils import RepeatSampler

    # Unshuffled, with pairs (0, 1), (2, 3), ...: exactly TRL's order.
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    ours = PairedRepeatSampler(pairs, mini_repeat_count=2, batch_size=4, repeat_count=3, shuffle=False)
    trls = RepeatSampler(list(range(10)), mini_repeat_count=2, batch_size=4, repeat_count=3, shuffle=False)
    assert list(ours) == list(trls)
    assert len(ours) == len(trls) == 2 * 4 * 2 * 3  # two full batches; the fifth pair is dropped

    # Shuffled, pairs anywhere in the dataset: every generation batch (batch_size prompts x
    # mini_repeat_count, repeated repeat_count times) holds both rows of each of its pairs.
    pairs = [(9, 2), (0, 5), (7, 1), (3, 8), (4, 6), (11, 10)]
    partner = {a: b for pair in pairs for a, b in (pair, pair[::-1])}
    sampler = PairedRepeatSampler(pairs, mini_repeat_count=3, batch_size=4, repeat_count=2, seed=0)
    epochs = [list(sampler), list(sampler)]
    assert epochs[0] != epochs[1]  # a new order each epoch
    for order in epochs:
        assert len(order) == len(sampler) == 12 * 3 * 2
        block = 4 * 3
        for start in range(0, len(order), block):
            rows = order[start : start + block]
            assert all(rows.count(row) == 3 and partner[row] in rows for row in rows)
    again = PairedRepeatSampler(pairs, mini_repeat_count=3, batch_size=4, repeat_count=2, seed=0)
    assert list(again) == epochs[0]  # every process draws the same order from the same seed
    with pytest.raises(ValueError, match="even number of prompts"):
        PairedRepeatSampler(pairs, mini_repeat_count=2, batch_size=3)


def test_a_generation_batch_of_an_odd_number_of_prompts_is_refused_before_the_model_loads() -> None:
    from catts_training.cdrl.trainer import check_pair_layout

    layout = {
        "per_device_train_batch_size": 2,
        "world_size": 7,
        "steps_per_generation": 4,
        "num_generations": 8,
        "remove_unused_columns": False,
    }
    args = argparse.Namespace(generation_batch_size=56, **layout)
    with pytest.raises(ValueError, match=r"holds 7 prompts .* per_device_train_batch_size 2 x 7 processes"):
        check_pair_layout(args, 100)
    args = argparse.Namespace(generation_batch_size=112, **{**layout, "steps_per_generation": 8})
    check_pair_layout(args, 100)
    with pytest.raises(ValueError, match="fewer than the 14 prompts"):
        check_pair_layout(args, 6)
    args.remove_unused_columns = True
    with pytest.raises(ValueError, match="remove_unused_columns"):
        check_pair_layout(args, 100)


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
    parser = parser_for(add_pairs, "catts train pairs")
    out = tmp_path / "smoke-pairs"
    args = parser.parse_args(
        [
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


def test_the_organism_relevance_spec_loads_the_clip_organism(tmp_path: Path) -> None:
    from catts_experiments.clip import train_clip_organism
    from catts_graph.organism.clip import ClipOrganismConfig
    from catts_training.cdrl.config import RelevanceSection
    from catts_training.cdrl.train import relevance_model

    path = train_clip_organism(
        tmp_path / "clip",
        config=ClipOrganismConfig(steps=1, batch_size=4, warmup_steps=1),
        threads=1,
        log=print,
    )
    relevance = relevance_model(RelevanceSection(model="organism", path=str(path)))
    assert relevance.image_size == (112, 112)
    assert relevance.relevance_map(Image.new("RGB", (224, 224), "white"), "red circle").shape == (14, 14)
    assert isinstance(relevance_model(RelevanceSection(model="tiny")), ClipRelevance)


MIX = (
    {"kind": "gaussian", "strength": 0.5},
    {"kind": "occlusion", "strength": 1.0},
    {"kind": "blur", "strength": 0.75, "options": {}},
)


def test_a_mix_is_dealt_balanced_seeded_and_not_in_item_order() -> None:
    config = NoiseConfig(mix=MIX, seed=4)
    dealt = config.assign(31)
    counts = {spec.kind: sum(s.kind == spec.kind for s in dealt) for spec in config.mix}
    assert sorted(counts.values()) == [10, 10, 11]
    assert dealt == NoiseConfig(mix=MIX, seed=4).assign(31)  # deterministic for a seed
    assert dealt != NoiseConfig(mix=MIX, seed=5).assign(31)
    assert [s.kind for s in dealt[:6]] != ["gaussian", "occlusion", "blur"] * 2
    assert NoiseConfig(kind="blur", strength=0.3).assign(2) == [NoiseSpec("blur", 0.3)] * 2


def test_each_pair_records_its_noise_and_keeps_it_through_save_and_load(
    items: list[Item], relevance: ClipRelevance, tmp_path: Path
) -> None:
    config = NoiseConfig(mix=MIX[:2], seed=0)
    pairs = build_pairs(items, relevance, config)
    expected = [spec.record() for spec in config.assign(len(items))]
    assert [p.noise for p in pairs] == expected
    assert {p.noise["kind"] for p in pairs} == {"gaussian", "occlusion"}
    for pair in pairs:  # each pair is perturbed by the kind it records
        spec = NoiseSpec(pair.noise["kind"], pair.noise["strength"])
        alone = build_pairs([pair.item], relevance, NoiseConfig(kind=spec.kind, strength=spec.strength))
        assert np.array_equal(np.asarray(alone[0].noised[0]), np.asarray(pair.noised[0]))
    dataset = to_grpo_dataset(pairs)
    assert dataset["noise_kind"] == [e["kind"] for e in expected for _ in range(2)]
    assert dataset["noise_strength"] == [e["strength"] for e in expected for _ in range(2)]
    loaded = load_pairs(save_pairs(pairs, tmp_path / "pairs", sheet_items=0).parent)
    assert [p.noise for p in loaded] == expected


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ([{"kind": "fog", "strength": 0.5}], r"noise.mix\[0\].kind='fog'"),
        ([{"kind": "blur", "strength": 2}], r"noise.mix\[0\].strength=2"),
        ([{"kind": "blur", "strength": "high"}], r"noise.mix\[0\].strength='high'"),
        ([{"kind": "blur"}], r"noise.mix\[0\]: expected the keys kind, strength"),
        ([{"kind": "blur", "strength": 0.5, "sigma": 1}], r"noise.mix\[0\]: expected the keys"),
        (["blur"], r"noise.mix\[0\]='blur'"),
    ],
)
def test_mix_errors_name_the_entry_and_key(mix: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NoiseConfig(mix=tuple(mix))
