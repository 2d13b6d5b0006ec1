"""``catts organism train | eval | reproduce``: the model organism on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from catts_graph.eval.synthetic import HARD_LEVEL, LEVELS
from catts_graph.organism import policy_options
from catts_graph.organism.clip import load_clip_organism
from catts_graph.organism.reproduce import Plan, reproduce
from catts_graph.organism.train import CONFIGS, SHIPPED, organism_path, train_organism


def add_organism_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``catts organism train | eval``."""
    parser = subparsers.add_parser("organism", help="train or evaluate the organism models")
    commands = parser.add_subparsers(dest="organism_command", required=True)

    train = commands.add_parser("train", help="train an organism model from scratch (CPU, seeded)")
    train.add_argument("--which", choices=sorted(CONFIGS), default="base")
    train.add_argument("--out", help="checkpoint folder (default: the shipped one, replaced)")
    train.add_argument(
        "--minutes", type=float, help="fit the step counts to this wall-clock budget (not bit-reproducible)"
    )
    train.add_argument("--steps-scale", type=float, default=1.0, help="multiply the configured steps")
    train.add_argument("--threads", type=int, default=2, help="CPU threads")
    train.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    train.add_argument(
        "--validate-every", type=int, default=0, help="log validation accuracy every this many steps"
    )
    train.add_argument(
        "--state-dir",
        help="resumable run: save the training state here every --save-every minutes, and continue "
        "from it when it exists",
    )
    train.add_argument("--save-every", type=float, default=10.0, help="minutes between saved states")
    train.add_argument(
        "--stop-after", type=float, help="minutes: save the state and stop (resume later with --state-dir)"
    )
    train.add_argument(
        "--stop-at-step",
        type=int,
        help="end the run at this step of its schedule and save the checkpoint (resumable to the end)",
    )
    train.set_defaults(func=_train_command)

    evaluate = commands.add_parser("eval", help="accuracy and confidence per question kind")
    evaluate.add_argument("--which", choices=SHIPPED, default="base")
    evaluate.add_argument("--model", help="checkpoint folder (default: the shipped one)")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.add_argument("--limit", type=int, default=250)
    evaluate.add_argument("--noise", type=float, default=0.0, help="Gaussian noise strength in [0, 1]")
    evaluate.add_argument(
        "--seed", type=int, default=0, help="the generator's seed (other than 0: fresh scenes of every split)"
    )
    evaluate.add_argument(
        "--level", type=int, choices=LEVELS, help="every question at this generator level (default: the mix)"
    )
    evaluate.add_argument("--threads", type=int, default=2, help="CPU threads")
    evaluate.set_defaults(func=_eval_command)

    level = commands.add_parser(
        "level",
        help="base and expert greedy accuracy at one generator level, per kind with intervals, on "
        "validation, test and a fresh seed",
    )
    level.add_argument("--level", type=int, choices=LEVELS, default=HARD_LEVEL)
    level.add_argument("--items", type=int, default=200, help="items per set")
    level.add_argument("--out", help="write <out>.json and <out>.md")
    level.add_argument("--threads", type=int, default=1, help="CPU threads")
    level.set_defaults(func=_level_command)

    clip = commands.add_parser("train-clip", help="train the CLIP organism (relevance maps) from scratch")
    clip.add_argument("--out", help="checkpoint folder (default: the shipped one, replaced)")
    clip.add_argument("--threads", type=int, default=2, help="CPU threads")
    clip.set_defaults(func=_train_clip_command)

    tune = commands.add_parser(
        "tune", help="choose DeepConf's window and check nmlp_floor on validation, report on test"
    )
    steps = commands.add_parser(
        "steps", help="step-level calibration (MMBoundary's signals) against step truth"
    )
    for sub in (tune, steps):
        sub.add_argument("--which", choices=sorted(CONFIGS), default="base")
        sub.add_argument("--model", help="checkpoint folder (default: the shipped one)")
        sub.add_argument("--validation", type=int, default=100, help="validation items")
        sub.add_argument("--test", type=int, default=100, help="test items")
        sub.add_argument("--out", help="write <out>.json and <out>.md")
        sub.add_argument("--threads", type=int, default=1, help="CPU threads")
    tune.add_argument("--n", type=int, default=16, help="samples per item")
    tune.set_defaults(func=_tune_command)
    steps.add_argument("--no-tokensar", action="store_true", help="skip TokenSAR (no sentence encoder)")
    steps.set_defaults(func=_steps_command)

    tune_cdrl = commands.add_parser(
        "tune-cdrl",
        help="train each CDRL variant (reward-only, confidence terms, perturbation mix), probe it against "
        "the base; choose on validation, measure on test or a fresh seed with the same checkpoints",
    )
    tune_cdrl.add_argument("--out", default="runs/organism-cdrl-tuning", help="run folder (resumed)")
    tune_cdrl.add_argument("--items", type=int, default=200, help="scenes probed")
    tune_cdrl.add_argument(
        "--split", choices=("validation", "test"), default="validation", help="split of the probed scenes"
    )
    tune_cdrl.add_argument("--seed", type=int, default=0, help="generator seed of the probed scenes")
    tune_cdrl.add_argument(
        "--variants",
        help="comma-separated variants (default: all of catts_graph.organism.tune.CDRL_VARIANTS)",
    )
    tune_cdrl.add_argument("--steps", type=int, help="GRPO steps per run (default: the config's)")
    tune_cdrl.add_argument("--threads", type=int, default=2, help="CPU threads")
    tune_cdrl.set_defaults(func=_tune_cdrl_command)

    ship = commands.add_parser(
        "ship-cdrl", help="copy a tune-cdrl variant's checkpoint to the shipped base-cdrl organism"
    )
    ship.add_argument("--out", default="runs/organism-cdrl-tuning", help="the tune-cdrl run folder")
    ship.add_argument("--variant", required=True, help="the variant to ship (the one validation chose)")
    ship.add_argument("--target", help="checkpoint folder (default: the shipped base-cdrl, replaced)")
    ship.set_defaults(func=_ship_cdrl_command)

    reflect = commands.add_parser(
        "train-reflection",
        help="fine-tune the base organism to answer again after a critique naming its wrong step",
    )
    reflect.add_argument("--model", help="the organism to fine-tune (default: the shipped base)")
    reflect.add_argument("--out", required=True, help="checkpoint folder to write")
    reflect.add_argument("--steps", type=int, default=800, help="optimiser steps")
    reflect.add_argument("--pool-items", type=int, default=1500, help="fresh scenes of the own-error pool")
    reflect.add_argument("--threads", type=int, default=2, help="CPU threads")
    reflect.set_defaults(func=_train_reflection_command)

    effect = commands.add_parser(
        "reflection", help="what the base's reflection on the expert organism's critique adds"
    )
    effect.add_argument("--model", help="the reflection-trained base (default: the shipped base)")
    effect.add_argument("--split", default="test", choices=["validation", "test"])
    effect.add_argument("--limit", type=int, default=500)
    effect.add_argument("--out", help="write <out>.json")
    effect.add_argument("--threads", type=int, default=2, help="CPU threads")
    effect.set_defaults(func=_reflection_command)

    add_reproduce_command(commands)
    policy_options.add_command(commands)
    return parser


