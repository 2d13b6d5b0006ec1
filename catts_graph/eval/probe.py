"""The probing experiment: does the model's confidence follow what it can see?

Each item is answered on its clean image(s) and on copies damaged by each perturbation kind at each
strength level (:func:`catts_graph.perturb.perturb`, strength in [0, 1]), applied at the size the
model's processor resizes the image to (:func:`catts_graph.perturb.perturbed_views`). A perceptually
blunt model loses accuracy as the level rises while its confidence (``exp(-NMLP)``) barely moves;
after CDRL the confidence should fall with the accuracy (PAPER.md).

Storage (the ``probe`` table of ``results.sqlite``, one row per item, kind and level):

- Level 0 is the clean image for every kind, so it is answered and stored once, under
  ``perturb = "clean"``, and :func:`probe_summary` shows it as level 0 of every kind. The clean level
  is always probed, whether or not ``levels`` lists 0, since every confidence drop is measured
  against it.
- ``n == 1`` is one greedy answer. ``n > 1`` draws ``n`` samples (temperature 1 by default); the row
  then holds the majority answer over the judged answers (ties: first seen) and whether it is
  correct, and the mean NMLP and mean ``exp(-NMLP)`` over the samples (a sample with no tokens counts
  as confidence 0 and has no NMLP).
- The damage to an item is drawn from one seed derived from ``(seed, item id)``: the same noise,
  boxes or warp grow with the level instead of being redrawn, and the same seed drives the samples,
  so levels differ only by the image.
- Rows are committed one by one; a rerun on the same database skips the stored keys
  ``(item_id, perturb, level)``, so an interrupted probe resumes. The settings that change the
  answers (seed, n, temperature, max_new_tokens and the caller's ``info``, e.g. model and benchmark)
  are kept in ``meta["probe"]``; resuming with other settings is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from catts_graph import metrics
from catts_graph.answers import canonicalize
from catts_graph.eval.scoring import judge_answer
from catts_graph.eval.store import ResultStore, read_store
from catts_graph.formatting import number
from catts_graph.images import load_image
from catts_graph.models.base import input_size_of
from catts_graph.perturb import PERTURBATIONS, perturbed_views, resize_to
from catts_graph.samples import describe_sample
from catts_graph.task import base_prompt, item_seed

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from PIL import Image

    from catts_graph.eval.datasets import Item
    from catts_graph.models.base import BaseVLM

__all__ = [
    "CLEAN",
    "DEFAULT_LEVELS",
    "DEFAULT_PERTURBS",
    "PERTURB_ALIASES",
    "ProbeRun",
    "ProbeSummaryRow",
    "parse_levels",
    "parse_perturbs",
    "probe_model",
    "probe_summary",
    "run_probe",
    "summary_table",
]

CLEAN = "clean"
"""The ``perturb`` value of the clean (level 0) rows, shared by every kind."""

DEFAULT_PERTURBS: tuple[str, ...] = ("gaussian", "occlusion", "viewpoint", "mosaic")
DEFAULT_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
PERTURB_ALIASES: dict[str, str] = {"noise": "gaussian"}
"""Names accepted for a kind besides the keys of :data:`~catts_graph.perturb.PERTURBATIONS`."""

_LEVEL_DIGITS = 9  # levels are compared at this precision: 0.1 read back from SQLite is still 0.1


# -- arguments --------------------------------------------------------------------------------------


def parse_perturbs(perturbs: str | Iterable[str]) -> tuple[str, ...]:
    """Kinds as registered names, aliases resolved (``noise`` -> ``gaussian``), duplicates dropped.

    Accepts a comma-separated string or a sequence of names.
    """
    names = perturbs.split(",") if isinstance(perturbs, str) else list(perturbs)
    kinds: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        kind = PERTURB_ALIASES.get(name, name)
        if kind not in PERTURBATIONS:
            known = ", ".join([*PERTURBATIONS, *PERTURB_ALIASES])
            raise ValueError(f"perturbs: unknown kind {raw!r}; expected some of {known}")
        if kind not in kinds:
            kinds.append(kind)
    if not kinds:
        raise ValueError("perturbs: expected at least one perturbation kind")
    return tuple(kinds)


def parse_levels(levels: str | Iterable[float]) -> tuple[float, ...]:
    """Sorted distinct strengths in [0, 1]; a comma-separated string or a sequence of numbers."""
    raw = levels.split(",") if isinstance(levels, str) else list(levels)
    values: set[float] = set()
    for entry in raw:
        try:
            value = float(entry)
        except (TypeError, ValueError):
            raise ValueError(f"levels: {entry!r} is not a number; expected values in [0, 1]") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"levels: {entry!r} is outside [0, 1]")
        values.add(round(value, _LEVEL_DIGITS))
    if not values:
        raise ValueError("levels: expected at least one level in [0, 1]")
    return tuple(sorted(values))


# -- running ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeRun:
    """What one :func:`run_probe` call did."""

    written: int
    """Rows answered and stored by this call."""
    skipped: int
    """Keys already in the store (from an earlier, possibly interrupted, run)."""


def _level_key(level: float) -> float:
    return round(float(level), _LEVEL_DIGITS)


def _check_settings(store: ResultStore, settings: dict[str, Any]) -> None:
    """Keep the probe's settings in ``meta["probe"]``; refuse to resume a probe made with others."""
    stored = store.meta.get("probe")
    if stored is None:
        store.set_meta({"probe": settings})
        return
    # Through JSON, so that tuples and lists compare as stored.
    wanted = json.loads(json.dumps(settings, sort_keys=True))
    changed = [
        f"{key}: stored {stored.get(key)!r}, now {wanted.get(key)!r}"
        for key in sorted(set(stored) | set(wanted))
        if stored.get(key) != wanted.get(key)
    ]
    if changed:
        raise ValueError(
            f"{store.path} already holds a probe run with other settings ({'; '.join(changed)}); "
            "resume with the same settings or use another run directory"
        )


