"""Training-free attention intervention (docs/methods.md §2): on selected layers, attention weights to V are scaled by
(1 + alpha_img) and to S by (1 - alpha_sys).

Renormalisation (attnrl's choice): docs/methods.md and the paper's abstract state only the scaling factors. attnrl
renormalises each row after scaling, A'_{t,k} = A_{t,k} w_k / sum_j A_{t,j} w_j, so every row stays a probability
distribution (the layer's output stays a convex combination of values, as the model was trained with). It is exact
and cheap: adding log(w_k) to the scores before the softmax gives precisely this A', so SDPA still runs; no
attention matrix is materialised. alpha_sys = 1 removes S entirely (log 0 = -inf).

Usage::

    sets = token_sets(inputs["input_ids"], inputs["attention_mask"], processor)
    with attention_intervention(model, layers=range(8), image_mask=sets.image, system_mask=sets.system,
                                alpha_img=0.15, alpha_sys=0.4):
        model.generate(**inputs, max_new_tokens=64)

The masks are over the padded prompt batch (B, Tp); keys beyond Tp (generated tokens) are not rescaled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch

from .attention_function import decoder_attention_modules, mm_attention, state

__all__ = ["attention_intervention", "intervention_key_bias"]


def intervention_key_bias(
    image_mask: torch.Tensor, system_mask: torch.Tensor, alpha_img: float = 0.15, alpha_sys: float = 0.0
) -> torch.Tensor:
    """(B, T) float32 log-weights: log(1 + alpha_img) on V, log(1 - alpha_sys) on S, 0 elsewhere."""
    if alpha_img <= -1.0 or not 0.0 <= alpha_sys <= 1.0:
        raise ValueError(f"need alpha_img > -1 and 0 <= alpha_sys <= 1; got {alpha_img}, {alpha_sys}")
    if bool((image_mask.bool() & system_mask.bool()).any()):
        raise ValueError("image_mask and system_mask overlap; V and S must be disjoint")
    log_sys = math.log(1.0 - alpha_sys) if alpha_sys < 1.0 else float("-inf")
    bias = torch.zeros(image_mask.shape, dtype=torch.float32, device=image_mask.device)
    bias[image_mask.bool()] = math.log1p(alpha_img)
    bias[system_mask.bool()] = log_sys
    return bias


@contextlib.contextmanager
def attention_intervention(
    model,
    layers: Iterable[int],
    image_mask: torch.Tensor,
    system_mask: torch.Tensor,
    alpha_img: float = 0.15,
    alpha_sys: float = 0.0,
) -> Iterator[None]:
    """Rescale attention to V and S on ``layers`` for every forward (prefill and decode) inside the block.

    image_mask / system_mask: (B, Tp) bool over the padded prompt batch the model is called with.
    Defaults are the paper's alpha_img = 0.15 and alpha_sys = 0 (it also reports alpha_sys = 0.4).
    """
    modules = decoder_attention_modules(model, sorted(set(layers)))
    bias = intervention_key_bias(image_mask, system_mask, alpha_img, alpha_sys)
    clash = [m for m in modules.values() if m in state.biases]
    if clash:
        raise RuntimeError("attention_intervention contexts on the same layers cannot be nested")
    with mm_attention(model):
        state.biases.update({m: bias for m in modules.values()})
        try:
            yield
        finally:
            for m in modules.values():
                state.biases.pop(m, None)
