"""CDRL on TRL's GRPOTrainer: the trainer, the run, and ``catts train`` (the config's schema:
:mod:`catts_training.cdrl.config`).

A run, from one YAML file (:class:`~catts_training.cdrl.config.CDRLConfig`, examples in
``training/configs/``):

1. items (:func:`~catts_training.cdrl.data.load_items`) -> original/noised pairs with the CLIP relevance
   map, noised at the model processor's input size (:func:`~catts_training.cdrl.data.build_pairs`), or
   pairs saved earlier by ``catts train pairs``; two prompt rows per pair, so GRPO draws rollouts on
   the original image and on the noised one;
2. the four rewards (:mod:`catts_training.cdrl.rewards`) with their weights as GRPO's ``reward_weights``;
   the confidence rewards score each completion under its own prompt image with the policy being
   trained;
3. :class:`~catts_training.cdrl.trainer.CDRLTrainer`, TRL's ``GRPOTrainer`` with a sampler that keeps
   each pair in one generation batch (full-parameter, or LoRA when the config has a ``lora``
   section), every field of the ``grpo`` section passed to ``GRPOConfig`` unchanged (vLLM,
   DeepSpeed through ``accelerate launch --config_file``, batch sizes, ...); a generation batch
   must hold an even number of prompts, which is checked before the model loads;
4. the final model saved to ``output_dir`` as a plain checkpoint (LoRA merged into the weights), which
   :meth:`catts_graph.models.TransformersVLM.from_pretrained` loads and the graph uses unchanged;
5. optionally, the probe (:func:`catts_graph.eval.probe.probe_model`) on the model before and after,
   written to ``output_dir/probe.json``; and ``output_dir/cdrl_summary.json`` with the wall time,
   each reward's mean over the run and each logged ``cdrl/*`` metric's (``cdrl/confidence_drop``:
   how much less sure the model is of its own answers to the noised images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from catts_graph.models.loading import checkpoint_settings
from catts_graph.relevance import ClipRelevance
from catts_training.cdrl.config import ORGANISM_CLIP, CDRLConfig, RelevanceSection, load_config
from catts_training.cdrl.data import (
    TrainingPair,
    build_pairs,
    load_items,
    load_pairs,
    save_pairs,
    to_grpo_dataset,
)
from catts_training.cdrl.rewards import REWARD_NAMES, PolicyScorer, build_rewards
from catts_training.config import positive_int
from catts_training.entry import module_main
from catts_training.runs import free_memory, logged_means, peft_config

__all__ = [
    "CDRLConfig",
    "CDRLResult",
    "add_cdrl",
    "add_pairs",
    "add_train",
    "build_trainer",
    "export_model",
    "load_config",
    "load_processor",
    "merge_lora",
    "prepare_pairs",
    "probe_before_after",
    "save_policy",
    "train_cdrl",
]

logger = logging.getLogger(__name__)


# -- building -------------------------------------------------------------------------------------


def prepare_pairs(config: CDRLConfig, *, processor: Any = None) -> list[TrainingPair]:
    """The config's training pairs: loaded from ``data.pairs_dir``, or built from its items, noised at
    the size the model's processor resizes each image to (``processor``: the config model's, loaded
    when not given)."""
    data = config.data
    if data.pairs_dir:
        pairs = load_pairs(data.pairs_dir)
        return pairs[: data.limit] if data.limit else pairs
    items = load_items(**data.load_arguments())
    from catts_graph.models.loading import processor_input_size

    if processor is None:
        processor = load_processor(config.model_path(), config.max_pixels)
    return build_pairs(
        items,
        relevance_model(config.relevance),
        config.noise,
        input_size=lambda image: processor_input_size(processor, image),
    )


def relevance_model(section: RelevanceSection) -> ClipRelevance:
    """The relevance model of a config's ``relevance`` section: the CLIP organism for ``{model:
    organism, path: FOLDER?}``, else :meth:`ClipRelevance.from_spec`."""
    if section.model != ORGANISM_CLIP:
        return ClipRelevance.from_spec(section.model_dump(exclude={"path"}))
    from catts_graph.organism.clip import clip_organism

    return clip_organism(section.path, device=section.device)


def load_processor(model_path: str, max_pixels: int | None = None) -> Any:
    """The model's processor, left-padding, its pixels per image capped at ``max_pixels``."""
    from transformers import AutoProcessor

    kwargs: dict[str, Any] = {"padding_side": "left"}
    if max_pixels is not None:
        kwargs["max_pixels"] = int(max_pixels)
    return AutoProcessor.from_pretrained(model_path, **kwargs)


