"""SITE (docs/methods.md §3): task embeddings from few-shot prompts, softly injected into attention-head outputs.

Head outputs are the input of each decoder layer's ``o_proj`` split per head: a^{l,h} (Dh,) at a position.
- Task embedding t^{l,h}: mean over M few-shot prompts of a^{l,h} at the prompt's last token.
- Injection: at the last prompt token only, a^{l,h} <- (1 - alpha^{l,h}) a^{l,h} + alpha^{l,h} t^{l,h}, then o_proj.

Where the last prompt token is: ``last_prompt_index`` (B,) (or an int for all rows) in the padded coordinates of the
sequence the model is called with — prompt block included, i.e. ``Tp - 1`` for TRL-style left-padded prompts of
width Tp, whether the call is ``generate`` on the prompts or a teacher-forced forward over [prompt; completion].
Each forward knows its absolute start from its KV cache (``cache.get_seq_length()``, 0 without a cache), so the edit
lands on that index in a full forward and in generation's prefill, and never in a decode step (whose positions lie
after the prompt). Log-probs of a completion are therefore identical in generation and in the trainer's forward,
as importance ratios require.

Usage::

    site = TaskEmbedding.load("site_capitalise.safetensors")
    with site.active(model, last_prompt_index=prompt_ids.shape[1] - 1):
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=8)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["TaskEmbedding", "attention_heads", "head_outputs_at", "soft_injection", "task_embedding"]

_METADATA_KEY = "attnrl_site"


@dataclass
class HeadLayout:
    """The decoder's attention modules {layer: module} and their head split (H heads of Dh)."""

    modules: dict[int, torch.nn.Module]
    decoder: torch.nn.Module  # the module holding the decoder layers; its forward starts every pass
    num_heads: int
    head_dim: int


