"""The ``catts`` sub-commands in one table: a verb, then what it acts on (``catts train cdrl``).

| verb | what it acts on | where the command lives |
|---|---|---|
| ``run``, ``config`` | one question; the configuration | :mod:`catts_graph.cli` |
| ``eval``, ``probe``, ``report`` | a benchmark; degraded images; a run folder | ``catts_graph.commands`` |
| ``train`` | ``cdrl``, ``pairs``, ``mmboundary`` | ``catts_training`` |
| ``train`` | ``organism``, ``clip``, ``reflection`` | ``catts_experiments`` |
| ``measure`` | ``organism``, ``level``, ``steps``, ``reflection``, ``cdrl`` | ``catts_experiments`` |
| ``measure`` | ``policy-options``, ``repair-options``, ``scaling`` | ``catts_experiments`` |
| ``tune`` | ``voting``, ``cdrl`` | ``catts_experiments`` |
| ``ship`` | ``cdrl`` | ``catts_experiments`` |
| ``reproduce`` | ``docs/organism.md`` | ``catts_experiments`` |

:data:`COMMANDS` names each command's path, its help line and the function that adds its arguments
to the parser made for it (``"package.module:function"``, beside the command's code). Only the
module of the command being run is imported (:func:`add_commands`), so ``catts --help`` and
``catts train --help`` load neither torch nor the training or experiment packages; the packages
above the library are found by name, never imported by it. :data:`ALIASES` keeps the spellings of
earlier releases working (``catts organism train`` is ``catts train organism``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["ALIASES", "COMMANDS", "GROUPS", "add_commands", "resolve_alias"]

COMMANDS: dict[str, tuple[str, str]] = {
    "eval": (
        "evaluate methods on a benchmark at several N (resumable)",
        "catts_graph.commands.evaluate:add_eval",
    ),
    "probe": ("accuracy and confidence as the image is degraded", "catts_graph.commands.evaluate:add_probe"),
    "report": ("write the Markdown report of a run directory", "catts_graph.commands.evaluate:add_report"),
    "train cdrl": (
        "run CDRL (TRL GRPO) from a YAML config (training/configs/)",
        "catts_training.cdrl.train:add_cdrl",
    ),
    "train pairs": (
        "build CDRL's original/noised pairs and a contact sheet",
        "catts_training.cdrl.train:add_pairs",
    ),
    "train mmboundary": (
        "MMBoundary: step-level confidence statements (data, SFT, RL, probe, all)",
        "catts_training.mmboundary.train:add_mmboundary",
    ),
    "train organism": (
        "train an organism model from scratch (CPU, seeded)",
        "catts_experiments.commands:add_train_organism",
    ),
    "train clip": (
        "train the CLIP organism (relevance maps) from scratch",
        "catts_experiments.commands:add_train_clip",
    ),
    "train reflection": (
        "fine-tune the base organism to answer again after a critique naming its wrong step",
        "catts_experiments.commands:add_train_reflection",
    ),
    "measure organism": (
        "an organism's accuracy and confidence per question kind, clean or noised",
        "catts_experiments.commands:add_measure_organism",
    ),
    "measure level": (
        "base and expert greedy accuracy at one generator level, with intervals, on validation, test "
        "and a fresh seed",
        "catts_experiments.commands:add_measure_level",
    ),
    "measure steps": (
        "step-level calibration (MMBoundary's signals) against the organism's step truth",
        "catts_experiments.commands:add_measure_steps",
    ),
    "measure reflection": (
        "what the base's reflection on the expert organism's critique adds",
        "catts_experiments.commands:add_measure_reflection",
    ),
    "measure cdrl": (
        "CDRL on the base organism alone: the probe before and after, drop ratios, calibration",
        "catts_experiments.commands:add_measure_cdrl",
    ),
    "measure policy-options": (
        "the policy options (reflection boost, critic target, N = 1) against the paper's rules on "
        "level 4: chosen on validation, reported on test",
        "catts_experiments.policy_options:add_measure_policy_options",
    ),
    "measure repair-options": (
        "step_repair at the run's temperature against greedy repair, at the same routing, on level 4: "
        "chosen on validation, reported on test",
        "catts_experiments.repair_options:add_measure_repair_options",
    ),
    "measure scaling": (
        "the hard level's scaling curves, slopes and CA-TTS against majority on fresh scenes (another "
        "generator seed), at the thresholds the reproduction chose",
        "catts_experiments.fresh_scaling:add_measure_scaling",
    ),
    "tune voting": (
        "choose DeepConf's window and check nmlp_floor on validation, report on test",
        "catts_experiments.commands:add_tune_voting",
    ),
    "tune cdrl": (
        "train each CDRL variant and probe it against the base; choose on validation, measure on test "
        "or a fresh seed with the same checkpoints",
        "catts_experiments.commands:add_tune_cdrl",
    ),
    "ship cdrl": (
        "copy a `tune cdrl` variant's checkpoint to the shipped base-cdrl organism",
        "catts_experiments.commands:add_ship_cdrl",
    ),
    "reproduce": (
        "regenerate every number and figure of docs/organism.md (CPU, < 1 hour)",
        "catts_experiments.commands:add_reproduce",
    ),
}
"""``"verb [object]": (help, "module:function")``; the function adds the command's arguments and
its ``func`` default to the ``argparse`` parser it is given."""

GROUPS: dict[str, str] = {
    "train": "train a model: CDRL, MMBoundary, the organisms, the CLIP organism, the reflection",
    "measure": "measure the organisms: accuracy, levels, step calibration, reflection, CDRL's effect",
    "tune": "choose settings on validation data: DeepConf's window, CDRL's variant",
    "ship": "replace a shipped organism checkpoint",
}
"""The help line of each verb that takes an object."""

ALIASES: dict[str, str] = {
    "organism train": "train organism",
    "organism train-clip": "train clip",
    "organism train-reflection": "train reflection",
    "organism eval": "measure organism",
    "organism level": "measure level",
    "organism steps": "measure steps",
    "organism reflection": "measure reflection",
    "organism cdrl": "measure cdrl",
    "organism policy-options": "measure policy-options",
    "organism tune": "tune voting",
    "organism tune-cdrl": "tune cdrl",
    "organism ship-cdrl": "ship cdrl",
    "organism reproduce": "reproduce",
    "mmboundary": "train mmboundary",
}
"""Earlier spellings and the command each now names."""


def resolve_alias(argv: Sequence[str]) -> list[str]:
    """``argv`` with an earlier spelling (:data:`ALIASES`) replaced by its command, said on stderr."""
    argv = list(argv)
    for old, new in sorted(ALIASES.items(), key=lambda item: -len(item[0].split())):
        words = old.split()
        if argv[: len(words)] == words:
            print(f"note: `catts {old}` is now `catts {new}`", file=sys.stderr)
            return [*new.split(), *argv[len(words) :]]
    return argv


def add_commands(subparsers: Any, argv: Sequence[str]) -> None:
    """Add every command of :data:`COMMANDS` to ``subparsers`` (the ``catts`` parser's), grouped by
    verb; only the command that ``argv`` (already :func:`resolve_alias`-ed) names gets its arguments,
    and so its module imported."""
    chosen = _leading_words(argv)
    groups: dict[str, Any] = {}
    for path, (help_text, target) in COMMANDS.items():
        words = path.split()
        where = subparsers
        if len(words) == 2:
            verb = words[0]
            if verb not in groups:
                group = subparsers.add_parser(verb, help=GROUPS[verb], description=GROUPS[verb])
                groups[verb] = group.add_subparsers(dest=f"{verb}_command", metavar="OBJECT", required=True)
            where = groups[verb]
        parser = where.add_parser(words[-1], help=help_text, description=help_text)
        if chosen[: len(words)] == words:
            _adder(path, target)(parser)


def _leading_words(argv: Sequence[str]) -> list[str]:
    words = []
    for word in argv:
        if word.startswith("-"):
            break
        words.append(word)
    return words


def _adder(path: str, target: str) -> Any:
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ImportError as err:
        raise SystemExit(
            f"catts {path}: cannot load {module} ({err}); is the package installed whole?"
        ) from err


def parser_for(add: Any, prog: str) -> argparse.ArgumentParser:
    """A stand-alone parser of one command (``python -m`` entry points, tests): ``add`` fills it."""
    parser = argparse.ArgumentParser(prog=prog)
    add(parser)
    return parser
