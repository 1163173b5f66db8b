"""AVAR attention scores from per-layer span masses (docs/methods.md §2).

Input everywhere: ``span_mass`` = {layer: (B, H, T, 2)} float, the attention mass of each query row on the key sets
[V, S] (``AttentionStats.span_mass`` of a capture with ``TokenSets.key_masks()``), i.e.
span_mass[b, h, t, 0] = sum_{k in V} A^{l,h}_{t,k} and span_mass[..., 1] = sum_{k in S} A^{l,h}_{t,k}.
"""

from __future__ import annotations

import torch

from .tokens import empty_system_error

__all__ = ["AVAR_DEFAULT_LAYERS", "AVAR_EPS", "resolve_avar_layers", "visual_anchor_ratio", "visual_attention_score"]

AVAR_DEFAULT_LAYERS = tuple(range(8))  # the released recipe's layers 0..7
AVAR_EPS = 1e-6


def resolve_avar_layers(layers, num_layers: int) -> list[int]:
    """``layers`` (None = 0..7) clipped to a model with ``num_layers`` decoder layers; sorted, deduplicated."""
    chosen = sorted({layer for layer in (AVAR_DEFAULT_LAYERS if layers is None else layers) if layer < num_layers})
    if not chosen or chosen[0] < 0:
        raise ValueError(f"AVAR layers {layers} select nothing valid in a model with layers 0..{num_layers - 1}")
    return chosen


def _stack(span_mass: dict[int, torch.Tensor], layers) -> torch.Tensor:
    layers = sorted(span_mass) if layers is None else layers
    missing = [layer for layer in layers if layer not in span_mass]
    if missing:
        raise KeyError(f"no span masses recorded for layers {missing}")
    return torch.stack([span_mass[layer].float() for layer in layers])  # (L, B, H, T, 2)


def _require_system_mass(m: torch.Tensor, what: str) -> None:
    """m: (L, B, H, T, 2). A row whose S mass is 0 on every layer, head and query has an empty S: refused."""
    empty = (m[..., 1].amax(dim=(0, 2, 3)) <= 0).nonzero().flatten().tolist()
    if empty:
        raise empty_system_error(empty, what)


def visual_attention_score(
    span_mass: dict[int, torch.Tensor], user_mask: torch.Tensor, layers=None
) -> torch.Tensor:
    """VAS per row (B,): mean over layers l, heads h and rows i in U of mass_V^{l,h}_i / mass_S^{l,h}_i.

    user_mask: (B, T) bool (U). Rows with an empty U give NaN; a row with an empty S raises ValueError.
    Bands: narrow < 10, wide 10-15, panoramic > 15.
    """
    m = _stack(span_mass, layers)
    _require_system_mass(m, "VAS")
    ratio = m[..., 0] / m[..., 1]  # (L, B, H, T); S always holds real keys, so mass_S > 0 on U rows
    u = user_mask.to(ratio.device)
    per_row = torch.where(u[None, :, None, :], ratio, torch.zeros_like(ratio)).sum((0, 2, 3))
    count = (u.sum(1) * m.shape[0] * m.shape[2]).float()
    return per_row / count.where(count > 0, torch.full_like(count, float("nan")))


def visual_anchor_ratio(
    span_mass: dict[int, torch.Tensor], response_mask: torch.Tensor, layers=None, eps: float = AVAR_EPS
) -> torch.Tensor:
    """The attention term of r_visual per row (B,), before the correctness gate:

    (1/|R|) sum_{t in R} (1/|L'|) sum_{l in L'} [ sum_{k in V} Ā^l_{t,k} / (sum_{k in S} Ā^l_{t,k} + eps) ],
    Ā^l = head mean of A^l, so the ratio is of head-mean masses, per token, then averaged over layers and tokens.
    response_mask: (B, T) bool (R); a row with no response token scores 0; a row with an empty S raises ValueError.
    """
    m = _stack(span_mass, layers)
    _require_system_mass(m, "r_visual")
    head_mean = m.mean(2)  # (L, B, T, 2)
    per_token = (head_mean[..., 0] / (head_mean[..., 1] + eps)).mean(0)  # (B, T)
    r = response_mask.to(per_token.device)
    total = torch.where(r, per_token, torch.zeros_like(per_token)).sum(1)
    return total / r.sum(1).clamp(min=1)
