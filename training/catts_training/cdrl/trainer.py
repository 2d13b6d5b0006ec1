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

With a ``confidence_loss`` (:class:`~catts_training.cdrl.confidence_loss.ConfidenceLossConfig`, any weight
non-zero) the trainer also adds CDRL's differentiable confidence terms to GRPO's loss. TRL's loss has
no per-row extra term (its ``entropy_coef`` treats every row alike), so three small overrides carry
what the terms need through TRL's buffering, shuffling and splitting of the generation batch:

- :meth:`CDRLTrainer._calculate_rewards` keeps this process's slice of the accuracy reward;
- :meth:`CDRLTrainer._generate_and_score_completions` puts each row's ``cdrl_noised`` (its
  ``variant``) and ``cdrl_correct`` into the batch dict, whose tensors TRL shuffles and splits with
  the completions, so they stay aligned with them;
- :meth:`CDRLTrainer._compute_loss` catches the per-token entropies and log-probabilities of the
  policy's forward pass (:meth:`_get_per_token_logps_and_entropies`, with their gradients), masks the
  stop token and adds each weighted term divided by the gradient-accumulation steps, as TRL scales
  its own loss; each term is logged as ``cdrl/loss_<name>``.
"""

from __future__ import annotations

from typing import Any

from trl import GRPOTrainer

from catts_training.cdrl.confidence_loss import CONFIDENCE_TERMS, ConfidenceLossConfig, confidence_terms
from catts_training.cdrl.data import NOISED, PairedRepeatSampler, pair_rows

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
    Takes ``GRPOTrainer``'s arguments, ``args`` and ``train_dataset`` by keyword, and
    ``confidence_loss`` (None or all weights zero: the paper's reward-only GRPO)."""

    def __init__(
        self,
        *,
        args: Any,
        train_dataset: Any,
        confidence_loss: ConfidenceLossConfig | None = None,
        **kwargs: Any,
    ) -> None:
        pairs = pair_rows(list(train_dataset["pair_id"]), list(train_dataset["variant"]))
        check_pair_layout(args, len(pairs))
        self.confidence_loss = confidence_loss or ConfidenceLossConfig()
        if self.confidence_loss.clean_kl and not args.beta:
            raise ValueError(
                "confidence_loss.clean_kl: needs grpo.beta > 0 (TRL then computes the reference "
                "model's log-probabilities the term reads)"
            )
        super().__init__(args=args, train_dataset=train_dataset, **kwargs)
        self.pairs = pairs
        if self.confidence_loss.brier and "accuracy" not in self.reward_func_names:
            raise ValueError(
                "confidence_loss.brier: needs the accuracy reward among the rewards (its correctness)"
            )
        self._local_accuracy: Any = None
        self._caught: tuple[Any, Any] | None = None
        self._stop_ids: Any = None

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

    # -- confidence terms ------------------------------------------------------------------------

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> Any:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.confidence_loss.active and "accuracy" in self.reward_func_names:
            # TRL returns every process's rows; this process's are the slice it takes for advantages.
            start = self.accelerator.process_index * len(prompts)
            column = self.reward_func_names.index("accuracy")
            self._local_accuracy = rewards[start : start + len(prompts), column].clone()
        return rewards

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        if self.confidence_loss.active:
            import torch

            device = output["completion_ids"].device
            output["cdrl_noised"] = torch.tensor([row["variant"] == NOISED for row in inputs], device=device)
            if self._local_accuracy is not None:
                output["cdrl_correct"] = torch.nan_to_num(self._local_accuracy.to(device), nan=0.0)
                self._local_accuracy = None
        return output

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._caught is None and entropies is not None and logps.requires_grad:
            self._caught = (logps, entropies)
        return logps, entropies, aux

    def _compute_loss(self, model: Any, inputs: Any) -> Any:
        if not self.confidence_loss.active:
            return super()._compute_loss(model, inputs)
        self._caught = None
        loss = super()._compute_loss(model, inputs)
        caught, self._caught = self._caught, None
        if caught is None:  # evaluation, or a forward pass without gradients
            return loss
        logps, entropies = caught
        terms = confidence_terms(
            self.confidence_loss,
            entropies=entropies,
            logprobs=logps,
            mask=self._answer_mask(inputs["completion_ids"], inputs["completion_mask"]),
            noised=inputs["cdrl_noised"],
            correct=inputs.get("cdrl_correct"),
            ref_logprobs=inputs.get("ref_per_token_logps"),
        )
        mode = "train" if self.model.training else "eval"
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        weights = self.confidence_loss.weights
        for name in CONFIDENCE_TERMS:
            if name in terms:
                loss = loss + weights[name] * terms[name] / scale
                self._metrics[mode][f"cdrl/loss_{name}"].append(
                    self.accelerator.gather(terms[name].detach()).mean().item()
                )
        return loss

    def _answer_mask(self, completion_ids: Any, completion_mask: Any) -> Any:
        """TRL's completion mask without the stop token, which the rewards' NMLP leaves out too."""
        import torch

        from catts_graph.models.transformers_vlm import stop_token_ids

        if self._stop_ids is None:
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
            ids = sorted(stop_token_ids(self.accelerator.unwrap_model(self.model), tokenizer))
            self._stop_ids = torch.tensor(ids, device=completion_ids.device, dtype=completion_ids.dtype)
        return completion_mask * ~torch.isin(completion_ids, self._stop_ids.to(completion_ids.device))
