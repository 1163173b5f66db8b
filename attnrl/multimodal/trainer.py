"""AVARGRPOTrainer: AttnGRPOTrainer whose rewards may use the policy's attention (AVAR, docs/methods.md §2).

Rewards are needed before advantages, so the attention term of r_visual comes from a no-grad statistics forward at
scoring time, and that one forward also serves credit assignment whenever credit needs a scoring-time pass:

1. ``_generate_single_turn`` (TRL hook) keeps the prompt ids and image tensors it generated from.
2. ``_calculate_rewards`` (TRL hook, runs before advantages) builds the padded rollout batch exactly as TRL does
   (left-padded prompts + right-padded completions), derives the token sets V/S/U/R, and runs one capture pass with
   ``key_masks = [V, S]``, stopped after the deepest layer it needs. Each completion's attention term (mean over R
   of the layer mean of mass_V / (mass_S + eps) of head-mean attention) is added to the batch as the column
   ``avar_visual_ratio``, which TRL hands to every reward function; :func:`attnrl.rewards.visual.visual_anchor_reward`
   gates it by correctness. TRL then weights and normalises the rewards as usual (``reward_weights`` =
   [1.0, 0.3, 0.1] for r_acc + 0.3 r_visual + 0.1 r_format).
3. Credit statistics: when AttnGRPOTrainer takes them from the loss forward (on-policy, ``credit_stats_pass="auto"``)
   the AVAR pass covers only the AVAR layers (0..7 by default: the cheapest extra forward); otherwise it also covers
   the credit layers and hands them to :class:`SharedPassCreditAssigner`, which reuses them instead of running its
   own pass (checked on the ids and mask; on any mismatch it runs its own pass, so a wrong guess costs time only).

Prompts need system tokens (S): the Qwen2-VL / Qwen2.5-VL templates insert a default system turn; with a template
that does not, the trainer refuses a dataset whose first prompt has no system message (at construction) and any
rollout row without S (at scoring), instead of dividing by eps.

Logged: ``avar/visual_ratio`` (mean attention term), ``avar/vas`` (VAS of the prompts over the AVAR layers).
Tool-calling rollouts (several generation turns) are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

from attnrl.attention.capture import num_layers
from attnrl.attention.collect import collect_statistics
from attnrl.credit.assigner import CreditAssigner
from attnrl.kernels.dispatch import AttentionStats
from attnrl.rewards.visual import AVAR_RATIO_COLUMN
from attnrl.trainers.grpo import AttnGRPOConfig, AttnGRPOTrainer

from .scores import AVAR_EPS, resolve_avar_layers, visual_anchor_ratio, visual_attention_score
from .tokens import SpecialTokenIds, require_system_span, token_sets

__all__ = ["AVARConfig", "AVARGRPOConfig", "AVARGRPOTrainer", "SharedPassCreditAssigner"]


@dataclass
class AVARConfig:
    """Settings of the visual-anchored reward's attention term."""

    avar_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Decoder layers L' of r_visual (and the logged VAS). Default: 0..7 (the released recipe), "
                  "clipped to the model's layers."},
    )
    avar_eps: float = field(default=AVAR_EPS, metadata={"help": "eps in mass_V / (mass_S + eps)."})


@dataclass
class AVARGRPOConfig(AttnGRPOConfig, AVARConfig):
    """``AttnGRPOConfig`` (trl.GRPOConfig + credit_*) plus the ``avar_*`` fields."""

    def __post_init__(self):
        super().__post_init__()
        if self.avar_eps <= 0:
            raise ValueError(f"avar_eps={self.avar_eps} must be > 0")


class SharedPassCreditAssigner(CreditAssigner):
    """A CreditAssigner that reuses statistics already computed for the same padded batch (once)."""

    shared: tuple[torch.Tensor, torch.Tensor, dict[int, AttentionStats]] | None = None
    last_reused: bool = False

    def share(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, stats: dict[int, AttentionStats]) -> None:
        """Offer ``stats`` (covering ``self.layers``) for the next request about this (B, T) batch."""
        self.shared = (input_ids, attention_mask, {layer: stats[layer] for layer in self.layers})

    def collect_statistics(self, model, input_ids, attention_mask, resp_start, batch_size=None, **forward_kwargs):
        shared, self.shared = self.shared, None
        self.last_reused = (
            shared is not None and shared[0].shape == input_ids.shape
            and torch.equal(shared[0], input_ids) and torch.equal(shared[1], attention_mask)
        )
        if self.last_reused:
            return shared[2]
        return super().collect_statistics(model, input_ids, attention_mask, resp_start, batch_size, **forward_kwargs)