def _answer(
    base_model: BaseVLM,
    item: Item,
    images: list[Image.Image],
    prompt: str,
    *,
    n: int,
    seed: int,
    temperature: float,
    max_new_tokens: int,
    judge: BaseChatModel | None,
) -> tuple[str | None, bool, float, float | None]:
    """(answer, correct, mean exp(-NMLP), mean NMLP or None) of the item on ``images``."""
    raw = base_model.sample(
        images,
        prompt,
        n,
        temperature=0.0 if n == 1 else temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    if len(raw) != n:
        raise RuntimeError(f"base model returned {len(raw)} samples, {n} were asked for")
    records = [describe_sample(sample, options=item.options, index=i, wave=0) for i, sample in enumerate(raw)]
    judgements = [judge_answer(item, r["answer"], r["text"], judge=judge) for r in records]
    canonical = canonicalize([j.answer for j in judgements])
    votes = Counter(a for a in canonical if a is not None)
    if votes:
        # Counter keeps first-seen order, and max() returns the first maximum: ties go to the first seen.
        answer: str | None = max(votes, key=lambda a: votes[a])
        correct = judgements[canonical.index(answer)].correct
    else:
        answer, correct = None, False
    confidence = float(np.mean([r["confidence"] for r in records]))
    nmlps = [r["nmlp"] for r in records if r["nmlp"] is not None]
    return answer, bool(correct), confidence, (float(np.mean(nmlps)) if nmlps else None)


def run_probe(
    items: Sequence[Item],
    *,
    base_model: BaseVLM,
    perturbs: str | Iterable[str] = DEFAULT_PERTURBS,
    levels: str | Iterable[float] = DEFAULT_LEVELS,
    n: int = 1,
    seed: int = 0,
    store_path: str | Path,
    temperature: float = 1.0,
    max_new_tokens: int = 1024,
    judge: BaseChatModel | None = None,
    info: Mapping[str, Any] | None = None,
    progress: Callable[[], None] | None = None,
) -> ProbeRun:
    """Answer every item clean and under every kind and level; store each row in ``probe``.

    ``perturbs`` are kinds of :data:`~catts_graph.perturb.PERTURBATIONS` (or ``noise``);
    ``levels`` strengths in [0, 1] (level 0 is the clean row, always probed). ``n == 1`` answers
    greedily; ``n > 1`` samples at ``temperature`` and keeps the majority answer. Answers are judged
    with :func:`catts_graph.eval.scoring.judge_answer` (``judge``: its optional LLM judge).
    ``info`` (e.g. ``{"model": ..., "benchmark": ...}``) is stored with the settings and checked on
    resume. ``progress`` is called once per key, answered or skipped.
    """
    kinds = parse_perturbs(perturbs)
    strengths = [level for level in parse_levels(levels) if level > 0]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r}: expected an int >= 1 (samples per item and level)")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an int >= 0")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicates = sorted(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"items: ids must be unique, repeated: {duplicates[:5]}")
    settings: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "temperature": 0.0 if n == 1 else float(temperature),
        "max_new_tokens": max_new_tokens,
        # Probes made before noise moved to the model's input size are not resumed into.
        "noise_at": "model input size",
        **dict(info or {}),
    }
    written = skipped = 0
    with ResultStore(store_path) as store:
        _check_settings(store, settings)
        done = {(item_id, kind, _level_key(level)) for item_id, kind, level in store.probe_keys()}
        for item in items:
            keys = [(CLEAN, 0.0)] + [(kind, level) for kind in kinds for level in strengths]
            todo = [(kind, level) for kind, level in keys if (item.id, kind, level) not in done]
            skipped += len(keys) - len(todo)
            if progress is not None:
                for _ in range(len(keys) - len(todo)):
                    progress()
            if not todo:
                continue
            clean = [
                load_image(ref, name=f"item {item.id!r} images[{i}]") for i, ref in enumerate(item.images)
            ]
            prompt = base_prompt(item.question, item.options, base_model)
            seed_of_item = item_seed(seed, item.id)
            size = input_size_of(base_model)
            views = [resize_to(image, size(image) if size else None) for image in clean]
            for kind, level in todo:
                images = (
                    views
                    if kind == CLEAN
                    else perturbed_views(clean, kind, level, seed_of_item, input_size=size)[1]
                )
                answer, correct, confidence, nmlp = _answer(
                    base_model,
                    item,
                    images,
                    prompt,
                    n=n,
                    seed=seed_of_item,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    judge=judge,
                )
                # Each row commits on its own (the store is in autocommit mode): a kill loses at
                # most the row being answered.
                store.put_probe(
                    item_id=item.id,
                    perturb=kind,
                    level=level,
                    answer=answer,
                    gold=item.answer,
                    correct=correct,
                    confidence=confidence,
                    nmlp=nmlp,
                    category=item.category,
                )
                written += 1
                if progress is not None:
                    progress()
    return ProbeRun(written=written, skipped=skipped)


