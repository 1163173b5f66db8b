"""Chunked PyTorch reference for the attention statistics of docs/methods.md §1.2 and §2.

Everything is computed from post-RoPE queries and keys of one layer, one query chunk at a time, so memory
is O(B * H * chunk * T) instead of O(B * H * T * T). This is both the CPU path of the dispatcher and the
reference every Triton kernel is tested against.

Conventions (shared with the Triton kernels):
- ``q``: (B, H, T, D), ``k``: (B, Hkv, T, D), H a multiple of Hkv (GQA: query head h reads kv head h // (H/Hkv)).
- Each row b holds one sequence in the contiguous index span ``[seq_start[b], seq_end[b])`` (left and right
  padding outside it). Distances are index differences t - s inside that span.
- The response of row b is ``R = [resp_start[b], seq_end[b])``.
- A_{t,s} = softmax_s(z_{t,s}) over s in [seq_start, t] (causal), z_{t,s} = scale * q_t . k_s.
- Attention variants, given per call (the layer's own settings, see docs/attention_support.md):
  ``sliding_window`` w: only keys with t - s < w; ``softcap`` c: z = c * tanh(z / c);
  ``sinks`` (H,): head h's row normaliser gets + exp(sink_h), so rows sum to less than 1 (the sink column is
  dropped, as in the model's own attention weights).
- All outputs are float32; rows/columns outside the valid span are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AttentionStats", "StatsSpec", "attention_statistics_torch", "fai_counts"]


@dataclass(frozen=True)
class StatsSpec:
    """What to compute. ``fai_hi=None`` means the horizon runs to the end of the sequence.

    These defaults are the only place the credit-assignment values of W, H_lo and H_hi are written;
    ``attnrl.credit.config.CreditConfig`` reads them.
    """

    window: int = 10  # W of WAAD, tokens: the paper's (docs/methods.md §1.2)
    fai_lo: int = 10  # H_lo of FAI, tokens: the paper's credit-assignment setting (docs/methods.md §1.2)
    fai_hi: int | None = 100  # H_hi of FAI: the paper's credit setting (None: end of sequence, for analysis plots)

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.fai_lo < 0:
            raise ValueError(f"fai_lo must be >= 0, got {self.fai_lo}")
        if self.fai_hi is not None and self.fai_hi < self.fai_lo:
            raise ValueError(f"fai_hi ({self.fai_hi}) must be >= fai_lo ({self.fai_lo}) or None")


@dataclass
class AttentionStats:
    """Per-head attention statistics of one layer. Shapes: (B, H, T) unless stated; float32.

    lse:       row log normaliser of the softmax (natural log): log(sum_s exp(z_{t,s}) [+ exp(sink_h)]).
    dist_sum:  sum_s A_{t,s} (t - s)             -> head mean distance d^{l,h} = mean over R.
    waad:      sum_s A_{t,s} min(t - s, W)        (per head; WAAD_t = mean over local heads).
    fai_sum:   per key column s: sum_{t in T(s)} A_{t,s}, T(s) = {t in R : s+H_lo <= t <= s+H_hi}.
    fai_count: (B, T) int64, |T(s)| (0 where FAI is undefined).
    span_mass: (B, H, T, M) row mass on each of M key masks, or None when no masks were given.
    """

    lse: torch.Tensor
    dist_sum: torch.Tensor | None  # None from the Triton band pass, which skips it
    waad: torch.Tensor
    fai_sum: torch.Tensor
    fai_count: torch.Tensor
    span_mass: torch.Tensor | None = None

    @classmethod
    def cat(cls, parts: list[AttentionStats]) -> AttentionStats:
        """The statistics of consecutive row blocks (micro-batches of one padded batch) as one, along B.

        Every part must have the same T; a field that is None in the first part (``dist_sum`` of the band pass,
        ``span_mass`` without key masks) stays None.
        """
        if not parts:
            raise ValueError("AttentionStats.cat needs at least one part")
        if len(parts) == 1:
            return parts[0]
        fields = ("lse", "dist_sum", "waad", "fai_sum", "fai_count", "span_mass")
        return cls(**{f: None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])
                      for f in fields})


def fai_counts(seq_end: torch.Tensor, resp_start: torch.Tensor, T: int, spec: StatsSpec) -> torch.Tensor:
    """|T(s)| for every column s: number of response rows t with s + H_lo <= t <= s + H_hi. (B, T) int64."""
    s = torch.arange(T, device=seq_end.device)[None, :]
    lo = torch.maximum(s + spec.fai_lo, resp_start[:, None])
    last = seq_end[:, None] - 1
    hi = last if spec.fai_hi is None else torch.minimum(s + spec.fai_hi, last)
    return (hi - lo + 1).clamp(min=0)


def validate_inputs(q, k, seq_start, seq_end, resp_start, key_masks=None, sliding_window=None, softcap=None,
                    sinks=None):
    """Shape and variant checks shared by every backend. Raises ValueError naming the problem."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be (B, H, T, D); got q{tuple(q.shape)} k{tuple(k.shape)}")
    B, H, T, D = q.shape
    if k.shape[0] != B or k.shape[2] != T or k.shape[3] != D:
        raise ValueError(f"k must be (B, Hkv, T, D) matching q{tuple(q.shape)}; got {tuple(k.shape)}")
    if H % k.shape[1] != 0:
        raise ValueError(f"query heads ({H}) must be a multiple of kv heads ({k.shape[1]})")
    for name, v in (("seq_start", seq_start), ("seq_end", seq_end), ("resp_start", resp_start)):
        if v.shape != (B,):
            raise ValueError(f"{name} must have shape ({B},), got {tuple(v.shape)}")
    if key_masks is not None and (key_masks.dim() != 3 or key_masks.shape[0] != B or key_masks.shape[2] != T):
        raise ValueError(f"key_masks must be (B, M, T); got {tuple(key_masks.shape)}")
    if sliding_window is not None and (isinstance(sliding_window, bool) or int(sliding_window) != sliding_window
                                       or sliding_window < 1):
        raise ValueError(f"sliding_window must be a positive integer or None, got {sliding_window!r}")
    if softcap is not None and not float(softcap) > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap!r}")
    if sinks is not None and (not torch.is_tensor(sinks) or sinks.shape != (H,)):
        shape = tuple(sinks.shape) if torch.is_tensor(sinks) else type(sinks).__name__
        raise ValueError(f"sinks must be a ({H},) tensor (one logit per query head), got {shape}")


