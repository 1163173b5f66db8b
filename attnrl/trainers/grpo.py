"""AttnGRPOTrainer: trl.GRPOTrainer whose advantages are re-weighted per token by attention credit.

A drop-in for ``trl.GRPOTrainer``: same constructor, same config (plus ``credit_*`` fields). Advantages become
(B, Tc) = gamma_t * A_i, which TRL's loss accepts as they are (trl >= 1.16). Where the statistics come from:

- on-policy (TRL computes no old log-probs, so its loss forward runs on the rollout policy's weights): the
  statistics are recorded during that loss forward, and gamma is applied to ``inputs["advantages"]`` inside it,
  right after the last analysed layer and before the loss reads them — no extra forward at all;
- otherwise (gradient accumulation not a multiple of ``steps_per_generation * num_iterations``, vLLM importance
  sampling, ``credit_stats_pass="separate"``): a no-grad statistics forward of the rollout policy at scoring time,
  stopped after the last analysed layer.

TRL hands one buffered batch to the loss several times when ``num_iterations > 1`` (on-policy too, when the
accumulation is a multiple of ``steps_per_generation * num_iterations``). The group advantages A (B,) are kept
unshaped in the batch and gamma is always applied to them, so every use trains on gamma * A, never gamma^k * A.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from attnrl.credit.assigner import CreditAssigner, CreditResult
from attnrl.credit.config import CreditConfig, credit_config_from
from attnrl.credit.strategies import shape_advantages

from .sampling import warn_inherited_logits_processing

# forward arguments TRL keeps for vision-language models; the statistics pass needs the same inputs
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids",
                    "mm_token_type_ids")
# batch key of the group advantages A (B,) as TRL computed them; shaping always starts from these
UNSHAPED_ADVANTAGES = "_attnrl_unshaped_advantages"


@dataclass
class AttnGRPOConfig(GRPOConfig, CreditConfig):
    """``trl.GRPOConfig`` plus the ``credit_*`` fields of :class:`attnrl.credit.CreditConfig`."""

    def __post_init__(self):
        super().__post_init__()
        self.validate_credit()


class AttnGRPOTrainer(GRPOTrainer):
    """GRPO with preplan/anchor (or any registered) token credit. Accepts a plain GRPOConfig too (defaults)."""

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, *pargs, **kwargs):
        # credit settings are validated here, before TRL's (slow) model loading
        credit_cfg = credit_config_from(args) if args is not None else CreditConfig()
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        self.credit_config = credit_cfg
        self.credit = CreditAssigner(credit_cfg, self.accelerator.unwrap_model(self.model))
        self.last_credit: CreditResult | None = None  # the most recent batch's weights (for reports and tests)
        # TRL's loss models softmax(logits / T); processors the rollout inherits from the model break the ratio
        self.inherited_logits_processing = warn_inherited_logits_processing(
            self.accelerator.unwrap_model(self.model), self.args.generation_kwargs, type(self).__name__
        )

    def _statistics_from_loss_forward(self, batch) -> bool:
        """True when the loss forward runs on the rollout policy, so it can supply the attention statistics."""
        return (
            "attention" in self.credit.needs
            and self.credit_config.credit_stats_pass == "auto"
            and "old_per_token_logps" not in batch
        )

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self._statistics_from_loss_forward(output):
            return output  # gamma is applied in _compute_loss
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        start = time.perf_counter()
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            entropy = self._rollout_entropy(output, batch_size) if "entropy" in self.credit.needs else None
            result = self.credit.assign(
                self.accelerator.unwrap_model(self.model),
                output["prompt_ids"],
                output["prompt_mask"],
                output["completion_ids"],
                output["completion_mask"],
                entropy=entropy,
                batch_size=batch_size,
                **{k: output[k] for k in _MULTIMODAL_KEYS if k in output},
            )
        self._apply_credit(output, result, mode, time.perf_counter() - start)
        return output

    def _compute_loss(self, model, inputs):
        if not self._statistics_from_loss_forward(inputs):
            return super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"

        def on_result(result: CreditResult) -> None:  # runs inside the forward, before the loss reads advantages
            self._apply_credit(inputs, result, mode)

        with self.credit.capture_during_forward(self.accelerator.unwrap_model(model), inputs["prompt_mask"],
                                                inputs["completion_mask"], on_result):
            return super()._compute_loss(model, inputs)

    def _apply_credit(self, batch: dict, result: CreditResult, mode: str, seconds: float | None = None) -> None:
        """``batch["advantages"]`` = (B, Tc) gamma * A, from the unshaped A (B,) kept under UNSHAPED_ADVANTAGES
        (idempotent: a reused batch is never shaped twice); log the credit metrics (``seconds``: extra time)."""
        unshaped = batch.setdefault(UNSHAPED_ADVANTAGES, batch["advantages"])
        batch["advantages"] = shape_advantages(
            unshaped, result.gamma, batch["completion_mask"].bool(), self.credit_config.credit_sign_mode
        )
        if seconds is not None:
            result.metrics["credit/seconds"] = seconds
        for name, value in result.metrics.items():
            self._metrics[mode][name].append(value)
        self.last_credit = result

    def _rollout_entropy(self, output, batch_size: int) -> torch.Tensor:
        """Per-token entropy (B, Tc) of the rollout policy, via TRL's own log-prob helper."""
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
        _, entropies, _ = self._get_per_token_logps_and_entropies(
            self.model, ids, mask, output["completion_ids"].shape[1], batch_size=batch_size, compute_entropy=True,
            num_images=output.get("num_images"), **{k: output[k] for k in _MULTIMODAL_KEYS if k in output},
        )
        return entropies
