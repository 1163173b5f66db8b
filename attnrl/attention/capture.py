"""Record attention statistics of chosen layers during an ordinary SDPA forward.

attnrl registers one attention function, ``"attnrl_sdpa"``, with transformers' ``AttentionInterface``. It calls
the stock SDPA implementation unchanged (the forward's outputs are bit-identical) and, only while a
:func:`capture_statistics` context is active, hands the post-RoPE queries and keys of the selected layers to
:func:`attnrl.kernels.attention_statistics`. No eager attention, no ``output_attentions``, never a T x T matrix.

Usage::

    enable_capture(model)                      # once; generation and training keep using SDPA
    with capture_statistics(model, layers=[10, 15, 20], attention_mask=mask, resp_start=rs) as cap:
        model(input_ids=ids, attention_mask=mask)
    cap.stats[15].waad                          # (B, H, T) float32
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from attnrl.kernels import AttentionStats, StatsSpec, attention_statistics

ATTN_IMPLEMENTATION = "attnrl_sdpa"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "CaptureError",
    "StatisticsCapture",
    "capture_statistics",
    "enable_capture",
    "num_layers",
    "sequence_spans",
]


class CaptureError(ValueError):
    """The model's attention cannot be captured (or a capture was used wrongly)."""


class _StopForward(Exception):
    """Raised after the last requested layer when the rest of the forward is not needed."""


@dataclass
class StatisticsCapture:
    """What one capture context records: per-layer statistics of one forward pass."""

    layers: tuple[int, ...]
    seq_start: torch.Tensor  # (B,)
    seq_end: torch.Tensor  # (B,)
    resp_start: torch.Tensor  # (B,)
    spec: StatsSpec
    backend: str = "auto"
    key_masks: torch.Tensor | None = None  # (B, M, T)
    stop_after_last_layer: bool = False
    on_complete: Callable[[StatisticsCapture], None] | None = None
    stats: dict[int, AttentionStats] = field(default_factory=dict)
    seconds: float = 0.0  # wall time spent computing statistics inside the forward

    @property
    def complete(self) -> bool:
        return all(layer in self.stats for layer in self.layers)


_active = threading.local()


def _current() -> StatisticsCapture | None:
    return getattr(_active, "capture", None)


def _capturing_sdpa(module, query, key, value, attention_mask, *args, **kwargs):
    """SDPA, plus statistics of the selected layers while a capture is active. Output unchanged."""
    out = sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    cap = _current()
    layer = getattr(module, "layer_idx", None)
    if cap is None or layer not in cap.layers:
        return out
    if query.shape[2] != key.shape[2]:
        raise CaptureError(
            f"layer {layer}: statistics need a full forward without a KV cache (got {query.shape[2]} queries over "
            f"{key.shape[2]} keys); call the model with use_cache=False and no past_key_values"
        )
    if layer in cap.stats:
        raise CaptureError(f"layer {layer} was recorded twice in one capture context; use one forward per context")
    scaling = kwargs.get("scaling", args[1] if len(args) > 1 else None)
    start = time.perf_counter()
    cap.stats[layer] = attention_statistics(
        query.detach(),
        key.detach(),
        cap.seq_start,
        cap.seq_end,
        cap.resp_start,
        cap.spec,
        scale=scaling,
        key_masks=cap.key_masks,
        backend=cap.backend,
    )
    cap.seconds += time.perf_counter() - start
    if cap.complete:
        if cap.on_complete is not None:
            with torch.no_grad():
                cap.on_complete(cap)
        if cap.stop_after_last_layer:
            raise _StopForward
    return out


AttentionInterface.register(ATTN_IMPLEMENTATION, _capturing_sdpa)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_layers(model) -> int:
    """Number of decoder layers of a transformers model (text tower for vision-language models)."""
    n = getattr(_text_config(model.config), "num_hidden_layers", None)
    if n is None:
        raise CaptureError(f"{type(model).__name__}: config has no num_hidden_layers; cannot choose attention layers")
    return int(n)


