"""The training configs' one mechanism (catts_training.config): every key of every section of both
configs is checked, and every error names the file and the key path; the command lines print it
on one line and exit with status 2."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from catts_graph.cli import main
from catts_training.cdrl.config import CDRLConfig
from catts_training.config import ConfigError, TrainingConfig, check_model
from catts_training.mmboundary.config import MMBoundaryConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"

MINIMAL: dict[type[TrainingConfig], dict[str, Any]] = {
    CDRLConfig: {
        "model": "tiny",
        "output_dir": "x",
        "data": {"benchmark": "synthetic"},
        "relevance": {"model": "tiny"},
    },
    MMBoundaryConfig: {
        "model": "tiny",
        "output_dir": "x",
        "data": {"benchmark": "synthetic"},
        "validation": {"benchmark": "synthetic"},
    },
}
PASSED_THROUGH = {"grpo", "lora", "sft", "rl"}
"""Sections handed to trl / peft: their keys are those classes' fields (tested below)."""


def _section_type(annotation: Any) -> Any:
    """The model or dataclass inside ``X | None`` / ``Annotated[X, ...]``, else None."""
    if typing.get_origin(annotation) is None:
        is_section = isinstance(annotation, type) and (
            issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
        )
        return annotation if is_section else None
    if typing.get_origin(annotation) in (list, tuple, dict):
        return None
    return next(filter(None, map(_section_type, typing.get_args(annotation))), None)


def _fields(section: type) -> dict[str, Any]:
    if issubclass(section, BaseModel):
        return {name: field.annotation for name, field in section.model_fields.items()}
    hints = typing.get_type_hints(section)
    return {field.name: hints[field.name] for field in dataclasses.fields(section)}


def schema_keys(config: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, bool]]:
    """Every key below ``config``: (path, declared type, whether it is itself a section)."""
    keys = []
    for name, annotation in _fields(config).items():
        path = (*prefix, name)
        if name in PASSED_THROUGH:
            continue
        section = _section_type(annotation)
        keys.append((path, annotation, section is not None))
        if section is not None:
            keys += schema_keys(section, path)
    return keys


def _accepts_mapping(annotation: Any) -> bool:
    text = str(annotation)
    return _section_type(annotation) is not None or "dict[" in text or "Mapping" in text


