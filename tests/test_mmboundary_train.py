"""MMBoundary end to end on CPU with the tiny random Qwen2.5-VL: the data stage, SFT and RL with real
optimizer steps, the probe, the command line, and the shipped configs built into trainers."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from catts_graph.formatting import json_ready
from catts_graph.models import TransformersVLM
from catts_graph.statements import StatementReader
from catts_training.mmboundary.data import EXAMPLES_FILE, ITEMS_FILE, load_data
from catts_training.mmboundary.rewards import REWARD_NAMES
from catts_training.mmboundary.stated import read_steps
from catts_training.mmboundary.train import (
    build_data,
    build_rl_trainer,
    build_sft_trainer,
    load_config,
    main,
    run_probe,
    train_rl,
    train_sft,
)
from tests.conftest_models import checkpoint_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
SMOKE = CONFIGS / "mmboundary_smoke_cpu.yaml"
# What a GPU config needs changed to build on this CPU with the tiny model.
ON_CPU = {
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "model_init_kwargs": {"dtype": "float32"},
}


def _changed(before: Path, after: Path) -> int:
    old, new = checkpoint_weights(before), checkpoint_weights(after)
    assert old.keys() == new.keys()
    return sum(not torch.equal(old[k], new[k]) for k in old)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    # The tiny model decodes ~30x faster on one thread than on two busy cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def smoke(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("mmboundary-smoke")
    config = load_config(SMOKE, model=str(tiny_model_dir), output_dir=str(out))
    started = time.perf_counter()
    data = build_data(config)
    return {"config": config, "data": data, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def sft(smoke: dict[str, Any]) -> Any:
    started = time.perf_counter()
    result = train_sft(smoke["config"])
    print(f"\nMMBoundary SFT smoke: {time.perf_counter() - started:.1f} s wall")
    return result


def test_data_stage_states_the_tiny_models_own_replies(smoke: dict[str, Any]) -> None:
    config, data = smoke["config"], smoke["data"]
    summary = data.summary
    print(f"\nMMBoundary data smoke: {smoke['seconds']:.1f} s wall; {summary['statement_tokens']}")
    assert summary["items"] == 8 and summary["replies"] == 16
    assert summary["examples"] >= 12 and summary["stated_steps"] > 0
    assert sum(summary["level_counts"]) == summary["stated_steps"]
    assert summary["use_labels"] is False  # the similarity judge's labels do not weigh the signals
    assert data.calibrator.weights == {"probability": 0.5, "entropy": 0.5}
    # Byte-level tokens: a statement costs about as many tokens as it has characters.
    assert 20 <= summary["statement_tokens"]["mean"] <= 40
    assert summary["completion_tokens"] > summary["reply_tokens"]
    for name in (ITEMS_FILE, EXAMPLES_FILE, "calibrator.json", "summary.json"):
        assert (config.data_dir / name).is_file()
    reader = StatementReader()
    for example in load_data(config.data_dir).examples:
        stated = [s for s in read_steps(example.completion, reader) if not s.is_answer]
        assert [s.expressed for s in stated] == [s.level for s in example.reply.steps if not s.is_answer]


def test_sft_smoke_run_takes_real_steps(smoke: dict[str, Any], sft: Any, tiny_model_dir: Path) -> None:
    assert sft.steps == 3 and len(sft.losses) == 3
    assert all(math.isfinite(loss) for loss in sft.losses)
    assert _changed(tiny_model_dir, sft.output_dir) > len(checkpoint_weights(tiny_model_dir)) // 2
    assert (sft.output_dir / "mmboundary_summary.json").is_file()
    vlm = TransformersVLM.from_pretrained(sft.output_dir, device="cpu")
    assert vlm.tokenizer is not None


def test_rl_smoke_run_takes_real_steps_from_the_sft_model(smoke: dict[str, Any], sft: Any) -> None:
    started = time.perf_counter()
    result = train_rl(smoke["config"])
    print(f"\nMMBoundary RL smoke: {time.perf_counter() - started:.1f} s wall; {result.reward_means}")
    assert result.steps == 2 and all(math.isfinite(loss) for loss in result.losses)
    steps = [entry for entry in result.log_history if "loss" in entry]
    for entry in steps:
        for name in REWARD_NAMES:
            assert math.isfinite(entry[f"rewards/{name}/mean"]), name
        # Random bytes never state a level: the statement rewards sit at their floor, and the
        # similarity of the steps to the reference chain is what moves the policy.
        assert entry["rewards/format/mean"] == 0.0 and entry["rewards/self_calibration/mean"] == -1.0
        assert entry["rewards/knowledge_accuracy/std"] > 0
    assert {"mmboundary/parsed_share", "mmboundary/internal_level", "mmboundary/step_accuracy"} <= set(
        result.metric_means
    )
    assert result.metric_means["mmboundary/parsed_share"] == 0.0
    assert 1 <= result.metric_means["mmboundary/internal_level"] <= 5
    assert _changed(sft.output_dir, result.output_dir) > 0


def test_probe_and_the_command_line(smoke: dict[str, Any], tiny_model_dir: Path, tmp_path: Path) -> None:
    report = run_probe(smoke["config"], model=str(tiny_model_dir))
    figures = report["figures"]
    assert figures["items"] == 2 and figures["parsed_share"] == 0.0 and figures["expressed_ece"] is None
    assert figures["internal_ece"] is not None
    assert Path(report["path"]).is_file()
    out = tmp_path / "probe.json"
    code = main(
        [
            "probe",
            "--config",
            str(SMOKE),
            "--output-dir",
            smoke["config"].output_dir,
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
        ]
    )
    # Greedy: the same replies; an undefined figure (NaN in memory) is null in the written report.
    assert code == 0 and json.loads(out.read_text())["figures"] == json_ready(figures)


@pytest.mark.parametrize(
    "name",
    ["mmboundary_organism.yaml", "mmboundary_qwen25vl7b_lora.yaml", "mmboundary_qwen25vl7b_zero3.yaml"],
)
def test_shipped_configs_build_their_trainers_on_cpu(
    name: str, smoke: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = load_config(CONFIGS / name, model=str(tiny_model_dir), output_dir=str(tmp_path))
    data = smoke["data"]
    sft = build_sft_trainer(config, data, **ON_CPU)
    assert type(sft.model).__name__.startswith("Peft") == (config.lora is not None)
    assert sft.args.per_device_train_batch_size == config.sft["per_device_train_batch_size"]
    rl = build_rl_trainer(config, data, policy=str(tiny_model_dir), **ON_CPU, use_vllm=False)
    assert [f.__name__ for f in rl.reward_funcs] == list(REWARD_NAMES)
    assert rl.args.reward_weights == config.reward_weights()
    assert type(rl.model).__name__.startswith("Peft") == (config.lora is not None)


def test_rl_needs_an_sft_model_or_a_policy(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config(SMOKE, model=str(tiny_model_dir), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="run `catts mmboundary sft` first, or pass --model"):
        train_rl(config)


def test_the_policy_scorer_reads_the_entropies_and_log_probs_the_sampler_recorded(
    tiny_vlm: TransformersVLM, tiny_image: Any, one_thread: None
) -> None:
    """Self-calibration's internal level teacher-forces the completion; its signals must be those
    the data stage read off the sampler."""
    from catts_training.cdrl.rewards import PolicyScorer

    (sample,) = tiny_vlm.sample([tiny_image], "What colour?", 1, temperature=1.0, max_new_tokens=12, seed=3)
    scorer = PolicyScorer(tiny_vlm.processor).bind(tiny_vlm.model)
    prompt = [{"role": "user", "content": "What colour?"}]
    ((ids, logprobs, entropies),) = scorer.token_statistics([prompt], [sample.token_ids], [[tiny_image]])
    assert ids == sample.token_ids
    assert logprobs == pytest.approx(sample.logprobs, abs=1e-4)
    assert entropies == pytest.approx(sample.entropies, abs=1e-4)
    assert scorer.token_logprobs([prompt], [sample.token_ids], [[tiny_image]]) == [logprobs]


def test_the_newline_after_the_end_of_turn_leaves_the_loss(tiny_model_dir: Path) -> None:
    """TRL renders a completion as ``reply<|im_end|>\\n``: the newline is never generated, so the
    wrapper takes it (and only it) out of the labels."""
    from catts_training.cdrl.train import load_processor
    from catts_training.mmboundary.sft import EndOfTurnMasked, end_of_turn_id

    processor = load_processor(str(tiny_model_dir))
    end = end_of_turn_id(processor)
    assert end == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = torch.tensor([[5, 6, end, 10, 11], [7, end, 12, 0, 0]])
    labels = torch.tensor([[-100, 6, end, 10, -100], [7, end, 12, -100, -100]])

    def collator(examples: list[Any]) -> dict[str, Any]:
        return {"input_ids": ids, "labels": labels.clone()}

    batch = EndOfTurnMasked(collator, end)([{}])
    assert batch["labels"].tolist() == [[-100, 6, end, -100, -100], [7, end, -100, -100, -100]]


def test_frozen_prefixes_stay_out_of_training(
    smoke: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from catts_training.mmboundary.pretrain import freeze_parameters

    config = load_config(SMOKE, model=str(tiny_model_dir), output_dir=str(tmp_path), freeze=["model.visual"])
    trainer = build_sft_trainer(config, smoke["data"], max_steps=1)
    visual = [p for name, p in trainer.model.named_parameters() if name.startswith("model.visual")]
    assert visual and not any(p.requires_grad for p in visual)
    assert all(
        p.requires_grad for name, p in trainer.model.named_parameters() if not name.startswith("model.visual")
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "trained"))
    before, after = checkpoint_weights(tiny_model_dir), checkpoint_weights(tmp_path / "trained")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.visual"))
    assert any(not torch.equal(before[k], after[k]) for k in before if not k.startswith("model.visual"))
    with pytest.raises(ValueError, match="'model.vision' matches no parameter"):
        freeze_parameters(trainer.model, ["model.vision"])
    with pytest.raises(ValueError, match="freeze: not with lora"):
        load_config(SMOKE, freeze=["model.visual"], lora={"r": 4})
    with pytest.raises(ValueError, match="freeze"):
        load_config(SMOKE, freeze="model.visual")