def _train_reflection_command(args: argparse.Namespace) -> int:
    from catts_graph.organism.reflection import ReflectionConfig, train_reflection

    config = ReflectionConfig(steps=args.steps, pool_items=args.pool_items)
    train_reflection(args.model or organism_path("base"), args.out, config, threads=args.threads)
    return 0


def _reflection_command(args: argparse.Namespace) -> int:
    import json

    import torch

    from catts_graph.models import TransformersVLM
    from catts_graph.organism.reflection import reflection_effect

    torch.set_num_threads(args.threads)
    base = TransformersVLM.from_pretrained(Path(args.model) if args.model else organism_path("base"))
    expert = TransformersVLM.from_pretrained(organism_path("expert"))
    result = reflection_effect(base, expert, split=args.split, limit=args.limit, log=print)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _tune_cdrl_command(args: argparse.Namespace) -> int:
    import torch

    from catts_graph.organism.tune import tune_cdrl

    torch.set_num_threads(args.threads)
    from catts_graph.organism.tune import CDRL_VARIANTS

    variants = (
        [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else list(CDRL_VARIANTS)
    )
    result = tune_cdrl(
        args.out, variants=variants, items=args.items, split=args.split, seed=args.seed, steps=args.steps
    )
    print((Path(args.out) / f"tuning-{args.split}-seed{args.seed}.md").read_text())
    return 0 if result["chosen"] is not None else 1


def _ship_cdrl_command(args: argparse.Namespace) -> int:
    from catts_graph.organism.tune import ship_cdrl

    print(f"shipped {args.variant} -> {ship_cdrl(args.out, args.variant, args.target)}")
    return 0


def _measured_model(args: argparse.Namespace) -> Any:
    import torch

    from catts_graph.models import TransformersVLM

    torch.set_num_threads(args.threads)
    return TransformersVLM.from_pretrained(Path(args.model) if args.model else organism_path(args.which))


def _write(out: str | None, result: dict[str, Any], table: str) -> None:
    import json

    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        Path(f"{out}.md").write_text(table + "\n")


def _tune_command(args: argparse.Namespace) -> int:
    from catts_graph.organism.tune import tune_voting, voting_table

    result = tune_voting(_measured_model(args), validation=args.validation, test=args.test, n=args.n)
    _write(args.out, result, voting_table(result))
    return 0


def _steps_command(args: argparse.Namespace) -> int:
    from catts_graph.organism.steps import measure_step_calibration, step_table

    similarity = None
    if not args.no_tokensar:
        from catts_graph.models.encoders import MiniLMEncoder

        similarity = MiniLMEncoder().similarity
    result = measure_step_calibration(
        _measured_model(args), validation=args.validation, test=args.test, similarity=similarity
    )
    _write(args.out, result, step_table(result))
    return 0


def _train_clip_command(args: argparse.Namespace) -> int:
    from catts_graph.organism.clip import relevance_lift, train_clip_organism
    from catts_graph.relevance import ClipRelevance

    path = train_clip_organism(args.out, threads=args.threads)
    model, tokenizer = load_clip_organism(path)
    print(f"relevance on the named object (test split): {relevance_lift(ClipRelevance(model, tokenizer))}")
    return 0


def _train_command(args: argparse.Namespace) -> int:
    if args.steps_scale <= 0:
        raise ValueError(f"--steps-scale must be positive, got {args.steps_scale}")
    if args.minutes is not None and args.state_dir is not None:
        raise ValueError(
            "--minutes fits the step count to one invocation's speed: it cannot resume; use --steps-scale"
        )
    train_organism(
        args.which,
        args.out,
        steps_scale=args.steps_scale,
        minutes=args.minutes,
        threads=args.threads,
        device=args.device,
        validate_every=args.validate_every,
        state_dir=args.state_dir,
        save_every_minutes=args.save_every,
        stop_after_minutes=args.stop_after,
        stop_at_step=args.stop_at_step,
    )
    return 0


def _eval_command(args: argparse.Namespace) -> int:
    import torch

    from catts_graph.organism.evaluate import evaluate_organism, format_report

    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else organism_path(args.which)
    report = evaluate_organism(
        model, split=args.split, limit=args.limit, noise=args.noise, seed=args.seed, level=args.level
    )
    print(format_report(report))
    return 0


def _level_command(args: argparse.Namespace) -> int:
    import torch

    from catts_graph.organism.evaluate import level_accuracy, level_table

    torch.set_num_threads(args.threads)
    models = {which: organism_path(which) for which in ("base", "expert")}
    result = level_accuracy(models, level=args.level, items=args.items, log=print)
    _write(args.out, result, level_table(result))
    return 0


def add_reproduce_command(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "reproduce", help="regenerate every number and figure of docs/organism.md (CPU, < 1 hour)"
    )
    parser.add_argument("--out", default="runs/organism", help="run folder (resumed when it exists)")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run of every step")
    parser.set_defaults(func=_reproduce_command)
    cdrl = commands.add_parser(
        "cdrl", help="CDRL on the base organism alone: the probe before and after, drop ratios, calibration"
    )
    cdrl.add_argument("--out", default="runs/organism-cdrl", help="run folder (resumed when it exists)")
    cdrl.add_argument("--items", type=int, default=100, help="test items probed")
    cdrl.add_argument("--perturb", default="gaussian,occlusion", help="comma-separated perturbations")
    cdrl.add_argument("--threads", type=int, default=1, help="CPU threads")
    cdrl.set_defaults(func=_cdrl_command)
    return parser


def _cdrl_command(args: argparse.Namespace) -> int:
    import torch

    from catts_graph.organism.reproduce import Plan, cdrl_effect

    torch.set_num_threads(args.threads)
    plan = Plan(probe_items=args.items, perturbs=tuple(args.perturb.split(",")))
    cdrl_effect(args.out, plan)
    return 0


def _reproduce_command(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(2)
    reproduce(args.out, Plan.quick() if args.quick else Plan())
    return 0
