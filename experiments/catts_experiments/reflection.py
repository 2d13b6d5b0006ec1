"""Self-reflection the organism can do (``catts train reflection``, ``catts measure reflection``):
answering again after a critique that names its wrong step.

The organisms were trained on one prompt (the question and its options), so CA-TTS's
self-reflection was a greedy re-reading: the same reply again. Here the base organism learns a
second prompt, ``prompts/reflection_short.txt``: the question, its options, then a critique in the
organisms' own language that names one step of the earlier reply as wrong,
``wrong: circle red top left.`` (:func:`critique_text`), followed by the ``Verdict:`` line the graph's
Critic appends (:func:`critique_message`). The target is the generator's reply.

Training examples (:func:`reflection_pool`, :class:`ReflectionBatches`) come two ways:

- **its own errors**: the base samples replies (temperature 1) to fresh training scenes; a reply's
  first step that matches no step of the generator's reply (:func:`first_wrong_step`) is named.
  These are the misreadings the model actually makes, so the critique carries information;
- **corruptions**: one described object of the generator's reply with its colour, shape or place
  changed (:func:`corrupted_step`): unlimited, but mostly readings the model would not make.

mixed with plain answer examples so the model keeps its skill (:func:`train_reflection`).

At inference the expert organism plays the Critic (:class:`~catts_graph.organism.expert.
OrganismExpert`): it names the first step of the criticised reply that its own reading lacks.
:func:`reflection_effect` measures what the reflection adds on test items.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from catts_graph.organism.checkpoint import CHECKPOINT_SETTINGS, encode_examples, save_checkpoint
from catts_graph.organism.language import organism_prompt, reply_text
from catts_graph.organism.steps import (
    NO_STEP,
    critique_text,
    first_wrong_step,
    reference_steps,
    reply_steps,
)

REFLECTION_PROMPT = "reflection_short"
"""The prompt template a reflection-trained organism declares in ``catts.json``."""

POOL_START = 1_000_000
"""Train-split question indices of the own-error pool start here: scenes the base never saw (it
was trained on the first 160,000)."""


def critique_message(critique: str, verdict: str = "incorrect") -> str:
    """The critique as the graph's Critic hands it to Self-Reflection: the expert's JSON read by
    :func:`~catts_graph.experts.critic.parse_critique` (``wrong: ... .`` then a ``Verdict:`` line),
    so what the organism trains on is, by construction, what the graph gives it."""
    from catts_graph.experts.critic import parse_critique

    return parse_critique(json.dumps({"critique": critique, "verdict": verdict}))


def named_step(critique: str) -> str | None:
    """The step a :func:`critique_text` names (None for ``none`` or another text)."""
    text = critique.strip()
    if not text.startswith("wrong: "):
        return None
    step = text.removeprefix("wrong: ").rstrip(".").strip()
    return None if step in ("", NO_STEP) else step


def corrupted_step(question: Any, rng: random.Random) -> str | None:
    """One described object of ``question``'s scene with its colour, shape or place changed (a
    reading the generator's reply does not hold), or None for a scene without shapes."""
    from catts_graph.eval.synthetic import COLOURS, POSITIONS, SHAPES

    shapes = list(question.scene.shapes)
    if not shapes:
        return None
    shape = rng.choice(shapes)
    field = rng.choice(("colour", "shape", "quadrant"))
    values = {"colour": tuple(COLOURS), "shape": SHAPES, "quadrant": POSITIONS}[field]
    current = {"colour": shape.colour, "shape": shape.shape, "quadrant": shape.quadrant}
    current[field] = rng.choice([v for v in values if v != current[field]])
    return f"{current['shape']} {current['colour']} {current['quadrant']}"


def reflection_prompt_text(question: str, options: Sequence[str] | None, critique: str) -> str:
    """The user turn of ``prompts/reflection_short.txt``."""
    from catts_graph.prompts import format_options, render_prompt

    return render_prompt(
        REFLECTION_PROMPT, question=question, options=format_options(options), critique=critique
    )


