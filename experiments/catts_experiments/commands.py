"""The organism's commands: ``catts train organism | clip | reflection``, ``catts measure organism |
level | steps | reflection | cdrl``, ``catts tune voting | cdrl``, ``catts ship cdrl`` and ``catts
reproduce``.

Each ``add_*`` function adds one command's arguments to the parser
:mod:`catts_graph.commands.registry` made for it, and its ``func``. A command's flags are named for
the keyword arguments of the function it runs (``--save-every`` fills ``save_every_minutes``), so the
command passes the parsed namespace on whole (:func:`keywords_of`), not argument by argument.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catts_graph.eval.synthetic import HARD_LEVEL, LEVELS
from catts_graph.organism import SHIPPED, organism_path

TRAINED = ("base", "expert")
"""The organisms ``catts train organism`` builds from scratch (the CDRL one comes from ``tune cdrl``)."""


def keywords_of(function: Callable[..., Any], args: argparse.Namespace) -> dict[str, Any]:
    """The entries of ``args`` that ``function`` takes as keyword arguments."""
    accepted = inspect.signature(function).parameters
    return {name: value for name, value in vars(args).items() if name in accepted}


def _threads(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--threads", type=int, default=default, help="CPU threads")


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)


def _write(out: str | None, result: dict[str, Any], table: str) -> None:
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        Path(f"{out}.md").write_text(table + "\n")


# -- train ----------------------------------------------------------------------------------------


def add_train_organism(parser: argparse.ArgumentParser) -> None:
    """``catts train organism``: :func:`~catts_experiments.train.train_organism`."""
    parser.add_argument("--which", choices=TRAINED, default="base")
    parser.add_argument("--out", help="checkpoint folder (default: the shipped one, replaced)")
    parser.add_argument(
        "--minutes", type=float, help="fit the step counts to this wall-clock budget (not bit-reproducible)"
    )
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply the configured steps")
    _threads(parser, 2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument(
        "--validate-every", type=int, default=0, help="log validation accuracy every this many steps"
    )
    parser.add_argument(
        "--state-dir",
        help="resumable run: save the training state here every --save-every minutes, and continue "
        "from it when it exists",
    )
    parser.add_argument(
        "--save-every",
        dest="save_every_minutes",
        type=float,
        default=10.0,
        help="minutes between saved states",
    )
    parser.add_argument(
        "--stop-after",
        dest="stop_after_minutes",
        type=float,
        help="minutes: save the state and stop (resume later with --state-dir)",
    )
    parser.add_argument(
        "--stop-at-step",
        type=int,
        help="end the run at this step of its schedule and save the checkpoint (resumable to the end)",
    )
    parser.set_defaults(func=_train_organism)


def _train_organism(args: argparse.Namespace) -> int:
    from catts_experiments.train import train_organism

    if args.steps_scale <= 0:
        raise ValueError(f"--steps-scale must be positive, got {args.steps_scale}")
    if args.minutes is not None and args.state_dir is not None:
        raise ValueError(
            "--minutes fits the step count to one invocation's speed: it cannot resume; use --steps-scale"
        )
    train_organism(**keywords_of(train_organism, args))
    return 0


def add_train_clip(parser: argparse.ArgumentParser) -> None:
    """``catts train clip``: :func:`~catts_experiments.clip.train_clip_organism`."""
    parser.add_argument("--out", help="checkpoint folder (default: the shipped one, replaced)")
    _threads(parser, 2)
    parser.set_defaults(func=_train_clip)


def _train_clip(args: argparse.Namespace) -> int:
    from catts_experiments.clip import relevance_lift, train_clip_organism
    from catts_graph.organism.clip import clip_organism

    path = train_clip_organism(**keywords_of(train_clip_organism, args))
    print(f"relevance on the named object (test split): {relevance_lift(clip_organism(path))}")
    return 0


def add_train_reflection(parser: argparse.ArgumentParser) -> None:
    """``catts train reflection``: :func:`~catts_experiments.reflection.train_reflection`."""
    parser.add_argument("--model", help="the organism to fine-tune (default: the shipped base)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps")
    parser.add_argument("--pool-items", type=int, default=1500, help="fresh scenes of the own-error pool")
    _threads(parser, 2)
    parser.set_defaults(func=_train_reflection)


def _train_reflection(args: argparse.Namespace) -> int:
    from catts_experiments.reflection import ReflectionConfig, train_reflection

    config = ReflectionConfig(**keywords_of(ReflectionConfig, args))
    train_reflection(args.model or organism_path("base"), args.out, config, threads=args.threads)
    return 0


# -- measure --------------------------------------------------------------------------------------


def _measured(args: argparse.Namespace) -> Any:
    """The organism ``--model`` names (default: the shipped ``--which``), on ``--threads`` threads."""
    from catts_graph.models import TransformersVLM

    _set_threads(args)
    return TransformersVLM.from_pretrained(
        Path(args.checkpoint) if args.checkpoint else organism_path(args.which)
    )


def add_measure_organism(parser: argparse.ArgumentParser) -> None:
    """``catts measure organism``: :func:`~catts_experiments.evaluate.evaluate_organism`."""
    parser.add_argument("--which", choices=SHIPPED, default="base")
    parser.add_argument("--model", dest="checkpoint", help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--limit", type=int, default=250)
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise strength in [0, 1]")
    parser.add_argument(
        "--seed", type=int, default=0, help="the generator's seed (other than 0: fresh scenes of every split)"
    )
    parser.add_argument(
        "--level", type=int, choices=LEVELS, help="every question at this generator level (default: the mix)"
    )
    _threads(parser, 2)
    parser.set_defaults(func=_measure_organism)


def _measure_organism(args: argparse.Namespace) -> int:
    from catts_experiments.evaluate import evaluate_organism, format_report

    report = evaluate_organism(_measured(args), **keywords_of(evaluate_organism, args))
    print(format_report(report))
    return 0


def add_measure_level(parser: argparse.ArgumentParser) -> None:
    """``catts measure level``: :func:`~catts_experiments.evaluate.level_accuracy`."""
    parser.add_argument("--level", type=int, choices=LEVELS, default=HARD_LEVEL)
    parser.add_argument("--items", type=int, default=200, help="items per set")
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    _threads(parser, 1)
    parser.set_defaults(func=_measure_level)


def _measure_level(args: argparse.Namespace) -> int:
    from catts_experiments.evaluate import level_accuracy, level_table

    _set_threads(args)
    models = {which: organism_path(which) for which in TRAINED}
    result = level_accuracy(models, **keywords_of(level_accuracy, args), log=print)
    _write(args.out, result, level_table(result))
    return 0


def _validation_and_test(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--which", choices=SHIPPED, default="base")
    parser.add_argument("--model", dest="checkpoint", help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--validation", type=int, default=100, help="validation items")
    parser.add_argument("--test", type=int, default=100, help="test items")
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    _threads(parser, 1)


def add_measure_steps(parser: argparse.ArgumentParser) -> None:
    """``catts measure steps``: :func:`~catts_experiments.step_calibration.measure_step_calibration`."""
    _validation_and_test(parser)
    parser.add_argument(
        "--level", type=int, choices=LEVELS, help="every question at this generator level (default: the mix)"
    )
    parser.add_argument("--no-tokensar", action="store_true", help="skip TokenSAR (no sentence encoder)")
    parser.set_defaults(func=_measure_steps)


def _measure_steps(args: argparse.Namespace) -> int:
    from catts_experiments.step_calibration import measure_step_calibration, step_table

    similarity = None
    if not args.no_tokensar:
        from catts_graph.models.encoders import MiniLMEncoder

        similarity = MiniLMEncoder().similarity
    result = measure_step_calibration(
        _measured(args), **keywords_of(measure_step_calibration, args), similarity=similarity
    )
    _write(args.out, result, step_table(result))
    return 0


def add_measure_reflection(parser: argparse.ArgumentParser) -> None:
    """``catts measure reflection``: :func:`~catts_experiments.reflection.reflection_effect`."""
    parser.add_argument(
        "--model", dest="checkpoint", help="the reflection-trained base (default: the shipped base)"
    )
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument(
        "--level", type=int, choices=LEVELS, help="every question at this generator level (default: the mix)"
    )
    parser.add_argument("--out", help="write <out>.json")
    _threads(parser, 2)
    parser.set_defaults(func=_measure_reflection, which="base")


def _measure_reflection(args: argparse.Namespace) -> int:
    from catts_experiments.reflection import reflection_effect
    from catts_graph.models import TransformersVLM

    base = _measured(args)
    expert = TransformersVLM.from_pretrained(organism_path("expert"))
    result = reflection_effect(base, expert, **keywords_of(reflection_effect, args), log=print)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def add_measure_cdrl(parser: argparse.ArgumentParser) -> None:
    """``catts measure cdrl``: :func:`~catts_experiments.reproduce.cdrl_effect`."""
    parser.add_argument("--out", default="runs/organism-cdrl", help="run folder (resumed when it exists)")
    parser.add_argument("--items", type=int, default=100, help="test items probed")
    parser.add_argument("--perturb", default="gaussian,occlusion", help="comma-separated perturbations")
    _train_cdrl(parser)
    _threads(parser, 1)
    parser.set_defaults(func=_measure_cdrl)


def _measure_cdrl(args: argparse.Namespace) -> int:
    from catts_experiments.reproduce import Plan, cdrl_effect

    _set_threads(args)
    plan = Plan(
        probe_items=args.items, perturbs=tuple(args.perturb.split(",")), cdrl_shipped=not args.train_cdrl
    )
    cdrl_effect(args.out, plan)
    return 0


# -- tune, ship, reproduce -------------------------------------------------------------------------


def add_tune_voting(parser: argparse.ArgumentParser) -> None:
    """``catts tune voting``: :func:`~catts_experiments.tune.tune_voting`."""
    _validation_and_test(parser)
    parser.add_argument("--n", type=int, default=16, help="samples per item")
    parser.set_defaults(func=_tune_voting)


def _tune_voting(args: argparse.Namespace) -> int:
    from catts_experiments.tune import tune_voting, voting_table

    result = tune_voting(_measured(args), **keywords_of(tune_voting, args))
    _write(args.out, result, voting_table(result))
    return 0


def add_tune_cdrl(parser: argparse.ArgumentParser) -> None:
    """``catts tune cdrl``: :func:`~catts_experiments.tune.tune_cdrl`."""
    parser.add_argument("--out", default="runs/organism-cdrl-tuning", help="run folder (resumed)")
    parser.add_argument("--items", type=int, default=200, help="scenes probed")
    parser.add_argument(
        "--split", choices=("validation", "test"), default="validation", help="split of the probed scenes"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the probed scenes")
    parser.add_argument(
        "--variants",
        type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
        help="comma-separated variants (default: all of catts_experiments.tune.CDRL_VARIANTS)",
    )
    parser.add_argument("--steps", type=int, help="GRPO steps per run (default: the config's)")
    _threads(parser, 2)
    parser.set_defaults(func=_tune_cdrl)


def _tune_cdrl(args: argparse.Namespace) -> int:
    from catts_experiments.tune import CDRL_VARIANTS, tune_cdrl

    _set_threads(args)
    keywords = keywords_of(tune_cdrl, args)
    keywords["variants"] = args.variants or list(CDRL_VARIANTS)
    result = tune_cdrl(**keywords)
    print((Path(args.out) / f"tuning-{args.split}-seed{args.seed}.md").read_text())
    return 0 if result["chosen"] is not None else 1


def add_ship_cdrl(parser: argparse.ArgumentParser) -> None:
    """``catts ship cdrl``: :func:`~catts_experiments.tune.ship_cdrl`."""
    parser.add_argument("--out", default="runs/organism-cdrl-tuning", help="the `tune cdrl` run folder")
    parser.add_argument("--variant", required=True, help="the variant to ship (the one validation chose)")
    parser.add_argument("--target", help="checkpoint folder (default: the shipped base-cdrl, replaced)")
    parser.set_defaults(func=_ship_cdrl)


def _ship_cdrl(args: argparse.Namespace) -> int:
    from catts_experiments.tune import ship_cdrl

    print(f"shipped {args.variant} -> {ship_cdrl(**keywords_of(ship_cdrl, args))}")
    return 0


def add_reproduce(parser: argparse.ArgumentParser) -> None:
    """``catts reproduce``: :func:`~catts_experiments.reproduce.reproduce`."""
    parser.add_argument("--out", default="runs/organism", help="run folder (resumed when it exists)")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run of every step")
    parser.add_argument(
        "--level",
        type=int,
        choices=LEVELS,
        help="ask every item at this generator level (default: the mix the organisms trained on)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=2,
        help="2 (default): the training chain (the probes before and after CDRL, CDRL, MMBoundary) in a "
        "second process beside the CA-TTS steps, one thread each; 1: every step in this process, on two "
        "threads",
    )
    _train_cdrl(parser)
    parser.set_defaults(func=_reproduce)


def _train_cdrl(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-cdrl",
        action="store_true",
        help="train CDRL from the shipped base (25 min on one thread) even where the shipped CDRL "
        "organism was trained from the same config and base (it is placed otherwise)",
    )


def _reproduce(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from catts_experiments.reproduce import Plan, reproduce

    torch.set_num_threads(2)  # one worker; with two, each chain runs on one thread
    plan = dataclasses.replace(
        Plan.quick() if args.quick else Plan(), level=args.level, cdrl_shipped=not args.train_cdrl
    )
    reproduce(args.out, plan, workers=args.workers)
    return 0
