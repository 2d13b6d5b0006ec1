"""MMBoundary on TRL: the config file, the four stages and ``catts mmboundary``.

One YAML file (:class:`MMBoundaryConfig`, examples in ``training/configs/mmboundary_*.yaml``) drives
four commands, each writing under the config's ``output_dir``:

1. ``catts mmboundary data``: the base model's own replies to the training items, each step's level
   from a :class:`~catts_graph.step_confidence.StepCalibrator` fitted on validation items, a
   statement of that level after each step (:mod:`catts_training.mmboundary.data`) -> ``data/``;
2. ``catts mmboundary sft``: TRL's ``SFTTrainer`` on those stated replies (conversational
   prompt-completion with images, loss on the completion; LoRA when the config has a ``lora``
   section) -> ``sft/``, a plain checkpoint; for the organisms, first the statements' words as
   tokens (``statements.vocabulary`` -> ``vocabulary/``) and a statement pre-training
   (``statements.pretrain``, :mod:`catts_training.mmboundary.pretrain` -> ``pretrained/``);
3. ``catts mmboundary rl``: TRL's ``GRPOTrainer`` from the SFT model with the rewards of
   :mod:`catts_training.mmboundary.rewards` -> ``rl/``. The paper used PPO with GAE; TRL removed
   ``PPOTrainer`` in 1.13 (and the PPO it had took token ids only, no images, and a reward *model*),
   so GRPO, with each response's per-step rewards averaged;
4. ``catts mmboundary probe``: the figures of :mod:`catts_training.mmboundary.probe` for a model (default:
   the latest stage written) -> ``probe/<name>.json``.

``python -m catts_training.mmboundary.train <stage> --config FILE`` is the same as ``catts mmboundary
<stage> ...``, for ``accelerate launch -m``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from catts_graph.statements import StatementReader
from catts_training.cdrl.data import load_items
from catts_training.cdrl.train import load_processor, save_policy
from catts_training.config import ConfigError, check_model, positive_int
from catts_training.entry import module_main
from catts_training.mmboundary.config import DEFAULT_WEIGHTS, ENCODERS, MMBoundaryConfig, load_config
from catts_training.mmboundary.data import (
    MMBoundaryData,
    assess_replies,
    data_summary,
    fit_calibrator,
    load_data,
    sample_replies,
    save_data,
    stated_examples,
    to_grpo_dataset,
    to_sft_dataset,
)
from catts_training.mmboundary.pretrain import MANIFEST_KEY as PRETRAIN_KEY
from catts_training.mmboundary.pretrain import freeze_parameters, pretrain_statements
from catts_training.mmboundary.reference import make_judge
from catts_training.mmboundary.rewards import REWARD_NAMES, build_rewards, level_confidences

__all__ = [
    "DEFAULT_WEIGHTS",
    "ENCODERS",
    "MMBoundaryConfig",
    "StageResult",
    "add_mmboundary_command",
    "build_data",
    "build_rl_trainer",
    "build_sft_trainer",
    "load_config",
    "run_probe",
    "train_rl",
    "train_sft",
]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "mmboundary_summary.json"


# -- shared parts --------------------------------------------------------------------------------


def _encoder(config: MMBoundaryConfig) -> Any:
    if config.encoder is None:
        return None
    from catts_graph.models.encoders import MiniLMEncoder

    return MiniLMEncoder()


def _judge(config: MMBoundaryConfig, encoder: Any) -> Any:
    return make_judge(config.judge.kind, encoder, config.judge.threshold)


def _reader(config: MMBoundaryConfig, encoder: Any) -> StatementReader:
    return StatementReader(encoder, margin=config.statements.margin)


def _similarity(config: MMBoundaryConfig, encoder: Any) -> Any:
    return encoder.similarity if encoder is not None and "tokensar" in config.signals else None


@dataclasses.dataclass
class StageResult:
    """What a training stage did."""

    stage: str
    output_dir: Path
    seconds: float
    """Wall time of the stage (loading, training, saving)."""
    steps: int
    losses: list[float]
    reward_means: dict[str, float]
    """Each reward's mean over the logged steps (RL), and the weighted total ``reward``."""
    metric_means: dict[str, float]
    """Each logged ``mmboundary/*`` metric's mean over the run (RL)."""
    log_history: list[dict[str, Any]]


