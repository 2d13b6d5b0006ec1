"""CDRL training data: each item with its original image(s) and a copy noised where the question looks.

Pipeline: items (:class:`catts_graph.eval.datasets.Item`) -> :func:`build_pairs` (a CLIP relevance map
per image, :mod:`catts_graph.relevance`, steers :func:`catts_graph.perturb.perturbed_views`, which
noises each image at the size the model's processor resizes it to) -> :func:`to_grpo_dataset` (two
prompt rows per item, original and noised, with the columns TRL's GRPO and the rewards read) ->
:class:`PairedRepeatSampler` (GRPO's sampler, keeping both rows of a pair in one generation batch).
:func:`save_pairs` writes the pairs to a folder with a contact sheet to look at before training;
:func:`load_pairs` reads it back.

Items come from :func:`load_items`: any of the evaluation benchmarks (the Hub by name or a local
export, through :func:`catts_graph.eval.datasets.load_benchmark`), or a plain CDRL item file, a JSON
list or JSONL of ``{"id", "image" | "images", "question", "options"?, "answer", "answer_type"?}``
with image paths relative to the file (or ``data:`` URIs). A saved pairs folder's ``pairs.jsonl``
is such a file.

The prompt is the graph's own answer prompt (``prompts/answer.txt``), so the model is trained on what
it sees at inference.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from catts_graph.eval.datasets import BENCHMARKS, load_benchmark
from catts_graph.images import load_image
from catts_graph.perturb import PERTURBATIONS, InputSize, perturbed_views
from catts_graph.prompts import format_options, render_prompt
from catts_graph.relevance import ClipRelevance, relevance_query, top_fraction_mask
from catts_graph.task import Item, item_seed

__all__ = [
    "CONTACT_SHEET",
    "NOISED",
    "ORIGINAL",
    "PAIRS_FILE",
    "VARIANTS",
    "NoiseConfig",
    "NoiseSpec",
    "PairedRepeatSampler",
    "TrainingPair",
    "build_pairs",
    "contact_sheet",
    "load_items",
    "load_pairs",
    "pair_rows",
    "save_pairs",
    "to_grpo_dataset",
    "training_prompt",
]

PAIRS_FILE = "pairs.jsonl"
CONTACT_SHEET = "contact_sheet.png"
CUSTOM_BENCHMARK = "custom"
"""The ``benchmark`` of items read from a plain CDRL item file."""
ORIGINAL = "original"
NOISED = "noised"
VARIANTS: tuple[str, ...] = (ORIGINAL, NOISED)
"""The values of the GRPO dataset's ``variant`` column (:func:`to_grpo_dataset`)."""


@dataclass(frozen=True)
class NoiseSpec:
    """One perturbation: ``kind`` (a key of :data:`catts_graph.perturb.PERTURBATIONS`) at ``strength``
    in [0, 1], with ``options`` for it (``grid`` for occlusion, ``max_sigma`` for gaussian, ...)."""

    kind: str
    strength: float
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PERTURBATIONS:
            raise ValueError(f"kind={self.kind!r}: expected one of {', '.join(PERTURBATIONS)}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)):
            raise ValueError(f"strength={self.strength!r}: expected a number in [0, 1]")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"strength={self.strength!r}: expected a number in [0, 1]")

    @property
    def takes_region(self) -> bool:
        return "region" in inspect.signature(PERTURBATIONS[self.kind]).parameters

    def record(self) -> dict[str, Any]:
        """What a pair records of its noise (``pairs.jsonl``, the dataset's columns)."""
        return {"kind": self.kind, "strength": float(self.strength)}


