"""Attention-statistics kernels: the public API of ``attnrl.kernels`` and the backend selection behind it.

``attention_statistics`` is the only entry point the rest of attnrl uses; it picks Triton on CUDA tensors when
Triton is installed and the chunked PyTorch path (:mod:`attnrl.kernels.reference`) everywhere else
(docs/methods.md §1.2, §2). Import the API from here: ``from attnrl.kernels.dispatch import attention_statistics,
StatsSpec, AttentionStats``.

The top-level ``kernels/`` folder installs as ``attnrl.kernels`` (pyproject.toml's package-dir) and deliberately has
no ``__init__.py``: run from the root of a checkout (``python -m pytest``, ``python -c ...``: the root is first on
``sys.path``), the folder is then only a namespace portion for the top-level name ``kernels``, and Python's import
system always prefers a regular package of that name, the Hugging Face Hub's ``kernels`` that transformers imports,
wherever it lies on ``sys.path``. With ``__init__.py`` the folder would shadow it (tests/test_packaging.py).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .reference import AttentionStats, StatsSpec, attention_statistics_torch, fai_counts

__all__ = [
    "BACKENDS",
    "AttentionStats",
    "StatsSpec",
    "attention_statistics",
    "attention_statistics_torch",
    "available_backends",
    "fai_counts",
]

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
