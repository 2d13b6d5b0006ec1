"""CDRL's differentiable confidence terms: each formula against hand-computed values and a plain loop,
their gradients, the config section, and the trainer adding them to GRPO's loss (the only gradient
when every reward is flat)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from catts_graph.relevance import ClipRelevance
from catts_training.cdrl.confidence_loss import (
    CONFIDENCE_TERMS,
    ConfidenceLossConfig,
    brier_term,
    clean_entropy_term,
    clean_kl_term,
    confidence_terms,
    noised_entropy_term,
    noised_nmlp_term,
    row_means,
    token_kl,
)
from catts_training.cdrl.data import build_pairs, load_items
from catts_training.cdrl.train import build_trainer, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"


def test_row_means_skip_masked_positions_and_empty_rows() -> None:
    values = torch.tensor([[1.0, 2.0, 6.0], [4.0, 8.0, 0.5], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert row_means(values, mask).tolist() == pytest.approx([1.5, 12.5 / 3, 0.0])


def test_noised_entropy_hinge_by_hand_and_its_gradient() -> None:
    entropy = torch.tensor([0.2, 0.7, 0.1, 0.4], requires_grad=True)
    noised = torch.tensor([True, True, False, True])
    term = noised_entropy_term(entropy, noised, 0.5)
    # noised rows 0, 1, 3: gaps 0.3, 0 (past the target), 0.1; over 4 rows
    assert float(term.detach()) == pytest.approx(0.4 / 4)
    term.backward()
    assert entropy.grad.tolist() == pytest.approx([-0.25, 0.0, 0.0, -0.25])


def test_noised_nmlp_hinge_by_hand_and_its_gradient() -> None:
    logprob = torch.tensor([-0.2, -1.4, -0.7, -0.1], requires_grad=True)
    noised = torch.tensor([True, True, True, False])
    term = noised_nmlp_term(logprob, noised, 1.0)
    # noised rows' NMLPs 0.2, 1.4 (past the target), 0.7: gaps 0.8, 0, 0.3; over 4 rows
    assert float(term.detach()) == pytest.approx(1.1 / 4)
    term.backward()
    assert logprob.grad.tolist() == pytest.approx([0.25, 0.0, 0.25, 0.0])


def test_clean_entropy_penalty_by_hand_and_its_gradient() -> None:
    entropy = torch.tensor([0.2, 0.7, 0.1, 0.4], requires_grad=True)
    noised = torch.tensor([True, True, False, False])
    term = clean_entropy_term(entropy, noised)
    assert float(term.detach()) == pytest.approx((0.1 + 0.4) / 4)
    term.backward()
    assert entropy.grad.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.25])


def test_brier_term_by_hand_and_its_pathwise_gradient() -> None:
    logprob = torch.tensor([math.log(0.9), math.log(0.3)], requires_grad=True)
    correct = torch.tensor([0.0, 1.0])
    term = brier_term(logprob, correct)
    assert float(term.detach()) == pytest.approx(((0.9 - 0.0) ** 2 + (0.3 - 1.0) ** 2) / 2)
    term.backward()
    # d/dl (exp(l) - y)^2 / 2 = (c - y) c
    assert logprob.grad.tolist() == pytest.approx([0.9 * 0.9, (0.3 - 1.0) * 0.3])


def test_token_kl_is_trls_k3_estimate_by_hand_and_zero_where_policy_and_reference_agree() -> None:
    logprobs = torch.tensor([math.log(0.5), math.log(0.2), math.log(0.7)], requires_grad=True)
    ref = torch.tensor([math.log(0.25), math.log(0.4), math.log(0.7)])
    kl = token_kl(logprobs, ref)
    # r/p - log(r/p) - 1 with r/p = 0.5, 2, 1
    expected = [0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1, 0.0]
    assert kl.detach().tolist() == pytest.approx(expected, abs=1e-6)
    kl.sum().backward()
    # d/dl [exp(r - l) - (r - l) - 1] = 1 - exp(r - l)
    assert logprobs.grad.tolist() == pytest.approx([1 - 0.5, 1 - 2.0, 0.0], abs=1e-6)


def test_clean_kl_penalty_by_hand_and_its_gradient() -> None:
    kl = torch.tensor([0.3, 0.1, 0.8, 0.2], requires_grad=True)
    noised = torch.tensor([False, True, False, True])
    term = clean_kl_term(kl, noised)
    assert float(term.detach()) == pytest.approx((0.3 + 0.8) / 4)
    term.backward()
    assert kl.grad.tolist() == pytest.approx([0.25, 0.0, 0.25, 0.0])


def test_confidence_terms_match_a_plain_loop() -> None:
    generator = torch.Generator().manual_seed(3)
    entropies = torch.rand(6, 5, generator=generator) * 2
    logprobs = -torch.rand(6, 5, generator=generator)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    )
    noised = torch.tensor([False, True, False, True, True, False])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    ref = -torch.rand(6, 5, generator=generator)
    config = ConfidenceLossConfig(
        noised_entropy=1.0,
        noised_nmlp=3.0,
        clean_entropy=2.0,
        brier=0.5,
        clean_kl=0.1,
        entropy_target=0.9,
        nmlp_target=0.6,
    )
    terms = confidence_terms(
        config,
        entropies=entropies,
        logprobs=logprobs,
        mask=mask,
        noised=noised,
        correct=correct,
        ref_logprobs=ref,
    )
    expected = {
        "noised_entropy": 0.0,
        "noised_nmlp": 0.0,
        "clean_entropy": 0.0,
        "brier": 0.0,
        "clean_kl": 0.0,
    }
    for r in range(6):
        keep = [t for t in range(5) if mask[r, t]]
        h = sum(float(entropies[r, t]) for t in keep) / len(keep)
        lp = sum(float(logprobs[r, t]) for t in keep) / len(keep)
        if noised[r]:
            expected["noised_entropy"] += max(0.0, 0.9 - h) / 6
            expected["noised_nmlp"] += max(0.0, 0.6 + lp) / 6
        else:
            expected["clean_entropy"] += h / 6
            d = [float(ref[r, t] - logprobs[r, t]) for t in keep]
            expected["clean_kl"] += sum(math.exp(x) - x - 1 for x in d) / len(keep) / 6
        expected["brier"] += (math.exp(lp) - float(correct[r])) ** 2 / 6
    assert set(terms) == set(CONFIDENCE_TERMS)
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=1e-6), name


def test_only_active_terms_are_computed_and_brier_needs_correctness() -> None:
    def terms(config: ConfidenceLossConfig) -> dict[str, torch.Tensor]:
        ones = torch.ones(2, 3)
        return confidence_terms(
            config,
            entropies=ones,
            logprobs=-ones,
            mask=ones,
            noised=torch.tensor([True, False]),
            correct=None,
        )

    assert terms(ConfidenceLossConfig(clean_entropy=1.0)).keys() == {"clean_entropy"}
    assert terms(ConfidenceLossConfig(noised_nmlp=1.0, noised_entropy=2.0)).keys() == {
        "noised_nmlp",
        "noised_entropy",
    }
    with pytest.raises(ValueError, match="brier"):
        terms(ConfidenceLossConfig(brier=1.0))
    with pytest.raises(ValueError, match=r"clean_kl needs the reference .*grpo.beta > 0"):
        terms(ConfidenceLossConfig(clean_kl=1.0))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"noised_entropy": -1.0}, r"confidence_loss.noised_entropy=-1.0: expected a number >= 0"),
        ({"brier": "big"}, r"confidence_loss.brier: expected a number, got 'big'"),
        ({"clean_entropy": ".nan"}, r"confidence_loss.clean_entropy"),
        ({"entropy": 1.0}, r"confidence_loss.entropy: unknown key"),
    ],
)
def test_config_section_errors_name_the_file_and_key(
    values: dict[str, object], message: str, tmp_path: Path
) -> None:
    raw = yaml.safe_load((CONFIGS / "organism_cdrl.yaml").read_text())
    raw["confidence_loss"] = values
    path = tmp_path / "cdrl.yaml"
    path.write_text(yaml.safe_dump(raw).replace("'.nan'", ".nan"))
    with pytest.raises(ValueError, match=rf"cdrl.yaml: {message}"):
        load_config(path)


def test_an_absent_section_is_the_reward_only_variant(tmp_path: Path) -> None:
    raw = yaml.safe_load((CONFIGS / "organism_cdrl.yaml").read_text())
    del raw["confidence_loss"]
    path = tmp_path / "cdrl.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path).confidence_loss
    assert not config.active and set(config.weights.values()) == {0.0}
    assert ConfidenceLossConfig() == config


def _flat_reward_config(tmp_path: Path, tiny_model_dir: Path, confidence_loss: dict | None) -> Path:
    """The smoke config with only the format reward, which the tiny random model never earns: every
    group's rewards are equal, GRPO's advantages are zero, and (beta 0, no weight decay) the policy
    loss has no gradient at all."""
    raw = yaml.safe_load((CONFIGS / "smoke_cpu.yaml").read_text())
    raw["data"]["source"] = str(CONFIGS / "smoke_items.jsonl")
    raw["rewards"]["weights"] = {
        "accuracy": 0.0,
        "format": 1.0,
        "perceptual_sensitivity": 0.0,
        "calibration": 0.0,
    }
    raw["grpo"]["max_steps"] = 1
    raw["probe"] = None
    if confidence_loss is not None:
        raw["confidence_loss"] = confidence_loss
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


ENTROPY_TERMS = {"clean_entropy": 1.0, "noised_entropy": 1.0, "entropy_target": 50.0}


@pytest.mark.parametrize("terms", [None, ENTROPY_TERMS])
def test_the_trainer_adds_the_terms_to_grpos_loss(
    terms: dict | None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = load_config(
        _flat_reward_config(tmp_path, tiny_model_dir, terms),
        model=str(tiny_model_dir),
        output_dir=str(tmp_path / "run"),
    )
    pairs = build_pairs(load_items(str(CONFIGS / "smoke_items.jsonl")), ClipRelevance.tiny())
    trainer = build_trainer(config, pairs=pairs)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and logged[0]["rewards/format/mean"] == 0.0
    if terms is None:
        assert changed == []  # flat rewards: GRPO alone moves nothing
        assert not any(key.startswith("cdrl/loss_") for key in logged[0])
    else:
        assert len(changed) > len(before) // 2  # the terms' gradient alone trained the model
        for name in ("noised_entropy", "clean_entropy"):
            assert math.isfinite(logged[0][f"cdrl/loss_{name}"]) and logged[0][f"cdrl/loss_{name}"] > 0
        assert "cdrl/loss_brier" not in logged[0]


def test_clean_kl_without_a_reference_model_is_refused_before_training(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = _flat_reward_config(tmp_path, tiny_model_dir, {"clean_kl": 1.0})
    raw = yaml.safe_load(path.read_text())
    raw["grpo"]["beta"] = 0.0
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, model=str(tiny_model_dir), output_dir=str(tmp_path / "run"))
    pairs = build_pairs(load_items(str(CONFIGS / "smoke_items.jsonl")), ClipRelevance.tiny())
    with pytest.raises(ValueError, match=r"confidence_loss.clean_kl: needs grpo.beta > 0"):
        build_trainer(config, pairs=pairs)
