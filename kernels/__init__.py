"""Attention-statistics kernels: a chunked PyTorch reference and streaming Triton kernels behind one dispatcher.

``attention_statistics`` is the only entry point the rest of attnrl uses; it picks Triton on CUDA tensors when
Triton is installed and the chunked PyTorch path everywhere else (docs/methods.md §1.2, §2).
"""

from .dispatch import attention_statistics, available_backends
from .reference import AttentionStats, StatsSpec, attention_statistics_torch, fai_counts

__all__ = [
    "AttentionStats",
    "StatsSpec",
    "attention_statistics",
    "attention_statistics_torch",
    "available_backends",
    "fai_counts",
]
