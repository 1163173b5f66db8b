"""Record attention statistics of chosen layers beside the model's own attention implementation.

:func:`enable_capture` wraps the implementation the model was loaded with ("sdpa", "eager" — the model's own
``eager_attention_forward`` —, "flash_attention_2/3", "flex_attention", a hub kernel, any name registered with
transformers' ``AttentionInterface``) under the derived name ``"attnrl:<name>"``, registered with
``AttentionInterface`` beside the original's mask function (``AttentionMaskInterface``). The wrapper calls the
original unchanged (the forward's outputs are bit-identical) and, only while a :func:`capture_statistics` context
is active, hands the post-RoPE queries and keys of the selected layers, with the layer's attention variant
(sliding window, logit soft-cap, attention sinks), to :func:`attnrl.kernels.dispatch.attention_statistics`. Never a T x T
matrix. :func:`disable_capture` restores the original name. ``"attnrl_sdpa"`` stays registered as an alias of
``"attnrl:sdpa"``.

What is supported, what is refused (with a :class:`CaptureError` at the first captured forward, i.e. at the
CreditAssigner's construction probe) and why: docs/attention_support.md.

Usage::

    enable_capture(model)                      # once; generation and training keep the model's implementation
    with capture_statistics(model, layers=[10, 15, 20], attention_mask=mask, resp_start=rs) as cap:
        model(input_ids=ids, attention_mask=mask)
    cap.stats[15].waad                          # (B, H, T) float32
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from attnrl.kernels.dispatch import AttentionStats, StatsSpec, attention_statistics

PREFIX = "attnrl:"
ATTN_IMPLEMENTATION = "attnrl_sdpa"  # alias of "attnrl:sdpa", kept for code that names it

__all__ = [
    "ATTN_IMPLEMENTATION",
    "PREFIX",
    "CaptureError",
    "StatisticsCapture",
    "attention_layers",
    "capture_name",
    "capture_statistics",
    "disable_capture",
    "enable_capture",
    "layer_types",
    "num_layers",
    "original_implementation",
    "sequence_spans",
]

# Decoder layer types (config.layer_types / layers_block_type) whose softmax attention the statistics model.
SOFTMAX_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "attention", "hybrid"})
# Layer types without softmax attention (state-space, recurrent, convolution, MLP-only blocks).
NO_ATTENTION_LAYER_TYPES = frozenset(
    {"linear_attention", "mamba", "mamba2", "conv", "mlp", "moe", "recurrent", "rwkv", "ssm"}
)
# Attention-call arguments that change the softmax in a way the statistics do not model.
UNSUPPORTED_ARGUMENTS = {
    "position_bias": "an additive position bias (relative-position attention)",
    "sinks": "attention sinks passed as `sinks` (only gpt-oss-style `s_aux` sinks are supported)",
    "indices": "sparse attention over selected keys",
    "block_indices": "block-sparse attention",
    "attention_chunk_size": "chunked attention",
}
PACKED_ARGUMENTS = ("cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens")
# Implementations that never read config._attn_implementation inside the call; the others (flash attention,
# hub kernels, custom functions) are shown their own name on the config while they run.
_NAME_BLIND = frozenset({"sdpa", "eager", "flex_attention"})
_PACKED_FIX = (
    "attnrl's statistics need one sequence per row: pass a (B, T) attention_mask with padding and no packing "
    "(padding_free=False, no cu_seq_lens / restarting position_ids)"
)


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
    rows_checked: bool = False  # position_ids checked for packed rows (once per forward)

    @property
    def complete(self) -> bool:
        return all(layer in self.stats for layer in self.layers)


_active = threading.local()


def _current() -> StatisticsCapture | None:
    return getattr(_active, "capture", None)


# ------------------------------------------------------------------------------ the original implementation
_MODULE_INTERFACES: dict[type, object] = {}
_EAGER_FUNCTIONS: dict[type, Callable] = {}


def _model_module_attr(cls: type, name: str):
    """``name`` from the python module of ``cls`` or of its first base class that defines it (None if none)."""
    for klass in cls.__mro__:
        value = getattr(sys.modules.get(klass.__module__), name, None)
        if value is not None:
            return value
    return None


def _original_function(original: str, module) -> Callable:
    """The function the un-wrapped model would call for ``module`` under ``original``.

    "eager" is the model's own module-level ``eager_attention_forward``; other names are looked up in the
    AttentionInterface instance of the model's python module (which may override names locally).
    """
    cls = type(module)
    if original == "eager":
        fn = _EAGER_FUNCTIONS.get(cls)
        if fn is None:
            fn = _model_module_attr(cls, "eager_attention_forward")
            if not callable(fn):
                raise CaptureError(
                    f"{cls.__name__}: its python module defines no eager_attention_forward, so attnrl cannot wrap "
                    "its 'eager' attention; load the model with attn_implementation='sdpa'"
                )
            _EAGER_FUNCTIONS[cls] = fn
        return fn
    interface = _MODULE_INTERFACES.get(cls)
    if interface is None:
        interface = _model_module_attr(cls, "ALL_ATTENTION_FUNCTIONS")
        interface = interface if isinstance(interface, AttentionInterface) else ALL_ATTENTION_FUNCTIONS
        _MODULE_INTERFACES[cls] = interface
    try:
        return interface[original]
    except KeyError:
        raise CaptureError(
            f"attention implementation {original!r} is not registered in transformers' AttentionInterface; "
            "register it before enable_capture or load the model with a registered implementation"
        ) from None


def _call_original(original: str, module, query, key, value, attention_mask, args, kwargs):
    """Run the original implementation exactly as the un-wrapped model would (its own name on the config)."""
    fn = _original_function(original, module)
    config = getattr(module, "config", None)
    if original in _NAME_BLIND or config is None or not hasattr(config, "_attn_implementation_internal"):
        return fn(module, query, key, value, attention_mask, *args, **kwargs)
    shown = config._attn_implementation_internal
    config._attn_implementation_internal = original  # flash attention / hub kernels dispatch on this name
    try:
        return fn(module, query, key, value, attention_mask, *args, **kwargs)
    finally:
        config._attn_implementation_internal = shown


# --------------------------------------------------------------------------------- the capturing wrapper
def _layer_variant(cap: StatisticsCapture, module, layer: int, query, key, kwargs) -> dict:
    """The softmax the layer really computes, as statistics arguments; CaptureError for what is not modelled."""
    where = f"layer {layer} ({type(module).__name__})"
    if query.shape[2] != key.shape[2]:
        raise CaptureError(
            f"{where}: statistics need a full forward without a KV cache (got {query.shape[2]} queries over "
            f"{key.shape[2]} keys); call the model with use_cache=False and no past_key_values"
        )
    if layer in cap.stats:
        raise CaptureError(
            f"{where} was recorded twice in one capture context; use one forward per context (an attention "
            "module shared between layers cannot be captured)"
        )
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if not is_causal:
        raise CaptureError(f"{where}: bidirectional (non-causal) attention is not supported; statistics are causal")
    for name, what in UNSUPPORTED_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            raise CaptureError(
                f"{where} uses {what} (attention argument {name!r}), which attnrl's statistics do not model; "
                "choose other layers or a model without it (docs/attention_support.md)"
            )
    packed = [name for name in PACKED_ARGUMENTS if kwargs.get(name) is not None]
    if packed:
        raise CaptureError(f"{where}: padding-free packed batch ({', '.join(packed)} given); {_PACKED_FIX}")
    if not cap.rows_checked:
        _check_rows_not_packed(cap, kwargs.get("position_ids"), where)
        cap.rows_checked = True
    sliding_window = kwargs.get("sliding_window")
    softcap = kwargs.get("softcap")
    sinks = kwargs.get("s_aux")
    if sinks is not None:
        if not torch.is_tensor(sinks) or sinks.numel() != query.shape[1]:
            raise CaptureError(
                f"{where}: attention sinks (s_aux) of shape {tuple(getattr(sinks, 'shape', ()))} are not one logit "
                f"per query head ({query.shape[1]}); attnrl supports per-head sinks only"
            )
        sinks = sinks.detach().reshape(-1)
    return dict(sliding_window=sliding_window, softcap=softcap, sinks=sinks)


def _check_rows_not_packed(cap: StatisticsCapture, position_ids, where: str) -> None:
    """CaptureError when (B, T) position_ids restart inside a row's span: several sequences packed in one row."""
    if not torch.is_tensor(position_ids) or position_ids.dim() != 2:
        return
    B, T = cap.seq_start.shape[0], position_ids.shape[1]
    if position_ids.shape[0] not in (1, B) or T < 2:
        return
    pos = position_ids.to(cap.seq_start.device).expand(B, T)
    t = torch.arange(1, T, device=pos.device)
    inside = (t[None] > cap.seq_start[:, None]) & (t[None] < cap.seq_end[:, None])  # t and t - 1 in the span
    if bool((((pos[:, 1:] - pos[:, :-1]) != 1) & inside).any()):
        raise CaptureError(f"{where}: position_ids restart inside a row (packed sequences); {_PACKED_FIX}")


