"""Statement pre-training for the organisms (``statements.pretrain``): the statements' words in use
before MMBoundary's SFT.

A real VLM met phrases such as "and I am fairly sure" in pre-training; an organism, trained from
scratch on the generator's words, never did. :func:`~catts_training.mmboundary.vocabulary.extend_vocabulary`
gives it the words as tokens, but SFT then has to teach their use and the calibration at once, on a
few hundred replies, and measured on the organism (issue 13) that costs its answers: SFT at the rate
the statements need took validation accuracy from 0.91 to 0.66, and the same SFT without any
statement still to 0.74 (the fine-tuning itself), while a gentle rate left the levels collapsed.

This stage continues the organism's own pre-training (AdamW on fresh generator scenes, the gold
reply as target, nothing reused) with a statement after every step but the answer, so the model
learns to write them and to read past them while it keeps practising its task:

- ``levels: estimated`` (default): each step's statement states the level the model's *own*
  teacher-forced signals give that step (``probability`` and ``entropy`` of its tokens under the
  data's :class:`~catts_graph.step_confidence.StepCalibrator`; the calibrator's other signals,
  TokenSAR, are left out of the fusion and its weights renormalised, as the calibrator does for a
  missing signal). The signals are read by a frozen copy of the model the stage starts from, the
  model the data stage sampled, on the reply without statements, as the data stage reads them: read
  off the weights being trained they drift (once the model expects a statement after a step, the
  plain reply's closing ``;`` reads as unlikely, and within 100 steps every step read as level 1).
  A gold step the model would not have written reads as unlikely, so as a low level: the stage
  teaches the statements' use on unlimited fresh scenes, SFT on the model's own replies then their
  calibration against the replies' truth.
- ``levels: random``: a uniformly random level per step (the words without any meaning; the
  ablation: the organism then states one level everywhere).

The scenes are the generator's ``train`` split from index ``start`` (3,000,000: past the organism's
training stream, the reflection pool and its plain examples). The result is a checkpoint like the
organism's (``organism.json`` gains a ``statement_pretraining`` section); a folder that already
holds the same pre-training of the same source is reused.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from catts_graph.statements import StatementReader, insert_statements
from catts_graph.step_confidence import StepCalibrator
from catts_training.config import Count, NonNegative, Number, Prefix, Section, one_of
from catts_training.mmboundary.stated import content_signals, read_steps

__all__ = [
    "LEVEL_SOURCES",
    "PretrainConfig",
    "estimated_levels",
    "freeze_parameters",
    "pretrain_statements",
    "stated_spans",
    "teacher_forced",
]

LEVEL_SOURCES: tuple[str, ...] = ("estimated", "random")
FORCED_SIGNALS: tuple[str, ...] = ("probability", "entropy")
"""The signals read off one teacher-forced pass (TokenSAR would cost an encoder call per token)."""
MANIFEST_KEY = "statement_pretraining"


class PretrainConfig(Section):
    """``statements.pretrain`` of an MMBoundary config."""

    model_config = ConfigDict(frozen=True)

    steps: Count = Field(800, description="optimizer steps")
    learning_rate: Annotated[Number, Field(gt=0, lt=1)] = Field(2e-4, description="AdamW's rate")
    batch_size: Count = Field(32, description="fresh scenes per step")
    levels: Annotated[str, one_of(LEVEL_SOURCES)] = Field(
        "estimated", description="estimated (the model's own signals) or random (the ablation)"
    )
    warmup_steps: NonNegative = Field(
        0,
        description="linear warm-up of the learning rate (a fresh AdamW's first steps move every weight "
        "by about the learning rate, whatever its gradient)",
    )
    freeze: tuple[Prefix, ...] = Field(
        (),
        description="parameter-name prefixes left as they are (e.g. model.visual: statements are language)",
    )
    start: NonNegative = Field(3_000_000, description="the generator's train-split index the scenes start at")
    seed: int = Field(0, description="the scenes' and the random levels' seed")


def teacher_forced(
    model: Any, batch: Mapping[str, Any], tokenizer: Any
) -> list[tuple[list[str], list[float], list[float]]]:
    """For each row of a training ``batch`` (labels on the reply and its closing end of turn), the
    reply's tokens (decoded one by one), each token's log-probability under ``model`` and the
    entropy (nats, full vocabulary) of the distribution it was drawn from; the end of turn left out."""
    import torch

    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    rows = []
    for r in range(logits.shape[0]):
        positions = (batch["labels"][r] != -100).nonzero().flatten()[:-1]
        ids = batch["input_ids"][r, positions]
        logp = torch.log_softmax(logits[r, positions - 1].float(), dim=-1)
        rows.append(
            (
                [tokenizer.decode([i]) for i in ids.tolist()],
                logp.gather(1, ids[:, None]).squeeze(1).tolist(),
                (-(logp.exp() * logp).sum(dim=-1)).tolist(),
            )
        )
    return rows


def estimated_levels(
    text: str,
    tokens: Sequence[str],
    logprobs: Sequence[float],
    entropies: Sequence[float],
    calibrator: StepCalibrator,
    stated_lines: int | None = None,
) -> tuple[list[tuple[int, int]], list[int]]:
    """The spans of ``text``'s stated steps (every step but the answer, or those of its first
    ``stated_lines`` lines) and the level ``calibrator`` gives each from its tokens' signals."""
    if "".join(tokens) != text:
        raise ValueError(
            "tokens: they do not spell the reply (a tokenizer that does not decode token by token)"
        )
    steps = read_steps(text, StatementReader(None), stated_lines)
    signals = content_signals(steps, tokens, logprobs, entropies, signals=FORCED_SIGNALS)
    spans, levels = [], []
    for step, row in zip(steps, signals, strict=True):
        if step.is_answer or row is None:
            continue
        spans.append((step.start, step.end))
        levels.append(int(calibrator.assess(row)["level"]))
    return spans, levels


