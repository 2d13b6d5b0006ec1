"""The wheel installs only project-named packages (the library and its two applications), carries what
they need (the prompts, the training configs), and works installed, from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_cli import readme_run_arguments

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the checkout (offline: no build isolation)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("catts_graph-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the wheel is installed into (``pip install --target``), to put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_the_wheel_installs_only_project_named_top_level_packages(wheel: Path) -> None:
    top_level = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    metadata = {name for name in top_level if name.endswith(".dist-info")}
    assert len(metadata) == 1
    assert top_level - metadata == {"catts_graph", "catts_training", "catts_experiments"}


def test_the_wheel_ships_prompts_training_code_and_configs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    prompts = {p.name for p in (ROOT / "prompts").glob("*.txt")}
    assert prompts and {f"catts_graph/prompts/{name}" for name in prompts} <= names
    configs = {p.name for p in (ROOT / "training" / "configs").iterdir()}
    assert configs and {f"catts_training/configs/{name}" for name in configs} <= names
    assert {
        "catts_graph/cli.py",
        "catts_training/cdrl/train.py",
        "catts_training/mmboundary/train.py",
        "catts_experiments/commands.py",
        "catts_experiments/reproduce/render.py",
        "catts_graph/organism/checkpoints/base/model.safetensors",
    } <= names


def _run_installed(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in ``cwd`` with the installed wheel first on the path (not the checkout)."""
    env = {
        "PYTHONPATH": str(installed),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CATTS_HOME": str(cwd / "home"),
        "HOME": os.environ.get("HOME", str(cwd)),
    }
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_installed_commands_run_from_any_directory(installed: Path, tmp_path: Path) -> None:
    """From a folder that is not the checkout: the training commands load, the reproduction finds its
    configs inside the installed training package, and the README demo answers."""
    where = _run_installed(
        installed,
        tmp_path,
        "-c",
        "import catts_graph, catts_training, catts_experiments\n"
        "from catts_experiments.reproduce.plan import CDRL_CONFIG, MMBOUNDARY_CONFIG\n"
        "from catts_experiments.reproduce.training import training_config\n"
        "print(catts_graph.__file__, catts_training.__file__, catts_experiments.__file__)\n"
        "print(training_config(CDRL_CONFIG), training_config(MMBOUNDARY_CONFIG))",
    )
    assert where.returncode == 0, where.stderr[-3000:]
    paths = [Path(word) for word in where.stdout.split()]
    assert all(path.is_relative_to(installed) for path in paths), where.stdout
    assert paths[3:] == [
        installed / "catts_training/configs/organism_cdrl.yaml",
        installed / "catts_training/configs/mmboundary_organism.yaml",
    ]
    for command, flag in (
        (["train", "cdrl", "--help"], "--config"),
        (["train", "mmboundary", "all", "--help"], "--config"),
        (["mmboundary", "all", "--help"], "--config"),  # the earlier spelling
        (["train", "organism", "--help"], "--state-dir"),
        (["reproduce", "--help"], "--level"),
    ):
        helped = _run_installed(installed, tmp_path, "-m", "catts_graph.cli", *command)
        assert helped.returncode == 0 and flag in helped.stdout, helped.stderr[-3000:]
    arguments = readme_run_arguments()
    image = arguments.index("--image") + 1
    arguments[image] = str(ROOT / arguments[image])
    demo = _run_installed(installed, tmp_path, "-m", "catts_graph.cli", "run", *arguments, "--json")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert json.loads(demo.stdout)["answer"] == "3"
