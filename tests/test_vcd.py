"""VCD: the contrastive formula by hand, the logits processor on the tiny real Qwen2.5-VL (greedy and
sampling, against independent full forward passes), and the sequence-level scores of the self-check."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
import torch
from PIL import Image

from catts_graph.perturb import diffusion
from catts_graph.vcd import (
    AnswerContrast,
    VCDLogitsProcessor,
    answer_contrast,
    answer_logprob,
    contrastive_logits,
    contrastive_score,
    grounding_score,
)

INF = math.inf

# -- contrastive_logits by hand ---------------------------------------------------------------------


def test_contrastive_logits_by_hand():
    logits = torch.tensor([2.0, 1.0, 0.0, -3.0])
    noised = torch.tensor([1.0, 1.5, 0.0, 0.0])
    # p_i / p_max = exp(l_i - 2): 1, 0.368, 0.135, 0.0067; beta = 0.1 keeps the first three
    # (cutoff 2 + ln 0.1 = -0.3026). Contrast 2 * l - n: 4 - 1 = 3, 2 - 1.5 = 0.5, 0 - 0 = 0.
    out = contrastive_logits(logits, noised, alpha=1.0, beta=0.1)
    assert out.tolist() == [3.0, 0.5, 0.0, -INF]
    # beta = 0.3 also cuts token 2 (0.135 < 0.3); alpha = 0.5: 1.5 * l - 0.5 * n = 2.5, 0.75
    out = contrastive_logits(logits, noised, alpha=0.5, beta=0.3)
    assert out.tolist() == [2.5, 0.75, -INF, -INF]
    # beta = 0: no cut, token 3: 2 * -3 - 0 = -6
    assert contrastive_logits(logits, noised, alpha=1.0, beta=0.0).tolist() == [3.0, 0.5, 0.0, -6.0]
    # alpha = 0, beta = 0: the logits themselves
    assert torch.equal(contrastive_logits(logits, noised, alpha=0.0, beta=0.0), logits)


def test_contrastive_logits_can_change_the_winner():
    # The noised image supports token 0 as much as the real one (a language prior); token 1 loses
    # support without the image. Original argmax 0; VCD: 2 * 3 - 3 = 3 against 2 * 2.8 - 1 = 4.6.
    logits = torch.tensor([3.0, 2.8, -1.0])
    noised = torch.tensor([3.0, 1.0, 0.0])
    assert contrastive_logits(logits, noised).argmax().item() == 1


def test_contrastive_logits_rows_are_independent():
    logits = torch.tensor([[2.0, 1.0, 0.0, -3.0], [0.0, 0.0, 5.0, 4.0]])
    noised = torch.tensor([[1.0, 1.5, 0.0, 0.0], [1.0, 1.0, 1.0, 2.0]])
    # row 1: max 5, cutoff 5 - 2.3026 = 2.697: tokens 2, 3 kept; 2 * 5 - 1 = 9, 2 * 4 - 2 = 6
    out = contrastive_logits(logits, noised)
    assert out.tolist() == [[3.0, 0.5, 0.0, -INF], [-INF, -INF, 9.0, 6.0]]
    assert torch.equal(out[1], contrastive_logits(logits[1], noised[1]))
    assert out.dtype == torch.float32
    assert contrastive_logits(logits.to(torch.bfloat16), noised.to(torch.bfloat16)).dtype == torch.float32


def test_contrastive_logits_edges():
    # the top token survives even beta = 1; an original -inf stays -inf whatever beta and noised say
    logits = torch.tensor([1.0, 0.5, -INF])
    assert contrastive_logits(logits, torch.zeros(3), beta=1.0).tolist() == [2.0, -INF, -INF]
    assert contrastive_logits(logits, torch.zeros(3), beta=0.0).tolist() == [2.0, 1.0, -INF]
    # noised -inf where the cut drops the token anyway is fine
    assert contrastive_logits(logits, torch.tensor([0.0, -INF, 0.0]), beta=0.9).tolist() == [2.0, -INF, -INF]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((torch.zeros(3), torch.zeros(4)), {}, ValueError, "logits_noised: shape"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), {}, ValueError, r"logits: expected shape \[V\]"),
        ((torch.zeros(0), torch.zeros(0)), {}, ValueError, "V > 0"),
        ((torch.zeros(3, dtype=torch.long), torch.zeros(3)), {}, TypeError, "logits:"),
        ((torch.zeros(3), [0.0, 0.0, 0.0]), {}, TypeError, "logits_noised:"),
        ((torch.zeros(3), torch.zeros(3)), {"alpha": -1.0}, ValueError, "alpha"),
        ((torch.zeros(3), torch.zeros(3)), {"alpha": INF}, ValueError, "alpha"),
        ((torch.zeros(3), torch.zeros(3)), {"beta": 1.5}, ValueError, "beta"),
        ((torch.zeros(3), torch.tensor([0.0, INF, 0.0])), {}, ValueError, "logits_noised: expected finite"),
    ],
)
def test_contrastive_logits_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        contrastive_logits(*args, **kwargs)


# -- sequence level ---------------------------------------------------------------------------------


def test_grounding_and_contrastive_score_by_hand():
    # mean(-0.1, -0.3) = -0.2; mean(-0.9, -1.1) = -1.0; g = -0.2 - (-1.0) = 0.8
    assert grounding_score([-0.1, -0.3], [-0.9, -1.1]) == pytest.approx(0.8)
    # (1 + 1) * -0.2 - 1 * -1.0 = 0.6 = mean_lp_orig + alpha * g
    assert contrastive_score(-0.2, -1.0, 1.0) == pytest.approx(0.6)
    assert contrastive_score(-0.2, -1.0, 0.5) == pytest.approx(-0.2 + 0.5 * 0.8)
    assert contrastive_score(-0.2, -1.0, 0.0) == -0.2
    with pytest.raises(ValueError, match="lp_orig"):
        grounding_score([], [])
    with pytest.raises(ValueError, match="lp_noised"):
        grounding_score([-0.1, -0.2], [-0.3])
    with pytest.raises(ValueError, match="alpha"):
        contrastive_score(-0.2, -1.0, -0.5)


def test_answer_logprob_by_hand():
    # "So it is \boxed{red}." with the answer "red" at [16, 19): its tokens "re", "d" and the "}"
    # that closes it: -0.25 - 0.125 - 0.0625. Neither the frame's " \boxed{" nor the "." counts.
    tokens = ["So", " it", " is", " \\boxed{", "re", "d", "}", "."]
    logprobs = [-1.0, -2.0, -3.0, -0.5, -0.25, -0.125, -0.0625, -4.0]
    assert answer_logprob(tokens, logprobs, 16, 19) == -0.4375
    # A token that writes part of the frame and part of the answer counts: "{12" and "}".
    assert answer_logprob(["x", "{12", "}"], [-1.0, -0.5, -0.25], 2, 4) == -0.75
    # "1" in "{1}" pays for ending there: "1" and "}" (in "{12}" the "}" would follow "2").
    assert answer_logprob(["{", "1", "}"], [-0.5, -0.25, -2.0], 1, 2) == -2.25
    # At the end of the text nothing closes the answer: the lone letter alone.
    assert answer_logprob(["Answer:", " ", "B"], [-1.0, -1.0, -0.5], 8, 9) == -0.5
    # An empty piece (a character split across tokens) counts with the character after it.
    assert answer_logprob(["a ", "", "\u00e9", "!", "?"], [-1.0, -0.5, -0.25, -0.125, -4.0], 2, 3) == -0.875


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["a", "b"], [-1.0], 0, 1), "logprobs: has 1 entries but tokens has 2"),
        ((["a", "b"], [-1.0, -1.0], 1, 1), "expected 0 <= start < end"),
        ((["a", "b"], [-1.0, -1.0], 5, 7), "none writes the characters \\[5, 7\\) of a 2-character text"),
    ],
)
def test_answer_logprob_errors(args, message):
    with pytest.raises(ValueError, match=message):
        answer_logprob(*args)


def test_answer_contrast_by_hand():
    # Two candidates on two frames. A: orig mean(-1, -3) = -2, noised mean(-2, -6) = -4, g = 2;
    # B: -0.5, -1.0, g = 0.5. alpha 1: 2 * -2 + 4 = 0, 2 * -0.5 + 1 = 0; alpha 0.5: -3 + 2 = -1,
    # -0.75 + 0.5 = -0.25.
    orig = [[-1.0, -3.0], [-0.5, -0.5]]
    noised = [[-2.0, -6.0], [-1.0, -1.0]]
    assert answer_contrast(orig, noised, 1.0) == [
        AnswerContrast(lp_orig=-2.0, lp_noised=-4.0, grounding=2.0, contrastive=0.0),
        AnswerContrast(lp_orig=-0.5, lp_noised=-1.0, grounding=0.5, contrastive=0.0),
    ]
    assert [c.contrastive for c in answer_contrast(orig, noised, 0.5)] == [-1.0, -0.25]
    assert answer_contrast([], [], 1.0) == []


@pytest.mark.parametrize(
    ("orig", "noised", "message"),
    [
        ([[-1.0]], [], "lp_noised: has 0 candidates but lp_orig has 1"),
        ([[-1.0, -2.0], [-1.0]], [[-1.0, -2.0], [-1.0, -2.0]], "lp_orig\\[1\\]: has 1 frames, expected 2"),
        ([[-1.0]], [[-1.0, -2.0]], "lp_noised\\[0\\]: has 2 frames, expected 1"),
        ([[]], [[]], "lp_orig\\[0\\]: has 0 frames, expected at least one"),
    ],
)
def test_answer_contrast_errors(orig, noised, message):
    with pytest.raises(ValueError, match=message):
        answer_contrast(orig, noised, 1.0)


def test_answer_contrast_is_the_sequence_level_formula():
    rows = [([-0.2, -1.4, -0.3], [-1.0, -0.9, -2.5]), ([-2.5, -0.1, 0.0], [-0.3, -4.0, -0.7])]
    for alpha in (0.0, 0.5, 1.0, 2.0):
        contrasts = answer_contrast([o for o, _ in rows], [n for _, n in rows], alpha)
        for (orig, noised), contrast in zip(rows, contrasts, strict=True):
            assert contrast.grounding == grounding_score(orig, noised)
            assert contrast.contrastive == contrastive_score(contrast.lp_orig, contrast.lp_noised, alpha)


def test_importing_vcd_and_perturb_does_not_load_torch():
    code = "import sys, catts_graph.vcd, catts_graph.perturb; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- the logits processor on the tiny Qwen2.5-VL ----------------------------------------------------

QUESTION = "What colour is the shape?"
GENERATE = {
    "max_new_tokens": 6,
    "return_dict_in_generate": True,
    "output_scores": True,
    "output_logits": True,
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    return model, AutoProcessor.from_pretrained(tiny_model_dir)


def encode(processor: Any, image: Image.Image, question: str = QUESTION) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


@pytest.fixture(scope="module")
def pair(tiny, tiny_image) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Processor inputs for the same prompt with the original and the VCD-noised image (step 500)."""
    _, processor = tiny
    return encode(processor, tiny_image), encode(processor, diffusion(tiny_image, 0.5, seed=0))