def _finish(stage: str, trainer: Any, out: Path, started: float) -> StageResult:
    history = [dict(entry) for entry in trainer.state.log_history]

    def means(keys: Sequence[str], rename: Any) -> dict[str, float]:
        found = {}
        for key in keys:
            values = [e[key] for e in history if key in e and math.isfinite(e[key])]
            if values:
                found[rename(key)] = sum(values) / len(values)
        return found

    result = StageResult(
        stage=stage,
        output_dir=out,
        seconds=time.perf_counter() - started,
        steps=int(trainer.state.global_step),
        losses=[float(e["loss"]) for e in history if "loss" in e],
        reward_means=means(
            [f"rewards/{name}/mean" for name in REWARD_NAMES] + ["reward"],
            lambda k: k.removeprefix("rewards/").removesuffix("/mean"),
        ),
        metric_means=means(sorted({k for e in history for k in e if k.startswith("mmboundary/")}), str),
        log_history=history,
    )
    if trainer.accelerator.is_main_process:
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "log_history"}
        summary["output_dir"] = str(out)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result


# -- stage 1: data -------------------------------------------------------------------------------


def build_data(
    config: MMBoundaryConfig,
    *,
    vlm: Any = None,
    encoder: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> MMBoundaryData:
    """Sample, fit, assess, state and save (see :mod:`catts_training.mmboundary.data`); returns what was
    written to ``config.data_dir``. ``vlm``: the base model (loaded from the config when None);
    ``progress(phase, items done, items)`` after each item of the ``validation`` and ``training``
    phases."""
    started = time.perf_counter()
    if vlm is None:
        from catts_graph.models import TransformersVLM

        vlm = TransformersVLM.from_pretrained(config.model_path(), max_pixels=config.max_pixels)
    encoder = encoder if encoder is not None else _encoder(config)
    judge = _judge(config, encoder)
    sampling = config.sampling.model_dump()
    common = {
        "signals": config.signals,
        "similarity": _similarity(config, encoder),
        "judge": judge,
        "stated_lines": config.statements.lines,
    }
    loaded = time.perf_counter()

    def report(phase: str, total: int) -> Callable[[int], None] | None:
        return None if progress is None else (lambda done: progress(phase, done, total))

    held_out = load_items(**config.validation.load_arguments())
    validation = sample_replies(
        vlm, held_out, **common, **{**sampling, "samples": 1}, progress=report("validation", len(held_out))
    )
    validation_done = time.perf_counter()
    calibrator = fit_calibrator(validation, use_labels=config.use_labels())
    items = load_items(**config.data.load_arguments())
    replies = sample_replies(vlm, items, **common, **sampling, progress=report("training", len(items)))
    assess_replies(replies, calibrator)
    examples = stated_examples(items, replies, seed=sampling["seed"])
    sampled = time.perf_counter()
    summary = data_summary(examples, replies, validation, getattr(vlm, "tokenizer", None))
    summary["calibrator"] = {k: v for k, v in calibrator.to_dict().items() if k != "reference"}
    summary["use_labels"] = config.use_labels()
    summary["seconds"] = {
        "load": loaded - started,
        "validation": validation_done - loaded,
        "training": sampled - validation_done,
        "total": time.perf_counter() - started,
    }
    save_data(config.data_dir, items, examples, calibrator, summary)
    return MMBoundaryData(items=items, examples=examples, calibrator=calibrator, summary=summary)


# -- stage 2: SFT --------------------------------------------------------------------------------


def build_sft_trainer(
    config: MMBoundaryConfig, data: MMBoundaryData, *, model: str | None = None, **overrides: Any
) -> Any:
    """A ready ``trl.SFTTrainer`` on ``data``'s stated replies (``model``: default the config's)."""
    from trl import SFTTrainer

    model_path = model or config.model_path()
    processor = load_processor(model_path, config.max_pixels)
    trainer = SFTTrainer(
        model=model_path,
        args=config.sft_config(**overrides),
        train_dataset=to_sft_dataset(data),
        processing_class=processor,
        peft_config=_peft(config),
    )
    trainer.data_collator = EndOfTurnMasked(trainer.data_collator, end_of_turn_id(processor))
    freeze_parameters(trainer.model, config.freeze)
    return trainer


def end_of_turn_id(processor: Any) -> int:
    """The id of the chat template's end of turn (``<|im_end|>`` for Qwen), else the tokenizer's EOS."""
    tokenizer = getattr(processor, "tokenizer", processor)
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if token_id is None or token_id == tokenizer.unk_token_id:
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("processor: its tokenizer has neither <|im_end|> nor an EOS token")
    return int(token_id)


class EndOfTurnMasked:
    """A collator wrapper that takes out of the loss every label right after an end-of-turn token.

    TRL's conversational prompt-completion renders the completion with the chat template, which ends
    an assistant turn with ``<|im_end|>\n``: the newline after the end of turn is never generated (
    generation stops at ``<|im_end|>``), yet it costs the organism 7.1 nats, one token in ~75, and its
    gradient moves the model for nothing."""

    def __init__(self, collator: Callable[[list[Any]], dict[str, Any]], end_id: int) -> None:
        self.collator = collator
        self.end_id = end_id

    def __call__(self, examples: list[Any]) -> dict[str, Any]:
        batch = self.collator(examples)
        labels = batch["labels"]
        after_end = labels.new_zeros(labels.shape, dtype=bool)
        after_end[:, 1:] = batch["input_ids"][:, :-1] == self.end_id
        batch["labels"] = labels.masked_fill(after_end, -100)
        return batch


def _peft(config: MMBoundaryConfig) -> Any:
    if config.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**{"task_type": "CAUSAL_LM", **config.lora})