@dataclass(frozen=True)
class NoiseConfig:
    """How the noised copy is made.

    One perturbation for every item (``kind`` at ``strength``, with ``options``), or, with ``mix``, a
    list of ``{kind, strength, options?}``: each item gets one of them, balanced (a seeded shuffle of
    the items deals the mix's entries round-robin), so the model learns to be unsure under several
    kinds of damage rather than one. The relevance map is passed as the perturbation's ``region``
    (soft weights in [0, 1]: the most relevant patch gets the full perturbation, the least relevant
    none), or, with ``top_fraction``, binarised to the most relevant fraction of patches.
    ``viewpoint`` moves the whole image and takes no region. Each item's noise is drawn from a seed
    derived from ``(seed, item id)``.
    """

    kind: str = "gaussian"
    strength: float = 0.8
    top_fraction: float | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    mix: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        try:
            NoiseSpec(self.kind, self.strength, dict(self.options))
        except ValueError as error:
            raise ValueError(f"noise.{error}") from None
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ValueError(f"noise.top_fraction={self.top_fraction!r}: expected None or a number in (0, 1]")
        specs = []
        for number, entry in enumerate(self.mix):
            if isinstance(entry, NoiseSpec):
                specs.append(entry)
                continue
            if not isinstance(entry, Mapping):
                raise ValueError(f"noise.mix[{number}]={entry!r}: expected {{kind, strength, options?}}")
            unknown = sorted(set(entry) - {"kind", "strength", "options"})
            if unknown or "kind" not in entry or "strength" not in entry:
                raise ValueError(
                    f"noise.mix[{number}]: expected the keys kind, strength and optionally options; "
                    f"got {sorted(entry)}"
                )
            try:
                specs.append(NoiseSpec(entry["kind"], entry["strength"], dict(entry.get("options") or {})))
            except ValueError as error:
                raise ValueError(f"noise.mix[{number}].{error}") from None
        object.__setattr__(self, "mix", tuple(specs))

    @property
    def takes_region(self) -> bool:
        return NoiseSpec(self.kind, self.strength).takes_region

    def assign(self, count: int) -> list[NoiseSpec]:
        """The perturbation of each of ``count`` items, in order: the single one, or the mix dealt
        round-robin over a shuffle seeded by ``seed`` (so each entry gets ``count / len(mix)`` items,
        give or take one, and which items get which does not follow their order).

        >>> mix = ({"kind": "gaussian", "strength": 1.0}, {"kind": "blur", "strength": 0.5})
        >>> config = NoiseConfig(mix=mix)
        >>> sorted(spec.kind for spec in config.assign(4))
        ['blur', 'blur', 'gaussian', 'gaussian']
        """
        if not self.mix:
            return [NoiseSpec(self.kind, self.strength, dict(self.options))] * count
        order = np.random.default_rng(self.seed).permutation(count)
        return [self.mix[int(order[n]) % len(self.mix)] for n in range(count)]


@dataclass
class TrainingPair:
    """One training item: the item, its clean images, their noised copies and the relevance maps used.

    ``images`` are the clean *views* (each image at the model's input size, see
    :func:`~catts_graph.perturb.perturbed_views`) and ``noised`` the same views perturbed, so the two
    prompt rows of the item differ only by the noise.
    """

    item: Item
    images: list[Image.Image]
    noised: list[Image.Image]
    relevance: list[np.ndarray]
    noise: dict[str, Any] = field(default_factory=dict)
    """The perturbation the noised copies got (``{"kind", "strength"}``, :meth:`NoiseSpec.record`)."""


# -- items ----------------------------------------------------------------------------------------


def load_items(
    source: str | None = None,
    *,
    benchmark: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    image_dir: str | None = None,
) -> list[Item]:
    """Training items from a benchmark (Hub when ``source`` is None, else a local export) or, with
    ``benchmark`` None, from a plain CDRL item file (JSON list or JSONL; see the module docstring)."""
    if benchmark is not None:
        if benchmark not in BENCHMARKS:
            raise ValueError(
                f"benchmark={benchmark!r}: expected one of {BENCHMARKS}, or none for a CDRL item file"
            )
        return load_benchmark(benchmark, source=source, split=split, limit=limit, image_dir=image_dir)
    if source is None:
        raise ValueError("source: a CDRL item file (JSON or JSONL) is needed when no benchmark is given")
    path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(f"source: no file at {str(path)!r} (expected a .json or .jsonl item file)")
    rows = _read_rows(path)
    roots = [Path(image_dir).expanduser()] if image_dir else []
    roots.append(path.parent)
    items = []
    for number, row in enumerate(rows[:limit] if limit else rows):
        items.append(_item_from_row(row, number, roots, str(path)))
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"source {str(path)!r}: item ids must be unique")
    return items


def _read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.suffix == ".json":
        rows = json.loads(text)
    else:
        raise ValueError(f"source {str(path)!r}: expected a .json or .jsonl file")
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"source {str(path)!r}: expected a list of objects (JSON) or one object per line")
    return rows


