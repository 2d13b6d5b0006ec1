"""CDRL's ``GRPOTrainer``: TRL's trainer with a sampler that keeps each item's two rows together.

GRPO draws ``num_generations`` rollouts per prompt row, in generation batches of
``generation_batch_size`` rows (``per_device_train_batch_size x processes x steps_per_generation``),
each process generating and scoring its own contiguous slice. The perceptual-sensitivity reward of
an item's noised rollouts needs the same item's original rollouts of the same step, so:

- :class:`~catts_training.cdrl.data.PairedRepeatSampler` replaces TRL's ``RepeatSampler``: pairs are
  shuffled, not rows, and a pair's two rows sit next to each other, so they always fall in one
  generation batch (TRL has no setting for the sampler; this is the trainer's one override);
- :func:`check_pair_layout` refuses, before the model loads, a layout whose generation batch holds
  an odd number of prompts;
- the two rows may still land on different processes (a process slice can end between them), so
  the reward gathers ``(pair_id, variant, NMLP)`` from every process
  (:class:`~catts_training.cdrl.rewards.PerceptualSensitivityReward`) instead of constraining the slices.
"""

from __future__ import annotations

from typing import Any

from trl import GRPOTrainer

from catts_training.cdrl.data import PairedRepeatSampler, pair_rows

__all__ = ["CDRLTrainer", "check_pair_layout"]


def check_pair_layout(args: Any, pairs: int) -> None:
    """Raise ``ValueError`` unless a ``trl.GRPOConfig``'s generation batch holds whole pairs
    (an even number of prompts), there are enough pairs to fill one, and the rewards get the
    dataset's columns."""
    prompts = args.generation_batch_size // args.num_generations
    if prompts % 2:
        raise ValueError(
            f"grpo: a generation batch holds {prompts} prompts (generation_batch_size "
            f"{args.generation_batch_size} = per_device_train_batch_size {args.per_device_train_batch_size}"
            f" x {args.world_size} processes x steps_per_generation {args.steps_per_generation}, over "
            f"num_generations {args.num_generations}); CDRL needs an even number, so that each item's "
            "original and noised rows are sampled in the same step: change per_device_train_batch_size, "
            "gradient_accumulation_steps (or steps_per_generation) or num_generations"
        )
    if 2 * pairs < prompts:
        raise ValueError(
            f"data: {pairs} pairs make {2 * pairs} prompt rows, fewer than the {prompts} prompts of one "
            "generation batch; give more items or a smaller batch"
        )
    if args.remove_unused_columns:
        raise ValueError(
            "grpo.remove_unused_columns: must stay false; the rewards read the dataset's columns "
            "(answer, options, pair_id, variant)"
        )


class CDRLTrainer(GRPOTrainer):  # type: ignore[misc]
    """``trl.GRPOTrainer`` on a dataset of :func:`~catts_training.cdrl.data.to_grpo_dataset` (columns
    ``pair_id`` and ``variant``), sampling with :class:`~catts_training.cdrl.data.PairedRepeatSampler`.
    Takes ``GRPOTrainer``'s arguments, ``args`` and ``train_dataset`` by keyword."""

    def __init__(self, *, args: Any, train_dataset: Any, **kwargs: Any) -> None:
        pairs = pair_rows(list(train_dataset["pair_id"]), list(train_dataset["variant"]))
        check_pair_layout(args, len(pairs))
        super().__init__(args=args, train_dataset=train_dataset, **kwargs)
        self.pairs = pairs

    def _get_train_sampler(self, dataset: Any = None) -> PairedRepeatSampler:
        # The same arguments as GRPOTrainer gives its RepeatSampler, in prompts per generation batch.
        return PairedRepeatSampler(
            self.pairs,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )
