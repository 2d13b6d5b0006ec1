"""CDRL rewards on hand-computed inputs, across two processes, and the policy scoring against
TransformersVLM.score."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from catts_training.cdrl.rewards import (
    REWARD_NAMES,
    AccuracyReward,
    CalibrationReward,
    FormatReward,
    PerceptualSensitivityReward,
    PolicyScorer,
    build_rewards,
    calibration_reward,
    ends_with_boxed,
    sensitivity_reward,
)

OPTIONS = ["red", "green", "blue", "yellow"]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_accuracy_reward_by_equivalence_never_substring() -> None:
    reward = AccuracyReward()
    completions = [
        chat("The square is blue, so \\boxed{C}"),
        chat("\\boxed{blue}"),  # option text maps to its letter
        chat("\\boxed{B}"),
        chat("no final answer"),
        "the answer is \\boxed{\\frac{1}{2}}",
        "\\boxed{12}",
    ]
    golds = ["C", "C", "C", "C", "0.5", "1"]
    options = [OPTIONS] * 4 + [[], None]
    assert reward(None, completions, None, answer=golds, options=options) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert reward.__name__ == "accuracy"


def test_format_reward_wants_a_final_non_empty_box() -> None:
    texts = [
        "so \\boxed{4}",
        "so \\boxed{\\frac{1}{2}}.",
        "\\boxed{4} because of the colour",
        "\\boxed{ }",
        "\\boxed{4",
        "4",
        "first \\boxed{3} then $\\boxed{B}$",
    ]
    assert FormatReward()(None, [chat(t) for t in texts]) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert ends_with_boxed("\\fbox{x}")


def test_sensitivity_reward_is_a_hinge_with_a_margin() -> None:
    # r = -max(0, mean_orig + margin - own): 0 past the margin, minus the shortfall before it
    assert sensitivity_reward(2.0, 0.5, 1.0) == 0.0
    assert sensitivity_reward(1.5, 0.5, 1.0) == 0.0  # exactly at the margin
    assert sensitivity_reward(0.75, 0.5, 1.0) == pytest.approx(-0.75)
    assert sensitivity_reward(0.25, 0.5, 1.0) == pytest.approx(-1.25)  # surer than on the original
    assert sensitivity_reward(0.25, 0.5, 0.0) == pytest.approx(-0.25)
    assert sensitivity_reward(0.75, 0.5, 0.0) == 0.0
    with pytest.raises(ValueError, match="margin"):
        sensitivity_reward(1.0, 0.5, -0.1)
    with pytest.raises(ValueError, match="own_nmlp_noised"):
        sensitivity_reward(math.nan, 0.5, 1.0)


def test_calibration_reward_brier_by_default_signed_as_an_option() -> None:
    assert calibration_reward(1.0, True) == 1.0
    assert calibration_reward(0.5, False) == pytest.approx(1 - 2 * 0.25)
    assert calibration_reward(0.25, True) == pytest.approx(1 - 2 * 0.75**2)
    assert calibration_reward(0.5, False, "signed") == -0.5
    assert calibration_reward(0.25, True, "signed") == 0.25
    # Brier is proper: right with probability p = 0.3, the expected reward is highest at c = 0.3.
    grid = [i / 100 for i in range(101)]
    best = max(grid, key=lambda c: 0.3 * calibration_reward(c, True) + 0.7 * calibration_reward(c, False))
    assert best == pytest.approx(0.3)
    signed = max(
        grid,
        key=lambda c: (
            0.3 * calibration_reward(c, True, "signed") + 0.7 * calibration_reward(c, False, "signed")
        ),
    )
    assert signed == 0.0
    with pytest.raises(ValueError, match="variant"):
        calibration_reward(0.5, True, "bogus")


def pair_columns(variants: Sequence[str], pair_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Columns of rows whose images are the strings "orig" / "noised" (see :class:`RowScorer`)."""
    return {
        "images": [["orig" if v == "original" else "noised"] for v in variants],
        "variant": list(variants),
        "pair_id": list(pair_ids) if pair_ids is not None else [0] * len(variants),
    }


class RowScorer:
    """NMLP per row, looked up in a list; counts its calls."""

    def __init__(self, values: Sequence[float | None]) -> None:
        self.values = list(values)
        self.calls = 0

    def nmlp(self, prompts: Any, completion_ids: Any, images: Sequence[Any]) -> list[float | None]:
        assert len(images) == len(self.values)
        self.calls += 1
        return list(self.values)


