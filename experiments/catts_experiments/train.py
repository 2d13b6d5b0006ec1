"""Train the organism models (``catts train organism``): small Qwen2.5-VLs learned from scratch on
the synthetic benchmark.

Plain supervised fine-tuning on CPU, seeded. A model is built random with
:func:`~catts_graph.models.tiny.build_tiny_qwen25vl` (the same offline tokenizer, processor and chat
template as every tiny model here), then taught to answer :mod:`catts_graph.eval.synthetic`
questions: first what the image shows (:func:`~catts_graph.eval.synthetic.describe_scene`, e.g.
``circle red top left; square blue bottom right.``), then the objects the question is about, then
``\\boxed{X}``. The loss is on the reply
tokens and the closing ``<|im_end|>`` only.

Why the description: with the bare ``\\boxed{X}`` reply an image teaches one answer token, and
the models sat on the answer prior for the whole CPU budget (measured: a 1.8M model at the prior's
loss after 500 steps). The description puts every object's colour, shape and place under the loss
(dense supervision, as captioning does in VLM pre-training), and it is the "reasoning" the graph's
modules work on: a noised image makes the description, and so the confidence, uncertain.

Why its own prompt: the graph's general answer prompt (``prompts/answer.txt``) is about 650
byte-level tokens, of which the question is 40; on two CPU cores a step over it costs ~30 times one
over the bare question, and a model moved onto it after learning the short form got worse. So the
organism is trained on ``prompts/answer_short.txt`` (question, then lettered options) and its
checkpoint says so in ``catts.json`` (``{"answer_prompt": "answer_short"}``), which
:class:`~catts_graph.models.TransformersVLM` reads: the graph, the evaluation harness and CDRL then
ask it exactly what it learned, as a chat template travels with a checkpoint. The same file names
its reflection prompt (:data:`~catts_graph.organism.checkpoint.CHECKPOINT_SETTINGS`).

Why a curriculum: the first ``easy_share`` of the steps draw level-1 items only (two to four big
shapes, one digit); on the mixed task from the start the model sat on the answer prior for
thousands of steps.

Why a larger init of the vision merger's output layer: with the usual 0.02 init the image tokens
differ little from image to image next to the text, and the model sits for hundreds of steps on the
answer prior before it looks at the image; ten times larger shortened that plateau (measured: digit
reading, answer loss 1.2 against 1.8 after 600 steps).

Why white maps to 0: with CLIP's normalisation a white pixel is about +1.9 in every channel, the
patches of these mostly-white scenes look alike after the vision tower's norms, and a model trained
from scratch did not even memorise 16 digit images (the loss sat at the answer prior); with
``image_mean = 1, image_std = 0.5`` (white = 0, black = -2) it does within 200 steps. All-zero
patches then breed denormal floats in the backward pass (50 times slower steps on x86) unless
``torch.set_flush_denormal(True)``.

The step count is fixed by the config (``--steps-scale`` scales it), so a seed reproduces a model
exactly on the same software; ``--minutes`` instead fits the step count to a wall-clock budget
from the speed measured on the first steps.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from catts_graph.organism.checkpoint import encode_examples, organism_path, save_checkpoint
from catts_graph.organism.language import ANSWER_PROMPT, organism_prompt, reply_text


@dataclass(frozen=True)
class OrganismConfig:
    """Architecture and schedule of one organism model (fields as in ``build_tiny_qwen25vl``)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vision_hidden_size: int
    vision_depth: int
    vision_num_heads: int
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    merger_init_gain: float = 10.0
    """The vision merger's output layer starts ``merger_init_gain`` times its usual init."""
    image_side: int = 112
    """Images are fed at ``image_side`` squared pixels: (112 / 28)^2 = 16 image tokens."""
    easy_share: float = 0.3
    """The first ``easy_share`` of the steps draw level-1 items only (a curriculum)."""
    word_tokens: bool = True
    """Tokenize with the organisms' word-level vocabulary (:mod:`catts_graph.organism.language`)."""


CONFIGS: dict[str, OrganismConfig] = {
    "base": OrganismConfig(
        name="base",
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        vision_hidden_size=128,
        vision_depth=3,
        vision_num_heads=4,
        steps=5000,
        easy_share=0.15,
    ),
    "expert": OrganismConfig(
        name="expert",
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=576,
        vision_hidden_size=128,
        vision_depth=3,
        vision_num_heads=4,
        steps=10000,
        image_side=168,
        easy_share=0.1,
    ),
}