def build_trainer(
    config: CDRLConfig, *, pairs: Sequence[TrainingPair] | None = None, **grpo_overrides: Any
) -> Any:
    """A ready :class:`~catts_training.cdrl.trainer.CDRLTrainer` (its ``scorer`` attribute is the bound
    :class:`PolicyScorer`).

    ``grpo_overrides`` replace fields of the ``grpo`` section (tests use it to run a GPU config on CPU).
    """
    from catts_training.cdrl.trainer import CDRLTrainer

    model_path = config.model_path()
    processor = load_processor(model_path, config.max_pixels)
    dataset = to_grpo_dataset(
        pairs if pairs is not None else prepare_pairs(config, processor=processor),
        answer_prompt=checkpoint_settings(model_path).get("answer_prompt"),
    )
    scorer = PolicyScorer(processor, batch_size=config.rewards.score_batch_size)
    rewards = build_rewards(
        scorer,
        sensitivity_margin=config.rewards.sensitivity_margin,
        calibration_variant=config.rewards.calibration_variant,
    )
    trainer = CDRLTrainer(
        model=model_path,
        reward_funcs=rewards,
        args=config.grpo_config(**grpo_overrides),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config(config.lora),
        confidence_loss=config.confidence_loss,
    )
    # The trainer may wrap or replace its model (PEFT, DeepSpeed); follow whatever it holds now.
    scorer.bind(lambda: trainer.model)
    trainer.scorer = scorer
    return trainer


def export_model(trainer: Any, config: CDRLConfig, output_dir: str | Path) -> Path:
    """Save the trained policy to ``output_dir`` as a plain checkpoint with its processor
    (:func:`save_policy` of the config's model, LoRA when the config has a ``lora`` section)."""
    return save_policy(trainer, output_dir, base_model=config.model_path(), lora=config.lora is not None)


def save_policy(trainer: Any, output_dir: str | Path, *, base_model: str, lora: bool) -> Path:
    """Save a TRL trainer's policy to ``output_dir`` as a plain checkpoint with its processor.

    Full-parameter: ``trainer.save_model`` (gathers ZeRO-3 shards). LoRA: the adapter goes to
    ``output_dir/adapter`` and, on the main process, :func:`merge_lora` merges it into a fresh copy of
    ``base_model`` (the model training started from), so the result loads without peft. Under ZeRO-3
    the merge is left to a separate ``merge_lora`` call (loading a model on one process there would
    wait for the others forever). The base model's ``catts.json`` (the prompt it answers under)
    travels with it.
    """
    out = Path(output_dir)
    accelerator = trainer.accelerator
    if not lora:
        trainer.save_model(str(out))
    else:
        trainer.save_model(str(out / "adapter"))
        accelerator.wait_for_everyone()
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.zero_stage == 3:
            if accelerator.is_main_process:
                logger.warning(
                    "LoRA under ZeRO-3: adapter saved to %s; merge it with "
                    "catts_training.cdrl.train.merge_lora(%r, %r, %r)",
                    out / "adapter",
                    base_model,
                    str(out / "adapter"),
                    str(out),
                )
        elif accelerator.is_main_process:
            dtype = (trainer.args.model_init_kwargs or {}).get("dtype", "auto")
            merge_lora(base_model, out / "adapter", out, dtype=dtype)
    if accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(out))
        # The prompt the model answers under travels with it (see TransformersVLM).
        settings = Path(base_model) / "catts.json"
        if settings.is_file():
            shutil.copyfile(settings, out / "catts.json")
    accelerator.wait_for_everyone()
    return out


def merge_lora(
    base_model: str | Path, adapter_dir: str | Path, output_dir: str | Path, *, dtype: Any = "auto"
) -> Path:
    """Merge a LoRA adapter into its base model and save a plain checkpoint (with the processor)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = AutoModelForImageTextToText.from_pretrained(str(base_model), dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(output_dir))
    AutoProcessor.from_pretrained(str(base_model)).save_pretrained(str(output_dir))
    return Path(output_dir)


# -- the before / after check ----------------------------------------------------------------------


def probe_before_after(
    before: str | Path, after: str | Path, items: Sequence[Any], settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`catts_graph.eval.probe.probe_model` on two checkpoints over the same items.

    Returns ``{"before": rows, "after": rows, "delta": ...}`` where rows are the probe summary rows
    as dicts, and ``delta[kind][level]`` holds the change after - before of the accuracy, of the
    drop of ``exp(-NMLP)`` against clean and of the drop in NMLP units (CDRL should make the drops
    more negative).
    """
    from catts_graph.eval.probe import probe_model
    from catts_graph.models import TransformersVLM

    options = dict(settings or {})
    kwargs = {
        "perturbs": options.get("perturbs", ("gaussian", "occlusion")),
        "levels": options.get("levels", (0.0, 0.5, 1.0)),
        "seed": int(options.get("seed", 0)),
        "max_new_tokens": int(options.get("max_new_tokens", 64)),
    }
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, path in (("before", before), ("after", after)):
        vlm = TransformersVLM.from_pretrained(str(path))
        rows[name] = [dataclasses.asdict(r) for r in probe_model(vlm, list(items), **kwargs)]
        del vlm
    delta: dict[str, dict[str, dict[str, float]]] = {}
    for old, new in zip(rows["before"], rows["after"], strict=True):
        delta.setdefault(old["perturb"], {})[str(old["level"])] = {
            key: new[key] - old[key] for key in ("accuracy", "confidence_drop", "confidence_drop_nmlp")
        }
    return {**rows, "delta": delta}