# -- summary ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSummaryRow:
    """Accuracy and confidence of one perturbation kind at one level (level 0: the clean rows).

    Drops are paired: over the items that have both a clean row and this row, ``mean(perturbed) -
    mean(clean)`` (:func:`catts_graph.metrics.confidence_drop`); negative means the confidence fell.
    """

    perturb: str
    level: float
    items: int
    accuracy: float
    """Fraction of items answered correctly, in [0, 1]."""
    mean_confidence: float
    """Mean ``exp(-NMLP)``."""
    mean_nmlp: float
    """Mean NMLP over the rows that have one (NaN if none)."""
    confidence_drop: float
    """Drop of mean ``exp(-NMLP)`` against clean (0 at level 0, NaN with no clean rows)."""
    confidence_drop_nmlp: float
    """The drop in NMLP units, with confidence taken as ``-NMLP`` (the paper's unit, where CDRL moves
    noise from -0.32 to -1.39): ``mean NMLP(clean) - mean NMLP(perturbed)``."""
    ece: float
    """Expected calibration error of ``exp(-NMLP)`` at this level (15 equal-width bins)."""
    auroc: float
    """AUROC of ``exp(-NMLP)`` for right against wrong; NaN when every item is right or every one wrong."""


def _summarise(
    kind: str,
    level: float,
    rows: Mapping[str, tuple[int, float, float | None]],
    clean: Mapping[str, tuple[int, float, float | None]],
) -> ProbeSummaryRow:
    correct = [bool(c) for c, _, _ in rows.values()]
    confidences = [conf for _, conf, _ in rows.values()]
    nmlps = [nm for _, _, nm in rows.values() if nm is not None]
    paired = [item for item in rows if item in clean]
    if paired:
        drop = metrics.confidence_drop([clean[i][1] for i in paired], [rows[i][1] for i in paired])
    else:
        drop = math.nan
    paired_nmlp = [i for i in paired if rows[i][2] is not None and clean[i][2] is not None]
    if paired_nmlp:
        drop_nmlp = metrics.confidence_drop(
            [-float(clean[i][2]) for i in paired_nmlp],  # type: ignore[arg-type]
            [-float(rows[i][2]) for i in paired_nmlp],  # type: ignore[arg-type]
        )
    else:
        drop_nmlp = math.nan
    auroc = metrics.auroc(confidences, correct)
    return ProbeSummaryRow(
        perturb=kind,
        level=level,
        items=len(rows),
        accuracy=metrics.accuracy(correct),
        mean_confidence=float(np.mean(confidences)),
        mean_nmlp=float(np.mean(nmlps)) if nmlps else math.nan,
        confidence_drop=drop,
        confidence_drop_nmlp=drop_nmlp,
        ece=metrics.expected_calibration_error(confidences, correct),
        auroc=auroc,
    )


