"""Token roles and advantage weights gamma_t, one small pure function per strategy (docs/methods.md §1.3).

Every strategy maps :class:`CreditInputs` (per-token statistics of a batch of responses) and
:class:`CreditParams` to a :class:`StrategyOutput`: gamma of shape (B, T) (1 for ordinary tokens, ``gamma_amp``
or a split of the bonus for amplified ones, 1 on padding) and the token roles it was computed from. Register new
ones with :func:`register_strategy` (the registry is :data:`STRATEGIES`), or name a function by import path
(``credit_strategy: my_pkg.credit:my_strategy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from attnrl.registry import Registry


@dataclass(frozen=True)
class CreditParams:
    """Strategy hyper-parameters. These defaults are the only place they are written (``CreditConfig`` reads
    them); the paper's where it gives them, otherwise ours (marked)."""

    gamma_amp: float = 1.5  # paper (docs/methods.md §1.3): advantage multiplier of amplified tokens
    top_q: float = 0.4  # paper (docs/methods.md §1.3): fraction q of a response's tokens TopQ selects
    coupled_k: int = 3  # paper (docs/methods.md §1.3): look-back k of a dominated anchor's introducer
    coupled_alpha: float = 0.5  # ours (docs/methods.md §1.3): share of a dominated anchor's bonus moved to it
    # tau_waad / tau_delta: the paper gives no values; ours are the per-response medians (docs/methods.md §1.3).


@dataclass
class CreditInputs:
    """Per-token inputs, all (B, T) over the response positions of a padded batch.

    response_mask: bool, True on response tokens. waad: float. fai: float, NaN where undefined.
    entropy: float or None (needed by ``entropy``). generator: RNG for ``random``.
    """

    response_mask: torch.Tensor
    waad: torch.Tensor | None = None
    fai: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    generator: torch.Generator | None = None


@dataclass
class StrategyOutput:
    """What a strategy returns. gamma: (B, T) float, 1 on padding. roles: the token sets behind gamma, each (B, T)
    bool over the same positions (e.g. ``anchors``, ``dominated``, ``introducers`` for ``coupled``)."""

    gamma: torch.Tensor
    roles: dict[str, torch.Tensor] = field(default_factory=dict)


StrategyFn = Callable[[CreditInputs, CreditParams], StrategyOutput]
#: the statistics a strategy can read ("attention" = WAAD/FAI, "entropy" = policy entropy)
ALL_NEEDS = frozenset({"attention", "entropy"})


def _callable_strategy(obj, name: str) -> StrategyFn:
    if not callable(obj):
        raise TypeError(f"{type(obj).__name__} is not a function (inputs, params) -> StrategyOutput")
    return obj


#: every credit strategy by name (:class:`attnrl.registry.Registry`); ``credit_strategy`` also takes an import path
#: ``module:function`` / ``module.function`` of a function not registered here
STRATEGIES: Registry[StrategyFn] = Registry("credit strategy", check=_callable_strategy)


def register_strategy(name: str, needs: tuple[str, ...] = ()) -> Callable[[StrategyFn], StrategyFn]:
    """Register ``fn`` as credit strategy ``name`` (a decorator); ``needs`` names the statistics it reads, so
    callers compute only those: ``"attention"`` (WAAD/FAI), ``"entropy"``.

    A name can be registered once: registering another function under an existing name is an error (re-running
    the same definition, e.g. on a module reload, is allowed).
    """
    unknown = set(needs) - ALL_NEEDS
    if unknown:
        raise ValueError(f"needs={tuple(needs)}: unknown statistics {sorted(unknown)}; use some of {sorted(ALL_NEEDS)}")
    return STRATEGIES.register(name, needs=frozenset(needs))


def get_strategy(name: str) -> StrategyFn:
    """The strategy registered under ``name``, or the function the import path ``name`` names (RegistryError, a
    ValueError, naming the closest strategy and the choices otherwise)."""
    return STRATEGIES.get(name)


def strategy_needs(name: str) -> frozenset[str]:
    """The statistics strategy ``name`` reads: what it was registered with; for a function named by import path
    and not registered, its ``needs`` attribute if it has one, else every statistic (:data:`ALL_NEEDS`)."""
    info = STRATEGIES.info(name)
    if "needs" in info:
        return info["needs"]
    return frozenset(getattr(STRATEGIES.get(name), "needs", ALL_NEEDS))