def sft_start(
    config: MMBoundaryConfig,
    data: MMBoundaryData,
    *,
    model: str | None = None,
    pretrain_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """The model SFT starts from: the base (``model``: default the config's), copied with the
    statements' words (``statements.vocabulary``, -> ``OUTPUT_DIR/vocabulary``), then continued
    on stated gold replies (``statements.pretrain``, -> ``OUTPUT_DIR/pretrained``;
    ``pretrain_steps`` replaces its ``steps``). Each folder is reused when it holds the same."""
    model_path = model or config.model_path()
    if config.statements.vocabulary:
        from catts_training.mmboundary.vocabulary import extend_vocabulary

        model_path = str(extend_vocabulary(model_path, Path(config.output_dir) / "vocabulary"))
    pretrain = config.statements.pretrain
    if pretrain is not None:
        if pretrain_steps is not None:
            pretrain = pretrain.model_validate({**pretrain.model_dump(), "steps": pretrain_steps})
        model_path = str(
            pretrain_statements(
                model_path,
                Path(config.output_dir) / "pretrained",
                pretrain,
                calibrator=data.calibrator,
                stated_lines=config.statements.lines,
                log=log,
            )
        )
    return model_path


def train_sft(
    config: MMBoundaryConfig, *, model: str | None = None, pretrain_steps: int | None = None, **overrides: Any
) -> StageResult:
    """SFT warm-up on ``config.data_dir`` from :func:`sft_start`; the model goes to ``config.sft_dir``
    (the result's ``seconds``: SFT alone, the pre-training records its own)."""
    data = load_data(config.data_dir)
    model_path = sft_start(config, data, model=model, pretrain_steps=pretrain_steps)
    started = time.perf_counter()
    trainer = build_sft_trainer(config, data, model=model_path, **overrides)
    trainer.train()
    out = save_policy(trainer, config.sft_dir, base_model=model_path, lora=config.lora is not None)
    result = _finish("sft", trainer, out, started)
    del trainer
    _free_memory()
    return result


# -- stage 3: RL ---------------------------------------------------------------------------------


def _policy(config: MMBoundaryConfig, policy: str | None) -> str:
    if policy is not None:
        return policy
    if (config.sft_dir / "config.json").is_file():
        return str(config.sft_dir)
    raise ValueError(
        f"rl: no SFT model at {str(config.sft_dir)!r}; run `catts mmboundary sft` first, or pass --model"
    )


def build_rl_trainer(
    config: MMBoundaryConfig, data: MMBoundaryData, *, policy: str, encoder: Any = None, **overrides: Any
) -> Any:
    """A ready ``trl.GRPOTrainer`` starting from ``policy``, with the rewards of
    :func:`~catts_training.mmboundary.rewards.build_rewards` (its ``scorer`` attribute is their bound
    :class:`~catts_training.cdrl.rewards.PolicyScorer`)."""
    from trl import GRPOTrainer

    from catts_training.cdrl.rewards import PolicyScorer

    args = config.grpo_config(**overrides)
    if args.remove_unused_columns:
        raise ValueError("rl.remove_unused_columns: must stay false; the rewards read the dataset's columns")
    processor = load_processor(policy, config.max_pixels)
    encoder = encoder if encoder is not None else _encoder(config)
    scorer = PolicyScorer(processor, batch_size=config.rewards.score_batch_size)
    rewards = build_rewards(
        judge=_judge(config, encoder),
        reader=_reader(config, encoder),
        calibrator=data.calibrator,
        scorer=scorer,
        level_confidence=config.rewards.level_confidence,
        cover_reference=config.rewards.cover_reference,
        signals=config.signals,
        similarity=_similarity(config, encoder),
        stated_lines=config.statements.lines,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=rewards,
        args=args,
        train_dataset=to_grpo_dataset(data),
        processing_class=processor,
        peft_config=_peft(config),
    )
    freeze_parameters(trainer.model, config.freeze)
    # The trainer may wrap or replace its model (PEFT, DeepSpeed); follow whatever it holds now.
    scorer.bind(lambda: trainer.model)
    trainer.scorer = scorer
    return trainer


def train_rl(config: MMBoundaryConfig, *, policy: str | None = None, **overrides: Any) -> StageResult:
    """RL from ``policy`` (default: the SFT model); the model goes to ``config.rl_dir``."""
    started = time.perf_counter()
    start = _policy(config, policy)
    data = load_data(config.data_dir)
    trainer = build_rl_trainer(config, data, policy=start, **overrides)
    trainer.train()
    out = save_policy(trainer, config.rl_dir, base_model=start, lora=config.lora is not None)
    result = _finish("rl", trainer, out, started)
    del trainer
    _free_memory()
    return result


def _free_memory() -> None:
    """Free a deleted trainer's policy, optimizer state and buffers before anything else loads a model."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- stage 4: probe ------------------------------------------------------------------------------


def _probed_model(config: MMBoundaryConfig, model: str | None) -> tuple[str, str]:
    """The model to probe and its name: ``model``, else the latest stage written, else the base."""
    if model is not None:
        return model, Path(model).name or "model"
    for name, folder in (("rl", config.rl_dir), ("sft", config.sft_dir)):
        if (folder / "config.json").is_file():
            return str(folder), name
    return config.model_path(), "base"


def run_probe(
    config: MMBoundaryConfig, *, model: str | None = None, out: str | Path | None = None, vlm: Any = None
) -> dict[str, Any]:
    """The probe's figures for ``model`` (see :func:`_probed_model`), with the data's calibrator;
    written with the per-step rows to ``out`` (default ``output_dir/probe/<name>.json``)."""
    from catts_training.mmboundary.probe import probe_figures, probe_steps
    from catts_training.mmboundary.rewards import StepReader

    started = time.perf_counter()
    path, name = _probed_model(config, model)
    data = load_data(config.data_dir)
    if vlm is None:
        from catts_graph.models import TransformersVLM

        vlm = TransformersVLM.from_pretrained(path, max_pixels=config.max_pixels)
    encoder = _encoder(config)
    section = config.probe or config.validation
    max_new_tokens = getattr(section, "max_new_tokens", None) or config.sampling.max_new_tokens
    items = load_items(**section.load_arguments())
    rows, answers = probe_steps(
        vlm,
        items,
        steps=StepReader(_reader(config, encoder), stated_lines=config.statements.lines),
        calibrator=data.calibrator,
        judge=_judge(config, encoder),
        signals=config.signals,
        similarity=_similarity(config, encoder),
        max_new_tokens=max_new_tokens,
    )
    confidences = level_confidences(data.calibrator, config.rewards.level_confidence)
    figures = probe_figures(rows, answers, confidences)
    figures["level_confidence"] = [float(c) for c in confidences]
    report = {
        "model": path,
        "name": name,
        "seconds": time.perf_counter() - started,
        "figures": figures,
        "answers": {item.id: bool(correct) for item, correct in zip(items, answers, strict=True)},
        "rows": rows,
    }
    target = Path(out) if out is not None else Path(config.output_dir) / "probe" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["path"] = str(target)
    return report


# -- every stage ---------------------------------------------------------------------------------


def run_all(
    config: MMBoundaryConfig,
    *,
    sft_steps: int | None = None,
    rl_steps: int | None = None,
    pretrain_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Data, SFT (after the statement pre-training when the config has one), RL and the probe of
    the base, the pre-trained, the SFT and the RL model, each stage skipped when ``output_dir``
    already holds its result (so an interrupted run resumes where it stopped): ``{"data": summary,
    "sft" / "rl": {"seconds", "steps", ...}, "probe": {name: figures}}``."""
    results: dict[str, Any] = {}
    if not (config.data_dir / "summary.json").is_file():
        log("mmboundary: data")
        build_data(config)
    results["data"] = json.loads((config.data_dir / "summary.json").read_text())
    probes: dict[str, Any] = {}
    base = Path(config.output_dir) / "probe" / "base.json"
    if not base.is_file():
        log("mmboundary: probe base")
        run_probe(config, model=config.model_path(), out=base)
    probes["base"] = json.loads(base.read_text())["figures"]
    for stage, steps in (("sft", sft_steps), ("rl", rl_steps)):
        record = Path(config.output_dir) / f"{stage}.json"
        if not record.is_file():
            log(f"mmboundary: {stage}")
            overrides = {"max_steps": steps} if steps is not None else {}
            result = (
                train_sft(config, pretrain_steps=pretrain_steps, **overrides)
                if stage == "sft"
                else train_rl(config, **overrides)
            )
            summary = {
                "seconds": round(result.seconds, 1),
                "steps": result.steps,
                "first_loss": result.losses[0] if result.losses else None,
                "last_loss": result.losses[-1] if result.losses else None,
                "reward_means": result.reward_means,
                "metric_means": result.metric_means,
            }
            record.write_text(json.dumps(summary, indent=2) + "\n")
        results[stage] = json.loads(record.read_text())
        pretrained = Path(config.output_dir) / "pretrained" / "organism.json"
        if stage == "sft" and config.statements.pretrain is not None and pretrained.is_file():
            done = json.loads(pretrained.read_text())[PRETRAIN_KEY]
            results["pretrain"] = {
                "steps": done["settings"]["steps"],
                "seconds": done["wall_time_s"],
                "level_counts": done["level_counts"],
            }
        probed = [("sft", config.sft_dir)] if stage == "sft" else [("rl", config.rl_dir)]
        if stage == "sft" and config.statements.pretrain is not None:
            probed.insert(0, ("pretrained", Path(config.output_dir) / "pretrained"))
        for name, model in probed:
            report = Path(config.output_dir) / "probe" / f"{name}.json"
            if not report.is_file():
                log(f"mmboundary: probe {name}")
                run_probe(config, model=str(model), out=report)
            probes[name] = json.loads(report.read_text())["figures"]
    results["probe"] = probes
    (Path(config.output_dir) / "mmboundary.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


# -- command line --------------------------------------------------------------------------------


def add_mmboundary_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``catts mmboundary data | sft | rl | probe --config FILE``."""
    parser = subparsers.add_parser(
        "mmboundary", help="MMBoundary: step-level confidence statements (data, SFT, RL, probe)"
    )
    commands = parser.add_subparsers(dest="mmboundary_command", required=True)
    helps = {
        "data": "the base model's replies with a confidence statement after each step -> OUTPUT_DIR/data",
        "sft": "SFT warm-up on the stated replies (TRL SFTTrainer) -> OUTPUT_DIR/sft",
        "rl": "RL with the MMBoundary rewards (TRL GRPOTrainer) from the SFT model -> OUTPUT_DIR/rl",
        "probe": "step ECE / AUROC of the stated levels, parseable share, level entropy, accuracy",
        "all": "data, SFT (after the statement pre-training, if configured), RL and the probes "
        "(stages already done are skipped) "
        "-> OUTPUT_DIR/mmboundary.json",
    }
    for stage, text in helps.items():
        command = commands.add_parser(stage, help=text)
        command.add_argument(
            "--config", required=True, help="YAML config file (training/configs/mmboundary_*)"
        )
        command.add_argument("--output-dir", help="override the config's output_dir")
        if stage in ("data", "sft", "all"):
            command.add_argument("--model", help="override the config's (base) model")
        elif stage == "rl":
            command.add_argument("--model", help="the policy to start from (default: OUTPUT_DIR/sft)")
        else:
            command.add_argument("--model", help="the model to probe (default: the latest stage written)")
            command.add_argument("--out", help="the report's path (default: OUTPUT_DIR/probe/<name>.json)")
        if stage in ("sft", "rl"):
            command.add_argument(
                "--max-steps", type=positive_int, help="override max_steps of the stage's section"
            )
        if stage == "all":
            command.add_argument(
                "--sft-steps", type=positive_int, help="override max_steps of the sft section"
            )
            command.add_argument(
                "--pretrain-steps", type=positive_int, help="override statements.pretrain.steps"
            )
            command.add_argument("--rl-steps", type=positive_int, help="override max_steps of the rl section")
        command.add_argument(
            "--threads",
            type=positive_int,
            help="CPU threads for torch (default: torch's; 1 is fastest on a busy machine)",
        )
        command.set_defaults(func=_command, stage=stage)
    return parser


def _command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    stage = args.stage
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    base_override = args.model if stage in ("data", "sft", "all") else None
    if args.model is not None and base_override is None:
        try:
            check_model(args.model)
        except ValueError as err:
            raise ConfigError(f"--model: {err}") from None
    config = load_config(args.config, output_dir=args.output_dir, model=base_override)
    overrides = {"max_steps": args.max_steps} if getattr(args, "max_steps", None) is not None else {}
    if stage == "all":
        results = run_all(
            config,
            sft_steps=args.sft_steps,
            rl_steps=args.rl_steps,
            pretrain_steps=args.pretrain_steps,
            log=lambda line: console.print(line),
        )
        for name, figures in results["probe"].items():
            shown = {k: v for k, v in figures.items() if k != "expressed_counts"}
            console.print(
                f"  {name}: "
                + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
            )
        console.print(f"[bold]MMBoundary all[/] -> {Path(config.output_dir) / 'mmboundary.json'}")
        return 0
    if stage == "data":

        def progress(phase: str, done: int, total: int) -> None:
            if done == total or done % max(1, total // 10) == 0:
                console.print(f"  {phase} items: {done}/{total}")

        data = build_data(config, progress=progress)
        summary = data.summary
        console.print(
            f"[bold]MMBoundary data[/] {summary['examples']} stated replies of {summary['items']} items "
            f"in {summary['seconds']['total']:.1f} s -> {config.data_dir}"
        )
        console.print(f"  stated steps {summary['stated_steps']}, levels 1..5: {summary['level_counts']}")
        if "statement_tokens" in summary:
            tokens = summary["statement_tokens"]
            console.print(
                f"  a statement costs {tokens['mean']:.1f} tokens ({tokens['min']:.0f}-{tokens['max']:.0f}); "
                f"a reply {summary.get('reply_tokens', 0):.1f} tokens, "
                f"stated {summary.get('completion_tokens', 0):.1f}"
            )
        return 0
    if stage in ("sft", "rl"):
        result = (
            train_sft(config, **overrides)
            if stage == "sft"
            else train_rl(config, policy=args.model, **overrides)
        )
        console.print(
            f"[bold]MMBoundary {stage}[/] {result.steps} steps in {result.seconds:.1f} s "
            f"-> {result.output_dir}"
        )
        if result.losses:
            console.print(f"  loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g}")
        for key, value in {**result.reward_means, **result.metric_means}.items():
            console.print(f"  mean {key}: {value:.4g}")
        return 0
    report = run_probe(config, model=args.model, out=args.out)
    console.print(f"[bold]MMBoundary probe[/] {report['name']} ({report['model']}) -> {report['path']}")
    for key, value in report["figures"].items():
        console.print(f"  {key}: {value if not isinstance(value, float) else f'{value:.4g}'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m catts_training.mmboundary.train <stage> --config FILE``: the same as ``catts
    mmboundary <stage> ...``, for ``accelerate launch -m``."""
    return module_main(add_mmboundary_command, "mmboundary", argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
