"""SITEGRPOTrainer: AttnGRPOTrainer with a SITE task embedding active during rollouts and in every log-prob forward.

TRL lays every forward of a rollout batch out as [prompt block of width Tp (left-padded); completion]: generation
runs on the prompt block, and the old/ref/loss log-prob forwards and the credit statistics run on the whole
sequence. The last prompt token is therefore index Tp - 1 in all of them, and the trainer activates the injection
there in each: around generation (``_generate_single_turn``, Tp = the padded prompt width TRL generates from),
around TRL's log-prob helper (``_get_per_token_logps_and_entropies``, Tp = sequence length - completion length)
and around the credit assigner's own statistics pass. Importance ratios thus compare the same policy.
vLLM generation cannot be hooked and is refused; so is TRL's transformers continuous batching
(``use_transformers_continuous_batching``, formerly ``use_transformers_paged``), which packs the prompts so that a
prompt's last token is not at Tp - 1 during generation while the log-prob forwards inject there. Both are refused
at construction, before TRL sets anything up.
"""

from __future__ import annotations

import math

from attnrl.credit.assigner import CreditAssigner
from attnrl.trainers.grpo import AttnGRPOTrainer

from .site import TaskEmbedding, attention_heads

__all__ = ["SITEGRPOTrainer"]


class _SITECreditAssigner(CreditAssigner):
    """Credit statistics computed with the task embedding injected (resp_start = Tp)."""

    def __init__(self, config, model, site: TaskEmbedding):
        super().__init__(config, model)
        self.site = site

    def collect_statistics(self, model, input_ids, attention_mask, resp_start, batch_size=None, **forward_kwargs):
        with self.site.active(model, resp_start - 1):
            return super().collect_statistics(model, input_ids, attention_mask, resp_start, batch_size,
                                              **forward_kwargs)


class SITEGRPOTrainer(AttnGRPOTrainer):
    """``AttnGRPOTrainer(model, reward_funcs, args, ..., site=TaskEmbedding.load(path))``."""

    def __init__(self, model, reward_funcs=None, args=None, *pargs, site: TaskEmbedding, **kwargs):
        if getattr(args, "use_vllm", False):
            raise NotImplementedError("SITE injects through forward hooks, which vLLM generation does not run; set "
                                      "use_vllm=False")
        if getattr(args, "use_transformers_continuous_batching", False) or getattr(args, "use_transformers_paged",
                                                                                   False):
            raise NotImplementedError(
                "SITE does not support use_transformers_continuous_batching: continuous batching packs the prompts, "
                "so the injection would not sit on each prompt's last token during generation while the log-prob "
                "forwards inject at the last prompt position (wrong importance ratios); set "
                "use_transformers_continuous_batching=False"
            )
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        policy = self.accelerator.unwrap_model(self.model)
        layout = attention_heads(policy)
        expected = (len(layout.modules), layout.num_heads, layout.head_dim)
        if tuple(site.embedding.shape) != expected:
            raise ValueError(f"SITE artifact of shape {tuple(site.embedding.shape)} does not fit this model {expected}")
        self.site = site
        self.credit = _SITECreditAssigner(self.credit_config, policy, site)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        width = max(len(p) for p in prompt_ids)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        with self.site.active(self.accelerator.unwrap_model(self.model), width - 1):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, *args,
                                                 **kwargs)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        with self.site.active(model, input_ids.shape[1] - logits_to_keep - 1):
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)
