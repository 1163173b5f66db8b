"""PPO math (attnrl.algos.ppo_core) against hand-computed values: GAE, rewards/KL placement, whitening, losses."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl.algos import ppo_core as core

T = torch.tensor


def _close(actual, expected):
    torch.testing.assert_close(actual, T(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- GAE

REWARDS, VALUES, FULL = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), T([[1, 1, 1]])


@pytest.mark.parametrize(
    "gamma,lam,advantages",
    [
        (1.0, 1.0, [[0.5, 0.4, 0.3]]),  # Monte Carlo: R - V_t
        (0.9, 0.5, [[0.11425, 0.165, 0.3]]),  # A2 = 0.3; A1 = 0.9*0.7 - 0.6 + 0.45*0.3; A0 = 0.9*0.6 - 0.5 + 0.45*A1
        (0.9, 0.0, [[0.04, 0.03, 0.3]]),  # lam = 0: one-step TD errors
        (0.0, 0.7, [[-0.5, -0.6, 0.3]]),  # gamma = 0: r_t - V_t, lam irrelevant
    ],
)
def test_gae_hand_computed(gamma, lam, advantages):
    adv, ret = core.compute_gae(REWARDS, VALUES, FULL, gamma, lam)
    _close(adv, advantages)
    _close(ret, (T(advantages) + VALUES).tolist())


def test_gae_ignores_padding_and_handles_length_one_and_empty_rows():
    scores = T([1.0, 2.0, 5.0])
    mask = T([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    values = T([[0.2, 0.4, 9.0], [0.5, 3.0, 3.0], [7.0, 7.0, 7.0]])  # values on padding are garbage
    rewards = core.token_rewards(scores, mask)
    _close(rewards, [[0, 1, 0], [2, 0, 0], [0, 0, 0]])  # outcome at the last real token; empty row gets nothing
    adv, ret = core.compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    _close(adv, [[0.8, 0.6, 0], [1.5, 0, 0], [0, 0, 0]])
    _close(ret, [[1, 1, 0], [2, 0, 0], [0, 0, 0]])


def test_gae_skips_interior_gaps():
    """A masked-out position inside a response is stepped over: same result as the compacted sequence."""
    adv, ret = core.compute_gae(T([[0.0, 5.0, 1.0]]), T([[0.5, 100.0, 0.7]]), T([[1, 0, 1]]), 1.0, 1.0)
    _close(adv, [[0.5, 0.0, 0.3]])
    _close(ret, [[1.0, 0.0, 1.0]])


def _gae_reference(rewards, values, gamma, lam):
    """Textbook GAE over one compacted response (plain Python lists)."""
    adv, next_adv, next_value = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = adv[t] = delta + gamma * lam * next_adv
        next_value = values[t]
    return adv


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    gamma=st.sampled_from([0.0, 0.5, 0.99, 1.0]),
    lam=st.sampled_from([0.0, 0.95, 1.0]),
    seed=st.integers(0, 1000),
)
def test_gae_matches_textbook_per_row(lengths, gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    B, Tmax = len(lengths), 6
    mask = (torch.arange(Tmax)[None] < T(lengths)[:, None]).long()
    rewards, values = torch.randn(B, Tmax, generator=g), torch.randn(B, Tmax, generator=g)
    adv, ret = core.compute_gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        expected = _gae_reference(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        torch.testing.assert_close(adv[b, :n], T(expected), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ret[b, :n], adv[b, :n] + values[b, :n])
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()


# ---------------------------------------------------------------------------------------------------- KL penalty


def test_kl_penalty_every_token_outcome_at_last():
    mask = T([[1, 1, 1, 0], [1, 0, 0, 0]])
    logp = T([[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0]])
    ref = logp - T([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0]])
    kl = core.kl_penalty(logp, ref, mask)
    _close(kl, [[0.1, 0.2, 0.3, 0.0], [0.5, 0.0, 0.0, 0.0]])
    rewards = core.token_rewards(T([2.0, 3.0]), mask, kl, kl_coef=0.1)
    _close(rewards, [[-0.01, -0.02, 2.0 - 0.03, 0.0], [3.0 - 0.05, 0.0, 0.0, 0.0]])
    _close(core.token_rewards(T([2.0, 3.0]), mask, kl, kl_coef=0.0), [[0, 0, 2, 0], [3, 0, 0, 0]])


def test_last_token_index():
    _close(core.last_token_index(T([[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]])).float(), [1, -1, 2, 1])


# ---------------------------------------------------------------------------------------------------- whitening


def test_masked_whiten_uses_only_masked_entries():
    x = T([[1.0, 2.0, 100.0], [3.0, -50.0, 7.0]])
    mask = T([[1, 1, 0], [1, 0, 0]])
    _close(core.masked_whiten(x, mask), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # mean 2, unbiased std 1
    _close(core.masked_mean(x, mask), 2.0)
    _close(core.masked_var(x, mask), 1.0)


def test_masked_whiten_matches_torch_on_selection_and_degenerate_cases():
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(4, 7, generator=g) * 3 + 2, torch.rand(4, 7, generator=g) > 0.4
    w = core.masked_whiten(x, mask)
    sel = x[mask]
    torch.testing.assert_close(w[mask], (sel - sel.mean()) / sel.std(), atol=1e-5, rtol=1e-5)
    assert (w[~mask] == 0).all()
    _close(core.masked_whiten(T([[4.0, 9.0]]), T([[1, 0]])), [[0.0, 0.0]])  # one token: centred, finite
    _close(core.masked_mean(T([[4.0]]), T([[0]])), 0.0)  # empty mask


# ---------------------------------------------------------------------------------------------------- losses


def test_value_loss_hand_computed_and_clipped_tokens_get_no_gradient():
    values = T([[1.0, 0.0, 0.9, 42.0]], requires_grad=True)
    old = T([[0.5, 0.5, 0.5, 0.0]])
    returns = T([[0.0, 1.0, 1.0, 0.0]])
    mask = T([[1, 1, 1, 0]])
    loss, clipfrac = core.value_loss(values, old, returns, mask, cliprange_value=0.2)
    # errors: max(1, 0.49) = 1; max(1, 0.49) = 1; max(0.01, (0.7 - 1)^2 = 0.09) = 0.09 (clipped); padding ignored
    _close(loss, 0.5 * (1 + 1 + 0.09) / 3)
    _close(clipfrac, 1 / 3)
    loss.backward()
    _close(values.grad, [[(1.0 - 0.0) / 3, (0.0 - 1.0) / 3, 0.0, 0.0]])


def test_value_loss_without_clipping_is_half_mse():
    v, R = T([[0.0, 2.0]]), T([[1.0, 0.0]])
    loss, clipfrac = core.value_loss(v, v, R, T([[1, 1]]), cliprange_value=1e9)
    _close(loss, 0.5 * (1 + 4) / 2)
    _close(clipfrac, 0.0)


def test_policy_loss_hand_computed():
    old = T([[0.0, 0.0, 0.0, 0.0]])
    logp = torch.log(T([[1.5, 0.5, 1.5, 3.0]])).requires_grad_()
    adv = T([[1.0, 1.0, -1.0, 5.0]])
    mask = T([[1, 1, 1, 0]])
    loss, clipfrac, approx_kl = core.policy_loss(logp, old, adv, mask, cliprange=0.2)
    # max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5; max(1.5, 1.2) = 1.5; padding ignored
    _close(loss, (-1.2 - 0.5 + 1.5) / 3)
    _close(clipfrac, 1 / 3)
    lr = torch.log(T([1.5, 0.5, 1.5]))
    _close(approx_kl, (0.5 * lr**2).mean().item())
    loss.backward()
    _close(logp.grad, [[0.0, -0.5 / 3, 1.5 / 3, 0.0]])  # d(-A r)/dlogp = -A r, zero where clipped


def test_policy_loss_on_policy_is_minus_mean_advantage():
    logp = torch.randn(2, 5)
    adv = torch.randn(2, 5)
    mask = torch.ones(2, 5)
    loss, clipfrac, approx_kl = core.policy_loss(logp, logp, adv, mask, cliprange=0.2)
    _close(loss, -adv.mean().item())
    assert clipfrac == 0 and approx_kl == 0


def test_explained_variance():
    R, mask = T([[1.0, 2.0, 3.0, 0.0]]), T([[1, 1, 1, 0]])
    _close(core.explained_variance(R, R, mask), 1.0)
    _close(core.explained_variance(torch.full_like(R, 2.0), R, mask), 0.0)
    constant = torch.ones_like(R) + T([[1e-9, -1e-9, 0.0, 0.0]])  # constant up to rounding: undefined
    assert torch.isnan(core.explained_variance(R, constant, mask))