def _with(values: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``values`` with ``path`` set to ``value`` (sections on the way created)."""
    out = yaml.safe_load(yaml.safe_dump(values))
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return out


CASES = [
    (config, path, annotation, section)
    for config in MINIMAL
    for path, annotation, section in schema_keys(config)
]


@pytest.mark.parametrize(
    ("config", "path", "annotation", "section"),
    CASES,
    ids=[f"{config.__name__}:{'.'.join(path)}" for config, path, _, _ in CASES],
)
def test_a_value_of_the_wrong_type_names_the_file_and_the_key(
    tmp_path: Path, config: type[TrainingConfig], path: tuple[str, ...], annotation: Any, section: bool
) -> None:
    wrong = [1, 2] if _accepts_mapping(annotation) else {"wrong": 1}
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(_with(MINIMAL[config], path, wrong)))
    with pytest.raises(ConfigError) as raised:
        config.load(file)
    assert str(raised.value).startswith(f"{file}: {'.'.join(path)}"), str(raised.value)
    assert "\n" not in str(raised.value)


SECTIONS = [(config, path) for config, path, _, section in CASES if section]


@pytest.mark.parametrize(
    ("config", "path"), SECTIONS, ids=[f"{config.__name__}:{'.'.join(path)}" for config, path in SECTIONS]
)
def test_an_unknown_key_in_any_section_is_named(
    tmp_path: Path, config: type[TrainingConfig], path: tuple[str, ...]
) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(_with(MINIMAL[config], (*path, "no_such_key"), 1)))
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(file))}: {re.escape('.'.join(path))}\.no_such_key: unknown key"
    ):
        config.load(file)


@pytest.mark.parametrize("config", list(MINIMAL), ids=lambda config: config.__name__)
def test_an_unknown_top_level_key_lists_the_sections(tmp_path: Path, config: type[TrainingConfig]) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({**MINIMAL[config], "rewardz": {}}))
    with pytest.raises(
        ConfigError, match=r"rewardz: unknown key; expected one of .*rewards.* \(did you mean rewards\?\)"
    ):
        config.load(file)


@pytest.mark.parametrize(
    ("config", "section", "target"),
    [
        (CDRLConfig, "grpo", "trl.GRPOConfig"),
        (CDRLConfig, "lora", "peft.LoraConfig"),
        (MMBoundaryConfig, "sft", "trl.SFTConfig"),
        (MMBoundaryConfig, "rl", "trl.GRPOConfig"),
        (MMBoundaryConfig, "lora", "peft.LoraConfig"),
    ],
)
def test_passed_through_sections_take_that_class_s_fields_and_types(
    tmp_path: Path, config: type[TrainingConfig], section: str, target: str
) -> None:
    file = tmp_path / "c.yaml"
    field = "r" if section == "lora" else "max_steps"
    for value, message in (
        (
            {f"{field}z": 3},
            rf"{section}\.{field}z: unknown key; not a field of {re.escape(target)} "
            rf"\(did you mean {field}\?\)",
        ),
        ({field: "three"}, rf"{section}\.{field}: expected int, got 'three'"),
        ([1, 2], rf"{section}: expected a mapping, got \[1, 2\]"),
    ):
        file.write_text(yaml.safe_dump({**MINIMAL[config], section: value}))
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(file))}: {message}$"):
            config.load(file)
    file.write_text(yaml.safe_dump({**MINIMAL[config], section: {field: 3}}))
    assert getattr(config.load(file), section) == {field: 3}


def test_the_file_itself_missing_unreadable_or_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(tmp_path / 'none.yaml'))}: no such config file$"
    ):
        CDRLConfig.load(tmp_path / "none.yaml")
    file = tmp_path / "c.yaml"
    file.write_text("model: tiny\ndata: {source: [unclosed\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml: not valid YAML \(line 3, column 1\): expected ',' or '\]'"
    ):
        CDRLConfig.load(file)
    file.write_text("- a list\n")
    with pytest.raises(ConfigError, match="c.yaml: expected a mapping of sections at the top level"):
        CDRLConfig.load(file)
    file.write_bytes(b"model: \xff\n")
    with pytest.raises(ConfigError, match="c.yaml: cannot read it"):
        CDRLConfig.load(file)
    file.write_text("output_dir: x\ndata: {benchmark: synthetic}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: model: missing \(required\)"):
        CDRLConfig.load(file)


def test_numbers_bounds_and_yaml_exponents(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    cases = [
        ("rewards: {weights: {format: big}}", "rewards.weights.format: expected a number, got 'big'"),
        ("rewards: {weights: {format: true}}", "rewards.weights.format: expected a number, got True"),
        ("rewards: {weights: {format: .inf}}", "rewards.weights.format: expected a finite number, got inf"),
        ("rewards: {score_batch_size: 0}", "rewards.score_batch_size: expected a value >= 1, got 0"),
        ("rewards: {score_batch_size: 2.0}", "rewards.score_batch_size: expected an integer, got 2.0"),
        ("noise: {strength: 2}", "noise.strength=2.0: expected a number in [0, 1]"),
        ("probe: {levels: [0.5, 1.5]}", "probe.levels.1: expected a value <= 1, got 1.5"),
        ("max_pixels: -1", "max_pixels: expected a value >= 1, got -1"),
    ]
    for extra, message in cases:
        file.write_text(yaml.safe_dump(MINIMAL[CDRLConfig]) + extra + "\n")
        with pytest.raises(ConfigError, match=f"^{re.escape(f'{file}: {message}')}"):
            CDRLConfig.load(file)
    # YAML 1.1 reads 2e-4 (no dot) as a string; the configs read it as the number it is.
    file.write_text(
        yaml.safe_dump(MINIMAL[MMBoundaryConfig]) + "statements: {pretrain: {learning_rate: 2e-4}}\n"
    )
    assert MMBoundaryConfig.load(file).statements.pretrain.learning_rate == 2e-4


def test_a_model_that_can_only_be_a_missing_folder_is_refused_before_loading(tmp_path: Path) -> None:
    assert check_model("tiny") == "tiny"
    assert check_model("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"  # a hub id
    assert check_model(str(tmp_path)) == str(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("/nonexistent", "./model", "~/no/such", "runs/no/such", str(tmp_path / "runs" / "none")):
        with pytest.raises(ValueError, match=f"no such model folder {re.escape(repr(name))}"):
            check_model(name)
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({**MINIMAL[CDRLConfig], "model": "/nonexistent"}))
    with pytest.raises(ConfigError, match=r"c\.yaml: model: no such model folder '/nonexistent'"):
        CDRLConfig.load(file)


SHIPPED = sorted(path for path in CONFIGS.glob("*.yaml") if not path.name.startswith("accelerate_"))


def _agrees(given: Any, read: Any) -> bool:
    """Every key the file gives holds the value it gives (lists read as tuples where declared so)."""
    if isinstance(given, dict):
        return all(_agrees(value, read[key]) for key, value in given.items())
    if isinstance(given, list) and isinstance(read, (list, tuple)):
        return len(given) == len(read) and all(_agrees(g, r) for g, r in zip(given, read, strict=True))
    return read == given


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_loads_unchanged(path: Path) -> None:
    """Each shipped file loads and reads as written (the data sections' relative paths aside, which
    are read from the config's folder)."""
    config = (MMBoundaryConfig if path.name.startswith("mmboundary_") else CDRLConfig).load(path)
    given = yaml.safe_load(path.read_text())
    read = config.model_dump()
    for section in ("data", "validation", "probe"):
        for values in (given, read):
            if isinstance(values.get(section), dict):
                values[section].pop("source", None)
    assert _agrees(given, read)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "cdrl", "--config", "{file}"], "{file}: rewards.weights: expected a mapping, got [1, 2]"),
        (
            ["train", "pairs", "--config", "{file}", "--out", "x"],
            "{file}: rewards.weights: expected a mapping",
        ),
        (
            ["train", "mmboundary", "data", "--config", "{mm}"],
            "{mm}: sft.max_steps: expected int, got 'three'",
        ),
        (["train", "mmboundary", "probe", "--config", "{mm}"], "{mm}: sft.max_steps"),
        (["train", "cdrl", "--config", "{none}"], "{none}: no such config file"),
    ],
)
def test_the_command_line_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    paths = {"file": tmp_path / "c.yaml", "mm": tmp_path / "m.yaml", "none": tmp_path / "none.yaml"}
    paths["file"].write_text(yaml.safe_dump(MINIMAL[CDRLConfig]) + "rewards: {weights: [1, 2]}\n")
    paths["mm"].write_text(yaml.safe_dump(MINIMAL[MMBoundaryConfig]) + "sft: {max_steps: three}\n")
    assert main([part.format(**paths) for part in argv]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {message.format(**paths)}") and err.count("\n") == 1, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("steps", ["0", "-1", "three"])
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "cdrl", "--config", "c.yaml", "--max-steps"],
        ["train", "mmboundary", "sft", "--config", "c.yaml", "--max-steps"],
        ["train", "mmboundary", "all", "--config", "c.yaml", "--rl-steps"],
        ["train", "mmboundary", "all", "--config", "c.yaml", "--pretrain-steps"],
        ["train", "mmboundary", "data", "--config", "c.yaml", "--threads"],
    ],
)
def test_step_counts_below_one_are_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], steps: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        main([*argv, steps])
    assert raised.value.code == 2
    shown = repr(steps) if steps == "three" else steps
    assert f"{argv[-1]}: expected an integer >= 1, got {shown}" in capsys.readouterr().err


def test_a_missing_model_to_start_from_or_to_probe_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for stage in ("rl", "probe"):
        code = main(
            [
                "train",
                "mmboundary",
                stage,
                "--config",
                str(CONFIGS / "mmboundary_smoke_cpu.yaml"),
                "--model",
                "/nope",
            ]
        )
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --model: no such model folder '/nope'") and err.count("\n") == 1


def test_the_module_entry_points_print_one_line_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from catts_training.cdrl.train import main as cdrl_main
    from catts_training.mmboundary.train import main as mmboundary_main

    file = tmp_path / "c.yaml"
    file.write_text("model: tiny\noutput_dir: x\n")
    assert cdrl_main(["cdrl", "--config", str(file)]) == 2
    assert capsys.readouterr().err == f"error: {file}: data: missing (required)\n"
    assert mmboundary_main(["data", "--config", str(file)]) == 2
    assert capsys.readouterr().err == f"error: {file}: data: missing (required) (and 1 more)\n"
