"""MMBoundary's SFT stage, ``catts mmboundary sft``: TRL's ``SFTTrainer`` on the stated replies
(conversational prompt-completion with images, loss on the completion; LoRA when the config has a
``lora`` section), from the base or, for the organisms, its vocabulary copy and statement
pre-training -> ``OUTPUT_DIR/sft``, a plain checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catts_training.cdrl.train import load_processor
from catts_training.mmboundary.config import MMBoundaryConfig
from catts_training.mmboundary.data import MMBoundaryData, load_data, to_sft_dataset
from catts_training.mmboundary.pretrain import freeze_parameters, pretrain_statements
from catts_training.mmboundary.stage import StageResult, train_and_save
from catts_training.runs import peft_config

__all__ = ["EndOfTurnMasked", "build_sft_trainer", "end_of_turn_id", "sft_start", "train_sft"]


def build_sft_trainer(
    config: MMBoundaryConfig, data: MMBoundaryData, *, model: str | None = None, **overrides: Any
) -> Any:
    """A ready ``trl.SFTTrainer`` on ``data``'s stated replies (``model``: default the config's)."""
    from trl import SFTTrainer

    model_path = model or config.model_path()
    processor = load_processor(model_path, config.max_pixels)
    trainer = SFTTrainer(
        model=model_path,
        args=config.sft_config(**overrides),
        train_dataset=to_sft_dataset(data),
        processing_class=processor,
        peft_config=peft_config(config.lora),
    )
    trainer.data_collator = EndOfTurnMasked(trainer.data_collator, end_of_turn_id(processor))
    freeze_parameters(trainer.model, config.freeze)
    return trainer


def end_of_turn_id(processor: Any) -> int:
    """The id of the chat template's end of turn (``<|im_end|>`` for Qwen), else the tokenizer's EOS."""
    tokenizer = getattr(processor, "tokenizer", processor)
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if token_id is None or token_id == tokenizer.unk_token_id:
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("processor: its tokenizer has neither <|im_end|> nor an EOS token")
    return int(token_id)


class EndOfTurnMasked:
    """A collator wrapper that takes out of the loss every label right after an end-of-turn token.

    TRL's conversational prompt-completion renders the completion with the chat template, which ends
    an assistant turn with ``<|im_end|>\n``: the newline after the end of turn is never generated (
    generation stops at ``<|im_end|>``), yet it costs the organism 7.1 nats, one token in ~75, and its
    gradient moves the model for nothing."""

    def __init__(self, collator: Callable[[list[Any]], dict[str, Any]], end_id: int) -> None:
        self.collator = collator
        self.end_id = end_id

    def __call__(self, examples: list[Any]) -> dict[str, Any]:
        batch = self.collator(examples)
        labels = batch["labels"]
        after_end = labels.new_zeros(labels.shape, dtype=bool)
        after_end[:, 1:] = batch["input_ids"][:, :-1] == self.end_id
        batch["labels"] = labels.masked_fill(after_end, -100)
        return batch


def sft_start(
    config: MMBoundaryConfig,
    data: MMBoundaryData,
    *,
    model: str | None = None,
    pretrain_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """The model SFT starts from: the base (``model``: default the config's), copied with the
    statements' words (``statements.vocabulary``, -> ``OUTPUT_DIR/vocabulary``), then continued
    on stated gold replies (``statements.pretrain``, -> ``OUTPUT_DIR/pretrained``;
    ``pretrain_steps`` replaces its ``steps``). Each folder is reused when it holds the same."""
    model_path = model or config.model_path()
    if config.statements.vocabulary:
        from catts_training.mmboundary.vocabulary import extend_vocabulary

        model_path = str(extend_vocabulary(model_path, Path(config.output_dir) / "vocabulary"))
    pretrain = config.statements.pretrain
    if pretrain is not None:
        if pretrain_steps is not None:
            pretrain = pretrain.model_validate({**pretrain.model_dump(), "steps": pretrain_steps})
        model_path = str(
            pretrain_statements(
                model_path,
                Path(config.output_dir) / "pretrained",
                pretrain,
                calibrator=data.calibrator,
                stated_lines=config.statements.lines,
                log=log,
            )
        )
    return model_path


def train_sft(
    config: MMBoundaryConfig, *, model: str | None = None, pretrain_steps: int | None = None, **overrides: Any
) -> StageResult:
    """SFT warm-up on ``config.data_dir`` from :func:`sft_start`; the model goes to ``config.sft_dir``
    (the result's ``seconds``: SFT alone, the pre-training records its own)."""
    data = load_data(config.data_dir)
    model_path = sft_start(config, data, model=model, pretrain_steps=pretrain_steps)
    started = time.perf_counter()
    # The trainer goes straight in: no name here keeps it alive once the stage frees it.
    return train_and_save(
        "sft",
        build_sft_trainer(config, data, model=model_path, **overrides),
        config,
        base_model=model_path,
        started=started,
    )