def full_forward_logits(model: Any, inputs: dict[str, torch.Tensor], sequence: torch.Tensor) -> torch.Tensor:
    """Next-token logits after ``sequence`` (prompt + generated) with the image of ``inputs``, no cache."""
    extra = sequence.shape[1] - inputs["input_ids"].shape[1]
    mm = inputs["mm_token_type_ids"]
    with torch.no_grad():
        out = model(
            input_ids=sequence,
            attention_mask=torch.ones_like(sequence),
            mm_token_type_ids=torch.cat(
                [mm.expand(sequence.shape[0], -1), mm.new_zeros(sequence.shape[0], extra)], 1
            ),
            pixel_values=inputs["pixel_values"].repeat(sequence.shape[0], 1),
            image_grid_thw=inputs["image_grid_thw"].repeat(sequence.shape[0], 1),
        )
    return out.logits[:, -1, :]


def plain_text_steps(sequences: torch.Tensor, prompt_length: int, vocab_text: int = 256) -> list[int]:
    """Steps whose generated prefix holds only byte tokens: a full forward pass cannot take a generated
    ``<|image_pad|>`` (the random model emits some), as it would ask for image features."""
    steps = []
    for step in range(sequences.shape[1] - prompt_length):
        if (sequences[:, prompt_length : prompt_length + step] >= vocab_text).any():
            break
        steps.append(step)
    return steps


