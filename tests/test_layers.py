"""The structure holds: layers import only downward, no cycles, and the command line starts light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layer_contracts_hold() -> None:
    """``lint-imports`` with the contracts of pyproject.toml: every layer imports only the layers
    below it, catts_training is never imported by the library, and sibling packages have no cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_help_config_and_the_pure_math_import_no_torch() -> None:
    help_modules = _modules_after(
        "from catts_graph.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    config_modules = _modules_after("from catts_graph.cli import main\nmain(['config'])")
    voting_modules = _modules_after("import catts_graph.voting")
    for modules in (help_modules, config_modules, voting_modules):
        assert "catts_graph.cli" in modules or "catts_graph.voting" in modules
        assert not {"torch", "transformers", "catts_graph.eval.runner"} & modules
    assert "langgraph" not in voting_modules


def test_a_subcommand_is_loaded_only_when_it_runs() -> None:
    modules = _modules_after(
        "from catts_graph.cli import main\ntry:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert "catts_graph.commands.evaluate" in modules
    assert "catts_experiments" not in modules and "catts_training" not in modules