# -- the run --------------------------------------------------------------------------------------


@dataclasses.dataclass
class CDRLResult:
    """What :func:`train_cdrl` did."""

    output_dir: Path
    seconds: float
    """Wall time of the whole run (data, training, export; the probe excluded)."""
    steps: int
    reward_means: dict[str, float]
    """Each reward's mean over the run's logged steps (``rewards/<name>/mean``), and the weighted total."""
    metric_means: dict[str, float]
    """Each ``cdrl/*`` metric the rewards log, its mean over the run's logged steps (e.g.
    ``cdrl/confidence_drop``, ``cdrl/pairs_across_processes``)."""
    losses: list[float]
    log_history: list[dict[str, Any]]
    probe: dict[str, Any] | None = None


def train_cdrl(config: CDRLConfig, **grpo_overrides: Any) -> CDRLResult:
    """Run CDRL as configured: pairs, GRPO, export, summary (and probe). See the module docstring."""
    start = time.perf_counter()
    pairs = prepare_pairs(config)
    trainer = build_trainer(config, pairs=pairs, **grpo_overrides)
    trainer.train()
    out = export_model(trainer, config, config.output_dir)
    seconds = time.perf_counter() - start
    history = [dict(entry) for entry in trainer.state.log_history]
    means, metrics = logged_means(history, REWARD_NAMES, "cdrl/")
    losses = [float(e["loss"]) for e in history if "loss" in e]
    result = CDRLResult(
        output_dir=out,
        seconds=seconds,
        steps=int(trainer.state.global_step),
        reward_means=means,
        metric_means=metrics,
        losses=losses,
        log_history=history,
    )
    main_process = trainer.accelerator.is_main_process
    del trainer  # frees the policy, its optimizer state and the rollout buffers before the probe loads models
    free_memory()
    if main_process:
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("log_history", "probe")}
        summary["output_dir"] = str(out)
        (out / "cdrl_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if config.probe is not None:
            result.probe = probe_before_after(
                config.model_path(),
                out,
                [pair.item for pair in pairs[: config.probe.items]],
                config.probe.model_dump(),
            )
            (out / "probe.json").write_text(json.dumps(result.probe, indent=2) + "\n")
    return result


# -- command line ---------------------------------------------------------------------------------


def add_cdrl(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``catts train cdrl --config FILE``."""
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--model", help="override the config's model")
    parser.add_argument("--max-steps", type=positive_int, help="override grpo.max_steps")
    parser.set_defaults(func=_train_command)


def add_pairs(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``catts train pairs --config FILE --out DIR``."""
    parser.add_argument("--config", required=True, help="YAML config file (its data, relevance, noise)")
    parser.add_argument("--out", required=True, help="folder for pairs.jsonl, images/ and contact_sheet.png")
    parser.add_argument("--sheet-items", type=positive_int, default=8, help="items on the contact sheet")
    parser.set_defaults(func=_pairs_command)


def add_train(parser: argparse.ArgumentParser) -> None:
    """``cdrl`` and ``pairs`` as sub-commands of ``parser``: what ``python -m
    catts_training.cdrl.train`` takes (the commands of ``catts train`` that live here)."""
    commands = parser.add_subparsers(dest="train_command", required=True)
    add_cdrl(commands.add_parser("cdrl", help="run CDRL from a YAML config (see training/configs/)"))
    add_pairs(commands.add_parser("pairs", help="build the original/noised pairs and a contact sheet"))


def _train_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    config = load_config(args.config, output_dir=args.output_dir, model=args.model)
    overrides = {"max_steps": args.max_steps} if args.max_steps is not None else {}
    result = train_cdrl(config, **overrides)
    console.print(f"[bold]CDRL[/] {result.steps} steps in {result.seconds:.1f} s -> {result.output_dir}")
    for name, value in {**result.reward_means, **result.metric_means}.items():
        console.print(f"  mean {name}: {value:.4g}")
    return 0


def _pairs_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    config = load_config(args.config)
    if config.data.pairs_dir:
        raise ValueError(
            "data.pairs_dir: this config reads saved pairs; give it data.source / data.benchmark"
        )
    pairs = prepare_pairs(config)
    path = save_pairs(pairs, args.out, sheet_items=args.sheet_items)
    Console().print(f"{len(pairs)} pairs -> {path} (contact sheet: {Path(args.out) / 'contact_sheet.png'})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m catts_training.cdrl.train cdrl --config FILE`` (or ``pairs ...``): the same as
    ``catts train ...``, for ``accelerate launch -m``."""
    return module_main(add_train, "catts train", argv)


if __name__ == "__main__":
    sys.exit(main())
