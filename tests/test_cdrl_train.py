"""CDRL end to end on CPU: real GRPO steps on the tiny Qwen2.5-VL, in one process and in two, the
saved model in the graph, and the multi-GPU configs validated by building their trainers on the tiny
model."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from catts_graph import CATTSConfig, build_graph
from catts_graph.models import TransformersVLM
from catts_graph.relevance import ClipRelevance
from catts_training.cdrl.data import build_pairs, load_items
from catts_training.cdrl.rewards import REWARD_NAMES
from catts_training.cdrl.train import build_trainer, load_config, train_cdrl
from catts_training.config import ConfigError
from tests.conftest_models import checkpoint_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
GPU_CONFIGS = [
    "qwen25vl7b_zero3.yaml",
    "qwen25vl7b_vllm_colocate.yaml",
    "qwen25vl7b_vllm_server.yaml",
    "qwen25vl7b_lora_1gpu.yaml",
]
# What a GPU config needs changed to build on this CPU with the tiny model: no bf16, no vLLM (not
# installed here), float32 weights.
CDRL_METRICS = (
    "cdrl/nmlp_original",
    "cdrl/nmlp_noised",
    "cdrl/confidence_drop",
    "cdrl/confidence_drop_nmlp",
    "cdrl/confidence",
)
ON_CPU = {
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "use_vllm": False,
    "model_init_kwargs": {"dtype": "float32"},
}


@pytest.fixture(scope="module")
def smoke_pairs() -> list[Any]:
    items = load_items(str(CONFIGS / "smoke_items.jsonl"))
    return build_pairs(items, ClipRelevance.tiny())


def test_smoke_run_trains_saves_and_the_graph_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config(
        CONFIGS / "smoke_cpu.yaml", model=str(tiny_model_dir), output_dir=str(tmp_path / "run")
    )
    started = time.perf_counter()
    result = train_cdrl(config)
    wall = time.perf_counter() - started

    assert result.steps == 3
    steps = [entry for entry in result.log_history if "loss" in entry]
    assert len(steps) == 3
    for entry in steps:
        for name in REWARD_NAMES:
            assert math.isfinite(entry[f"rewards/{name}/mean"]), name
        for metric in CDRL_METRICS:
            assert math.isfinite(entry[metric]), metric
        assert entry["cdrl/pairs_across_processes"] == 0.0  # one process
    assert set(result.metric_means) == {*CDRL_METRICS, "cdrl/pairs_across_processes"}
    assert all(math.isfinite(loss) for loss in result.losses)
    assert set(result.reward_means) == {*REWARD_NAMES, "reward"}
    print(f"\nCDRL smoke: {wall:.1f} s wall (run {result.seconds:.1f} s); reward means {result.reward_means}")

    before, after = checkpoint_weights(tiny_model_dir), checkpoint_weights(result.output_dir)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2

    assert (result.output_dir / "cdrl_summary.json").is_file()
    probe = result.probe
    assert probe is not None and (result.output_dir / "probe.json").is_file()
    assert [(r["perturb"], r["level"]) for r in probe["after"]] == [("gaussian", 0.0), ("gaussian", 1.0)]
    assert set(probe["delta"]["gaussian"]) == {"0.0", "1.0"}

    vlm = TransformersVLM.from_pretrained(result.output_dir, device="cpu")
    image_path = tmp_path / "square.png"
    Image.new("RGB", (56, 56), (200, 30, 30)).save(image_path)
    graph = build_graph(vlm, config=CATTSConfig(n_samples=2, max_samples=2, max_new_tokens=8))
    out = graph.invoke({"image": str(image_path), "question": "What colour is the square?"})
    assert len([s for s in out["samples"] if s.get("source") == "sample"]) == 2
    assert 0.0 <= out["confidence"] <= 1.0


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_parse_and_build_on_cpu(
    name: str, tiny_model_dir: Path, tmp_path: Path, smoke_pairs: list[Any]
) -> None:
    config = load_config(CONFIGS / name, model=str(tiny_model_dir), output_dir=str(tmp_path))
    original = config.grpo_config(use_cpu=True)  # as written (vLLM, bf16), but allowed on this CPU
    assert original.bf16 and original.activation_checkpointing
    assert original.use_vllm == ("vllm" in name)
    assert original.reward_weights == config.reward_weights()
    trainer = build_trainer(config, pairs=smoke_pairs, **ON_CPU)
    assert [f.__name__ for f in trainer.reward_funcs] == list(REWARD_NAMES)
    assert trainer.args.per_device_train_batch_size == original.per_device_train_batch_size
    is_peft = type(trainer.model).__name__.startswith("Peft")
    assert is_peft == (config.lora is not None)


def test_accelerate_configs_are_deepspeed_zero3() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    for name, processes in (("accelerate_zero3.yaml", 8), ("accelerate_zero3_7gpu.yaml", 7)):
        cluster = ClusterConfig.from_yaml_file(str(CONFIGS / name))
        assert str(cluster.distributed_type).endswith("DEEPSPEED")
        assert cluster.num_processes == processes
        assert cluster.deepspeed_config["zero_stage"] == 3
        assert cluster.deepspeed_config["zero3_save_16bit_model"] is True


def test_lora_run_merges_into_a_plain_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((CONFIGS / "smoke_cpu.yaml").read_text())
    raw["data"]["source"] = str(CONFIGS / "smoke_items.jsonl")
    raw["lora"] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    raw["grpo"]["max_steps"] = 1
    raw["grpo"]["learning_rate"] = 0.05
    raw["probe"] = None
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = train_cdrl(load_config(path, model=str(tiny_model_dir), output_dir=str(tmp_path / "run")))
    assert (result.output_dir / "adapter" / "adapter_config.json").is_file()
    after = checkpoint_weights(result.output_dir)
    assert not any("lora" in key for key in after)
    before = checkpoint_weights(tiny_model_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before if "q_proj.weight" in k)
    TransformersVLM.from_pretrained(result.output_dir, device="cpu")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_two_processes_pair_each_noised_group_with_its_original_group_on_the_other(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The smoke run under two CPU processes (torch.distributed with gloo; ``accelerate launch --cpu``
    would need mpirun for several processes). One pair per step, one group per process: process 0
    samples on the original image, process 1 on the noised one, so every noised reward needs the
    other process's NMLPs."""
    raw = yaml.safe_load((CONFIGS / "smoke_cpu.yaml").read_text())
    raw["model"] = str(tiny_model_dir)
    raw["data"]["source"] = str(CONFIGS / "smoke_items.jsonl")
    raw["grpo"].update(max_steps=2, per_device_train_batch_size=2, num_generations=2)
    raw["probe"] = None
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "training"), os.environ.get("PYTHONPATH", "")]),
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_port",
        str(_free_port()),
        "-m",
        "catts_training.cdrl.train",
        "cdrl",
        "--config",
        str(path),
        "--output-dir",
        str(out),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "cdrl_summary.json").read_text())
    print(f"\nCDRL on two processes: {wall:.1f} s wall; {summary['metric_means']}")
    assert summary["steps"] == 2 and all(math.isfinite(loss) for loss in summary["losses"])
    metrics = summary["metric_means"]
    assert metrics["cdrl/pairs_across_processes"] == 1.0
    # Every noised rollout of the tiny random model is within the margin (NMLPs differ by ~0.01), so
    # its reward is own - mean_original - margin, and the mean noised reward is the noised rollouts'
    # mean NMLP minus the partner process's original mean, minus the margin.
    expected = (
        metrics["cdrl/nmlp_noised"] - metrics["cdrl/nmlp_original"] - raw["rewards"]["sensitivity_margin"]
    )
    assert summary["reward_means"]["perceptual_sensitivity"] == pytest.approx(expected, abs=1e-3)


