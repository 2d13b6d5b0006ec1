"""MMBoundary on TRL: ``catts mmboundary``, the entry point of the four stages.

One YAML file (:class:`~catts_training.mmboundary.config.MMBoundaryConfig`, examples in
``training/configs/mmboundary_*.yaml``) drives four commands, each writing under the config's
``output_dir``; each stage is a module of its own, as TRL keeps a trainer's config, trainer and
script apart:

1. ``catts mmboundary data`` (:mod:`~catts_training.mmboundary.build`): the base model's own replies
   to the training items, each step's level from a
   :class:`~catts_graph.step_confidence.StepCalibrator` fitted on validation items, a statement of
   that level after each step (:mod:`catts_training.mmboundary.data`) -> ``data/``;
2. ``catts mmboundary sft`` (:mod:`~catts_training.mmboundary.sft`): TRL's ``SFTTrainer`` on those
   stated replies -> ``sft/``, a plain checkpoint; for the organisms, first the statements' words as
   tokens (``statements.vocabulary`` -> ``vocabulary/``) and a statement pre-training
   (``statements.pretrain``, :mod:`catts_training.mmboundary.pretrain` -> ``pretrained/``);
3. ``catts mmboundary rl`` (:mod:`~catts_training.mmboundary.rl`): TRL's ``GRPOTrainer`` from the SFT
   model with the rewards of :mod:`catts_training.mmboundary.rewards` -> ``rl/``;
4. ``catts mmboundary probe`` (:mod:`~catts_training.mmboundary.run`): the figures of
   :mod:`catts_training.mmboundary.probe` for a model (default: the latest stage written) ->
   ``probe/<name>.json``; ``catts mmboundary all`` runs every stage in order, resumably.

``python -m catts_training.mmboundary.train <stage> --config FILE`` is the same as ``catts mmboundary
<stage> ...``, for ``accelerate launch -m``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from catts_training.config import ConfigError, check_model, positive_int
from catts_training.entry import module_main
from catts_training.mmboundary.build import build_data
from catts_training.mmboundary.config import DEFAULT_WEIGHTS, ENCODERS, MMBoundaryConfig, load_config
from catts_training.mmboundary.rl import build_rl_trainer, train_rl
from catts_training.mmboundary.run import run_all, run_probe
from catts_training.mmboundary.sft import build_sft_trainer, train_sft
from catts_training.mmboundary.stage import StageResult

__all__ = [
    "DEFAULT_WEIGHTS",
    "ENCODERS",
    "MMBoundaryConfig",
    "StageResult",
    "add_mmboundary",
    "build_data",
    "build_rl_trainer",
    "build_sft_trainer",
    "load_config",
    "main",
    "run_all",
    "run_probe",
    "train_rl",
    "train_sft",
]


def add_mmboundary(parser: argparse.ArgumentParser) -> None:
    """The stages of ``catts train mmboundary data | sft | rl | probe | all --config FILE``."""
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
    """``python -m catts_training.mmboundary.train <stage> --config FILE``: the same as ``catts train
    mmboundary <stage> ...``, for ``accelerate launch -m``."""
    return module_main(add_mmboundary, "catts train mmboundary", argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