def reflection_pool(
    vlm: Any,
    items: int,
    *,
    samples: int = 4,
    temperature: float = 1.0,
    start: int = POOL_START,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The base model's own errors on ``items`` fresh training scenes (``samples`` replies each at
    ``temperature``): ``{"index", "critique", "answer_wrong"}`` per reply with a wrong step."""
    from catts_graph.eval.synthetic import make_question, render

    pool: list[dict[str, Any]] = []
    for k in range(items):
        index = start + k
        question = make_question("train", index, seed=seed)
        options = list(question.options) if question.options else None
        replies = vlm.sample(
            [render(question.scene)],
            organism_prompt(question.question, options),
            samples,
            temperature=temperature,
            max_new_tokens=256,
            seed=seed + index,
        )
        reference = reference_steps(question)
        for reply in replies:
            wrong = first_wrong_step(reply.text, reference)
            if wrong is not None:
                pool.append({"index": index, "critique": critique_text(wrong)})
        if log is not None and (k + 1) % max(1, items // 10) == 0:
            log(f"reflection pool: {k + 1}/{items} scenes, {len(pool)} wrong replies")
    return pool


@dataclass(frozen=True)
class ReflectionConfig:
    """How the base organism is fine-tuned to read critiques (:func:`train_reflection`)."""

    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-4
    """Constant: the base organism's schedule ended at 1e-4."""
    reflection_share: float = 0.375
    """Of each batch, this share are reflection examples, the rest plain answer examples."""
    own_share: float = 0.75
    """Of the reflection examples, this share names the model's own errors (the pool), the rest
    corruptions."""
    agree_share: float = 0.1
    """Of the reflection examples, this share carry the critique of an expert that agrees
    (``wrong: none.``, verdict correct) on a fresh scene: answer as usual."""
    pool_items: int = 1500
    pool_samples: int = 4
    seed: int = 0


class ReflectionBatches:
    """Mixed batches: plain answer examples (fresh training scenes) and reflection examples."""

    def __init__(self, processor: Any, config: ReflectionConfig, pool: Sequence[dict[str, Any]], side: int):
        self.processor = processor
        self.config = config
        self.pool = list(pool)
        self.side = side
        self.rng = random.Random(config.seed)
        self.plain_index = 2_000_000  # fresh scenes, after the pool's

    def next(self) -> dict[str, Any]:
        from catts_graph.eval.synthetic import make_question

        size = self.config.batch_size
        reflections = round(size * self.config.reflection_share)
        rows: list[tuple[str, str, Any]] = []
        for k in range(size):
            if k < reflections:
                draw = self.rng.random()
                if draw < self.config.agree_share:
                    question = make_question("train", self.plain_index, seed=self.config.seed)
                    self.plain_index += 1
                    critique = critique_message(critique_text(None), "correct")
                elif self.pool and self.rng.random() < self.config.own_share:
                    entry = self.rng.choice(self.pool)
                    question = make_question("train", entry["index"], seed=self.config.seed)
                    critique = critique_message(entry["critique"])
                else:
                    question, step = self._corruption()
                    critique = critique_message(step)
                options = list(question.options) if question.options else None
                prompt = reflection_prompt_text(question.question, options, critique)
            else:
                question = make_question("train", self.plain_index, seed=self.config.seed)
                self.plain_index += 1
                options = list(question.options) if question.options else None
                prompt = organism_prompt(question.question, options)
            rows.append((prompt, reply_text(question), question.scene))
        return encode_examples(self.processor, rows, self.side)

    def _corruption(self) -> tuple[Any, str]:
        from catts_graph.eval.synthetic import make_question

        while True:
            question = make_question("train", self.plain_index, seed=self.config.seed)
            self.plain_index += 1
            step = corrupted_step(question, self.rng)
            if step is not None:
                return question, critique_text(step)


