"""Backend selection for :func:`attention_statistics`."""

from __future__ import annotations

import importlib.util
import os

import torch

from .reference import AttentionStats, StatsSpec, attention_statistics_torch

BACKENDS = ("auto", "torch", "triton")


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``. Triton runs on CUDA, or anywhere under TRITON_INTERPRET=1."""
    out = ["torch"]
    if _triton_importable() and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        out.append("triton")
    return out


def attention_statistics(
    q: torch.Tensor,
    k: torch.Tensor,
    seq_start: torch.Tensor,
    seq_end: torch.Tensor,
    resp_start: torch.Tensor,
    spec: StatsSpec = StatsSpec(),
    *,
    scale: float | None = None,
    key_masks: torch.Tensor | None = None,
    backend: str = "auto",
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> AttentionStats:
    """Per-head WAAD / distance / FAI / span-mass statistics of one causal attention layer.

    q: (B, H, T, D); k: (B, Hkv, T, D); seq_start/seq_end/resp_start: (B,) index spans (see ``reference``).
    backend: "auto" (Triton on CUDA, PyTorch elsewhere), "torch" or "triton".
    sliding_window / softcap / sinks (H,): the layer's attention variant (None: plain causal softmax);
    see :func:`attnrl.kernels.reference.attention_statistics_torch`.
    """
    variant = dict(sliding_window=sliding_window, softcap=softcap, sinks=sinks)
    if backend not in BACKENDS:
        raise ValueError(f"unknown statistics backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = "triton" if (q.is_cuda and _triton_importable()) else "torch"
    if backend == "triton":
        if "triton" not in available_backends(q.device):
            raise RuntimeError(
                "backend='triton' needs the triton package and a CUDA tensor (or TRITON_INTERPRET=1 on CPU); "
                "install attnrl[triton] or use backend='torch'"
            )
        try:
            from .triton_stats import attention_statistics_triton
        except ImportError as e:  # the Triton kernels ship in their own module
            raise RuntimeError(f"Triton statistics kernels are unavailable ({e}); use backend='torch'") from e
        return attention_statistics_triton(
            q, k, seq_start, seq_end, resp_start, spec, scale=scale, key_masks=key_masks, **variant
        )
    return attention_statistics_torch(
        q, k, seq_start, seq_end, resp_start, spec, scale=scale, key_masks=key_masks, **variant
    )