def test_perceptual_sensitivity_scores_each_noised_rollout_against_its_pairs_original_rollouts() -> None:
    # pair 0: original NMLPs 0.2, 0.4 (mean 0.3); noised 0.5, 2.0, None (empty completion)
    # pair 1: original 1.0, None (mean 1.0); noised 0.5
    variants = ["original", "original", "noised", "noised", "noised", "original", "original", "noised"]
    pair_ids = [0, 0, 0, 0, 0, 1, 1, 1]
    nmlps = [0.2, 0.4, 0.5, 2.0, None, 1.0, None, 0.5]
    logged: dict[str, float] = {}
    reward = PerceptualSensitivityReward(RowScorer(nmlps), margin=1.0)
    values = reward(
        [None] * 8,
        [chat("x")] * 8,
        [[1]] * 8,
        **pair_columns(variants, pair_ids),
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert values[0] is None and values[1] is None and values[5] is None and values[6] is None
    assert values[2] == pytest.approx(-(0.3 + 1.0 - 0.5))
    assert values[3] == 0.0
    assert values[4] is None
    assert values[7] == pytest.approx(-(1.0 + 1.0 - 0.5))
    assert logged["cdrl/nmlp_original"] == pytest.approx((0.2 + 0.4 + 1.0) / 3)
    assert logged["cdrl/nmlp_noised"] == pytest.approx((0.5 + 2.0 + 0.5) / 3)
    c = math.exp
    drop0 = (c(-0.5) + c(-2.0)) / 2 - (c(-0.2) + c(-0.4)) / 2
    drop1 = c(-0.5) - c(-1.0)
    assert logged["cdrl/confidence_drop"] == pytest.approx((drop0 + drop1) / 2)
    assert logged["cdrl/confidence_drop_nmlp"] == pytest.approx(((0.3 - 1.25) + (1.0 - 0.5)) / 2)
    assert logged["cdrl/pairs_across_processes"] == 0.0


def test_a_noised_rollout_that_becomes_unsure_is_rewarded_above_one_that_stays_confident() -> None:
    """Four noised rollouts of one item whose original rollouts answer A at NMLP 0.1: the answer
    kept or changed x unsure (NMLP 1.5) or confident (NMLP 0.1). Both unsure ones earn more than
    both confident ones. (The old reward re-scored the original completion under the noised image,
    and so paid for the noised distribution being different, a confident changed answer included.)"""
    variants = ["original"] * 2 + ["noised"] * 4
    cases = [("A", 1.5), ("A", 0.1), ("B", 1.5), ("B", 0.1)]  # (answer, own NMLP on the noised image)
    completions = [chat("\\boxed{A}")] * 2 + [chat(f"\\boxed{{{answer}}}") for answer, _ in cases]
    nmlps = [0.1, 0.1] + [value for _, value in cases]
    values = PerceptualSensitivityReward(RowScorer(nmlps), margin=1.0)(
        [None] * 6, completions, [[1]] * 6, **pair_columns(variants)
    )
    kept_unsure, kept_confident, changed_unsure, changed_confident = values[2:]
    assert kept_unsure == changed_unsure == 0.0  # 1.4 NMLP less sure than on the original: past the margin
    assert kept_confident == changed_confident == pytest.approx(-1.0)  # no less sure: a full margin short
    assert min(kept_unsure, changed_unsure) > max(kept_confident, changed_confident)


def test_a_noised_row_without_its_original_rollouts_is_an_error() -> None:
    reward = PerceptualSensitivityReward(RowScorer([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="pair_id 1 has noised rollouts but no original"):
        reward(
            [None] * 3,
            [chat("x")] * 3,
            [[1]] * 3,
            **pair_columns(["original", "noised", "noised"], [0, 0, 1]),
        )
    with pytest.raises(ValueError, match="variant"):
        reward([None] * 3, [chat("x")] * 3, [[1]] * 3, **pair_columns(["original", "noised", "blurred"]))


def test_calibration_scores_every_row_under_its_own_image() -> None:
    scorer = RowScorer([0.0, math.log(2), math.log(4)])
    completions = [chat("\\boxed{A}"), chat("\\boxed{B}"), chat("\\boxed{C}")]
    kwargs = {
        "answer": ["A", "A", "C"],
        "options": [OPTIONS] * 3,
        **pair_columns(["original", "noised", "noised"]),
    }
    brier = CalibrationReward(scorer)(None, completions, [[1]] * 3, **kwargs)
    assert brier == pytest.approx(
        [1.0, 1 - 2 * 0.25, 1 - 2 * 0.75**2]
    )  # c = 1, 0.5, 0.25; right, wrong, right
    signed = CalibrationReward(scorer, variant="signed")(None, completions, [[1]] * 3, **kwargs)
    assert signed == pytest.approx([1.0, -0.5, 0.25])


def test_reward_set_names_plain_callables_and_errors() -> None:
    rewards = build_rewards(RowScorer([0.5]))
    assert [r.__name__ for r in rewards] == list(REWARD_NAMES)
    assert not any(isinstance(r, torch.nn.Module) for r in rewards)
    assert rewards[3].variant == "brier"
    with pytest.raises(KeyError, match="pair_id"):
        rewards[2]([None], [chat("x")], [[1]], images=[["orig"]], variant=["noised"])
    with pytest.raises(ValueError, match="margin"):
        PerceptualSensitivityReward(RowScorer([]), margin=-1.0)
    with pytest.raises(ValueError, match="variant"):
        CalibrationReward(RowScorer([]), variant="bogus")


def _split_pair(rank: int, folder: str) -> None:
    """Process 0 holds pair 7's original rollouts, process 1 its noised ones (and pair 8 whole)."""
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        logged: dict[str, float] = {}
        if rank == 0:
            variants, pair_ids, nmlps = ["original", "original"], [7, 7], [0.2, 0.4]
        else:
            variants, pair_ids, nmlps = (
                ["noised", "noised", "original", "noised"],
                [7, 7, 8, 8],
                [0.5, 2.0, 1.0, 1.0],
            )
        values = PerceptualSensitivityReward(RowScorer(nmlps), margin=1.0)(
            [None] * len(nmlps),
            [chat("x")] * len(nmlps),
            [[1]] * len(nmlps),
            **pair_columns(variants, pair_ids),
            log_metric=lambda name, value: logged.__setitem__(name, value),
        )
        with open(f"{folder}/{rank}.json", "w") as out:
            json.dump({"values": values, "logged": logged}, out)
    finally:
        dist.destroy_process_group()


def test_pairs_split_across_processes_are_gathered(tmp_path: Any) -> None:
    import json

    torch.multiprocessing.spawn(_split_pair, args=(str(tmp_path),), nprocs=2)
    first, second = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert first["values"] == [None, None]
    assert second["values"] == pytest.approx([-(0.3 + 1.0 - 0.5), 0.0, None, -1.0])
    assert first["logged"] == second["logged"]
    assert first["logged"]["cdrl/pairs_across_processes"] == 0.5


def test_policy_scorer_matches_transformers_vlm_score(tiny_vlm: Any, tiny_image: Any) -> None:
    """The batched re-scoring (left-padded prompts of different lengths, other images, a trailing
    EOS as TRL passes it) gives the same raw log-probs as the reference backend's score()."""
    from PIL import Image

    other = Image.new("RGB", (56, 56), (10, 200, 10))
    samples = tiny_vlm.sample([tiny_image], "what colour?", 2, max_new_tokens=5, seed=3)
    eos = tiny_vlm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [
        [{"role": "user", "content": "what colour?"}],
        [{"role": "user", "content": "a longer question about the picture?"}],
    ]
    scorer = PolicyScorer(tiny_vlm.processor, batch_size=2).bind(tiny_vlm.model)
    ids = [samples[0].token_ids + [eos], samples[1].token_ids]
    got = scorer.token_logprobs(prompts, ids, [[tiny_image], [other]])
    first = tiny_vlm.score([tiny_image], "what colour?", [samples[0]])[0].logprobs
    second = tiny_vlm.score([other], "a longer question about the picture?", [samples[1]])[0].logprobs
    assert got[0] == pytest.approx(first, abs=1e-4)
    assert got[1] == pytest.approx(second, abs=1e-4)

    calls = []
    scorer.bind(lambda: calls.append(1) or tiny_vlm.model)
    values = scorer.nmlp(prompts, ids, [[tiny_image], [other]])
    assert values[0] == pytest.approx(-sum(first) / len(first), abs=1e-4)
    count = len(calls)
    assert scorer.nmlp(prompts, ids, [[tiny_image], [other]]) == values  # cached: no forward pass
    assert len(calls) == count
    assert scorer.nmlp(prompts[:1], [[eos]], [[tiny_image]]) == [None]

    # One training step, an original row and its noised partner: each completion is scored once,
    # under its own prompt image; calibration reads the same scores from the cache.
    sensitivity, calibration = build_rewards(scorer, sensitivity_margin=0.0)[2:]
    columns = {
        "images": [[tiny_image], [other]],
        "pair_id": [0, 0],
        "variant": ["original", "noised"],
        "answer": ["A", "B"],
        "options": [None, None],
    }
    completions = [chat("x"), chat("y")]
    ids = [samples[1].token_ids, samples[0].token_ids]
    calls.clear()
    rewards = sensitivity(prompts, completions, ids, **columns)
    forward_passes = len(calls)
    assert forward_passes > 0
    calibration(prompts, completions, ids, **columns)
    assert len(calls) == forward_passes
    own = [
        tiny_vlm.score([tiny_image], "what colour?", [samples[1]])[0].logprobs,
        tiny_vlm.score([other], "a longer question about the picture?", [samples[0]])[0].logprobs,
    ]
    original, noised = (-sum(lps) / len(lps) for lps in own)
    assert rewards[0] is None
    assert rewards[1] == pytest.approx(sensitivity_reward(noised, original, 0.0), abs=1e-4)


def test_unbound_scorer_says_so(tiny_vlm: Any) -> None:
    with pytest.raises(RuntimeError, match="bind"):
        PolicyScorer(tiny_vlm.processor).nmlp([[]], [[1]], [[None]])


def test_policy_scorer_prefills_a_shared_prompt_once_and_keeps_processes_in_step(
    tiny_vlm: Any, tiny_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRPO's completions of one prompt share one prefix; every call is two forward passes, and a
    process with fewer calls than the others repeats its last one (ZeRO-3 needs the same calls)."""
    from PIL import Image

    from catts_training.cdrl import rewards

    samples = tiny_vlm.sample([tiny_image], "what colour?", 3, max_new_tokens=5, seed=3)
    prompt = [{"role": "user", "content": "what colour?"}]
    other = Image.new("RGB", (56, 56), (10, 200, 10))
    # Rows 0-2: one prompt, the same pixels (distinct image objects, as TRL's repeated rows are).
    images = [[tiny_image], [tiny_image.copy()], [tiny_image.copy()], [other]]
    ids = [s.token_ids for s in samples] + [samples[0].token_ids]
    passes: list[int] = []
    hook = tiny_vlm.model.register_forward_hook(lambda *args: passes.append(1))
    try:
        scorer = PolicyScorer(tiny_vlm.processor, batch_size=2).bind(tiny_vlm.model)
        got = scorer.token_logprobs([prompt] * 4, ids, images)
        assert len(passes) == 2 * 3, "three calls: rows [0, 1], [2] and [3]"
        expected = tiny_vlm.score([tiny_image], "what colour?", samples)
        for row in range(3):
            assert got[row] == pytest.approx(expected[row].logprobs, abs=1e-4)
        assert got[3] == pytest.approx(
            tiny_vlm.score([other], "what colour?", [samples[0]])[0].logprobs, abs=1e-4
        )
        passes.clear()
        monkeypatch.setattr(rewards, "_agreed_count", lambda count, device: count + 2)
        assert scorer.token_logprobs([prompt] * 4, ids, images) == got
        assert len(passes) == 2 * 5
    finally:
        hook.remove()
    assert tiny_vlm.model.training is False


def _agree(rank: int, folder: str) -> None:
    import torch.distributed as dist

    from catts_training.cdrl.rewards import _agreed_count

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        with open(f"{folder}/{rank}", "w") as out:
            out.write(str(_agreed_count(3 + 4 * rank, torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_processes_agree_on_the_largest_call_count(tmp_path: Any) -> None:
    torch.multiprocessing.spawn(_agree, args=(str(tmp_path),), nprocs=2)
    assert [(tmp_path / str(rank)).read_text() for rank in (0, 1)] == ["7", "7"]
