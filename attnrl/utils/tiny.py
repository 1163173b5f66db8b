"""Tiny randomly initialised models and an offline tokenizer, for tests and smoke runs (no hub access)."""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]


def char_tokenizer(special_tokens: list[str], pad_token: str, eos_token: str, **kwargs) -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer: ``special_tokens`` (ids 0..k-1) then printable ASCII; left padding."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(special_tokens + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=pad_token, eos_token=eos_token, unk_token="?",
        additional_special_tokens=[t for t in special_tokens if t != pad_token], **kwargs,
    )
    tok.padding_side = "left"
    return tok


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer with a ChatML template: printable ASCII + 3 special tokens (vocab ~103)."""
    tok = char_tokenizer(SPECIAL_TOKENS, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_causal_lm(family: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides):
    """A 4-layer randomly initialised causal LM of ``family`` ("llama", "qwen2" or "qwen3"), float32."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    kw = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=2, bos_token_id=1,
        tie_word_embeddings=True,
    )
    if family == "qwen3":
        kw["head_dim"] = 16
    kw.update(overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cls(**kw), attn_implementation="sdpa", dtype=torch.float32)