class _Batches:
    """Training batches from the synthetic train split, in a seeded order."""

    def __init__(self, processor: Any, config: OrganismConfig) -> None:
        self.processor = processor
        self.config = config
        self.index = 0

    def next(self, size: int, *, easy: bool) -> dict[str, Any]:
        """``size`` training examples (level 1 only when ``easy``), with labels on the reply only."""
        from catts_graph.eval.synthetic import make_question

        rows = []
        for _ in range(size):
            question = make_question("train", self.index, seed=self.config.seed, level=1 if easy else None)
            self.index += 1
            options = list(question.options) if question.options else None
            rows.append((organism_prompt(question.question, options), reply_text(question), question.scene))
        return encode_examples(self.processor, rows, self.config.image_side)


def _print(line: str) -> None:
    print(line, flush=True)


def _lr(step: int, total: int, config: OrganismConfig) -> float:
    """Linear warmup, then cosine decay to 10% over the whole run (both phases)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_organism(
    which: str,
    out: str | Path | None = None,
    *,
    steps_scale: float = 1.0,
    minutes: float | None = None,
    threads: int = 2,
    device: str = "cpu",
    validate_every: int = 0,
    validate_items: int = 50,
    state_dir: str | Path | None = None,
    save_every_minutes: float = 10.0,
    stop_after_minutes: float | None = None,
    stop_at_step: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """Train organism model ``which`` from scratch and save it (default: the shipped folder).

    ``validate_every`` > 0 logs the greedy accuracy on the first ``validate_items`` validation items
    every that many steps (and at the end, into ``organism.json``).

    ``steps_scale`` multiplies the configured step count; ``minutes`` (when given) instead sets it
    from the speed of the first 20 steps so that the run takes about that long.
    ``device`` may be a GPU (``cuda``): the checkpoint is saved on CPU either way.

    ``state_dir`` makes the run resumable: every ``save_every_minutes`` the weights, the optimiser,
    the step and the data position are written there (``state.pt``, atomically), and a run started
    on a folder that holds a state continues it, bit for bit, as if never stopped (the data is a
    seeded stream by index and nothing else is random). A state from another configuration is
    refused. ``stop_after_minutes`` ends this invocation (after saving the state) when that much
    wall time has passed, returning ``None``: how a run longer than one working session is split.
    ``stop_at_step`` ends the run at that step of the configured schedule (its learning rate is
    wherever the schedule had it) and saves the checkpoint as if the run had finished, with
    ``stopped_at_step`` in ``organism.json``: a seeded, reproducible model from a run that CPU time
    did not let finish. With ``state_dir``, a later run without it continues to the schedule's end.

    Returns the checkpoint folder, which also holds ``organism.json`` (config, steps, wall time
    summed over invocations, validation accuracy per question kind).
    """
    import torch

    log = log or _print
    config = CONFIGS.get(which)
    if config is None:
        raise ValueError(f"which={which!r}: expected one of {sorted(CONFIGS)}")
    config = replace(config, steps=max(1, round(config.steps * steps_scale)))
    target = Path(out) if out is not None else organism_path(which)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)
    started = time.monotonic()

    model, processor = _initial_model(config)
    batches = _Batches(processor, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, earlier_wall = 0, 0.0
    state_file = Path(state_dir) / "state.pt" if state_dir is not None else None
    if state_file is not None and state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        if state["config"] != asdict(config):
            raise ValueError(
                f"state_dir={str(state_dir)!r} holds a run of another configuration "
                f"({state['config']}); use another folder or delete it"
            )
        model.load_state_dict(state["model"])
        model.to(device)  # first: load_state_dict puts the optimiser's moments on its parameters' device
        optimizer.load_state_dict(state["optimizer"])
        step, batches.index, earlier_wall = state["step"], state["examples"], state["wall_time_s"]
        log(f"{which}: resumed at step {step} ({earlier_wall / 60:.1f} min of earlier training)")
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    log(f"{which}: {params / 1e6:.2f}M parameters, {config}")

    def save_state() -> None:
        if state_file is None:
            return
        state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = state_file.with_suffix(".partial")
        torch.save(
            {
                "config": asdict(config),
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "step": step,
                "examples": batches.index,
                "wall_time_s": earlier_wall + time.monotonic() - started,
            },
            partial,
        )
        partial.replace(state_file)

    model.train()
    steps = config.steps
    if stop_at_step is not None and minutes is not None:
        raise ValueError("stop_at_step and minutes both set the run's end; give one")
    if stop_at_step is not None and not step < stop_at_step <= steps:
        raise ValueError(f"stop_at_step={stop_at_step} must lie after step {step} and at most at {steps}")
    last = stop_at_step if stop_at_step is not None else steps
    window: list[float] = []
    last_save = time.monotonic()
    while step < last:
        easy = step < config.easy_share * steps
        batch = {key: value.to(device) for key, value in batches.next(config.batch_size, easy=easy).items()}
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, config)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        step += 1
        if minutes is not None and step == 20:
            per_step = (time.monotonic() - started) / 20
            steps = max(step, int(minutes * 60 / per_step))
            config = replace(config, steps=steps)
            log(f"{which}: {per_step:.2f} s/step, {steps} steps in {minutes:g} min")
        if step % 50 == 0 or step == last:
            log(
                f"{which} step {step}/{steps} loss {sum(window) / len(window):.4f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{(earlier_wall + time.monotonic() - started) / 60:.1f} min"
            )
            window = []
        if validate_every and step % validate_every == 0:
            log(f"{which} step {step}: validation accuracy {_validate(model, processor, validate_items)}")
            model.train()
        if time.monotonic() - last_save > save_every_minutes * 60:
            save_state()
            last_save = time.monotonic()
        out_of_time = stop_after_minutes is not None and time.monotonic() - started > stop_after_minutes * 60
        if out_of_time and step < last:
            save_state()
            log(f"{which}: stopped at step {step}/{steps}; run again with the same state_dir to resume")
            return None
    save_state()
    wall = earlier_wall + time.monotonic() - started
    model.to("cpu")
    validation = _validate(model, processor, validate_items) if validate_items else {}
    log(f"{which}: validation accuracy {validation}")
    save_checkpoint(
        model,
        processor,
        target,
        {
            "config": asdict(config),
            "examples": batches.index,
            **({"stopped_at_step": step} if step < steps else {}),
            "validation_accuracy": validation,
            "validation_items": validate_items,
            "wall_time_s": round(wall, 1),
            "threads": threads,
            "device": device,
            "torch": torch.__version__,
        },
    )
    log(f"{which}: saved to {target} after {wall / 60:.1f} min")
    return target


def _initial_model(config: OrganismConfig) -> tuple[Any, Any]:
    """The random model and processor of ``config`` (deterministic in its seed)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from catts_graph.models.tiny import build_tiny_qwen25vl
    from catts_graph.organism.language import organism_words

    with tempfile.TemporaryDirectory() as scratch:
        side = config.image_side
        random_dir = build_tiny_qwen25vl(
            Path(scratch) / "init",
            seed=config.seed,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            intermediate_size=config.intermediate_size,
            vision_hidden_size=config.vision_hidden_size,
            vision_depth=config.vision_depth,
            vision_num_heads=config.vision_num_heads,
            min_pixels=side * side,
            max_pixels=side * side,
            image_mean=(1.0, 1.0, 1.0),
            image_std=(0.5, 0.5, 0.5),
            words=organism_words() if config.word_tokens else None,
        )
        model = AutoModelForImageTextToText.from_pretrained(random_dir, dtype=torch.float32)
        with torch.no_grad():
            model.model.visual.merger.mlp[-1].weight.mul_(config.merger_init_gain)
        processor = AutoProcessor.from_pretrained(random_dir)
    return model, processor


def _validate(model: Any, processor: Any, limit: int) -> dict[str, float]:
    """Greedy accuracy per question kind (and ``all``) on the first ``limit`` validation items."""
    from catts_experiments.evaluate import evaluate_organism
    from catts_graph.models import TransformersVLM

    vlm = TransformersVLM(model, processor, answer_prompt=ANSWER_PROMPT)  # puts the model in eval mode
    report = evaluate_organism(vlm, split="validation", limit=limit)
    return {kind: round(row["accuracy"], 3) for kind, row in report.items()}
