"""Brute-force attention statistics from a fully materialised attention matrix (tests only).

Deliberately written differently from kernels/reference.py: each sequence is cropped to its valid span and
its T x T attention matrix materialised; the formulas of docs/methods.md are then applied literally.
"""

from __future__ import annotations

import torch


def materialised_attention(q, k, start, end, scale=None, sliding_window=None, softcap=None, sinks=None):
    """A (H, n, n) float64 for one sequence b: q (H, T, D), k (Hkv, T, D) cropped to [start, end).

    sliding_window: keys with t - s < sliding_window; softcap: z -> softcap * tanh(z / softcap); sinks (H,):
    an extra logit per head in each row's softmax whose column is dropped (rows then sum to less than 1)."""
    H, Hkv = q.shape[0], k.shape[0]
    qs = q[:, start:end].double()
    ks = k[:, start:end].double().repeat_interleave(H // Hkv, 0)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = qs @ ks.transpose(-1, -2) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    n = end - start
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    if sliding_window is not None:
        causal &= ~torch.ones(n, n, dtype=torch.bool).tril(-sliding_window)
    scores = scores.masked_fill(~causal, float("-inf"))
    if sinks is None:
        return torch.softmax(scores, -1)
    sink_col = sinks.double()[:, None, None].expand(H, n, 1)
    return torch.softmax(torch.cat([scores, sink_col], -1), -1)[..., :n]


def brute_force_statistics(q, k, seq_start, seq_end, resp_start, window, fai_lo, fai_hi, scale=None, key_masks=None,
                           **variant):
    """Dict of (B, H, T) float64 tensors: dist_sum, waad, fai_sum, (span_mass (B,H,T,M)); fai_count (B, T).

    variant: sliding_window / softcap / sinks, passed to :func:`materialised_attention`."""
    B, H, T, _ = q.shape
    out = {name: torch.zeros(B, H, T, dtype=torch.float64) for name in ("dist_sum", "waad", "fai_sum")}
    out["fai_count"] = torch.zeros(B, T, dtype=torch.long)
    if key_masks is not None:
        out["span_mass"] = torch.zeros(B, H, T, key_masks.shape[1], dtype=torch.float64)
    for b in range(B):
        s0, e0, r0 = int(seq_start[b]), int(seq_end[b]), int(resp_start[b])
        if e0 <= s0:
            continue
        A = materialised_attention(q[b], k[b], s0, e0, scale, **variant)  # (H, n, n), index i <-> position s0 + i
        n = e0 - s0
        for t in range(n):
            for s in range(t + 1):
                d = t - s
                out["dist_sum"][b, :, s0 + t] += A[:, t, s] * d
                out["waad"][b, :, s0 + t] += A[:, t, s] * min(d, window)
        for s in range(n):
            pos_s = s0 + s
            hi = e0 - 1 if fai_hi is None else min(e0 - 1, pos_s + fai_hi)
            rows = [t for t in range(max(pos_s + fai_lo, r0), hi + 1)]
            out["fai_count"][b, pos_s] = len(rows)
            for t in rows:
                out["fai_sum"][b, :, pos_s] += A[:, t - s0, s]
        if key_masks is not None:
            km = key_masks[b, :, s0:e0].double()  # (M, n)
            out["span_mass"][b, :, s0:e0] = torch.einsum("hts,ms->htm", A, km)
    return out
