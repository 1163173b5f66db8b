"""AttnGRPOTrainer: trl.GRPOTrainer whose advantages are re-weighted per token by attention credit.

A drop-in for ``trl.GRPOTrainer``: same constructor, same config (plus ``credit_*`` fields). The one hook it
overrides is ``_generate_and_score_completions``: after TRL has generated, scored and normalised the group
advantages (B,), a statistics-only forward of the rollout policy (stopped after the last analysed layer) gives
WAAD/FAI, the chosen strategy gives gamma (B, Tc), and the trainer hands TRL (B, Tc) advantages, which TRL's
loss accepts as they are (trl >= 1.16).
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

# forward arguments TRL keeps for vision-language models; the statistics pass needs the same inputs
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids",
                    "mm_token_type_ids")


@dataclass
class AttnGRPOConfig(GRPOConfig, CreditConfig):
    """``trl.GRPOConfig`` plus the ``credit_*`` fields of :class:`attnrl.credit.CreditConfig`."""

    def __post_init__(self):
        super().__post_init__()
        self.validate_credit()


class AttnGRPOTrainer(GRPOTrainer):
    """GRPO with preplan/anchor (or any registered) token credit. Accepts a plain GRPOConfig too (defaults)."""

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, *pargs, **kwargs):
        credit_cfg = credit_config_from(args) if args is not None else CreditConfig()
        credit_cfg.validate_credit()  # fail before the (slow) model load
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        self.credit_config = credit_cfg
        self.credit = CreditAssigner(credit_cfg, self.accelerator.unwrap_model(self.model))
        self.last_credit: CreditResult | None = None  # the most recent batch's weights (for reports and tests)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        completion_mask = output["completion_mask"]
        start = time.perf_counter()
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            entropy = self._rollout_entropy(output, batch_size) if "entropy" in self.credit.needs else None
            result = self.credit.assign(
                self.accelerator.unwrap_model(self.model),
                output["prompt_ids"],
                output["prompt_mask"],
                output["completion_ids"],
                completion_mask,
                entropy=entropy,
                batch_size=batch_size,
                **{k: output[k] for k in _MULTIMODAL_KEYS if k in output},
            )
        output["advantages"] = shape_advantages(
            output["advantages"], result.gamma, completion_mask.bool(), self.credit_config.credit_sign_mode
        )
        result.metrics["credit/seconds"] = time.perf_counter() - start
        for name, value in result.metrics.items():
            self._metrics[mode][name].append(value)
        self.last_credit = result
        return output

    def _rollout_entropy(self, output, batch_size: int) -> torch.Tensor:
        """Per-token entropy (B, Tc) of the rollout policy, via TRL's own log-prob helper."""
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
        _, entropies, _ = self._get_per_token_logps_and_entropies(
            self.model, ids, mask, output["completion_ids"].shape[1], batch_size=batch_size, compute_entropy=True,
            **{k: output[k] for k in _MULTIMODAL_KEYS if k in output},
        )
        return entropies
