"""The one table of ``catts`` commands: every entry loads and parses, the earlier spellings still
work, and a verb's help lists its objects without importing them."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from catts_graph.cli import _parser
from catts_graph.commands.registry import ALIASES, COMMANDS, GROUPS, resolve_alias

ROOT = Path(__file__).resolve().parents[1]


def _parse(*argv: str):
    words = resolve_alias(argv)
    return _parser(words).parse_args(words)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_of_the_table_loads_and_has_a_runner(path: str) -> None:
    module, _, function = COMMANDS[path][1].partition(":")
    add = getattr(importlib.import_module(module), function)
    assert callable(add)
    words = path.split()
    assert len(words) == 1 or words[0] in GROUPS


def test_every_alias_names_a_command_of_the_table() -> None:
    commands = set(COMMANDS)
    for old, new in ALIASES.items():
        assert new in commands, old
        assert old.split()[0] not in {path.split()[0] for path in commands}, f"{old} shadows a verb"


@pytest.mark.parametrize(
    ("old", "new", "flags"),
    [
        (("organism", "tune-cdrl"), ("tune", "cdrl"), ("--items", "5", "--variants", "a, b")),
        (("organism", "steps"), ("measure", "steps"), ("--model", "folder", "--level", "4")),
        (("mmboundary", "all"), ("train", "mmboundary", "all"), ("--config", "x.yaml", "--rl-steps", "2")),
        (("organism", "ship-cdrl"), ("ship", "cdrl"), ("--variant", "v")),
    ],
)
def test_an_old_spelling_parses_as_its_new_command(old: tuple, new: tuple, flags: tuple) -> None:
    assert vars(_parse(*old, *flags)).keys() == vars(_parse(*new, *flags)).keys()
    assert vars(_parse(*old, *flags)) == vars(_parse(*new, *flags))


def test_flags_fill_the_keyword_arguments_of_what_runs() -> None:
    from catts_experiments.commands import keywords_of
    from catts_experiments.train import train_organism

    args = _parse("train", "organism", "--save-every", "3", "--stop-after", "7", "--which", "expert")
    keywords = keywords_of(train_organism, args)
    assert keywords["save_every_minutes"] == 3.0 and keywords["stop_after_minutes"] == 7.0
    assert keywords["which"] == "expert" and "func" not in keywords
    assert _parse("tune", "cdrl", "--variants", "a, b").variants == ["a", "b"]


def test_a_verb_lists_its_objects_without_loading_them() -> None:
    script = (
        "import sys\nfrom catts_graph.cli import main\ntry:\n    main(['train', '--help'])\n"
        "except SystemExit:\n    pass\nprint('MODULES', ' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    listed, modules = done.stdout.split("MODULES")
    for name in ("cdrl", "mmboundary", "organism", "clip", "reflection"):
        assert name in listed
    # Nor the config's pydantic (about 0.15 s of `catts --help`): only the commands that use it.
    assert not {"torch", "catts_training", "catts_experiments", "pydantic"} & set(modules.split())