def test_alpha_0_beta_0_leaves_greedy_decoding_unchanged(tiny, pair):
    model, _ = tiny
    inputs, noised = pair
    plain = model.generate(**inputs, do_sample=False, **GENERATE)
    vcd = VCDLogitsProcessor(model, noised, alpha=0.0, beta=0.0)
    with_vcd = model.generate(**inputs, do_sample=False, logits_processor=[vcd], **GENERATE)
    assert torch.equal(with_vcd.sequences, plain.sequences)
    # the main branch is undisturbed by the noised branch running beside it: identical raw logits
    for ours, theirs in zip(with_vcd.logits, plain.logits, strict=True):
        assert torch.equal(ours, theirs)
    for scores, logits in zip(with_vcd.scores, with_vcd.logits, strict=True):
        assert torch.equal(scores, logits)
    assert vcd.steps == plain.sequences.shape[1] - inputs["input_ids"].shape[1]


def test_each_step_equals_the_contrast_of_two_full_forward_passes(tiny, pair):
    model, _ = tiny
    inputs, noised = pair
    prompt_length = inputs["input_ids"].shape[1]
    vcd = VCDLogitsProcessor(model, noised, alpha=1.0, beta=0.8)  # beta high enough to cut tokens
    out = model.generate(**inputs, do_sample=False, logits_processor=[vcd], **GENERATE)
    steps = plain_text_steps(out.sequences, prompt_length)
    assert len(steps) >= 2  # the prefill and at least one cached decode step
    for step in steps:
        prefix = out.sequences[:, : prompt_length + step]
        original = full_forward_logits(model, inputs, prefix)
        perturbed = full_forward_logits(model, noised, prefix)
        expected = contrastive_logits(original, perturbed, alpha=1.0, beta=0.8)
        kept = torch.isfinite(expected)
        assert 1 <= int(kept.sum()) < expected.shape[-1]
        assert torch.allclose(out.logits[step], original, atol=1e-5)
        assert torch.equal(torch.isfinite(out.scores[step]), kept)
        assert torch.allclose(out.scores[step][kept], expected[kept], atol=1e-5)


