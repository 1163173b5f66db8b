"""Attention-guided cold-start objective (docs/methods.md §2): L = L_LM + 0.15 L_enh + 0.15 L_sup.

    L_enh = -(1/|L'|) sum_l (1/H) sum_h log[ mean_{q in U, k in V} A^{l,h}_{q,k} ]
    L_sup = +(1/|L'|) sum_l (1/H) sum_h log[ mean_{q in U, k in S} A^{l,h}_{q,k} + eps ]

The model runs its ordinary SDPA forward. On the chosen layers only, the attention function also gathers the
post-RoPE queries of the U rows (B, H, |U|max, D) and computes their softmax over all keys — O(|U| * T) per head,
never T x T — with gradients flowing into those layers' q/k (and, through their inputs, everything below them).
Nothing above the deepest chosen layer, and no value/output projection of it, receives gradient from L_enh/L_sup;
the forward's outputs are unchanged. The mean over q in U, k in V is over all |U| |V| pairs of a row (causally
excluded pairs count as 0). Batch rows each get their own L_enh/L_sup; the batch loss is their mean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from .attention_function import decoder_attention_modules, mm_attention, state
from .tokens import TokenSets, require_system_span

__all__ = ["AttentionGuidedLoss", "QueryAttentionRecorder", "attention_guided_sft_loss", "attention_guided_terms",
           "record_query_attention"]

ENH_WEIGHT = 0.15
SUP_WEIGHT = 0.15
SUP_EPS = 1e-6


@dataclass
class AttentionGuidedLoss:
    """Scalar losses; ``total`` = lm + w_enh * enh + w_sup * sup."""

    total: torch.Tensor
    lm: torch.Tensor
    enh: torch.Tensor
    sup: torch.Tensor


def _gather_rows(query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (B, Umax) long, valid (B, Umax) bool): the indices of each row's query positions, padded by repeating
    the row's first one (so every gathered row has real keys and its softmax stays finite)."""
    counts = query_mask.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("a row has no query (U) token; the attention-guided terms need at least one")
    umax = int(counts.max())
    order = torch.argsort((~query_mask).to(torch.int8), dim=1, stable=True)[:, :umax]  # U positions first
    valid = torch.arange(umax, device=query_mask.device)[None] < counts[:, None]
    rows = torch.where(valid, order, order[:, :1])
    return rows, valid


@dataclass
class QueryAttentionRecorder:
    """Differentiable block means mean_{q in U, k in K_m} A^{l,h}_{q,k} of the recorded layers: (B, H, M) each."""

    rows: torch.Tensor  # (B, Umax) query positions
    row_valid: torch.Tensor  # (B, Umax)
    key_masks: torch.Tensor  # (B, M, T) float
    key_valid: torch.Tensor  # (B, T) bool (attention mask)
    layer_of: dict[torch.nn.Module, int]
    block_means: dict[int, torch.Tensor] = field(default_factory=dict)

    def record(self, module, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """query (B, H, T, D), key (B, Hkv, T, D) of one full forward; adds block_means[layer]."""
        B, H, T, D = query.shape
        if key.shape[2] != T:
            raise RuntimeError("the attention-guided objective needs a full forward (no KV cache)")
        q = query.gather(2, self.rows[:, None, :, None].expand(B, H, -1, D))  # (B, H, U, D)
        k = key.repeat_interleave(H // key.shape[1], dim=1)
        scores = torch.einsum("bhud,bhtd->bhut", q, k) * scaling
        allowed = self.key_valid[:, None, :] & (torch.arange(T, device=q.device)[None, None] <= self.rows[:, :, None])
        probs = torch.softmax(scores.float().masked_fill(~allowed[:, None], float("-inf")), -1)
        probs = probs * self.row_valid[:, None, :, None]
        block_sum = torch.einsum("bhut,bmt->bhm", probs, self.key_masks)  # sum over q in U and k in K_m
        pairs = self.row_valid.sum(1)[:, None] * self.key_masks.sum(2)  # (B, M) = |U| |K_m|
        self.block_means[self.layer_of[module]] = block_sum / pairs[:, None, :].clamp(min=1)


@contextlib.contextmanager
def record_query_attention(
    model, layers: Iterable[int], query_mask: torch.Tensor, key_masks: torch.Tensor, attention_mask: torch.Tensor
) -> Iterator[QueryAttentionRecorder]:
    """Record, during the one forward inside the block, the U->K_m attention block means of ``layers``.

    query_mask: (B, T) bool (U); key_masks: (B, M, T); attention_mask: (B, T) 0/1 padding mask.
    """
    modules = decoder_attention_modules(model, sorted(set(layers)))
    rows, valid = _gather_rows(query_mask.bool())
    recorder = QueryAttentionRecorder(
        rows=rows, row_valid=valid, key_masks=key_masks.float(), key_valid=attention_mask.bool(),
        layer_of={m: layer for layer, m in modules.items()},
    )
    with mm_attention(model):
        state.recorders.update({m: recorder for m in modules.values()})
        try:
            yield recorder
        finally:
            for m in modules.values():
                state.recorders.pop(m, None)
    missing = sorted(set(modules) - set(recorder.block_means))
    if missing:
        raise RuntimeError(f"no attention was recorded for layers {missing}; run one forward inside the context")


def attention_guided_terms(block_means: dict[int, torch.Tensor], eps: float = SUP_EPS):
    """(L_enh, L_sup) scalars from {layer: (B, H, 2)} block means [U->V, U->S]: head and layer means of the logs,
    then the batch mean."""
    stacked = torch.stack([block_means[layer] for layer in sorted(block_means)])  # (L, B, H, 2)
    enh = -torch.log(stacked[..., 0]).mean((0, 2))  # (B,)
    sup = torch.log(stacked[..., 1] + eps).mean((0, 2))
    return enh.mean(), sup.mean()


def attention_guided_sft_loss(
    model,
    batch: dict,
    sets: TokenSets,
    layers: Iterable[int],
    *,
    enh_weight: float = ENH_WEIGHT,
    sup_weight: float = SUP_WEIGHT,
    eps: float = SUP_EPS,
) -> AttentionGuidedLoss:
    """One differentiable forward of ``batch`` (input_ids, attention_mask, labels and the image kwargs) with the
    attention-guided terms of ``layers``. ``sets`` are the batch's token sets (V, S and U are used)."""
    if bool((sets.image.sum(1) == 0).any()):
        raise ValueError("a row has no image token: L_enh = -log(mean U->V attention) is undefined without V")
    require_system_span(sets, "L_sup = log(mean U->S attention + eps)")
    with record_query_attention(
        model, layers, sets.user, torch.stack([sets.image, sets.system], 1), batch["attention_mask"]
    ) as rec:
        lm = model(**batch).loss
    enh, sup = attention_guided_terms(rec.block_means, eps)
    return AttentionGuidedLoss(total=lm + enh_weight * enh + sup_weight * sup, lm=lm, enh=enh, sup=sup)