class _NeedsView(Mapping):
    """``STRATEGY_NEEDS[name]``: :func:`strategy_needs` as a read-only mapping over the registered names."""

    def __getitem__(self, name: str) -> frozenset[str]:
        return strategy_needs(name)

    def __iter__(self):
        return iter(STRATEGIES)

    def __len__(self) -> int:
        return len(STRATEGIES)


#: statistics each strategy reads, so callers can skip work (a view of the registry; import paths work too)
STRATEGY_NEEDS: Mapping[str, frozenset[str]] = _NeedsView()


# ---------------------------------------------------------------------------------------------------- helpers


def top_q_mask(scores: torch.Tensor, response_mask: torch.Tensor, q: float) -> torch.Tensor:
    """TopQ: per row, the ceil(q * n) response positions with the largest score (n = response length).

    NaN scores are never selected (so fewer may be chosen). Ties break toward earlier positions. (B, T) bool.
    The rounding (ceil) is ours; the paper says "the top q fraction".
    """
    n = response_mask.sum(1)
    k = torch.ceil(q * n.double() - 1e-9).long()  # (B,)
    eligible = response_mask & ~torch.isnan(scores)
    keyed = torch.where(eligible, scores.double(), torch.full_like(scores, -math.inf, dtype=torch.double))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return eligible & (rank < k[:, None])


def waad_jumps(waad: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Δ_t = |WAAD_t - WAAD_{t+1}| for t, t+1 both in the response; NaN elsewhere. (B, T)."""
    nxt = torch.roll(waad, -1, dims=1)
    nxt_ok = torch.roll(response_mask, -1, dims=1)
    nxt_ok[:, -1] = False
    delta = (waad - nxt).abs()
    return torch.where(response_mask & nxt_ok, delta, torch.full_like(delta, float("nan")))


def preplan_mask(x: CreditInputs, p: CreditParams) -> torch.Tensor:
    """Preplan tokens T_loc = TopQ(Δ, q) of the WAAD jumps (docs/methods.md §1.3). (B, T) bool."""
    return top_q_mask(waad_jumps(x.waad, x.response_mask), x.response_mask, p.top_q)


def nan_median_per_row(x: torch.Tensor) -> torch.Tensor:
    """Per-row median ignoring NaN (lower median), NaN for an all-NaN row. (B,) -> (B, 1)."""
    return torch.nanmedian(x, dim=1, keepdim=True).values


def amplify(mask: torch.Tensor, p: CreditParams, role: str) -> StrategyOutput:
    """gamma = 1 + (gamma_amp - 1) [t in mask], with ``mask`` (B, T) bool reported as role ``role``."""
    return StrategyOutput(1.0 + (p.gamma_amp - 1.0) * mask.float(), {role: mask})


# ---------------------------------------------------------------------------------------------------- strategies


@register_strategy("uniform")
def uniform(x: CreditInputs, p: CreditParams) -> StrategyOutput:
    """Plain GRPO: gamma = 1 everywhere, no roles."""
    return StrategyOutput(torch.ones(x.response_mask.shape, device=x.response_mask.device))


@register_strategy("random")
def random(x: CreditInputs, p: CreditParams) -> StrategyOutput:
    """Ablation: TopQ of uniform random scores (role ``selected``)."""
    scores = torch.rand(x.response_mask.shape, generator=x.generator, device="cpu").to(x.response_mask.device)
    return amplify(top_q_mask(scores, x.response_mask, p.top_q), p, "selected")


@register_strategy("entropy", needs=("entropy",))
def entropy(x: CreditInputs, p: CreditParams) -> StrategyOutput:
    """Ablation ("80/20 high-entropy tokens"): TopQ of the policy's token entropy (role ``high_entropy``)."""
    if x.entropy is None:
        raise ValueError("strategy 'entropy' needs per-token entropies (CreditInputs.entropy)")
    return amplify(top_q_mask(x.entropy, x.response_mask, p.top_q), p, "high_entropy")


@register_strategy("local_chunk", needs=("attention",))
def local_chunk(x: CreditInputs, p: CreditParams) -> StrategyOutput:
    """Preplan tokens (role ``preplan``): TopQ of the WAAD jump Δ_t = |WAAD_t - WAAD_{t+1}|."""
    return amplify(preplan_mask(x, p), p, "preplan")


@register_strategy("global_anchor", needs=("attention",))
def global_anchor(x: CreditInputs, p: CreditParams) -> StrategyOutput:
    """Anchor tokens (role ``anchors``): TopQ of Future Attention Influence."""
    return amplify(top_q_mask(x.fai, x.response_mask, p.top_q), p, "anchors")


def coupled_roles(x: CreditInputs, p: CreditParams) -> dict[str, torch.Tensor]:
    """Roles of the coupled strategy, each (B, T) bool: anchors, dominated anchors D, introducers I(D).

    An anchor t is locally dominated when WAAD_t <= tau_waad and max_{u in [t-k, t-1]} Δ_u >= tau_Δ; its
    introducer is argmax_{u in [t-k, t-1]} Δ_u (earliest on ties). tau_waad, tau_Δ = per-response medians (ours).
    """
    mask = x.response_mask
    anchors = top_q_mask(x.fai, mask, p.top_q)
    delta = waad_jumps(x.waad, mask)
    waad = torch.where(mask, x.waad, torch.full_like(x.waad, float("nan")))
    tau_waad, tau_delta = nan_median_per_row(waad), nan_median_per_row(delta)

    B, T = mask.shape
    k = p.coupled_k
    # look-back windows: lookback[:, t, j] = Δ_{t-k+j}, j = 0..k-1 (NaN before the sequence start)
    padded = torch.cat([torch.full((B, k), float("nan"), device=delta.device), delta], 1)
    lookback = padded.unfold(1, k, 1)[:, :T]  # (B, T, k)
    filled = torch.nan_to_num(lookback, nan=-math.inf)
    best_val, best_j = filled.max(-1)  # first max: earliest position on ties
    has_prev = torch.isfinite(best_val)
    dominated = anchors & has_prev & (waad <= tau_waad) & (best_val >= tau_delta)
    intro_pos = torch.arange(T, device=mask.device)[None] - k + best_j  # (B, T)
    introducers = torch.zeros_like(mask)
    rows = torch.arange(B, device=mask.device)[:, None].expand(B, T)
    introducers[rows[dominated], intro_pos[dominated]] = True
    return {"anchors": anchors, "dominated": dominated, "introducers": introducers & mask}


@register_strategy("coupled", needs=("attention",))
def coupled(x: CreditInputs, p: CreditParams) -> StrategyOutput:
    """The paper's best: amplify anchors, moving part (alpha) of a dominated anchor's bonus to its introducer.
    Roles: those of :func:`coupled_roles`."""
    r = coupled_roles(x, p)
    bonus = p.gamma_amp - 1.0
    a, d, i = r["anchors"].float(), r["dominated"].float(), r["introducers"].float()
    gamma = 1.0 + bonus * (a - d) + (1 - p.coupled_alpha) * bonus * d + p.coupled_alpha * bonus * i
    return StrategyOutput(gamma, r)


# ---------------------------------------------------------------------------------------------------- application

SIGN_MODES = ("both", "nonnegative")  # paper v2 (the default, docs/methods.md §1.3), paper v1


def shape_advantages(
    advantages: torch.Tensor, gamma: torch.Tensor, response_mask: torch.Tensor, sign_mode: str = "both"
) -> torch.Tensor:
    """Ã_t = gamma_t * A (docs/methods.md §1.3). advantages: (B,) or (B, T); gamma, response_mask: (B, T).

    sign_mode "both" (paper v2) shapes every advantage; "nonnegative" (v1) leaves negative advantages as they are.
    Padding positions get gamma 1. Returns (B, T), detached from gamma.
    """
    if sign_mode not in SIGN_MODES:
        raise ValueError(f"sign_mode must be one of {SIGN_MODES}, got {sign_mode!r}")
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    g = torch.where(response_mask, gamma.detach().to(adv.dtype), torch.ones_like(gamma, dtype=adv.dtype))
    if sign_mode == "nonnegative":
        g = torch.where(adv >= 0, g, torch.ones_like(g))
    return adv * g