def _item_from_row(row: Mapping[str, Any], number: int, roots: Sequence[Path], where: str) -> Item:
    context = f"{where} row {number}"
    images = row.get("images") or ([row["image"]] if row.get("image") else [])
    if isinstance(images, str):
        images = [images]
    if not images:
        raise ValueError(f"{context}: expected 'image' or 'images'")
    missing = [key for key in ("question", "answer") if key not in row]
    if missing:
        raise ValueError(f"{context}: missing {missing}")
    options = row.get("options") or None
    answer_type = row.get("answer_type") or ("choice" if options else "text")
    return Item(
        id=str(row.get("id", number)),
        benchmark=str(row.get("benchmark", CUSTOM_BENCHMARK)),
        images=[_resolve(str(ref), roots, context) for ref in images],
        question=str(row["question"]),
        options=[str(o) for o in options] if options else None,
        answer=str(row["answer"]),
        answer_type=answer_type,
        category=row.get("category"),
        precision=row.get("precision"),
        metadata=dict(row.get("metadata") or {}),
    )


def _resolve(reference: str, roots: Sequence[Path], context: str) -> str:
    if reference.startswith(("data:", "http://", "https://")) or Path(reference).is_absolute():
        return reference
    for root in roots:
        candidate = root / reference
        if candidate.is_file():
            return str(candidate.resolve())
    raise ValueError(f"{context}: image {reference!r} not found under {[str(r) for r in roots]}")


# -- pairs ----------------------------------------------------------------------------------------


def training_prompt(item: Item, answer_prompt: str | None = None) -> str:
    """The base model's answer prompt for ``item``: ``prompts/<answer_prompt>.txt``, by default the
    graph's general ``answer`` prompt (a checkpoint may declare its own, see ``TransformersVLM``)."""
    return render_prompt(
        answer_prompt or "answer", question=item.question, options=format_options(item.options)
    )


def build_pairs(
    items: Iterable[Item],
    relevance: ClipRelevance,
    noise: NoiseConfig = NoiseConfig(),
    *,
    input_size: InputSize | None = None,
    batch_size: int = 16,
) -> list[TrainingPair]:
    """For each item and image: the relevance map of the question over the image, the image at the
    model's input size (``input_size(image)``, e.g. ``lambda image: processor_input_size(processor,
    image)`` of :mod:`catts_graph.models.transformers_vlm`; None keeps each image's size) and that
    view perturbed by ``noise`` where the map is high. Relevance maps are computed on the original
    images, ``batch_size`` at a time, and resized to the view."""
    items = list(items)
    loaded = [
        [load_image(ref, name=f"item {item.id!r} images[{i}]") for i, ref in enumerate(item.images)]
        for item in items
    ]
    flat = [
        (n, image, relevance_query(item.question, item.options))
        for n, (item, images) in enumerate(zip(items, loaded, strict=True))
        for image in images
    ]
    maps: list[np.ndarray] = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        maps.extend(
            relevance.relevance_maps([image for _, image, _ in chunk], [text for _, _, text in chunk])
        )
    pairs, cursor = [], 0
    for item, images, spec in zip(items, loaded, noise.assign(len(items)), strict=True):
        seed = item_seed(noise.seed, item.id)
        item_maps = maps[cursor : cursor + len(images)]
        cursor += len(images)
        regions = None
        if spec.takes_region:
            regions = [
                top_fraction_mask(relevance_map, noise.top_fraction) if noise.top_fraction else relevance_map
                for relevance_map in item_maps
            ]
        views, noised = perturbed_views(
            images,
            spec.kind,
            spec.strength,
            seed,
            input_size=input_size,
            regions=regions,
            **spec.options,
        )
        pairs.append(
            TrainingPair(item=item, images=views, noised=noised, relevance=item_maps, noise=spec.record())
        )
    return pairs


