"""MMBoundary training data: the model's own replies, with a confidence statement after each step.

Pipeline (MMBoundary's SFT data, with our choices marked in :mod:`catts_training.mmboundary`):

1. :func:`sample_replies`: the base model answers each item (greedy, or ``samples`` draws at a
   temperature); each reply is cut into steps, and each step gets its signals
   (:func:`~catts_graph.step_confidence.step_signals`: length-normalised probability, mean
   full-vocabulary entropy, TokenSAR with a sentence encoder) and, when the item has a reference
   chain, its truth (:mod:`catts_training.mmboundary.reference`);
2. :func:`fit_calibrator`: a :class:`~catts_graph.step_confidence.StepCalibrator` fitted on the
   replies to *validation* items: with the step labels (the organism, where they are ground truth),
   or without (equal weights; elsewhere labels come from a similarity judge and are not trusted to
   weigh the signals);
3. :func:`assess_replies` then :func:`stated_completion`: each step of a training reply gets its
   fused confidence, level (1..5) and the level's validation accuracy, and a statement of that level
   is written after it (the forward mapping, :func:`~catts_graph.statements.insert_statements`); the
   answer step gets none;
4. :func:`save_data` writes ``items.jsonl`` (a CDRL item file: the items, their images as PNG),
   ``examples.jsonl`` (per reply: prompt, reply, stated completion, and every step's signals,
   level, fused confidence, confidence and label), ``calibrator.json`` and ``summary.json``;
   :func:`load_data` reads them back; :func:`to_sft_dataset` and :func:`to_grpo_dataset` make TRL's
   datasets from them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from catts_graph.images import load_image
from catts_graph.statements import STATEMENTS, insert_statements
from catts_graph.step_confidence import LEVELS, StepCalibrator, step_signals
from catts_graph.task import Item, base_prompt, item_seed
from catts_training.cdrl.data import load_items
from catts_training.cdrl.rewards import is_correct
from catts_training.mmboundary.reference import StepJudge, reference_chain
from catts_training.mmboundary.stated import TRAINING_SIGNALS, restrict_signals, statement_expected

__all__ = [
    "CALIBRATOR_FILE",
    "EXAMPLES_FILE",
    "ITEMS_FILE",
    "SUMMARY_FILE",
    "MMBoundaryData",
    "Reply",
    "StatedExample",
    "StepRecord",
    "assess_replies",
    "data_summary",
    "fit_calibrator",
    "load_data",
    "save_data",
    "sample_replies",
    "sample_tokens",
    "stated_completion",
    "stated_examples",
    "statement_token_counts",
    "to_grpo_dataset",
    "to_sft_dataset",
]

ITEMS_FILE = "items.jsonl"
EXAMPLES_FILE = "examples.jsonl"
CALIBRATOR_FILE = "calibrator.json"
SUMMARY_FILE = "summary.json"


@dataclass
class StepRecord:
    """One step of a reply without statements: its span, raw signals, truth (None without a
    reference chain), and, once assessed, fused confidence, level and the level's validation
    accuracy (``confidence``; NaN when the calibrator was fitted without labels)."""

    index: int
    start: int
    end: int
    text: str
    signals: dict[str, float | None]
    is_answer: bool
    correct: bool | None = None
    score: float | None = None
    fused: float | None = None
    level: int | None = None
    confidence: float | None = None


@dataclass
class Reply:
    """One reply of the base model to an item (``sample``: its index among the item's draws)."""

    item_id: str
    sample: int
    prompt: str
    text: str
    answer_correct: bool
    steps: list[StepRecord]


@dataclass
class StatedExample:
    """A training example: the item, its prompt and the reply with a statement after each step."""

    item: Item
    reply: Reply
    completion: str


@dataclass
class MMBoundaryData:
    """What ``catts mmboundary data`` wrote: the items, the stated examples, the calibrator."""

    items: list[Item]
    examples: list[StatedExample]
    calibrator: StepCalibrator
    summary: dict[str, Any] = field(default_factory=dict)

    def images(self, item: Item) -> list[Image.Image]:
        return [load_image(ref, name=f"item {item.id!r} images[{k}]") for k, ref in enumerate(item.images)]


# -- sampling -------------------------------------------------------------------------------------


def sample_replies(
    vlm: Any,
    items: Iterable[Item],
    *,
    samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    signals: Collection[str] = TRAINING_SIGNALS,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    judge: StepJudge | None = None,
    progress: Callable[[int], None] | None = None,
    stated_lines: int | None = None,
) -> list[Reply]:
    """``samples`` replies of ``vlm`` to each item (greedy at ``temperature`` 0), cut into steps with
    their signals (``tokensar`` only with ``similarity``, ``entropy`` only when the backend reports
    entropies) and, with ``judge`` and a reference chain, their truth. Item ``i``'s draws are seeded
    ``item_seed(seed, id)``, so they do not depend on the other items."""
    if samples < 1:
        raise ValueError(f"samples={samples!r}: expected an int >= 1")
    if temperature == 0 and samples > 1:
        raise ValueError(
            f"samples={samples}: greedy replies (temperature 0) are all the same; give a temperature"
        )
    restrict_signals({}, signals)  # validates the names
    replies = []
    for number, item in enumerate(items):
        images = [
            load_image(ref, name=f"item {item.id!r} images[{k}]").convert("RGB")
            for k, ref in enumerate(item.images)
        ]
        prompt = base_prompt(item.question, item.options, vlm)
        drawn = vlm.sample(
            images,
            prompt,
            samples,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=item_seed(seed, item.id),
        )
        reference = reference_chain(item) if judge is not None else None
        for k, sample in enumerate(drawn):
            replies.append(
                _reply(item, k, prompt, sample, signals, similarity, judge, reference, stated_lines)
            )
        if progress is not None:
            progress(number + 1)
    return replies


def sample_tokens(sample: Any) -> tuple[list[str], list[float], list[float] | None]:
    """A sample's tokens, their log-probs and entropies (None when the backend reports none), up to
    the end of its text: a backend may report tokens past it (a stop token), which are no step's."""
    tokens: list[str] = []
    logprobs: list[float] = []
    entropies: list[float] = []
    length = 0
    for i, token in enumerate(sample.tokens or []):
        if length >= len(sample.text):
            break
        tokens.append(token)
        logprobs.append(sample.logprobs[i])
        if sample.entropies:
            entropies.append(sample.entropies[i])
        length += len(token)
    return tokens, logprobs, (entropies if sample.entropies else None)


def _reply(
    item: Item,
    index: int,
    prompt: str,
    sample: Any,
    signals: Collection[str],
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None,
    judge: StepJudge | None,
    reference: list[str] | None,
    stated_lines: int | None = None,
) -> Reply:
    tokens, logprobs, entropies = sample_tokens(sample)
    found = step_signals(
        tokens,
        logprobs,
        entropies if "entropy" in signals else None,
        similarity=similarity if "tokensar" in signals else None,
    )
    truths = (
        judge.judge([s.text for s in found], reference)
        if judge is not None and reference is not None
        else None
    )
    whole = "".join(tokens)  # the text the steps' offsets index
    steps = [
        StepRecord(
            index=s.index,
            start=s.start,
            end=s.end,
            text=s.text,
            signals=restrict_signals(s.signals(), signals),
            is_answer=not statement_expected(whole, s.start, s.end, stated_lines),
            correct=None if truths is None else truths[k].correct,
            score=None if truths is None else truths[k].score,
        )
        for k, s in enumerate(found)
    ]
    text = whole
    return Reply(
        item_id=item.id,
        sample=index,
        prompt=prompt,
        text=text,
        answer_correct=is_correct(text, item.answer, item.options),
        steps=steps,
    )


# -- levels and statements ------------------------------------------------------------------------


def fit_calibrator(replies: Sequence[Reply], *, use_labels: bool) -> StepCalibrator:
    """A :class:`StepCalibrator` fitted on every step of ``replies`` (validation replies), with
    their labels when ``use_labels`` (every step must then have one)."""
    steps = [step for reply in replies for step in reply.steps]
    if not steps:
        raise ValueError("validation replies: no steps to fit the step calibrator on")
    labels = None
    if use_labels:
        if any(step.correct is None for step in steps):
            raise ValueError(
                "calibration.use_labels: some validation steps have no label (items without a reference "
                "chain, or no judge); set calibration.use_labels: false"
            )
        labels = [bool(step.correct) for step in steps]
    return StepCalibrator.fit([step.signals for step in steps], labels)


def assess_replies(replies: Iterable[Reply], calibrator: StepCalibrator) -> None:
    """Fill each step's ``fused``, ``level`` and ``confidence`` from ``calibrator`` (in place)."""
    for reply in replies:
        for step in reply.steps:
            assessed = calibrator.assess(step.signals)
            step.fused = assessed["fused"]
            step.level = assessed["level"]
            step.confidence = assessed["confidence"]


def stated_completion(reply: Reply, seed: int = 0) -> str:
    """``reply.text`` with a statement of each assessed non-answer step's level after it (the
    phrase drawn from the level's pool with ``seed``)."""
    stated = [step for step in reply.steps if not step.is_answer]
    if any(step.level is None for step in stated):
        raise ValueError(f"reply to item {reply.item_id!r}: assess its steps before stating them")
    return insert_statements(
        reply.text,
        [(s.start, s.end) for s in stated],
        [int(s.level) for s in stated],
        seed,  # type: ignore[arg-type]
    )


def stated_examples(items: Sequence[Item], replies: Sequence[Reply], *, seed: int = 0) -> list[StatedExample]:
    """One :class:`StatedExample` per assessed reply that has at least one step to state (a reply
    that is nothing but its answer, or empty, teaches no statement and is left out)."""
    by_id = {item.id: item for item in items}
    examples = []
    for reply in replies:
        if not any(not step.is_answer for step in reply.steps):
            continue
        phrase_seed = item_seed(seed, f"{reply.item_id}#{reply.sample}")
        examples.append(StatedExample(by_id[reply.item_id], reply, stated_completion(reply, phrase_seed)))
    return examples


def statement_token_counts(tokenizer: Any) -> dict[str, float]:
    """Tokens each statement costs under ``tokenizer`` (``", " + phrase``, as the forward mapping
    writes it): mean, min and max over the five pools."""
    counts = [
        len(tokenizer(", " + phrase, add_special_tokens=False)["input_ids"])
        for pool in STATEMENTS.values()
        for phrase in pool
    ]
    return {"mean": sum(counts) / len(counts), "min": float(min(counts)), "max": float(max(counts))}


def data_summary(
    examples: Sequence[StatedExample],
    replies: Sequence[Reply],
    validation: Sequence[Reply],
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Counts, the level distribution of the stated steps, accuracies and (with ``tokenizer``) the
    token cost of the statements, for ``summary.json``."""
    stated = [s for e in examples for s in e.reply.steps if not s.is_answer]
    labelled = [s for r in replies for s in r.steps if s.correct is not None]
    levels = Counter(int(s.level) for s in stated if s.level is not None)
    summary: dict[str, Any] = {
        "items": len({r.item_id for r in replies}),
        "replies": len(replies),
        "examples": len(examples),
        "skipped_replies": len(replies) - len(examples),
        "steps": sum(len(r.steps) for r in replies),
        "stated_steps": len(stated),
        "level_counts": [levels.get(k, 0) for k in range(1, LEVELS + 1)],
        "answer_accuracy": _mean([float(r.answer_correct) for r in replies]),
        "step_accuracy": _mean([float(bool(s.correct)) for s in labelled]) if labelled else None,
        "validation_replies": len(validation),
        "validation_steps": sum(len(r.steps) for r in validation),
    }
    if tokenizer is not None:
        summary["statement_tokens"] = statement_token_counts(tokenizer)

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        if examples:
            summary["reply_tokens"] = _mean([float(count(e.reply.text)) for e in examples])
            summary["completion_tokens"] = _mean([float(count(e.completion)) for e in examples])
    return summary


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# -- saving and loading ---------------------------------------------------------------------------


def save_data(
    out_dir: str | Path,
    items: Sequence[Item],
    examples: Sequence[StatedExample],
    calibrator: StepCalibrator,
    summary: Mapping[str, Any],
) -> Path:
    """Write the data folder (see the module docstring); returns ``examples.jsonl``'s path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    used = {e.item.id for e in examples}
    rows = []
    for number, item in enumerate(i for i in items if i.id in used):
        paths = []
        for k, ref in enumerate(item.images):
            path = f"images/{number:05d}_{k}.png"
            load_image(ref, name=f"item {item.id!r} images[{k}]").convert("RGB").save(out / path)
            paths.append(path)
        rows.append(json.dumps({**asdict(item), "images": paths}, ensure_ascii=False))
    (out / ITEMS_FILE).write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8")
    lines = [
        json.dumps(
            {"id": e.item.id, "completion": e.completion, **asdict(e.reply)},
            ensure_ascii=False,
            allow_nan=True,
        )
        for e in examples
    ]
    path = out / EXAMPLES_FILE
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    (out / CALIBRATOR_FILE).write_text(json.dumps(calibrator.to_dict(), indent=1) + "\n", encoding="utf-8")
    (out / SUMMARY_FILE).write_text(json.dumps(dict(summary), indent=2) + "\n", encoding="utf-8")
    return path


def load_data(folder: str | Path) -> MMBoundaryData:
    """What :func:`save_data` wrote to ``folder``."""
    root = Path(folder)
    for name in (ITEMS_FILE, EXAMPLES_FILE, CALIBRATOR_FILE):
        if not (root / name).is_file():
            raise ValueError(
                f"data folder {str(root)!r} has no {name}; write it with `catts mmboundary data --config ...`"
            )
    items = load_items(str(root / ITEMS_FILE))
    by_id = {item.id: item for item in items}
    examples = []
    for number, line in enumerate((root / EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if row["id"] not in by_id:
            raise ValueError(
                f"{root / EXAMPLES_FILE} line {number + 1}: item {row['id']!r} is not in {ITEMS_FILE}"
            )
        steps = [StepRecord(**step) for step in row["steps"]]
        reply = Reply(
            item_id=row["item_id"],
            sample=row["sample"],
            prompt=row["prompt"],
            text=row["text"],
            answer_correct=row["answer_correct"],
            steps=steps,
        )
        examples.append(StatedExample(by_id[row["id"]], reply, row["completion"]))
    calibrator = StepCalibrator.from_dict(json.loads((root / CALIBRATOR_FILE).read_text(encoding="utf-8")))
    summary_path = root / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return MMBoundaryData(items=items, examples=examples, calibrator=calibrator, summary=summary)


# -- TRL datasets ---------------------------------------------------------------------------------


def to_sft_dataset(data: MMBoundaryData) -> Any:
    """A ``datasets.Dataset`` for TRL's ``SFTTrainer``, one row per example, conversational
    prompt-completion with images: ``prompt`` (the user turn: TRL puts the ``images`` before its
    text), ``completion`` (the assistant turn: the reply with statements), ``images``. TRL's loss is
    then on the completion only (``completion_only_loss``), the chat template's end of turn included."""
    import datasets

    if not data.examples:
        raise ValueError("data: no examples to fine-tune on")
    cache: dict[str, list[Image.Image]] = {}
    rows = []
    for example in data.examples:
        if example.item.id not in cache:
            cache[example.item.id] = [image.convert("RGB") for image in data.images(example.item)]
        rows.append(
            {
                "id": example.item.id,
                "prompt": [{"role": "user", "content": example.reply.prompt}],
                "completion": [{"role": "assistant", "content": example.completion}],
                "images": cache[example.item.id],
            }
        )
    message = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "prompt": message,
            "completion": message,
            "images": datasets.List(datasets.Image()),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def to_grpo_dataset(data: MMBoundaryData) -> Any:
    """A ``datasets.Dataset`` for TRL's ``GRPOTrainer``, one prompt row per item that has an
    example: ``prompt`` (conversational), ``images``, and for the rewards ``answer``, ``options``
    (empty list for an open question), ``answer_type``, ``id`` and ``reference`` (the normalised
    reference chain, an empty list when the item has none)."""
    import datasets

    prompts = {e.item.id: e.reply.prompt for e in data.examples}
    items = [item for item in data.items if item.id in prompts]
    if not items:
        raise ValueError("data: no items to train on")
    rows = [
        {
            "id": item.id,
            "prompt": [{"role": "user", "content": prompts[item.id]}],
            "answer": item.answer,
            "options": list(item.options or []),
            "answer_type": item.answer_type,
            "reference": reference_chain(item) or [],
            "images": [image.convert("RGB") for image in data.images(item)],
        }
        for item in items
    ]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "answer": datasets.Value("string"),
            "options": datasets.List(datasets.Value("string")),
            "answer_type": datasets.Value("string"),
            "reference": datasets.List(datasets.Value("string")),
            "images": datasets.List(datasets.Image()),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)