def attention_heads(model) -> HeadLayout:
    """Locate the text decoder's self-attention modules (those with ``o_proj`` and ``layer_idx``) of ``model``."""
    base = getattr(model, "module", model)  # DDP
    while hasattr(base, "get_base_model") and base is not base.get_base_model():
        base = base.get_base_model()  # peft
    modules = {m.layer_idx: m for m in base.modules() if hasattr(m, "o_proj") and hasattr(m, "layer_idx")}
    decoders = [m for m in base.modules() if isinstance(getattr(m, "layers", None), torch.nn.ModuleList)
                and any(getattr(layer, "self_attn", None) in modules.values() for layer in m.layers)]
    if not modules or len(decoders) != 1:
        raise ValueError(f"{type(base).__name__}: cannot find one decoder whose attention modules have o_proj")
    first = modules[min(modules)]
    config = first.config
    num_heads = config.num_attention_heads
    head_dim = getattr(first, "head_dim", config.hidden_size // num_heads)
    return HeadLayout(dict(sorted(modules.items())), decoders[0], num_heads, head_dim)


def _rows_at(last_prompt_index, B: int, device) -> torch.Tensor:
    index = torch.as_tensor(last_prompt_index, device=device).long()
    if index.dim() == 0:
        return index.expand(B)
    if index.shape != (B,):
        raise ValueError(f"last_prompt_index has shape {tuple(index.shape)}; the forward has batch size {B}")
    return index


@contextlib.contextmanager
def _forward_offsets(layout: HeadLayout) -> Iterator[list[int]]:
    """Yields a one-item list holding the absolute index of the current forward's first token (its cache length)."""
    offset = [0]

    def before_decoder(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        offset[0] = cache.get_seq_length() if cache is not None else 0

    handle = layout.decoder.register_forward_pre_hook(before_decoder, with_kwargs=True)
    try:
        yield offset
    finally:
        handle.remove()


def _edit_mask(index: torch.Tensor, offset: int, T: int) -> torch.Tensor:
    """(B, T) bool: True at each row's last prompt token if it lies in this forward's [offset, offset + T)."""
    local = index - offset
    return torch.arange(T, device=index.device)[None] == local[:, None]


@contextlib.contextmanager
def head_outputs_at(model, last_prompt_index) -> Iterator[dict[int, torch.Tensor]]:
    """Record {layer: (B, H, Dh)} head outputs (o_proj inputs) at the last prompt token of one full forward."""
    layout = attention_heads(model)
    recorded: dict[int, torch.Tensor] = {}
    handles = []

    def recorder(layer):
        def hook(module, args):
            x = args[0]
            B, T, _ = x.shape
            rows = _rows_at(last_prompt_index, B, x.device)
            recorded[layer] = x[torch.arange(B, device=x.device), rows].detach().float().view(
                B, layout.num_heads, layout.head_dim)
        return hook

    for layer, attn in layout.modules.items():
        handles.append(attn.o_proj.register_forward_pre_hook(recorder(layer)))
    try:
        yield recorded
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def task_embedding(model, tokenizer, prompts: list[str], batch_size: int = 8) -> torch.Tensor:
    """t (L, H, Dh) float32: mean over ``prompts`` of the head outputs at each prompt's last token (left padding)."""
    layout = attention_heads(model)
    device = next(model.parameters()).device
    total = torch.zeros(len(layout.modules), layout.num_heads, layout.head_dim)
    tokenizer.padding_side = "left"
    for i in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True).to(device)
        with head_outputs_at(model, batch["input_ids"].shape[1] - 1) as heads:
            model(**batch, use_cache=False)
        total += torch.stack([heads[layer].sum(0).cpu() for layer in layout.modules])
    return total / len(prompts)


@contextlib.contextmanager
def soft_injection(model, embedding: torch.Tensor, alphas: torch.Tensor, last_prompt_index) -> Iterator[None]:
    """Inject ``embedding`` (L, H, Dh) with weights ``alphas`` (L, H) at the last prompt token, in every forward
    inside the block (see the module docstring). Differentiable in ``alphas`` (used to learn them)."""
    layout = attention_heads(model)
    L, H, Dh = len(layout.modules), layout.num_heads, layout.head_dim
    if embedding.shape != (L, H, Dh) or alphas.shape != (L, H):
        raise ValueError(f"task embedding {tuple(embedding.shape)} / alphas {tuple(alphas.shape)} do not fit a model "
                         f"with {L} layers x {H} heads x {Dh} dims")
    if any(getattr(attn.o_proj, "_attnrl_site", False) for attn in layout.modules.values()):
        raise RuntimeError("a SITE injection is already active on this model; injections cannot be nested")
    handles = []
    with _forward_offsets(layout) as offset:

        def injector(i):
            def hook(module, args):
                x = args[0]
                B, T, _ = x.shape
                edit = _edit_mask(_rows_at(last_prompt_index, B, x.device), offset[0], T)
                if not bool(edit.any()):
                    return None
                heads = x.view(B, T, H, Dh)
                a = alphas[i].to(x.device, x.dtype)[:, None]
                mixed = (1 - a) * heads + a * embedding[i].to(x.device, x.dtype)
                return (torch.where(edit[:, :, None, None], mixed, heads).view(B, T, H * Dh), *args[1:])
            return hook

        for i, attn in enumerate(layout.modules.values()):
            handles.append(attn.o_proj.register_forward_pre_hook(injector(i)))
            attn.o_proj._attnrl_site = True
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for attn in layout.modules.values():
                attn.o_proj._attnrl_site = False


@dataclass
class TaskEmbedding:
    """A SITE artifact: task embedding (L, H, Dh), head-selection logits (L, H) and provenance metadata."""

    embedding: torch.Tensor
    logits: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def alphas(self) -> torch.Tensor:
        """alpha^{l,h} = sigmoid(logit^{l,h}), (L, H)."""
        return torch.sigmoid(self.logits)

    def active(self, model, last_prompt_index):
        """Context manager injecting this task embedding into ``model`` (see :func:`soft_injection`)."""
        return soft_injection(model, self.embedding, self.alphas.detach(), last_prompt_index)

    def save(self, path: str | Path) -> None:
        """One .safetensors file (float32 tensors ``embedding`` and ``logits``; metadata as JSON in its header)."""
        save_file(
            {"embedding": self.embedding.detach().float().contiguous().cpu(),
             "logits": self.logits.detach().float().contiguous().cpu()},
            str(path), metadata={_METADATA_KEY: json.dumps(self.metadata)},
        )

    @classmethod
    def load(cls, path: str | Path) -> TaskEmbedding:
        from safetensors import safe_open

        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get(_METADATA_KEY, "{}"))
        return cls(tensors["embedding"], tensors["logits"], metadata)