class AVARGRPOTrainer(AttnGRPOTrainer):
    """GRPO with attention credit and AVAR attention-aware rewards. Same constructor as ``trl.GRPOTrainer``."""

    def __init__(self, model, reward_funcs=None, args: AttnGRPOConfig | None = None, *pargs, **kwargs):
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        if self.tools:
            raise NotImplementedError("AVARGRPOTrainer does not support tool-calling (multi-turn) rollouts")
        policy = self.accelerator.unwrap_model(self.model)
        self.avar_layers = resolve_avar_layers(getattr(args, "avar_layers", None), num_layers(policy))
        self.avar_eps = getattr(args, "avar_eps", AVAR_EPS)
        self.special_ids = SpecialTokenIds.from_tokenizer(self.processing_class)
        self._check_system_span()
        self.credit = SharedPassCreditAssigner(self.credit_config, policy)
        self._rollout_prompts: tuple[list, dict] | None = None

    def _check_system_span(self) -> None:
        """ValueError when the first training prompt renders without system tokens (r_visual and VAS divide by
        the attention mass on S; every rollout batch is checked again in :func:`visual_anchor_ratio`)."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__getitem__") or len(dataset) == 0:
            return
        prompt = dataset[0].get("prompt")
        if not (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)):
            return  # not conversational: token_sets refuses it at the first batch
        text = self.processing_class.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        sets = token_sets(ids, torch.ones_like(ids), tok, special=self.special_ids)
        require_system_span(sets, "r_visual (first training prompt)")

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        self._rollout_prompts = (prompt_ids, multimodal_fields)
        return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        mode = "train" if self.model.training else "eval"
        ratio, vas = self._attention_pass(completion_ids_list, mode)
        for example, value in zip(inputs, ratio.tolist(), strict=True):
            example[AVAR_RATIO_COLUMN] = value
        self._metrics[mode]["avar/visual_ratio"].append(ratio.mean().item())
        self._metrics[mode]["avar/vas"].append(torch.nanmean(vas).item())
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _attention_pass(self, completion_ids_list, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention term of r_visual (B,), VAS (B,)) from one statistics forward; shares it with credit."""
        ids, mask, Tp, images = self._rollout_batch(completion_ids_list)
        sets = token_sets(ids, mask, self.processing_class, resp_start=Tp, special=self.special_ids)
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        share = self._credit_needs_scoring_pass()
        layers = sorted(set(self.avar_layers) | set(self.credit.layers if share else ()))
        if images:  # Qwen-VL's multimodal RoPE needs the image-token types
            images["mm_token_type_ids"] = (ids == self.special_ids.image_pad).long()
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            stats = collect_statistics(
                self.accelerator.unwrap_model(self.model), layers, ids, mask, torch.full_like(ids[:, 0], Tp),
                self.credit.spec, key_masks=sets.key_masks(), backend=self.credit_config.credit_backend,
                batch_size=batch_size, **images,
            )
        if share:
            self.credit.share(ids, mask, stats)
        span = {layer: stats[layer].span_mass for layer in self.avar_layers}
        return visual_anchor_ratio(span, sets.response, eps=self.avar_eps), visual_attention_score(span, sets.user)

    def _credit_needs_scoring_pass(self) -> bool:
        """Whether AttnGRPOTrainer will ask for scoring-time statistics (TRL computes old log-probs exactly when
        generation and optimisation steps are misaligned or vLLM importance sampling is on)."""
        if "attention" not in self.credit.needs:
            return False
        if self.credit_config.credit_stats_pass == "separate":
            return True
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _rollout_batch(self, completion_ids_list):
        """(ids (B, T), mask (B, T), prompt width Tp, image kwargs) laid out as TRL lays out the rollout."""
        if self._rollout_prompts is None:
            raise RuntimeError("no rollout prompts recorded: AVAR needs TRL's own generation (no custom rollout_func)")
        prompt_ids_list, fields = self._rollout_prompts
        device = self.accelerator.device
        padded = {}
        for name, rows, side in (("prompt", prompt_ids_list, "left"), ("completion", completion_ids_list, "right")):
            tensors = [torch.tensor(r, dtype=torch.long) for r in rows]
            padded[name] = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side=side,
                               pad_to_multiple_of=self.pad_to_multiple_of).to(device)
            padded[name + "_mask"] = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side=side,
                                         pad_to_multiple_of=self.pad_to_multiple_of).to(device)
        ids = torch.cat([padded["prompt"], padded["completion"]], 1)
        mask = torch.cat([padded["prompt_mask"], padded["completion_mask"]], 1)
        images = {k: _as_tensor(fields[k]).to(device) for k in ("pixel_values", "image_grid_thw") if k in fields}
        return ids, mask, padded["prompt"].shape[1], images


def _as_tensor(value) -> torch.Tensor:
    return value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