def enable_capture(model) -> None:
    """Switch ``model`` (any transformers PreTrainedModel, peft-wrapped or not) to the capturing SDPA function.

    Raises CaptureError when the model does not route attention through transformers' AttentionInterface.
    """
    base = model
    while hasattr(base, "get_base_model") and base is not base.get_base_model():
        base = base.get_base_model()  # peft
    base = getattr(base, "module", base)  # DDP
    if not hasattr(base, "set_attn_implementation") or not getattr(base, "_supports_attention_backend", False):
        raise CaptureError(
            f"{type(base).__name__} does not support transformers' AttentionInterface, so attnrl cannot record its "
            "attention; use a transformers model whose class sets _supports_attention_backend (Llama, Qwen2, Qwen3, "
            "Qwen2-VL, ...)"
        )
    if base.config._attn_implementation != ATTN_IMPLEMENTATION:
        base.set_attn_implementation(ATTN_IMPLEMENTATION)


def sequence_spans(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq_start, seq_end) of each row's contiguous run of ones in a (B, T) 0/1 mask.

    Left and right padding are fine; holes inside a sequence are not (ValueError). A row of zeros gives 0, 0.
    """
    mask = attention_mask.bool()
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device)
    lengths = mask.sum(1)
    seq_start = torch.where(mask, idx, T).amin(1).clamp(max=T)
    seq_end = torch.where(mask, idx + 1, 0).amax(1)
    seq_start = torch.where(lengths > 0, seq_start, torch.zeros_like(seq_start))
    if bool(((seq_end - seq_start) != lengths).any()):
        raise ValueError(
            "attention_mask has holes inside a sequence; attnrl statistics need each row to be one contiguous run "
            "of tokens (left and/or right padding only)"
        )
    return seq_start, seq_end


@contextlib.contextmanager
def capture_statistics(
    model,
    layers: Sequence[int],
    attention_mask: torch.Tensor,
    resp_start: torch.Tensor,
    spec: StatsSpec = StatsSpec(),
    *,
    backend: str = "auto",
    key_masks: torch.Tensor | None = None,
    stop_after_last_layer: bool = False,
    on_complete: Callable[[StatisticsCapture], None] | None = None,
) -> Iterator[StatisticsCapture]:
    """Record statistics of ``layers`` during the single forward run inside the ``with`` block.

    attention_mask: (B, T) 0/1 padding mask of that forward; resp_start: (B,) first response index per row.
    stop_after_last_layer: abort the forward once every layer is recorded (saves the remaining layers when
    only statistics are wanted; the model's output is then unavailable).
    on_complete: called (under no_grad) inside the forward as soon as every layer is recorded — lets a caller
    act on the statistics before the rest of its own computation (e.g. a loss) reads the results.
    """
    enable_capture(model)
    n = num_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad or not layers:
        raise CaptureError(f"attention layers {list(layers)} out of range: the model has layers 0..{n - 1}")
    seq_start, seq_end = sequence_spans(attention_mask)
    cap = StatisticsCapture(
        layers=tuple(sorted(set(layers))),
        seq_start=seq_start,
        seq_end=seq_end,
        resp_start=resp_start.to(seq_start.device).long(),
        spec=spec,
        backend=backend,
        key_masks=key_masks,
        stop_after_last_layer=stop_after_last_layer,
        on_complete=on_complete,
    )
    if _current() is not None:
        raise CaptureError("capture_statistics contexts cannot be nested")
    _active.capture = cap
    try:
        yield cap
    except _StopForward:
        pass
    finally:
        _active.capture = None
    if not cap.complete:
        missing = sorted(set(cap.layers) - set(cap.stats))
        raise CaptureError(
            f"no attention statistics were recorded for layers {missing}: the model's attention did not go through "
            f"the '{ATTN_IMPLEMENTATION}' function (custom attention code?) or no forward ran inside the context"
        )