def _record(cap: StatisticsCapture, layer: int, query, key, args, kwargs, variant: dict) -> None:
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
        **variant,
    )
    cap.seconds += time.perf_counter() - start
    if cap.complete:
        if cap.on_complete is not None:
            with torch.no_grad():
                cap.on_complete(cap)
        if cap.stop_after_last_layer:
            raise _StopForward


def _make_wrapper(original: str) -> Callable:
    """The capturing attention function around ``original`` (registered as ``capture_name(original)``)."""

    def capturing_attention(module, query, key, value, attention_mask, *args, **kwargs):
        cap = _current()
        layer = getattr(module, "layer_idx", None)
        if cap is None or layer not in cap.layers:
            return _call_original(original, module, query, key, value, attention_mask, args, kwargs)
        variant = _layer_variant(cap, module, layer, query, key, kwargs)  # refuses before any work
        out = _call_original(original, module, query, key, value, attention_mask, args, kwargs)
        _record(cap, layer, query, key, args, kwargs, variant)
        return out

    capturing_attention.__qualname__ = capturing_attention.__name__ = f"capturing_{original}"
    capturing_attention.original_implementation = original
    return capturing_attention


_ORIGINALS: dict[str, str] = {}  # registered capturing name -> original implementation name


def _register(name: str, original: str) -> None:
    AttentionInterface.register(name, _make_wrapper(original))
    mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(original)
    if mask is not None:  # no mask function for the original: the model builds no mask for it, nor for us
        AttentionMaskInterface.register(name, mask)
    _ORIGINALS[name] = original


