"""AVAR (docs/methods.md §2): attention-guided visual anchoring for vision-language reasoning models.

- :func:`token_sets`: V (image), S (system), U (user query), R (response) masks of a Qwen-VL chat batch.
- :func:`visual_attention_score` (VAS diagnostic) and :func:`visual_anchor_ratio` (the attention term of r_visual),
  from span masses recorded by :func:`attnrl.attention.collect.collect_statistics` (one forward, no
  attention matrix).
- :class:`AVARGRPOTrainer`: GRPO whose reward functions receive r_visual's attention term
  (see :func:`attnrl.rewards.visual.visual_anchor_reward`).
- :func:`attention_guided_sft_loss`: L = L_LM + 0.15 L_enh + 0.15 L_sup (cold-start SFT).
- :func:`attention_intervention`: training-free rescaling of attention to V and S.
- :func:`make_visual_examples`: synthetic counting / bar-comparison problems drawn with PIL;
  :func:`evaluate_visual`: greedy held-out accuracy and VAS.

Imports are lazy: importing attnrl.multimodal does not import trl.
"""

_LAZY = {
    "SpecialTokenIds": "tokens",
    "TokenSets": "tokens",
    "token_sets": "tokens",
    "AVAR_DEFAULT_LAYERS": "scores",
    "resolve_avar_layers": "scores",
    "visual_anchor_ratio": "scores",
    "visual_attention_score": "scores",
    "collect_statistics": "attnrl.attention.collect",
    "AttentionGuidedLoss": "sft",
    "attention_guided_sft_loss": "sft",
    "attention_guided_terms": "sft",
    "record_query_attention": "sft",
    "attention_intervention": "intervention",
    "intervention_key_bias": "intervention",
    "make_visual_examples": "tasks",
    "evaluate_visual": "evaluation",
    "AVARConfig": "trainer",
    "AVARGRPOConfig": "trainer",
    "AVARGRPOTrainer": "trainer",
    "SharedPassCreditAssigner": "trainer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = _LAZY[name]
        return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
