"""SITE (docs/methods.md §3): soft injection of task embeddings into attention-head outputs.

- :func:`task_embedding`: mean head outputs (o_proj inputs) at the last token of few-shot prompts, (L, H, Dh).
- :func:`train_head_selection`: learn alpha = sigmoid(logits) (L, H) on a frozen model, keeping the best validated.
- :class:`TaskEmbedding`: the artifact (save/load one .safetensors file) and ``.active(model, last_prompt_index)``,
  which injects identically in generation (prefill only) and in teacher-forced forwards.
- :mod:`.icl`: prompt formatting and greedy evaluation for 0-shot / N-shot / SITE comparisons.
- :class:`attnrl.injection.trainer.SITEGRPOTrainer` (imports trl): GRPO with the injection active in rollouts and in
  every log-prob / credit-statistics forward.
"""

from .site import TaskEmbedding, attention_heads, head_outputs_at, soft_injection, task_embedding
from .train import HeadSelectionResult, first_target_tokens, first_token_scores, make_artifact, train_head_selection

__all__ = [
    "HeadSelectionResult",
    "TaskEmbedding",
    "attention_heads",
    "first_target_tokens",
    "first_token_scores",
    "head_outputs_at",
    "make_artifact",
    "soft_injection",
    "task_embedding",
    "train_head_selection",
]
