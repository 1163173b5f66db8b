"""``"attnrl_mm"``: attnrl's SDPA attention function plus two optional, per-layer additions used by AVAR.

Registered once with transformers' ``AttentionInterface``. While a model runs under :func:`mm_attention`
(the contexts of :mod:`.intervention` and :mod:`.sft` enter it), each decoder attention call goes through
:func:`_mm_attention`, which
1. adds a per-key log-bias to the attention scores of the intervened layers (training-free intervention), then
2. runs attnrl's capturing SDPA function (``"attnrl_sdpa"``, bit-identical to SDPA), then
3. for the recorded layers, computes the attention of the query rows in U on the key sets, differentiably, from
   the layer's post-RoPE q/k (the attention-guided SFT objective).
Other modules (other layers, the vision tower) only do step 2. On exit the model's previous attention
implementations are restored as they were (a capturing ``"attnrl:<name>"`` included). Capture contexts
(:func:`attnrl.attention.capture.capture_statistics`) opened inside these contexts record through step 2.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from attnrl.attention.capture import ATTN_IMPLEMENTATION as CAPTURE_IMPLEMENTATION
from attnrl.attention.capture import num_layers

MM_IMPLEMENTATION = "attnrl_mm"

__all__ = ["MM_IMPLEMENTATION", "base_model", "decoder_attention_modules", "mm_attention", "state"]


class _State(threading.local):
    def __init__(self):
        self.biases: dict[torch.nn.Module, torch.Tensor] = {}  # attention module -> (B, Tb) additive key bias
        self.recorders: dict[torch.nn.Module, object] = {}  # attention module -> recorder with .record(...)


state = _State()


def _mm_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """SDPA (via attnrl_sdpa) with the active bias and recorder of ``module``, if any. q: (B, H, Tq, D)."""
    bias = state.biases.get(module)
    if bias is not None:
        attention_mask = biased_float_mask(attention_mask, bias, query.shape[2], key.shape[2], query.dtype)
    out = ALL_ATTENTION_FUNCTIONS[CAPTURE_IMPLEMENTATION](module, query, key, value, attention_mask, *args, **kwargs)
    recorder = state.recorders.get(module)
    if recorder is not None:
        recorder.record(module, query, key, kwargs.get("scaling", module.scaling))
    return out


AttentionInterface.register(MM_IMPLEMENTATION, _mm_attention)
AttentionMaskInterface.register(MM_IMPLEMENTATION, sdpa_mask)


def biased_float_mask(attention_mask, key_bias: torch.Tensor, q_len: int, k_len: int, dtype) -> torch.Tensor:
    """Additive (B, 1, Tq, Tk) mask: the causal/padding mask plus ``key_bias`` (B, Tb) on keys 0..Tb-1.

    attention_mask: None (plain causal, keys j <= i + Tk - Tq), a bool mask (True = attend) or an additive float
    mask. Disallowed keys get the dtype's minimum (a fully masked padding row stays finite, as in SDPA's masks).
    """
    B = key_bias.shape[0]
    bias = torch.zeros(B, k_len, dtype=dtype, device=key_bias.device)
    n = min(k_len, key_bias.shape[1])
    bias[:, :n] = key_bias[:, :n].to(dtype)
    bias = bias[:, None, None, :]
    lowest = torch.finfo(dtype).min
    if attention_mask is None:
        i = torch.arange(q_len, device=bias.device)[:, None]
        j = torch.arange(k_len, device=bias.device)[None, :]
        attention_mask = (j <= i + (k_len - q_len))[None, None]
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, bias, torch.full_like(bias, lowest)).clamp(min=lowest)
    return (attention_mask.to(dtype) + bias).clamp(min=lowest)


def base_model(model):
    """The transformers model under peft / DDP wrappers."""
    while hasattr(model, "get_base_model") and model is not model.get_base_model():
        model = model.get_base_model()
    return getattr(model, "module", model)


def decoder_attention_modules(model, layers) -> dict[int, torch.nn.Module]:
    """{layer: self-attention module} of the text decoder (modules with ``layer_idx`` and ``o_proj``)."""
    n = num_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has decoder layers 0..{n - 1}")
    found = {m.layer_idx: m for m in base_model(model).modules() if hasattr(m, "o_proj") and hasattr(m, "layer_idx")}
    return {layer: found[layer] for layer in layers}


def _all_configs(base) -> list:
    """Every config of ``base``: its own, its sub-configs (any depth) and those of its sub-models."""
    found, stack = {}, [base.config] + [m.config for m in base.modules() if hasattr(m, "config")]
    while stack:
        config = stack.pop()
        if config is None or id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        stack.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}))
    return list(found.values())


@contextlib.contextmanager
def mm_attention(model) -> Iterator[None]:
    """Run ``model`` with the ``"attnrl_mm"`` attention function inside the block; restore the previous ones after."""
    base = base_model(model)
    if base.config._attn_implementation == MM_IMPLEMENTATION:
        yield
        return
    # restored verbatim: set_attn_implementation would re-validate (and, for flash names, re-load) them
    previous = [(config, config._attn_implementation_internal) for config in _all_configs(base)]
    base.set_attn_implementation(MM_IMPLEMENTATION)
    try:
        yield
    finally:
        for config, implementation in previous:
            config._attn_implementation_internal = implementation
