"""CDRL rewards on hand-computed inputs, and the policy re-scoring against TransformersVLM.score."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from training.cdrl.rewards import (
    REWARD_NAMES,
    AccuracyReward,
    CalibrationReward,
    FormatReward,
    PerceptualSensitivityReward,
    PolicyScorer,
    build_rewards,
    ends_with_boxed,
)

OPTIONS = ["red", "green", "blue", "yellow"]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


class TableScorer:
    """NMLP looked up by (image tag, row): images are strings "orig" / "noised" in these tests."""

    def __init__(self, table: dict[str, Sequence[float | None]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def nmlp(self, prompts: Any, completion_ids: Any, images: Sequence[Any]) -> list[float | None]:
        tag = images[0][0]
        self.calls.append(tag)
        return list(self.table[tag])


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


def test_perceptual_sensitivity_is_the_clipped_scaled_gap_and_logs_its_parts() -> None:
    scorer = TableScorer({"orig": [0.5, 1.0, 2.0, None], "noised": [1.5, 0.8, 5.0, 1.0]})
    logged: dict[str, float] = {}
    reward = PerceptualSensitivityReward(scorer, scale=2.0, clip=(-1.0, 1.0))
    values = reward(
        [None] * 4,
        [chat("x")] * 4,
        [[1], [2], [3], []],
        images=[["orig"]] * 4,
        noised_images=[["noised"]] * 4,
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    # gaps 1.0, -0.2, 3.0 (clipped to 1.0), undefined
    assert values[:3] == pytest.approx([2.0, -0.4, 2.0])
    assert values[3] is None
    assert logged["cdrl/nmlp_original"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    assert logged["cdrl/nmlp_noised"] == pytest.approx((1.5 + 0.8 + 5.0 + 1.0) / 4)
    assert logged["cdrl/nmlp_gap"] == pytest.approx((1.0 - 0.2 + 3.0) / 3)


def test_calibration_signed_and_brier() -> None:
    scorer = TableScorer({"orig": [0.0, math.log(2), math.log(4)]})
    completions = [chat("\\boxed{A}"), chat("\\boxed{B}"), chat("\\boxed{C}")]
    kwargs = {"answer": ["A", "A", "C"], "options": [OPTIONS] * 3, "images": [["orig"]] * 3}
    signed = CalibrationReward(scorer)(None, completions, [[1]] * 3, **kwargs)
    assert signed == pytest.approx([1.0, -0.5, 0.25])  # c = 1, 0.5, 0.25; right, wrong, right
    brier = CalibrationReward(scorer, variant="brier")(None, completions, [[1]] * 3, **kwargs)
    assert brier == pytest.approx([1.0, 1 - 2 * 0.25, 1 - 2 * 0.75**2])


def test_reward_set_names_plain_callables_and_errors() -> None:
    rewards = build_rewards(TableScorer({}))
    assert [r.__name__ for r in rewards] == list(REWARD_NAMES)
    assert not any(isinstance(r, torch.nn.Module) for r in rewards)
    with pytest.raises(KeyError, match="noised_images"):
        rewards[2]([None], [chat("x")], [[1]], images=[["orig"]])
    with pytest.raises(ValueError, match="low < high"):
        PerceptualSensitivityReward(TableScorer({}), clip=(1.0, 0.0))
    with pytest.raises(ValueError, match="variant"):
        CalibrationReward(TableScorer({}), variant="bogus")  # type: ignore[arg-type]


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

    # One training step: sensitivity scores original and noised, calibration reuses the original.
    sensitivity, calibration = build_rewards(scorer)[2:]
    columns = {
        "images": [[tiny_image], [other]],
        "noised_images": [[other], [tiny_image]],
        "answer": ["A", "B"],
        "options": [None, None],
    }
    completions = [chat("x"), chat("y")]
    ids = [samples[1].token_ids, samples[0].token_ids]
    calls.clear()
    sensitivity(prompts, completions, ids, **columns)
    forward_passes = len(calls)
    calibration(prompts, completions, ids, **columns)
    assert len(calls) == forward_passes


def test_unbound_scorer_says_so(tiny_vlm: Any) -> None:
    with pytest.raises(RuntimeError, match="bind"):
        PolicyScorer(tiny_vlm.processor).nmlp([[]], [[1]], [[None]])


def test_policy_scorer_prefills_a_shared_prompt_once_and_keeps_processes_in_step(
    tiny_vlm: Any, tiny_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRPO's completions of one prompt share one prefix; every call is two forward passes, and a
    process with fewer calls than the others repeats its last one (ZeRO-3 needs the same calls)."""
    from PIL import Image

    from training.cdrl import rewards

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

    from training.cdrl.rewards import _agreed_count

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        with open(f"{folder}/{rank}", "w") as out:
            out.write(str(_agreed_count(3 + 4 * rank, torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_processes_agree_on_the_largest_call_count(tmp_path: Any) -> None:
    torch.multiprocessing.spawn(_agree, args=(str(tmp_path),), nprocs=2)
    assert [(tmp_path / str(rank)).read_text() for rank in (0, 1)] == ["7", "7"]