def test_sampling_with_several_sequences_matches_full_forward_passes(tiny, pair):
    model, _ = tiny
    inputs, noised = pair
    prompt_length = inputs["input_ids"].shape[1]
    vcd = VCDLogitsProcessor(model, noised, alpha=1.0, beta=0.5)
    torch.manual_seed(0)
    # temperature 1 and top_k 0 add no warper, so the recorded scores are the processor's output
    out = model.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        num_return_sequences=3,
        logits_processor=[vcd],
        **GENERATE,
    )
    assert out.sequences.shape[0] == 3
    assert vcd.steps == out.sequences.shape[1] - prompt_length
    compared = 0
    for row in range(3):
        sequence = out.sequences[row : row + 1]
        for step in plain_text_steps(sequence, prompt_length):
            prefix = sequence[:, : prompt_length + step]
            expected = contrastive_logits(
                full_forward_logits(model, inputs, prefix),
                full_forward_logits(model, noised, prefix),
                beta=0.5,
            )
            kept = torch.isfinite(expected)
            assert torch.equal(torch.isfinite(out.scores[step][row]), kept[0])
            assert torch.allclose(out.scores[step][row][kept[0]], expected[kept], atol=1e-5)
            compared += 1
    assert compared >= 4


def test_greedy_goes_through_vcd_on_every_step(tiny, pair):
    """The official VCD code patches the sampling loop only: greedy decoding silently skips it."""
    model, _ = tiny
    inputs, noised = pair
    prompt_length = inputs["input_ids"].shape[1]
    vcd = VCDLogitsProcessor(model, noised)
    out = model.generate(**inputs, do_sample=False, logits_processor=[vcd], **GENERATE)
    generated = out.sequences[0, prompt_length:]
    assert vcd.steps == len(generated) == GENERATE["max_new_tokens"]
    for step, token in enumerate(generated.tolist()):
        assert out.scores[step].argmax(-1).item() == token  # the token is VCD's choice
        assert not torch.equal(out.scores[step], out.logits[step])  # and VCD changed the scores
    # one processor serves a second generation with the same prompt: it starts over
    again = model.generate(**inputs, do_sample=False, logits_processor=[vcd], **GENERATE)
    assert torch.equal(again.sequences, out.sequences) and vcd.steps == len(generated)