def train_reflection(
    base: str | Path,
    out: str | Path,
    config: ReflectionConfig | None = None,
    *,
    pool: Sequence[dict[str, Any]] | None = None,
    threads: int = 2,
    log: Callable[[str], None] = print,
) -> Path:
    """Fine-tune the organism at ``base`` to read critiques (and keep answering); saved to ``out``
    with ``reflection_prompt: reflection_short`` in its ``catts.json``. ``pool``: the own-error
    pool (default: drawn from ``base`` with :func:`reflection_pool`)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from catts_graph.models import TransformersVLM

    config = config or ReflectionConfig()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)
    started = time.monotonic()
    base = Path(base)
    manifest = json.loads((base / "organism.json").read_text())
    side = int(manifest["config"]["image_side"])
    if pool is None:
        vlm = TransformersVLM.from_pretrained(base, device="cpu")
        pool = reflection_pool(vlm, config.pool_items, samples=config.pool_samples, seed=config.seed, log=log)
        del vlm
    pooled = time.monotonic()
    log(f"reflection: {len(pool)} own errors in the pool ({(pooled - started) / 60:.1f} min)")
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(base)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    batches = ReflectionBatches(processor, config, pool, side)
    window: list[float] = []
    for step in range(1, config.steps + 1):
        loss = model(**batches.next()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % 50 == 0 or step == config.steps:
            log(f"reflection step {step}/{config.steps} loss {sum(window) / len(window):.4f}")
            window = []
    model.eval()
    target = Path(out)
    save_checkpoint(
        model,
        processor,
        target,
        {
            **manifest,
            "reflection": {
                **asdict(config),
                "pool": len(pool),
                "pool_seconds": round(pooled - started, 1),
                "wall_time_s": round(time.monotonic() - pooled, 1),
                "threads": threads,
                "from": "the base organism (organism.json above)",
            },
        },
        settings={**CHECKPOINT_SETTINGS, "reflection_prompt": REFLECTION_PROMPT},
    )
    log(f"reflection: saved to {target} after {(time.monotonic() - started) / 60:.1f} min")
    return target


def reflection_effect(
    base: Any,
    expert: Any,
    *,
    split: str = "test",
    limit: int = 500,
    seed: int = 0,
    level: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """What the base's reflection on the expert's critique adds, per item: the base's greedy answer,
    the expert's critique (:class:`~catts_graph.organism.expert.OrganismExpert`'s: the first step
    of the base's reply its own reading lacks) and verdict, and where the verdict is ``incorrect``
    the base's greedy answer under its reflection prompt; also the same reflection with the
    generator's true first wrong step named (an oracle critic). ``level``: every item at that
    generator level (None: the mix). Returns per-item rows and totals."""
    from catts_graph.answers import extract_answer
    from catts_graph.eval.synthetic import item_question, load_synthetic
    from catts_graph.images import decode_image, read_reference
    from catts_graph.task import base_prompt

    if getattr(base, "reflection_prompt", None) != REFLECTION_PROMPT:
        raise ValueError(
            f"base: declares reflection_prompt={getattr(base, 'reflection_prompt', None)!r}; "
            f"expected a model trained to read critiques ({REFLECTION_PROMPT!r}, "
            "`catts train reflection`)"
        )

    def greedy(vlm: Any, image: Any, prompt: str) -> str:
        (sample,) = vlm.sample([image], prompt, 1, temperature=0.0, max_new_tokens=256)
        return sample.text

    rows = []
    for k, item in enumerate(load_synthetic(split, limit=limit, seed=seed, level=level)):
        question = item_question(item.id, seed=seed)
        image = decode_image(read_reference(item.images[0], name=item.id), name=item.id)
        first = greedy(base, image, base_prompt(item.question, item.options, base))
        answer = extract_answer(first, item.options)
        reading = greedy(expert, image, base_prompt(item.question, item.options, expert))
        verdict = "correct" if extract_answer(reading, item.options) == answer else "incorrect"
        row: dict[str, Any] = {"item": item.id, "before": answer == item.answer, "verdict": verdict}
        if verdict == "incorrect":
            critique = critique_message(critique_text(first_wrong_step(first, reply_steps(reading))))
            again = greedy(base, image, reflection_prompt_text(item.question, item.options, critique))
            row["critique"] = critique
            row["after"] = extract_answer(again, item.options) == item.answer
            oracle = critique_message(critique_text(first_wrong_step(first, reference_steps(question))))
            again = greedy(base, image, reflection_prompt_text(item.question, item.options, oracle))
            row["after_oracle"] = extract_answer(again, item.options) == item.answer
        else:
            row["after"] = row["after_oracle"] = row["before"]
        rows.append(row)
        if log is not None and (k + 1) % max(1, limit // 10) == 0:
            log(f"reflection effect: {k + 1}/{limit}")
    criticised = [r for r in rows if r["verdict"] == "incorrect"]
    return {
        "items": len(rows),
        "criticised": len(criticised),
        "accuracy_before": sum(r["before"] for r in rows) / len(rows),
        "accuracy_after": sum(r["after"] for r in rows) / len(rows),
        "accuracy_after_oracle": sum(r["after_oracle"] for r in rows) / len(rows),
        "fixed": sum(not r["before"] and r["after"] for r in criticised),
        "broken": sum(r["before"] and not r["after"] for r in criticised),
        "rows": rows,
    }