def capture_name(original: str) -> str:
    """The capturing implementation name wrapping ``original`` ("attnrl:<original>"), registered on first use."""
    if _is_attnrl(original):
        return original
    name = PREFIX + original
    if _ORIGINALS.get(name) != original or name not in ALL_ATTENTION_FUNCTIONS:
        _register(name, original)
    return name


def original_implementation(name: str) -> str:
    """The implementation a capturing name wraps ("attnrl:eager" -> "eager"); other names are returned as is."""
    return _ORIGINALS.get(name, name)


def _is_attnrl(name: str) -> bool:
    """attnrl's own attention functions ("attnrl:*", "attnrl_sdpa", "attnrl_mm") already capture."""
    return name.startswith("attnrl")


_register(ATTN_IMPLEMENTATION, "sdpa")


# ------------------------------------------------------------------------------------------- model side
def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _base_model(model):
    """The transformers model under peft / DDP wrappers."""
    base = model
    while hasattr(base, "get_base_model") and base is not base.get_base_model():
        base = base.get_base_model()  # peft
    return getattr(base, "module", base)  # DDP


def num_layers(model) -> int:
    """Number of decoder layers of a transformers model (text tower for vision-language models).

    Layer indices everywhere in attnrl are decoder layer indices 0..num_layers-1, attention or not (hybrid
    models interleave attention with state-space / convolution layers: see :func:`attention_layers`).
    """
    n = getattr(_text_config(model.config), "num_hidden_layers", None)
    if n is None:
        raise CaptureError(f"{type(model).__name__}: config has no num_hidden_layers; cannot choose attention layers")
    return int(n)


def _layer_types(model) -> list[str] | None:
    config = _text_config(_base_model(model).config)
    n = num_layers(model)
    for name in ("layer_types", "layers_block_type"):
        types = getattr(config, name, None)
        if types is not None and len(types) == n:
            return [str(t) for t in types]
    return None


