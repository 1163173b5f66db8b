"""Streaming Triton kernels for the attention statistics of docs/methods.md §1.2 and §2 (FlashAttention style).

No T x T matrix is ever materialised: every kernel recomputes scores tile by tile from q and k.
Conventions (q, k, spans, units) are those of :mod:`attnrl.kernels.reference`, whose
:func:`attention_statistics_torch` these kernels must match.

Kernels
- ``_row_stats_kernel`` (one program per query block): one pass over the causal key blocks with an online
  softmax. Besides the row log-sum-exp it carries, rescaled like FlashAttention's output accumulator,
  sum_s p_s (i0 - s) (head distance), sum_s p_s [s in mask m] (span mass) and the WAAD correction
  sum_{t-W < s <= t} p_s (W - (t - s)); WAAD_t = W - correction / l (docs/methods.md §1.2). Key blocks lying
  entirely W or more below the diagonal are processed without any masking.
- ``_band_waad_kernel`` (band mode with a given LSE): WAAD from the same identity, visiting only the keys
  [t - W + 1, t] of each row.
- ``_fai_column_kernel`` (one program per key block, looping over query blocks like FlashAttention's dK/dV
  backward): per key column the FAI sum over response rows within the horizon. Each column is written by one
  program, so it is deterministic and needs no atomics. With ``fai_hi`` set it only visits the query blocks
  in [s + fai_lo, s + fai_hi].

Attention variants (the layer's own softmax, see docs/attention_support.md): a sliding window w starts every
row's key loop at t - w + 1 and masks t - s >= w (the FAI horizon is cut at w - 1 on the host); soft-capping
maps every score tile to c * tanh(z / c); sinks add exp(sink_h) to the row normaliser at the end of the row
pass, which rescales the row sums by exp(lse - lse') (the band and column passes take the corrected lse').

Under ``TRITON_INTERPRET=1`` (which must be set before this module is imported: ``triton.jit`` reads it when
the kernels are decorated) everything runs on CPU tensors with 16 x 16 tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import AttentionStats, StatsSpec, fai_counts, validate_inputs

__all__ = ["attention_statistics_triton"]

INTERPRETED = bool(triton.knobs.runtime.interpret)  # value the kernels below were decorated with
LOG2E = math.log2(math.e)
_LOG2E = tl.constexpr(LOG2E)  # the kernels work in log2 units (exp2 / log2)
_LN2 = tl.constexpr(math.log(2.0))
NO_WINDOW = 2**30  # the `sliding` argument of a layer without a sliding window (int32, > any T)


# ----------------------------------------------------------------------------------------------- device code
# Triton argument lists stay compact (not reformatted); the host code below is formatted as usual.
# fmt: off
@triton.jit
def _load_tile(base, offs_rows, offs_d, stride_t, stride_d, n_rows, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """(len(offs_rows), BLOCK_D) tile of a (T, D) matrix; out-of-range rows and padded dims read as 0."""
    ptrs = base + offs_rows[:, None] * stride_t + offs_d[None, :] * stride_d
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs, mask=offs_rows[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(offs_rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def _soft_cap(s, cap):
    """cap * tanh(s / cap) without overflow (s and cap in the same units)."""
    y = s / cap
    e = tl.exp2(tl.abs(y) * -2.0 * _LOG2E)
    th = (1.0 - e) / (1.0 + e)
    return cap * tl.where(y < 0, -th, th)


@triton.jit
def _dot_t(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b.T with fp32 accumulation; UPCAST works around the interpreter's bf16 dot (it multiplies raw bits)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, tl.trans(b), input_precision=PRECISION)


@triton.jit
def _row_block(q, m_i, l_i, corr_i, dist_i, span_i, k_base, mask_base, start_n, offs_m, i0, seq_start, seq_end,
               T, stride_kt, stride_kd, stride_mm, stride_mt, qk_scale, window, sliding, cap,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, N_MASKS: tl.constexpr,
               M_PAD: tl.constexpr, MASKED: tl.constexpr, WITH_DIST: tl.constexpr, SOFTCAP: tl.constexpr,
               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Online-softmax update of the row accumulators with keys [start_n, start_n + BLOCK_N) (log2 units).

    MASKED=False is only legal for blocks whose keys are all valid for every row (inside the sliding window
    too) and at least W below the diagonal: no masking, and no WAAD correction (min(t - s, W) = W there).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(k_base, offs_n, offs_d, stride_kt, stride_kd, T, HEAD_DIM, BLOCK_D, MASKED)
    s = _dot_t(q, k, PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
    if SOFTCAP:
        s = _soft_cap(s, cap)
    if MASKED:
        delta = offs_m[:, None] - offs_n[None, :]  # t - s
        valid = (delta >= 0) & (delta < sliding) & (offs_n[None, :] >= seq_start) & (offs_n[None, :] < seq_end)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows without any valid key yet
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    corr_i = corr_i * alpha
    if MASKED:
        corr_i += tl.sum(p * tl.maximum(window - delta, 0).to(tl.float32), 1)
    if WITH_DIST:
        dist_i = dist_i * alpha + tl.sum(p * (i0 - offs_n).to(tl.float32)[None, :], 1)
    if N_MASKS > 0:
        span_i = span_i * alpha[:, None]
        mask_cols = tl.arange(0, M_PAD)
        for mi in tl.static_range(N_MASKS):
            key_mask = tl.load(mask_base + mi * stride_mm + offs_n * stride_mt, mask=offs_n < T, other=0.0)
            mass = tl.sum(p * key_mask[None, :], 1)
            span_i += tl.where(mask_cols[None, :] == mi, mass[:, None], 0.0)
    return m_new, l_i, corr_i, dist_i, span_i


@triton.jit
def _row_stats_kernel(q_ptr, k_ptr, seq_start_ptr, seq_end_ptr, mask_ptr, sinks_ptr, lse_ptr, waad_ptr, dist_ptr,
                      span_ptr, stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                      stride_mb, stride_mm, stride_mt, H, T, GROUP, qk_scale, window, sliding, cap,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      N_MASKS: tl.constexpr, M_PAD: tl.constexpr, WITH_DIST: tl.constexpr, SOFTCAP: tl.constexpr,
                      HAS_SINKS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """lse, waad (and dist_sum, span_mass) of BLOCK_M query rows of one (b, h)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    i0 = pid_m * BLOCK_M
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    seq_start = tl.load(seq_start_ptr + b)
    seq_end = tl.load(seq_end_ptr + b)

    q_base = q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = k_ptr + b.to(tl.int64) * stride_kb + (h // GROUP).to(tl.int64) * stride_kh
    mask_base = mask_ptr + b.to(tl.int64) * stride_mb
    q = _load_tile(q_base, offs_m, offs_d, stride_qt, stride_qd, T, HEAD_DIM, BLOCK_D, True)

    # key blocks: [key_lo, far_lo) masked | [far_lo, far_hi) unmasked: inside the sequence and the sliding window,
    # >= W below the diagonal | [far_hi, key_hi) masked. The first key any row sees is max(seq_start, i0 - w + 1).
    key_lo = tl.maximum(seq_start, i0 - sliding + 1) // BLOCK_N * BLOCK_N
    active = (i0 < seq_end) & (i0 + BLOCK_M > seq_start)
    key_hi = tl.where(active, tl.minimum(i0 + BLOCK_M, seq_end), key_lo)
    in_window_lo = (tl.maximum(i0 + BLOCK_M - sliding, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N  # every row sees s
    far_lo = tl.minimum(tl.maximum((seq_start + BLOCK_N - 1) // BLOCK_N * BLOCK_N, in_window_lo), key_hi)
    far_hi = tl.minimum(tl.maximum(tl.maximum(i0 - window + 1, 0) // BLOCK_N * BLOCK_N, far_lo), key_hi)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    corr_i = tl.zeros([BLOCK_M], tl.float32)
    dist_i = tl.zeros([BLOCK_M], tl.float32)
    span_i = tl.zeros([BLOCK_M, M_PAD], tl.float32)
    for start_n in range(key_lo, far_lo, BLOCK_N):
        m_i, l_i, corr_i, dist_i, span_i = _row_block(
            q, m_i, l_i, corr_i, dist_i, span_i, k_base, mask_base, start_n, offs_m, i0, seq_start, seq_end, T,
            stride_kt, stride_kd, stride_mm, stride_mt, qk_scale, window, sliding, cap,
            BLOCK_N, BLOCK_D, HEAD_DIM, N_MASKS, M_PAD, True, WITH_DIST, SOFTCAP, PRECISION, UPCAST)
    for start_n in range(far_lo, far_hi, BLOCK_N):
        m_i, l_i, corr_i, dist_i, span_i = _row_block(
            q, m_i, l_i, corr_i, dist_i, span_i, k_base, mask_base, start_n, offs_m, i0, seq_start, seq_end, T,
            stride_kt, stride_kd, stride_mm, stride_mt, qk_scale, window, sliding, cap,
            BLOCK_N, BLOCK_D, HEAD_DIM, N_MASKS, M_PAD, False, WITH_DIST, SOFTCAP, PRECISION, UPCAST)
    for start_n in range(far_hi, key_hi, BLOCK_N):
        m_i, l_i, corr_i, dist_i, span_i = _row_block(
            q, m_i, l_i, corr_i, dist_i, span_i, k_base, mask_base, start_n, offs_m, i0, seq_start, seq_end, T,
            stride_kt, stride_kd, stride_mm, stride_mt, qk_scale, window, sliding, cap,
            BLOCK_N, BLOCK_D, HEAD_DIM, N_MASKS, M_PAD, True, WITH_DIST, SOFTCAP, PRECISION, UPCAST)

    row_ok = (offs_m >= seq_start) & (offs_m < seq_end)
    in_range = offs_m < T
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = pid_bh.to(tl.int64) * T + offs_m
    if HAS_SINKS:  # normaliser l + exp2(sink - m): the keys keep row mass l * inv < 1
        sink = tl.load(sinks_ptr + h).to(tl.float32) * _LOG2E
        m_top = tl.maximum(m_i, sink)
        lse2 = m_top + tl.log2(l_i * tl.exp2(m_i - m_top) + tl.exp2(sink - m_top))
        inv = tl.exp2(m_i - lse2)  # 1 / normaliser, in the units of p = exp2(s - m_i)
        mass = l_i * inv
        waad = window * mass - corr_i * inv
    else:
        lse2 = m_i + tl.log2(l_safe)
        inv = 1.0 / l_safe
        mass = 1.0
        waad = window - corr_i / l_safe
    tl.store(lse_ptr + out, tl.where(row_ok, lse2 * _LN2, 0.0), mask=in_range)
    tl.store(waad_ptr + out, tl.where(row_ok, waad, 0.0), mask=in_range)
    if WITH_DIST:
        dist = (offs_m - i0).to(tl.float32) * mass + dist_i * inv
        tl.store(dist_ptr + out, tl.where(row_ok, dist, 0.0), mask=in_range)
    if N_MASKS > 0:
        mask_cols = tl.arange(0, M_PAD)
        span = tl.where(row_ok[:, None], span_i * inv[:, None], 0.0)
        tl.store(span_ptr + out[:, None] * N_MASKS + mask_cols[None, :], span,
                 mask=in_range[:, None] & (mask_cols[None, :] < N_MASKS))


@triton.jit
def _band_waad_kernel(q_ptr, k_ptr, seq_start_ptr, seq_end_ptr, sinks_ptr, lse_ptr, waad_ptr,
                      stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                      H, T, GROUP, qk_scale, window, sliding, cap,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """WAAD_t = W m_t - sum_{t-W < s <= t} A_{t,s} (W - (t - s)) of BLOCK_M rows, given the row LSE.

    m_t = sum_s A_{t,s}: 1, or 1 - exp(sink_h - lse_t) with sinks."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    i0 = pid_m * BLOCK_M
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    seq_start = tl.load(seq_start_ptr + b)
    seq_end = tl.load(seq_end_ptr + b)
    q_base = q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = k_ptr + b.to(tl.int64) * stride_kb + (h // GROUP).to(tl.int64) * stride_kh
    q = _load_tile(q_base, offs_m, offs_d, stride_qt, stride_qd, T, HEAD_DIM, BLOCK_D, True)
    out = pid_bh.to(tl.int64) * T + offs_m
    in_range = offs_m < T
    lse2 = tl.load(lse_ptr + out, mask=in_range, other=0.0) * _LOG2E

    reach = tl.minimum(window, sliding)  # keys that carry a WAAD correction and lie inside the window
    key_lo = tl.maximum(seq_start, tl.maximum(i0 - reach + 1, 0)) // BLOCK_N * BLOCK_N
    active = (i0 < seq_end) & (i0 + BLOCK_M > seq_start)
    key_hi = tl.where(active, tl.minimum(i0 + BLOCK_M, seq_end), key_lo)
    corr = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(key_lo, key_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, offs_d, stride_kt, stride_kd, T, HEAD_DIM, BLOCK_D, True)
        s = _dot_t(q, k, PRECISION, UPCAST) * qk_scale
        if SOFTCAP:
            s = _soft_cap(s, cap)
        delta = offs_m[:, None] - offs_n[None, :]
        valid = (delta >= 0) & (delta < reach) & (offs_n[None, :] >= seq_start) & (offs_n[None, :] < seq_end)
        p = tl.where(valid, tl.exp2(s - lse2[:, None]), 0.0)
        corr += tl.sum(p * (window - delta).to(tl.float32), 1)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + h).to(tl.float32) * _LOG2E
        waad = window * (1.0 - tl.exp2(sink - lse2)) - corr
    else:
        waad = window - corr
    row_ok = (offs_m >= seq_start) & (offs_m < seq_end)
    tl.store(waad_ptr + out, tl.where(row_ok, waad, 0.0), mask=in_range)


@triton.jit
def _fai_block(acc, k, q_base, lse_base, start_m, offs_n, col_ok, resp_lo, seq_end, fai_lo, fai_hi, T,
               stride_qt, stride_qd, qk_scale, cap,
               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr,
               SOFTCAP: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Add sum_t A_{t,s} over query rows [start_m, start_m + BLOCK_M) to the per-column FAI accumulator.

    MASKED=False is only legal when every (t, s) pair of the tile is a valid response row in the horizon.
    """
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(q_base, offs_m, offs_d, stride_qt, stride_qd, T, HEAD_DIM, BLOCK_D, MASKED)
    if MASKED:
        lse2 = tl.load(lse_base + offs_m, mask=offs_m < T, other=0.0) * _LOG2E
    else:
        lse2 = tl.load(lse_base + offs_m) * _LOG2E
    s_t = _dot_t(k, q, PRECISION, UPCAST) * qk_scale  # (BLOCK_N keys, BLOCK_M queries)
    if SOFTCAP:
        s_t = _soft_cap(s_t, cap)
    p = tl.exp2(s_t - lse2[None, :])
    if MASKED:
        delta = offs_m[None, :] - offs_n[:, None]  # t - s
        row_ok = (offs_m >= resp_lo) & (offs_m < seq_end)
        valid = col_ok[:, None] & row_ok[None, :] & (delta >= fai_lo) & (delta <= fai_hi)
        p = tl.where(valid, p, 0.0)
    return acc + tl.sum(p, 1)


@triton.jit
def _fai_column_kernel(q_ptr, k_ptr, seq_start_ptr, seq_end_ptr, resp_start_ptr, lse_ptr, fai_ptr,
                       stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                       H, T, GROUP, qk_scale, fai_lo, fai_hi, cap,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       SOFTCAP: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """fai_sum of BLOCK_N key columns of one (b, h): sum over t in R with fai_lo <= t - s <= fai_hi."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    seq_start = tl.load(seq_start_ptr + b)
    seq_end = tl.load(seq_end_ptr + b)
    resp_lo = tl.maximum(tl.load(resp_start_ptr + b), seq_start)
    q_base = q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = k_ptr + b.to(tl.int64) * stride_kb + (h // GROUP).to(tl.int64) * stride_kh
    lse_base = lse_ptr + pid_bh.to(tl.int64) * T
    k = _load_tile(k_base, offs_n, offs_d, stride_kt, stride_kd, T, HEAD_DIM, BLOCK_D, True)
    col_ok = (offs_n >= seq_start) & (offs_n < seq_end)

    # query blocks: [q_lo, full_lo) masked | [full_lo, full_hi) unmasked | [full_hi, q_hi) masked
    active = (n0 < seq_end) & (n0 + BLOCK_N > seq_start)
    q_lo = tl.maximum(n0 + fai_lo, resp_lo) // BLOCK_M * BLOCK_M
    q_hi = tl.where(active, tl.maximum(tl.minimum(n0 + BLOCK_N + fai_hi, seq_end), q_lo), q_lo)
    cols_full = (n0 >= seq_start) & (n0 + BLOCK_N <= seq_end)
    full_lo = (tl.maximum(n0 + BLOCK_N - 1 + fai_lo, resp_lo) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    full_lo = tl.where(cols_full, tl.minimum(tl.maximum(full_lo, q_lo), q_hi), q_hi)
    full_hi = tl.minimum(n0 + fai_hi + 1, seq_end) // BLOCK_M * BLOCK_M
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), q_hi)

    acc = tl.zeros([BLOCK_N], tl.float32)
    for start_m in range(q_lo, full_lo, BLOCK_M):
        acc = _fai_block(acc, k, q_base, lse_base, start_m, offs_n, col_ok, resp_lo, seq_end, fai_lo, fai_hi, T,
                         stride_qt, stride_qd, qk_scale, cap, BLOCK_M, BLOCK_D, HEAD_DIM, True, SOFTCAP,
                         PRECISION, UPCAST)
    for start_m in range(full_lo, full_hi, BLOCK_M):
        acc = _fai_block(acc, k, q_base, lse_base, start_m, offs_n, col_ok, resp_lo, seq_end, fai_lo, fai_hi, T,
                         stride_qt, stride_qd, qk_scale, cap, BLOCK_M, BLOCK_D, HEAD_DIM, False, SOFTCAP,
                         PRECISION, UPCAST)
    for start_m in range(full_hi, q_hi, BLOCK_M):
        acc = _fai_block(acc, k, q_base, lse_base, start_m, offs_n, col_ok, resp_lo, seq_end, fai_lo, fai_hi, T,
                         stride_qt, stride_qd, qk_scale, cap, BLOCK_M, BLOCK_D, HEAD_DIM, True, SOFTCAP,
                         PRECISION, UPCAST)
    tl.store(fai_ptr + pid_bh.to(tl.int64) * T + offs_n, tl.where(col_ok, acc, 0.0), mask=offs_n < T)


# fmt: on


# ------------------------------------------------------------------------------------------------- host code
@dataclass(frozen=True)
class Tiles:
    """Launch shape of one kernel: query rows per tile, keys per tile, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


def choose_tiles(kernel: str, block_d: int, elem_bytes: int) -> Tiles:
    """Tile sizes for ``kernel`` in {"rows", "band", "cols"}: 16 x 16 under the interpreter (fast tests),
    FlashAttention-like tiles on GPU, halved for wide heads or fp32 inputs (shared-memory budget)."""
    if INTERPRETED:
        return Tiles(16, 16, 1, 1)
    wide = block_d * elem_bytes > 256  # D > 128 in 16-bit, D > 64 in fp32
    if kernel == "rows":
        return Tiles(64, 32, 4, 2) if wide else Tiles(128, 64, 8, 3)
    if kernel == "cols":
        return Tiles(32, 64, 4, 2) if wide else Tiles(64, 128, 8, 3)
    return Tiles(64, 32, 4, 2) if wide else Tiles(64, 64, 4, 2)


@dataclass(frozen=True)
class _Problem:
    """Inputs shared by every launch: q (B, H, T, D), k (B, Hkv, T, D), int32 spans, scale in log2 units.

    The layer's attention variant: ``sliding`` keys per row (t - s < sliding; NO_WINDOW when there is none),
    ``cap`` the soft-cap in log2 units (0: none), ``sinks`` (H,) float32 sink logits or None."""

    q: torch.Tensor
    k: torch.Tensor
    seq_start: torch.Tensor
    seq_end: torch.Tensor
    qk_scale: float
    sliding: int
    cap: float = 0.0
    sinks: torch.Tensor | None = None

    def strides(self) -> tuple[int, ...]:
        """Strides of q then k, in elements."""
        return (*self.q.stride(), *self.k.stride())

    def dims(self) -> tuple[int, int, int]:
        """H, T and the GQA group size H / Hkv."""
        B, H, T, D = self.q.shape
        return H, T, H // self.k.shape[1]

    def meta(self) -> dict:
        """Compile-time constants: head dimension, dot precision (exact fp32 for fp32 inputs), bf16 upcast."""
        D = self.q.shape[3]
        upcast = INTERPRETED and self.q.dtype == torch.bfloat16
        return dict(
            HEAD_DIM=D,
            BLOCK_D=max(16, triton.next_power_of_2(D)),
            SOFTCAP=self.cap > 0,
            PRECISION="ieee" if self.q.dtype == torch.float32 or upcast else "tf32",
            UPCAST=upcast,
        )

    def sinks_arg(self, placeholder: torch.Tensor) -> torch.Tensor:
        """The sinks pointer argument (``placeholder`` when there are none: never read)."""
        return placeholder if self.sinks is None else self.sinks

    def grid(self, block: int) -> tuple[int, int]:
        B, H, T, _ = self.q.shape
        return (triton.cdiv(T, block), B * H)

    def tiles(self, kernel: str) -> Tiles:
        return choose_tiles(kernel, self.meta()["BLOCK_D"], self.q.element_size())


def _launch_rows(problem: _Problem, window: int, lse, waad, dist_sum=None, key_masks=None, span_mass=None):
    """Full row pass (causal, or the sliding window): fills lse and waad (B, H, T), and dist_sum / span_mass
    (B, H, T, M) when given."""
    tiles = problem.tiles("rows")
    n_masks = 0 if key_masks is None else key_masks.shape[1]
    masks = waad if key_masks is None else key_masks.to(device=waad.device, dtype=torch.float32).contiguous()
    mask_strides = (0, 0, 0) if key_masks is None else masks.stride()
    _row_stats_kernel[problem.grid(tiles.block_m)](
        problem.q,
        problem.k,
        problem.seq_start,
        problem.seq_end,
        masks,
        problem.sinks_arg(waad),
        lse,
        waad,
        waad if dist_sum is None else dist_sum,
        waad if span_mass is None else span_mass,
        *problem.strides(),
        *mask_strides,
        *problem.dims(),
        problem.qk_scale,
        window,
        problem.sliding,
        problem.cap,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        N_MASKS=n_masks,
        M_PAD=max(1, triton.next_power_of_2(n_masks)),
        WITH_DIST=dist_sum is not None,
        HAS_SINKS=problem.sinks is not None,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **problem.meta(),
    )


def _launch_band_waad(problem: _Problem, window: int, lse, waad):
    """Band WAAD from a given natural-log lse (B, H, T): fills waad (B, H, T)."""
    tiles = problem.tiles("band")
    _band_waad_kernel[problem.grid(tiles.block_m)](
        problem.q,
        problem.k,
        problem.seq_start,
        problem.seq_end,
        problem.sinks_arg(waad),
        lse,
        waad,
        *problem.strides(),
        *problem.dims(),
        problem.qk_scale,
        window,
        problem.sliding,
        problem.cap,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        HAS_SINKS=problem.sinks is not None,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **problem.meta(),
    )


def _launch_fai(problem: _Problem, resp_start, spec: StatsSpec, lse, fai_sum):
    """Column pass: fills fai_sum (B, H, T) from the natural-log lse (B, H, T).

    A sliding window cuts the horizon at t - s <= sliding - 1 (the layer gives no attention further away)."""
    tiles = problem.tiles("cols")
    T = problem.q.shape[2]
    fai_hi = min(T if spec.fai_hi is None else spec.fai_hi, problem.sliding - 1)
    if fai_hi < spec.fai_lo:  # the window ends before the horizon starts: no row attends to its horizon
        fai_sum.zero_()
        return
    _fai_column_kernel[problem.grid(tiles.block_n)](
        problem.q,
        problem.k,
        problem.seq_start,
        problem.seq_end,
        resp_start,
        lse,
        fai_sum,
        *problem.strides(),
        *problem.dims(),
        problem.qk_scale,
        spec.fai_lo,
        fai_hi,
        problem.cap,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **problem.meta(),
    )


def _common_dtype(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16/bf16/fp32 pairs of the same dtype go in as they are; anything else is computed in fp32."""
    if q.dtype == k.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return q, k
    return q.float(), k.float()


def attention_statistics_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    seq_start: torch.Tensor,
    seq_end: torch.Tensor,
    resp_start: torch.Tensor,
    spec: StatsSpec = StatsSpec(),  # frozen dataclass: immutable
    *,
    scale: float | None = None,
    key_masks: torch.Tensor | None = None,
    band: bool = False,
    lse: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> AttentionStats:
    """Attention statistics with streaming Triton kernels; same conventions and outputs as
    :func:`attnrl.kernels.reference.attention_statistics_torch`.

    q: (B, H, T, D), k: (B, Hkv, T, D), fp16/bf16/fp32 (any strides; accumulation is fp32);
    seq_start/seq_end/resp_start: (B,) integer index spans; key_masks: (B, M, T) bool/float or None.
    Working memory is O(B * H * T): no T x T matrix is formed.

    band=False (default): every field, as the reference.
    band=True: only what credit assignment needs, visiting only keys near the diagonal where possible:
      ``waad`` from the last W keys of each row and ``fai_sum`` from the query blocks in [s + fai_lo, s + fai_hi]
      (all of them to the end when ``spec.fai_hi`` is None). ``dist_sum`` and ``span_mass`` are None
      (key_masks must be None). ``lse`` (B, H, T) float, the natural-log row normaliser of the layer's softmax
      (window, soft-cap and sink included, as the attention op's own softmax LSE), may be given; it is then
      trusted and returned as is, otherwise a one-pass LSE kernel over the full rows computes it.

    sliding_window / softcap / sinks (H,): the layer's attention variant, as in the reference.
    """
    validate_inputs(q, k, seq_start, seq_end, resp_start, key_masks, sliding_window, softcap, sinks)
    if lse is not None and not band:
        raise ValueError("a precomputed lse is only used with band=True")
    if band and key_masks is not None:
        raise ValueError("band mode computes no span_mass; pass key_masks=None or band=False")
    if not (q.is_cuda or INTERPRETED):
        raise RuntimeError("CPU tensors need TRITON_INTERPRET=1 set before attnrl.kernels.triton_stats is imported")
    B, H, T, D = q.shape
    if lse is not None and lse.shape != (B, H, T):
        raise ValueError(f"lse must have shape ({B}, {H}, {T}), got {tuple(lse.shape)}")
    q, k = _common_dtype(q, k)
    dev = q.device
    seq_start, seq_end, resp_start = (
        x.to(device=dev, dtype=torch.int32).contiguous() for x in (seq_start, seq_end, resp_start)
    )
    problem = _Problem(
        q,
        k,
        seq_start,
        seq_end,
        (D**-0.5 if scale is None else scale) * LOG2E,
        sliding=NO_WINDOW if sliding_window is None or sliding_window >= T else int(sliding_window),
        cap=0.0 if softcap is None else float(softcap) * LOG2E,
        sinks=None if sinks is None else sinks.detach().to(device=dev, dtype=torch.float32).contiguous(),
    )

    waad = torch.empty(B, H, T, device=dev)
    dist_sum = span_mass = None
    if not band:
        lse = torch.empty(B, H, T, device=dev)
        dist_sum = torch.empty(B, H, T, device=dev)
        if key_masks is not None:
            span_mass = torch.empty(B, H, T, key_masks.shape[1], device=dev)
        _launch_rows(problem, spec.window, lse, waad, dist_sum, key_masks, span_mass)
    elif lse is None:
        lse = torch.empty(B, H, T, device=dev)
        _launch_rows(problem, spec.window, lse, waad)
    else:
        lse = lse.to(device=dev, dtype=torch.float32).contiguous()
        _launch_band_waad(problem, spec.window, lse, waad)
    fai_sum = torch.empty(B, H, T, device=dev)
    _launch_fai(problem, resp_start, spec, lse, fai_sum)

    s = torch.arange(T, device=dev)[None, :]
    in_seq_key = (s >= seq_start[:, None].long()) & (s < seq_end[:, None].long())
    fai_count = fai_counts(seq_end.long(), resp_start.long(), T, spec) * in_seq_key
    return AttentionStats(lse, dist_sum, waad, fai_sum, fai_count.long(), span_mass)