def to_grpo_dataset(pairs: Sequence[TrainingPair], *, answer_prompt: str | None = None) -> Any:
    """A ``datasets.Dataset`` for TRL's GRPO, two rows per pair: ``variant`` "original" (the clean
    views as ``images``) then "noised" (the noised copies as ``images``), sharing ``pair_id`` (the
    pair's index). TRL puts each row's ``images`` before its ``prompt`` (conversational, the answer
    prompt), so rollouts are drawn on both. Also ``answer``, ``options`` (empty list for an open
    question), ``answer_type`` and ``id`` (the item's). ``answer_prompt`` names the prompt template
    (default: the graph's ``answer``)."""
    import datasets

    if not pairs:
        raise ValueError("pairs: expected at least one training pair")
    rows = []
    for pair_id, pair in enumerate(pairs):
        shared = {
            "id": pair.item.id,
            "pair_id": pair_id,
            "prompt": [{"role": "user", "content": training_prompt(pair.item, answer_prompt)}],
            "answer": pair.item.answer,
            "options": list(pair.item.options or []),
            "answer_type": pair.item.answer_type,
            "noise_kind": str(pair.noise.get("kind", "")),
            "noise_strength": float(pair.noise.get("strength", math.nan)),
        }
        for variant, images in ((ORIGINAL, pair.images), (NOISED, pair.noised)):
            rows.append({**shared, "variant": variant, "images": [image.convert("RGB") for image in images]})
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "pair_id": datasets.Value("int64"),
            "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "answer": datasets.Value("string"),
            "options": datasets.List(datasets.Value("string")),
            "answer_type": datasets.Value("string"),
            "noise_kind": datasets.Value("string"),
            "noise_strength": datasets.Value("float64"),
            "variant": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def pair_rows(pair_ids: Sequence[Any], variants: Sequence[str]) -> list[tuple[int, int]]:
    """``(original row, noised row)`` of each pair, in order of first appearance, from a dataset's
    ``pair_id`` and ``variant`` columns; every pair must have exactly one row of each variant."""
    if len(pair_ids) != len(variants):
        raise ValueError(f"pair_id and variant: got {len(pair_ids)} and {len(variants)} rows")
    found: dict[Any, dict[str, int]] = {}
    for row, (pair_id, variant) in enumerate(zip(pair_ids, variants, strict=True)):
        if variant not in VARIANTS:
            raise ValueError(f"variant of row {row}: got {variant!r}, expected one of {VARIANTS}")
        rows = found.setdefault(pair_id, {})
        if variant in rows:
            raise ValueError(f"pair_id {pair_id!r}: two {variant!r} rows ({rows[variant]} and {row})")
        rows[variant] = row
    incomplete = [pair_id for pair_id, rows in found.items() if len(rows) != 2]
    if incomplete:
        raise ValueError(f"pair_id {incomplete[0]!r}: expected an {ORIGINAL!r} and a {NOISED!r} row")
    return [(rows[ORIGINAL], rows[NOISED]) for rows in found.values()]