def layer_types(model) -> list[str] | None:
    """The decoder layer types of a hybrid or attention-free model (``config.layer_types`` or
    ``layers_block_type``, one per layer, e.g. 'full_attention', 'conv', 'linear_attention'); None when the config
    lists none (every layer is then taken to be an attention layer)."""
    return _layer_types(model)


def attention_layers(model) -> list[int]:
    """Decoder layer indices whose softmax attention can be captured, ascending.

    All layers for ordinary transformers; for hybrid models (attention beside Mamba / linear-attention /
    convolution layers, e.g. Jamba, Bamba, NemotronH, Qwen3-Next, LFM2) only the attention layers, read from
    ``config.layer_types`` (or ``layers_block_type``).
    """
    types = _layer_types(model)
    if types is None:
        return list(range(num_layers(model)))
    return [i for i, t in enumerate(types) if t in SOFTMAX_LAYER_TYPES]


def _check_layers(model, layers: Sequence[int]) -> None:
    """CaptureError for layers out of range, without softmax attention, or of an attention type not modelled."""
    n = num_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad or not layers:
        raise CaptureError(f"attention layers {list(layers)} out of range: the model has layers 0..{n - 1}")
    types = _layer_types(model)
    if types is None:
        return
    name = type(_base_model(model)).__name__
    for layer in layers:
        kind = types[layer]
        if kind in SOFTMAX_LAYER_TYPES:
            continue
        if kind in NO_ATTENTION_LAYER_TYPES:
            raise CaptureError(
                f"layer {layer} of {name} is a {kind!r} layer without softmax attention; its attention layers "
                f"are {attention_layers(model)}: choose among them (e.g. credit_layers)"
            )
        raise CaptureError(
            f"layer {layer} of {name} uses {kind!r} attention, which attnrl's statistics do not model; choose "
            f"among its full / sliding-window attention layers {attention_layers(model)}"
        )


def enable_capture(model) -> None:
    """Wrap the attention implementation of ``model`` (any transformers PreTrainedModel, peft-wrapped or not).

    The text decoder's implementation ``name`` becomes ``"attnrl:<name>"``; outputs are unchanged. Idempotent.
    Raises CaptureError when the model does not route attention through transformers' AttentionInterface.
    """
    base = _base_model(model)
    can_set = getattr(type(base), "_can_set_attn_implementation", None)
    routes = getattr(base, "_supports_attention_backend", False) or (callable(can_set) and can_set())
    if not hasattr(base, "set_attn_implementation") or not routes:
        raise CaptureError(
            f"{type(base).__name__} does not route its attention through transformers' AttentionInterface, so "
            "attnrl cannot record it; use a transformers model whose attention modules call "
            "ALL_ATTENTION_FUNCTIONS.get_interface (Llama, Qwen2/3, Mistral, Gemma 2/3, gpt-oss, Qwen2-VL, ...)"
        )
    config = _text_config(base.config)
    current = config._attn_implementation
    if current is None:
        raise CaptureError(
            f"{type(base).__name__}: config._attn_implementation is unset; load the model with an "
            "attn_implementation (e.g. 'sdpa' or 'eager')"
        )
    if not _is_attnrl(current):
        config._attn_implementation_internal = capture_name(current)


def disable_capture(model) -> None:
    """Give ``model`` back the attention implementation :func:`enable_capture` wrapped."""
    config = _text_config(_base_model(model).config)
    current = config._attn_implementation
    if current in _ORIGINALS:
        config._attn_implementation_internal = _ORIGINALS[current]


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

    layers: decoder layer indices with softmax attention (see :func:`attention_layers`).
    attention_mask: (B, T) 0/1 padding mask of that forward; resp_start: (B,) first response index per row.
    stop_after_last_layer: abort the forward once every layer is recorded (saves the remaining layers when
    only statistics are wanted; the model's output is then unavailable).
    on_complete: called (under no_grad) inside the forward as soon as every layer is recorded — lets a caller
    act on the statistics before the rest of its own computation (e.g. a loss) reads the results.
    """
    enable_capture(model)
    _check_layers(model, layers)
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
        impl = _text_config(_base_model(model).config)._attn_implementation
        raise CaptureError(
            f"no attention statistics were recorded for layers {missing}: the model's attention did not go through "
            f"the capturing function {impl!r} there (custom attention code, an attention module shared between "
            "layers, or a layer without attention?) or no forward ran inside the context"
        )
