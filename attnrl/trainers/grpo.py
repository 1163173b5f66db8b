"""AttnGRPOTrainer: trl.GRPOTrainer whose advantages are re-weighted per token by attention credit.

A drop-in for ``trl.GRPOTrainer``: same constructor, same config (plus ``credit_*`` fields); ``model`` may also be
``"smollm2-135m-instruct"``, the embedded default. Advantages become (B, Tc) = gamma_t * A_i, which TRL's loss
accepts as they are (trl >= 1.16). Where the statistics come from:

- on-policy (TRL computes no old log-probs, so its loss forward runs on the rollout policy's weights): the
  statistics are recorded during that loss forward, and gamma is applied to ``inputs["advantages"]`` inside it,
  right after the last analysed layer and before the loss reads them — no extra forward at all;
- off-policy (TRL computes old log-probs: ``num_iterations > 1`` or ``steps_per_generation`` above the
  accumulation, vLLM importance sampling): the statistics are recorded during TRL's own no-grad old log-prob
  forward of the rollout policy at scoring time (every micro-batch of it) — again no extra forward;
- ``credit_stats_pass="separate"``: a no-grad statistics forward of the rollout policy at scoring time, stopped
  after the last analysed layer.

Credit is for the tokens TRL's loss trains on: ``completion_mask * tool_mask`` when the batch has a ``tool_mask``
(``tools=``, ``environment_factory``, a ``rollout_func`` returning ``env_mask``); tool and environment tokens get
gamma 1 and enter the statistics only as context (docs/methods.md §1.3.1).

TRL hands one buffered batch to the loss several times when ``num_iterations > 1`` (on-policy too, when the
accumulation is a multiple of ``steps_per_generation * num_iterations``). The group advantages A (B,) are kept
unshaped in the batch and gamma is always applied to them, so every use trains on gamma * A, never gamma^k * A.

Checkpoints carry the credit state (cached head profile, the ``random`` strategy's generator), restored on
``resume_from_checkpoint``; evaluation rollouts never set the cached training profile.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from attnrl.attention.collect import ForwardCaptures
from attnrl.credit.assigner import CreditAssigner, CreditResult
from attnrl.credit.config import CreditConfig, credit_config_from
from attnrl.credit.strategies import shape_advantages

from .sampling import warn_inherited_logits_processing

# forward arguments TRL keeps for vision-language models; the statistics pass needs the same inputs
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids",
                    "mm_token_type_ids")
# batch key of the group advantages A (B,) as TRL computed them; shaping always starts from these
UNSHAPED_ADVANTAGES = "_attnrl_unshaped_advantages"
# per-process file in each checkpoint folder holding CreditAssigner.state_dict()
CREDIT_STATE_FILE = "attnrl_credit_state_{rank}.pt"


def model_token_mask(batch: dict) -> torch.Tensor:
    """(B, Tc) bool: the completion tokens TRL's loss trains on, ``completion_mask * tool_mask`` (tool results and
    environment feedback have tool_mask 0), or ``completion_mask`` when the batch has no ``tool_mask``."""
    mask = batch["completion_mask"].bool()
    return mask & batch["tool_mask"].bool() if "tool_mask" in batch else mask


ASYNC_GRPO_REFUSAL = (
    "trl.experimental.async_grpo is not supported by attnrl: AsyncGRPOTrainer is not a GRPOTrainer subclass, its "
    "rollout worker computes one float advantage per sample and it packs rows through its own attention function, "
    "so token credit has nowhere to go. Use AttnGRPOTrainer with an AttnGRPOConfig (vLLM generation works there: "
    "use_vllm=True; the statistics are then recorded during TRL's old log-prob forward). See docs/trl_compatibility.md."
)


def refuse_async_config(args) -> None:
    """TypeError when ``args`` is TRL's AsyncGRPOConfig (a user combining the async trainer's config with ours)."""
    for cls in type(args).__mro__:
        if cls.__name__ == "AsyncGRPOConfig" and cls.__module__.startswith("trl.experimental.async_grpo"):
            raise TypeError(ASYNC_GRPO_REFUSAL)


@dataclass
class AttnGRPOConfig(GRPOConfig, CreditConfig):
    """``trl.GRPOConfig`` plus the ``credit_*`` fields of :class:`attnrl.credit.CreditConfig`."""

    def __post_init__(self):
        super().__post_init__()
        self.validate_credit()


class AttnGRPOTrainer(GRPOTrainer):
    """GRPO with preplan/anchor (or any registered) token credit. Accepts a plain GRPOConfig too (defaults)."""

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, *pargs, **kwargs):
        refuse_async_config(args)
        # credit settings are validated here, before TRL's (slow) model loading
        credit_cfg = credit_config_from(args) if args is not None else CreditConfig()
        if isinstance(model, str):  # "smollm2-135m-instruct" is the embedded default, like everywhere in attnrl
            from attnrl.models.default import resolve_model_path

            model = resolve_model_path(model)
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        self.credit_config = credit_cfg
        self.credit = CreditAssigner(credit_cfg, self.accelerator.unwrap_model(self.model))
        self.last_credit: CreditResult | None = None  # the most recent batch's weights (for reports and tests)
        self._capture_rollout_forward = False  # armed while TRL scores a batch whose old log-probs we record
        self._rollout_captures: ForwardCaptures | None = None
        # TRL's loss models softmax(logits / T); processors the rollout inherits from the model break the ratio
        self.inherited_logits_processing = warn_inherited_logits_processing(
            self.accelerator.unwrap_model(self.model), self.args.generation_kwargs, type(self).__name__
        )

    # ------------------------------------------------------------------------------- where statistics come from
    def _statistics_from_loss_forward(self, batch) -> bool:
        """True when the loss forward runs on the rollout policy, so it can supply the attention statistics."""
        return (
            "attention" in self.credit.needs
            and self.credit_config.credit_stats_pass == "auto"
            and "old_per_token_logps" not in batch
        )

    def _trl_computes_old_logps(self) -> bool:
        """TRL's own condition (``_generate_and_score_completions``) for its no-grad old log-prob forward."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return bool(self.args.gradient_accumulation_steps % generate_every != 0
                    or (self.use_vllm and self.vllm_importance_sampling_correction))

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's helper; while armed, its first no-grad call on the policy (the old log-prob forward, which TRL runs
        before any reference-model call) also records the attention statistics, micro-batch by micro-batch."""
        if not self._capture_rollout_forward or model is not self.model or torch.is_grad_enabled():
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)
        self._capture_rollout_forward = False  # later calls (reference log-probs) are not the rollout policy's
        with self.credit.capture_each_forward(self.accelerator.unwrap_model(model),
                                              input_ids.shape[1] - logits_to_keep) as captures:
            out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                             *args, **kwargs)
        if captures.rows == input_ids.shape[0]:
            self._rollout_captures = captures
        return out

    def _generate_and_score_completions(self, inputs):
        self._rollout_captures = None
        self._capture_rollout_forward = (
            "attention" in self.credit.needs and self.credit_config.credit_stats_pass == "auto"
            and self._trl_computes_old_logps()
        )
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._capture_rollout_forward = False
        captures, self._rollout_captures = self._rollout_captures, None
        if self._statistics_from_loss_forward(output):
            return output  # gamma is applied in _compute_loss
        training = self.model.training
        mode = "train" if training else "eval"
        batch_size = self.args.per_device_train_batch_size if training else self.args.per_device_eval_batch_size
        response = model_token_mask(output)
        start = time.perf_counter()
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            entropy = self._rollout_entropy(output, batch_size) if "entropy" in self.credit.needs else None
            if captures is not None and "old_per_token_logps" in output:  # recorded in TRL's old log-prob forward
                result = self.credit.from_statistics(captures.stats(), output["prompt_mask"],
                                                     output["completion_mask"], entropy, response_mask=response,
                                                     cache_profile=training)
                extra = captures.seconds
            else:
                result = self.credit.assign(
                    self.accelerator.unwrap_model(self.model),
                    output["prompt_ids"],
                    output["prompt_mask"],
                    output["completion_ids"],
                    output["completion_mask"],
                    entropy=entropy,
                    batch_size=batch_size,
                    response_mask=response,
                    cache_profile=training,
                    **{k: output[k] for k in _MULTIMODAL_KEYS if k in output},
                )
                extra = 0.0
        self._apply_credit(output, result, mode, time.perf_counter() - start + extra)
        return output

    def _compute_loss(self, model, inputs):
        if not self._statistics_from_loss_forward(inputs):
            return super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"

        def on_result(result: CreditResult) -> None:  # runs inside the forward, before the loss reads advantages
            self._apply_credit(inputs, result, mode)

        with self.credit.capture_during_forward(self.accelerator.unwrap_model(model), inputs["prompt_mask"],
                                                inputs["completion_mask"], on_result,
                                                response_mask=model_token_mask(inputs),
                                                cache_profile=self.model.training):
            return super()._compute_loss(model, inputs)

    def _apply_credit(self, batch: dict, result: CreditResult, mode: str, seconds: float | None = None) -> None:
        """``batch["advantages"]`` = (B, Tc) gamma * A, from the unshaped A (B,) kept under UNSHAPED_ADVANTAGES
        (idempotent: a reused batch is never shaped twice); log the credit metrics (``seconds``: extra time)."""
        unshaped = batch.setdefault(UNSHAPED_ADVANTAGES, batch["advantages"])
        batch["advantages"] = shape_advantages(
            unshaped, result.gamma, model_token_mask(batch), self.credit_config.credit_sign_mode
        )
        if seconds is not None and result.metrics:  # an empty micro-batch logs nothing (no credit/* at all)
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

    # ------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint plus this process's credit state (cached head profile, generators) beside it."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self.credit.state_dict(),
                   os.path.join(folder, CREDIT_STATE_FILE.format(rank=self.args.process_index)))

    def _load_optimizer_and_scheduler(self, checkpoint):
        """TRL's resume plus the credit state saved by :meth:`_save_checkpoint` (when the checkpoint has one)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, CREDIT_STATE_FILE.format(rank=self.args.process_index))
        if os.path.exists(path):
            self.credit.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