def pretrain_statements(
    model_path: str | Path,
    out: str | Path,
    config: PretrainConfig,
    *,
    calibrator: StepCalibrator | None = None,
    stated_lines: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Continue the organism at ``model_path`` (its vocabulary holding the statements' words) on
    fresh scenes with stated gold replies; the checkpoint goes to ``out`` (reused when it holds this
    pre-training of this source already). ``calibrator``: needed for ``levels: estimated``."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from catts_graph.eval.synthetic import make_question
    from catts_graph.organism.checkpoint import CHECKPOINT_SETTINGS, encode_examples, save_checkpoint
    from catts_graph.organism.language import organism_prompt, reply_text

    source, target = Path(model_path), Path(out)
    if not (source / "organism.json").is_file():
        raise ValueError(
            f"model={str(source)!r}: statements.pretrain continues an organism's pre-training on the "
            "synthetic generator; this checkpoint has no organism.json"
        )
    if config.levels == "estimated" and calibrator is None:
        raise ValueError("statements.pretrain.levels=estimated: needs the data's calibrator")
    record = {"source": str(source.resolve()), **config.model_dump(), "stated_lines": stated_lines}
    if config.levels == "estimated":
        record["calibrator"] = {"weights": calibrator.weights, "cuts": list(calibrator.cuts)}  # type: ignore[union-attr]
    record = json.loads(json.dumps(record))  # as stored (lists, not tuples)
    done = target / "organism.json"
    if done.is_file() and json.loads(done.read_text()).get(MANIFEST_KEY, {}).get("settings") == record:
        log(f"statement pre-training: reusing {target}")
        return target

    manifest = json.loads((source / "organism.json").read_text())
    side = int(manifest["config"]["image_side"])
    settings_file = source / "catts.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else CHECKPOINT_SETTINGS
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32).train()
    frozen = (  # reads the levels: the model as the data stage sampled it
        AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32).eval()
        if config.levels == "estimated"
        else None
    )
    processor = AutoProcessor.from_pretrained(source)
    freeze_parameters(model, config.freeze, what="statements.pretrain.freeze")
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: min(1.0, (done + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )
    started = time.monotonic()
    index = config.start
    counts = [0] * 5
    window: list[float] = []
    for step in range(1, config.steps + 1):
        rows = []
        for _ in range(config.batch_size):
            question = make_question("train", index)
            index += 1
            prompt = organism_prompt(question.question, list(question.options) if question.options else None)
            rows.append((prompt, reply_text(question), question.scene))
        if config.levels == "estimated":
            forced = teacher_forced(frozen, encode_examples(processor, rows, side), processor.tokenizer)
            found = [
                estimated_levels(text, *signals, calibrator, stated_lines)  # type: ignore[arg-type]
                for (_, text, _), signals in zip(rows, forced, strict=True)
            ]
        else:
            found = []
            for _, text, _ in rows:
                spans = stated_spans(text, stated_lines)
                found.append((spans, [rng.randint(1, 5) for _ in spans]))
        stated = []
        for (prompt, text, scene), (spans, levels) in zip(rows, found, strict=True):
            for level in levels:
                counts[level - 1] += 1
            body = insert_statements(text, spans, levels, seed=rng.randrange(2**31)) if spans else text
            stated.append((prompt, body, scene))
        loss = model(**encode_examples(processor, stated, side)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % 50 == 0 or step == config.steps:
            log(
                f"statement pre-training step {step}/{config.steps} loss {sum(window) / len(window):.4f} "
                f"levels so far {counts} ({time.monotonic() - started:.0f} s)"
            )
            window = []
    model.eval()
    manifest[MANIFEST_KEY] = {
        "settings": record,
        "level_counts": counts,
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    save_checkpoint(model, processor, target, manifest, settings=settings)
    vocabulary = source / "vocabulary.json"  # the extension's manifest travels with the weights
    if vocabulary.is_file():
        (target / vocabulary.name).write_text(vocabulary.read_text())
    return target


def freeze_parameters(model: Any, prefixes: Sequence[str], what: str = "freeze") -> int:
    """Keep the parameters whose names start with one of ``prefixes`` out of training; returns how
    many parameters (elements) that froze. A prefix that matches nothing is an error naming
    ``what`` (a typo would otherwise train everything)."""
    frozen = 0
    for prefix in prefixes:
        matched = [(name, p) for name, p in model.named_parameters() if name.startswith(prefix)]
        if not matched:
            raise ValueError(f"{what}: {prefix!r} matches no parameter of the model")
        for _, parameter in matched:
            if parameter.requires_grad:
                parameter.requires_grad_(False)
                frozen += parameter.numel()
    return frozen


def stated_spans(text: str, stated_lines: int | None = None) -> list[tuple[int, int]]:
    """The spans of ``text``'s stated steps (every step but the answer, or those of its first
    ``stated_lines`` lines)."""
    return [
        (s.start, s.end) for s in read_steps(text, StatementReader(None), stated_lines) if not s.is_answer
    ]