class PairedRepeatSampler:
    """TRL's ``RepeatSampler`` with pairs kept together: both rows of a pair in one generation batch.

    TRL's GRPO sampler shuffles rows, takes ``batch_size`` prompts per generation batch, yields each
    ``mini_repeat_count`` (= ``num_generations``) times in a row and the whole batch ``repeat_count``
    (= ``num_iterations * steps_per_generation``) times. This one shuffles *pairs* and lays each
    pair's original row and noised row next to each other, so with an even ``batch_size`` a pair
    never straddles two generation batches: the perceptual-sensitivity reward of the noised rollouts
    always finds the same pair's original rollouts in the same step (gathered across processes,
    :class:`catts_training.cdrl.rewards.PerceptualSensitivityReward`). Like ``RepeatSampler``, every
    process builds the same sampler from the same ``seed``, a new order each epoch, and a last
    incomplete batch is dropped.

    >>> list(PairedRepeatSampler([(0, 1), (2, 3)], mini_repeat_count=2, batch_size=2, shuffle=False))
    [0, 0, 1, 1, 2, 2, 3, 3]
    """

    def __init__(
        self,
        pairs: Sequence[tuple[int, int]],
        mini_repeat_count: int,
        batch_size: int = 2,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        if batch_size < 2 or batch_size % 2:
            raise ValueError(
                f"batch_size={batch_size!r}: expected an even number of prompts per generation batch "
                "(both rows of each pair)"
            )
        for name, value in (("mini_repeat_count", mini_repeat_count), ("repeat_count", repeat_count)):
            if value < 1:
                raise ValueError(f"{name}={value!r}: expected an int >= 1")
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[int]:
        order = self._rng.permutation(len(self.pairs)) if self.shuffle else range(len(self.pairs))
        rows = [row for index in order for row in self.pairs[index]]
        for start in range(0, len(rows) - self.batch_size + 1, self.batch_size):
            chunk = rows[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for row in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield row

    def __len__(self) -> int:
        batches = 2 * len(self.pairs) // self.batch_size
        return batches * self.batch_size * self.mini_repeat_count * self.repeat_count


# -- saving and looking -------------------------------------------------------------------------


def save_pairs(pairs: Sequence[TrainingPair], out_dir: str | Path, *, sheet_items: int = 8) -> Path:
    """Write the pairs to ``out_dir``: ``images/<n>_<k>.png`` (the clean view), ``images/<n>_<k>_noised.png``,
    ``images/<n>_<k>_relevance.npy``, one row per item in ``pairs.jsonl`` (a CDRL item file with
    ``noised`` and ``relevance`` paths added) and ``contact_sheet.png`` of the first ``sheet_items``
    items. Returns the path of ``pairs.jsonl``."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for number, pair in enumerate(pairs):
        originals, noised, maps = [], [], []
        for k, (image, copy, relevance_map) in enumerate(
            zip(pair.images, pair.noised, pair.relevance, strict=True)
        ):
            stem = f"images/{number:05d}_{k}"
            image.convert("RGB").save(out / f"{stem}.png")
            copy.convert("RGB").save(out / f"{stem}_noised.png")
            np.save(out / f"{stem}_relevance.npy", relevance_map)
            originals.append(f"{stem}.png")
            noised.append(f"{stem}_noised.png")
            maps.append(f"{stem}_relevance.npy")
        item = pair.item
        lines.append(
            json.dumps(
                {
                    "id": item.id,
                    "benchmark": item.benchmark,
                    "images": originals,
                    "noised": noised,
                    "relevance": maps,
                    "question": item.question,
                    "options": item.options,
                    "answer": item.answer,
                    "answer_type": item.answer_type,
                    "category": item.category,
                    "precision": item.precision,
                    "metadata": item.metadata,
                    "noise": pair.noise,
                },
                ensure_ascii=False,
            )
        )
    path = out / PAIRS_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if pairs and sheet_items > 0:
        contact_sheet(pairs[:sheet_items]).save(out / CONTACT_SHEET)
    return path


def load_pairs(folder: str | Path) -> list[TrainingPair]:
    """The pairs :func:`save_pairs` wrote to ``folder``."""
    root = Path(folder)
    path = root / PAIRS_FILE
    if not path.is_file():
        raise ValueError(f"folder {str(root)!r} has no {PAIRS_FILE}; write one with save_pairs")
    items = load_items(str(path))
    pairs = []
    for item, row in zip(items, _read_rows(path), strict=True):
        noised = [load_image(str(root / ref)) for ref in row["noised"]]
        maps = [np.load(root / ref) for ref in row["relevance"]]
        images = [load_image(ref) for ref in item.images]
        pairs.append(
            TrainingPair(
                item=item, images=images, noised=noised, relevance=maps, noise=dict(row.get("noise") or {})
            )
        )
    return pairs


def contact_sheet(pairs: Sequence[TrainingPair], *, height: int = 160) -> Image.Image:
    """One row per image: original | relevance map (red over the grey image) | noised, with the
    item id and the start of the question above."""
    rows = [(pair, k) for pair in pairs for k in range(len(pair.images))]
    caption = 14
    tiles = []
    for pair, k in rows:
        original = pair.images[k].convert("RGB")
        width = max(1, round(original.width * height / original.height))
        tiles.append(
            [
                original.resize((width, height)),
                _heatmap(original, pair.relevance[k]).resize((width, height)),
                pair.noised[k].convert("RGB").resize((width, height)),
            ]
        )
    gap = 4
    sheet_width = max((3 * t[0].width + 4 * gap for t in tiles), default=3 * height)
    sheet = Image.new("RGB", (sheet_width, len(tiles) * (height + caption + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = gap
    for (pair, k), tile in zip(rows, tiles, strict=True):
        question = " ".join(pair.item.question.split())
        draw.text((gap, y), f"{pair.item.id}[{k}]: {question[:80]}", fill=(0, 0, 0))
        x = gap
        for image in tile:
            sheet.paste(image, (x, y + caption))
            x += image.width + gap
        y += height + caption + gap
    return sheet


def _heatmap(image: Image.Image, relevance_map: np.ndarray) -> Image.Image:
    weights = np.asarray(
        Image.fromarray(relevance_map.astype(np.float32)).resize(image.size, Image.Resampling.BILINEAR)
    )
    grey = np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255.0
    red = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    w = np.clip(weights, 0.0, 1.0)[..., None] * 0.7
    mixed = (1 - w) * np.repeat(grey, 3, axis=2) + w * red
    return Image.fromarray((mixed * 255).round().astype(np.uint8), mode="RGB")
