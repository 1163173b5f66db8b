"""Advantage estimators and losses as small pure functions (PPO: :mod:`attnrl.algos.ppo_core`)."""

from .ppo_core import (
    compute_gae,
    explained_variance,
    kl_penalty,
    last_token_index,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

__all__ = [
    "compute_gae",
    "explained_variance",
    "kl_penalty",
    "last_token_index",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "token_rewards",
    "value_loss",
]