def test_sampling_goes_through_vcd_on_every_step(tiny, pair):
    model, _ = tiny
    inputs, noised = pair
    prompt_length = inputs["input_ids"].shape[1]
    runs = []
    for _ in range(2):
        vcd = VCDLogitsProcessor(model, noised)
        torch.manual_seed(7)
        sequences = model.generate(
            **inputs,
            do_sample=True,
            temperature=0.7,
            top_k=20,
            top_p=0.9,
            max_new_tokens=6,
            logits_processor=[vcd],
        )
        assert vcd.steps == sequences.shape[1] - prompt_length >= 1
        runs.append(sequences)
    assert torch.equal(runs[0], runs[1])  # reproducible for a torch seed


def test_the_main_branch_rope_deltas_are_restored(tiny, pair):
    model, _ = tiny
    inputs, noised = pair
    vcd = VCDLogitsProcessor(model, noised)
    sentinel = torch.tensor([[12345]])
    model.model.rope_deltas = sentinel
    prompt = inputs["input_ids"]
    scores = torch.zeros(1, model.config.text_config.vocab_size)
    vcd(prompt, scores)
    assert model.model.rope_deltas is sentinel
    vcd(torch.cat([prompt, torch.tensor([[65]])], dim=1), scores)
    assert model.model.rope_deltas is sentinel
    # the noised branch kept its own offsets, computed from its own prefill
    assert vcd._rope_deltas is not None and vcd._rope_deltas.item() != 12345
    model.model.rope_deltas = None


def test_processor_errors(tiny, pair, tiny_image):
    model, processor = tiny
    inputs, noised = pair
    # an image of another size has another number of image tokens: another prompt
    other = encode(processor, diffusion(tiny_image.resize((56, 56)), 0.5))
    with pytest.raises(ValueError, match="noised_inputs: its input_ids differ"):
        model.generate(
            **inputs, do_sample=False, max_new_tokens=2, logits_processor=[VCDLogitsProcessor(model, other)]
        )
    padded = {
        **noised,
        "attention_mask": torch.cat(
            [torch.zeros(1, 1, dtype=torch.long), noised["attention_mask"][:, 1:]], 1
        ),
    }
    with pytest.raises(ValueError, match="padding"):
        VCDLogitsProcessor(model, padded)
    with pytest.raises(ValueError, match="input_ids"):
        VCDLogitsProcessor(model, {"pixel_values": noised["pixel_values"]})
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        VCDLogitsProcessor(model, {k: v for k, v in noised.items() if k != "mm_token_type_ids"})
    with pytest.raises(ValueError, match="beta"):
        VCDLogitsProcessor(model, noised, beta=2.0)
    vcd = VCDLogitsProcessor(model, noised)
    scores = torch.zeros(1, model.config.text_config.vocab_size)
    with pytest.raises(RuntimeError, match="do not extend"):
        vcd(torch.cat([inputs["input_ids"], torch.tensor([[65]])], dim=1), scores)  # no prefill yet
    vcd(inputs["input_ids"], scores)
    vcd(torch.cat([inputs["input_ids"], torch.tensor([[65]])], dim=1), scores)
    with pytest.raises(RuntimeError, match="do not extend"):  # row reordered / rewritten, as in beam search
        vcd(torch.cat([inputs["input_ids"], torch.tensor([[66, 65]])], dim=1), scores)
    with pytest.raises(ValueError, match="noised_inputs: its input_ids differ"):
        vcd(torch.cat([inputs["input_ids"][:, :-1], torch.tensor([[66, 65]])], dim=1), scores)
    model.model.rope_deltas = None
