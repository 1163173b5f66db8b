"""PPO's math as small pure functions over padded response tokens (verl ``core_algos`` style).

Shapes: B responses, T response positions (right-padded). ``mask`` (B, T) is 1/True on real response tokens and
0/False on padding; every function ignores masked-out positions. Rewards and values are in reward units, log
probabilities in nats.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is set (0 for an empty mask). x, mask: (B, T) -> scalar."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries of ``x`` (0 with fewer than two entries). (B, T) -> scalar."""
    m = mask.to(x.dtype)
    n = m.sum()
    centred = (x - masked_mean(x, mask)) * m
    return (centred**2).sum() / (n - 1).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries, 0 on padding. x, mask: (B, T) -> (B, T)."""
    whitened = (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps)
    return whitened * mask.to(x.dtype)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last response token, -1 for a row without any. mask: (B, T) -> (B,) long."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate to the reference policy, log pi(y_t) - log pi_ref(y_t) (nats), 0 on padding.

    logprobs, ref_logprobs, mask: (B, T) -> (B, T).
    """
    return (logprobs - ref_logprobs) * mask.to(logprobs.dtype)


def token_rewards(
    scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """Per-token rewards: the outcome score at the last response token, minus ``kl_coef * kl`` at every token.

    scores: (B,) outcome rewards; mask: (B, T); kl: (B, T) from :func:`kl_penalty` or None. Returns (B, T), 0 on
    padding. A row without response tokens gets no reward.
    """
    m = mask.to(scores.dtype)
    rewards = torch.zeros_like(m)
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] = scores[rows]
    if kl is not None and kl_coef != 0.0:
        rewards = rewards - kl_coef * kl * m
    return rewards


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 after a response's last token (the episode ends there; a
    truncated response is treated as ended), A_t = delta_t + gamma * lam * A_{t+1}. Masked-out positions are
    skipped (the next real token's value and advantage carry over them) and come out 0.

    rewards, values, mask: (B, T). Returns (advantages, returns), both (B, T), returns = advantages + values.
    """
    m = mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        next_value = torch.where(m[:, t] > 0, values[:, t], next_value)
        next_adv = torch.where(m[:, t] > 0, adv_t, next_adv)
        advantages[:, t] = adv_t * m[:, t]
    returns = (advantages + values) * m
    return advantages, returns


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * mean_t max((V - R)^2, (clip(V, V_old ± c) - R)^2) over masked tokens.

    values (with grad), old_values (rollout values), returns, mask: (B, T). Returns (loss, clip_fraction): scalars,
    clip_fraction = share of tokens where the clipped error is the larger one.
    """
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return loss, clip_fraction.detach()


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, mean over masked tokens of max(-A r, -A clip(r, 1 ± eps)), r = pi / pi_old.

    logprobs (with grad), old_logprobs, advantages (per token, already shaped), mask: (B, T). Returns (loss,
    clip_fraction, approx_kl): scalars; approx_kl = mean of 0.5 (log r)^2 (nats), a diagnostic.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, clip_fraction.detach(), approx_kl.detach()


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over masked tokens (1: perfect critic, <= 0: no better than a constant); NaN when
    Var(R) <= eps, i.e. the returns are constant up to rounding (e.g. an all-zero-reward batch). Scalar."""
    var_returns = masked_var(returns, mask)
    return torch.where(var_returns > eps, 1.0 - masked_var(returns - values, mask) / var_returns, torch.nan)