def probe_summary(store_path: str | Path) -> list[ProbeSummaryRow]:
    """Per kind and level (level 0 = the clean rows, repeated for every kind): accuracy, mean
    confidence and NMLP, drops against clean in both units, ECE and AUROC.

    Kinds come in the order they were first stored, levels ascending. With clean rows only, one row
    named ``clean``. An empty or missing ``probe`` table gives ``[]``.
    """
    with read_store(store_path) as store:
        stored = [
            (row["item_id"], row["perturb"], row["level"], row["correct"], row["confidence"], row["nmlp"])
            for row in store.probe_rows()
        ]
    if not stored:
        return []
    groups: dict[tuple[str, float], dict[str, tuple[int, float, float | None]]] = {}
    for item_id, kind, level, correct, confidence, nmlp in stored:
        groups.setdefault((kind, _level_key(level)), {})[item_id] = (
            int(correct),
            float(confidence),
            None if nmlp is None else float(nmlp),
        )
    clean = groups.pop((CLEAN, 0.0), {})
    kinds = list(dict.fromkeys(kind for kind, _ in groups))
    summary: list[ProbeSummaryRow] = []
    if clean and not kinds:
        return [_summarise(CLEAN, 0.0, clean, clean)]
    for kind in kinds:
        if clean:
            summary.append(_summarise(kind, 0.0, clean, clean))
        for level in sorted(level for k, level in groups if k == kind):
            summary.append(_summarise(kind, level, groups[(kind, level)], clean))
    return summary


def probe_model(
    base_model: BaseVLM,
    items: Sequence[Item],
    *,
    perturbs: str | Iterable[str] = DEFAULT_PERTURBS,
    levels: str | Iterable[float] = DEFAULT_LEVELS,
    n: int = 1,
    seed: int = 0,
    store_path: str | Path | None = None,
    **options: Any,
) -> list[ProbeSummaryRow]:
    """Run the probe on ``base_model`` and return its summary: the before / after check of CDRL.

    With ``store_path`` None the rows go to a temporary database that is removed afterwards; pass a
    path (one per model) to keep and resume them. ``options`` go to :func:`run_probe`.
    """
    with contextlib.ExitStack() as stack:
        if store_path is None:
            store_path = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="catts-probe-"))) / "probe.sqlite"
            )
        run_probe(
            items,
            base_model=base_model,
            perturbs=perturbs,
            levels=levels,
            n=n,
            seed=seed,
            store_path=store_path,
            **options,
        )
        return probe_summary(store_path)


# -- command line -----------------------------------------------------------------------------------


def summary_table(rows: Sequence[ProbeSummaryRow], *, title: str = "probe") -> Any:
    """The summary as a Rich table (fits 80 columns): conf is exp(-NMLP); Δ the drops against clean."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption="conf = exp(-NMLP); Δ = perturbed - clean",
    )
    for column in ("perturb", "level", "items", "acc %", "conf", "NMLP", "Δconf", "Δ(-NMLP)", "ECE", "AUROC"):
        table.add_column(
            column, justify="left" if column == "perturb" else "right", no_wrap=True, min_width=len(column)
        )
    for row in rows:
        table.add_row(
            row.perturb,
            f"{row.level:g}",
            str(row.items),
            number(100 * row.accuracy, 1),
            number(row.mean_confidence),
            number(row.mean_nmlp),
            number(row.confidence_drop),
            number(row.confidence_drop_nmlp),
            number(row.ece),
            number(row.auroc),
        )
    return table
