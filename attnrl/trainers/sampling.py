"""Which logits processors a rollout inherits from a model's ``generation_config`` that the loss does not model.

``generate`` fills every field its own generation config leaves unset from the model's ``generation_config``;
instruct checkpoints often ship repetition penalties, n-gram bans, typical/min-p cut-offs or suppressed tokens.
The policy-gradient losses (TRL's GRPO and attnrl's PPO) compute log-probs of softmax(logits / temperature), so
each such field makes the importance ratio and the KL use a distribution the rollout was not sampled from.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: field -> the value under which it leaves the logits unchanged (None: unset is the only neutral value)
NEUTRAL_LOGITS_FIELDS: dict[str, object] = {
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
    "min_length": 0,
    "renormalize_logits": False,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "watermarking_config": None,
}


def _is_neutral(name: str, value) -> bool:
    neutral = NEUTRAL_LOGITS_FIELDS[name]
    if value is None or value == neutral:
        return True
    return name in ("bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias") and not value


def inherited_logits_processing(model_generation_config, overrides: dict | None = None) -> dict[str, object]:
    """Fields of ``model_generation_config`` that change the logits and that ``overrides`` does not neutralise.

    overrides: the generation kwargs the trainer passes itself (e.g. ``GRPOConfig.generation_kwargs``).
    Returns {field: model's value}, empty when sampling and loss use the same distribution.
    """
    overrides = overrides or {}
    found = {}
    for name in NEUTRAL_LOGITS_FIELDS:
        value = overrides.get(name, getattr(model_generation_config, name, None))
        if not _is_neutral(name, value):
            found[name] = value
    return found


def warn_inherited_logits_processing(model, overrides: dict | None = None, trainer: str = "the trainer") -> dict:
    """Log one warning naming the inherited fields and the fix; returns them (see :func:`inherited_logits_processing`)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    found = inherited_logits_processing(config, overrides)
    if found:
        fix = ", ".join(f"{k}: {NEUTRAL_LOGITS_FIELDS[k]!r}" for k in found if NEUTRAL_LOGITS_FIELDS[k] is not None)
        logger.warning(
            "%s samples with logits processors inherited from the model's generation_config (%s) that its loss does "
            "not model, so importance ratios and KL use another distribution than the rollouts'. Neutralise them in "
            "generation_kwargs (%s) or clear them in model.generation_config.",
            trainer, ", ".join(f"{k}={v!r}" for k, v in found.items()), fix or "set them to None",
        )
    return found