def attention_statistics_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    seq_start: torch.Tensor,
    seq_end: torch.Tensor,
    resp_start: torch.Tensor,
    spec: StatsSpec = StatsSpec(),
    *,
    scale: float | None = None,
    key_masks: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    chunk: int = 256,
) -> AttentionStats:
    """Exact statistics with O(B * H * chunk * T) working memory. See the module docstring for conventions.

    sliding_window: keys with t - s < sliding_window only; softcap: z = softcap * tanh(z / softcap);
    sinks: (H,) per-head sink logits added to the row normaliser (natural-log units, like z).
    """
    validate_inputs(q, k, seq_start, seq_end, resp_start, key_masks, sliding_window, softcap, sinks)
    B, H, T, D = q.shape
    group = H // k.shape[1]
    scale = D**-0.5 if scale is None else scale
    dev = q.device
    kf = k.float().repeat_interleave(group, dim=1) if group > 1 else k.float()  # (B, H, T, D)
    seq_start, seq_end, resp_start = (x.to(dev).long() for x in (seq_start, seq_end, resp_start))

    lse = torch.zeros(B, H, T, device=dev)
    dist_sum = torch.zeros(B, H, T, device=dev)
    waad = torch.zeros(B, H, T, device=dev)
    fai_sum = torch.zeros(B, H, T, device=dev)
    span_mass = None
    if key_masks is not None:
        span_mass = torch.zeros(B, H, T, key_masks.shape[1], device=dev)
        km = key_masks.to(dev).float().transpose(1, 2)  # (B, T, M)

    sink = None if sinks is None else sinks.detach().to(device=dev, dtype=torch.float32)[None, :, None]  # (1, H, 1)

    s_idx = torch.arange(T, device=dev)
    in_seq_key = (s_idx[None, :] >= seq_start[:, None]) & (s_idx[None, :] < seq_end[:, None])  # (B, T)
    for i0 in range(0, T, chunk):
        i1 = min(T, i0 + chunk)
        t_idx = torch.arange(i0, i1, device=dev)
        delta = t_idx[:, None] - s_idx[None, :]  # (C, T) = t - s
        row_ok = (t_idx[None, :] >= seq_start[:, None]) & (t_idx[None, :] < seq_end[:, None])  # (B, C)
        causal = (delta >= 0) if sliding_window is None else (delta >= 0) & (delta < sliding_window)
        valid = causal[None] & in_seq_key[:, None, :] & row_ok[:, :, None]  # (B, C, T)
        scores = torch.einsum("bhcd,bhtd->bhct", q[:, :, i0:i1].float(), kf) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        scores = scores.masked_fill(~valid[:, None], float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # (B, H, C); -inf on empty rows
        if sink is not None:
            row_lse = torch.logaddexp(row_lse, sink.expand_as(row_lse))
        probs = torch.exp(scores - row_lse[..., None].masked_fill(~row_ok[:, None, :, None], 0.0))
        probs = torch.nan_to_num(probs, nan=0.0).masked_fill(~valid[:, None], 0.0)

        dist = delta.clamp(min=0).float()  # (C, T)
        lse[:, :, i0:i1] = torch.where(row_ok[:, None], row_lse, torch.zeros_like(row_lse))
        dist_sum[:, :, i0:i1] = (probs * dist).sum(-1)
        waad[:, :, i0:i1] = (probs * dist.clamp(max=spec.window)).sum(-1)

        horizon = delta >= spec.fai_lo
        if spec.fai_hi is not None:
            horizon = horizon & (delta <= spec.fai_hi)
        in_resp = (t_idx[None, :] >= resp_start[:, None]) & row_ok  # (B, C)
        fai_rows = horizon[None] & in_resp[:, :, None]  # (B, C, T)
        fai_sum += (probs * fai_rows[:, None]).sum(2)
        if span_mass is not None:
            span_mass[:, :, i0:i1] = torch.einsum("bhct,btm->bhcm", probs, km)

    fai_count = fai_counts(seq_end, resp_start, T, spec) * in_seq_key
    return AttentionStats(lse, dist_sum, waad, fai_sum, fai_count.long(), span_mass)