def test_config_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    """The checks across a section's keys and the messages that say what to do instead (every key's
    type and every section's unknown keys: tests/test_training_config.py)."""
    base = "model: tiny\noutput_dir: x\ndata: {source: a.jsonl}\n"
    cases = [
        ("rewards: {weights: {speed: 1}}\n", "rewards.weights.speed: unknown key; expected one of accuracy"),
        ("grpo: {output_dir: y}\n", "grpo.output_dir: set output_dir at the top level"),
        ("noise: {kind: blurr}\n", "noise.kind='blurr': expected one of gaussian"),
        (
            "rewards: {sensitivity_clip: [-1, 1]}\n",
            "rewards.sensitivity_clip: no longer used.*sensitivity_margin",
        ),
        ("rewards: {sensitivity_margin: -1}\n", "rewards.sensitivity_margin: expected a value >= 0, got -1"),
        (
            "rewards: {calibration_variant: sign}\n",
            "rewards.calibration_variant: expected one of brier, signed",
        ),
        (
            "relevance: {model: organism, pretrained: openai}\n",
            "relevance.pretrained: not with model: organism",
        ),
        ("relevance: {model: ViT-B-16, path: x}\n", "relevance.path: only with model: organism"),
    ]
    path = tmp_path / "c.yaml"
    for extra, message in cases:
        path.write_text(base + extra)
        with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
            load_config(path)
    path.write_text("model: tiny\noutput_dir: x\ndata: {}\n")
    with pytest.raises(ConfigError, match="data: give pairs_dir, or source and/or benchmark"):
        load_config(path)


CDRL_CONFIGS = [
    path
    for path in sorted(CONFIGS.glob("*.yaml"))
    if not path.name.startswith(("accelerate_", "mmboundary_"))  # tests/test_mmboundary.py loads those
]


@pytest.mark.parametrize("path", CDRL_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_cdrl_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.rewards.calibration_variant == "brier"
    assert config.rewards.sensitivity_margin == 1.0
