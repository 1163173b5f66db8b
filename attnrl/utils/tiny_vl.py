"""Tiny randomly initialised Qwen2-VL / Qwen2.5-VL models and an offline processor (no hub access).

The processor is the real ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` class around
- a character-level tokenizer built with ``tokenizers`` that holds the Qwen-VL special tokens
  (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>``, ``<|vision_end|>``, ...),
- the image processor constructed from its class with default arguments (the PIL backend, so torchvision is
  not needed): patch 14, merge 2, at least 56 x 56 pixels, so a 56 x 56 image becomes 4 image tokens,
- the family's released chat template (default system prompt "You are a helpful assistant.").
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from attnrl.utils.tiny import char_tokenizer

# The chat template shipped with Qwen/Qwen2-VL-7B-Instruct (chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen/Qwen2.5-VL-7B-Instruct ships the same template text; kept as its own name so each family is tested.
QWEN2_5_VL_CHAT_TEMPLATE = QWEN2_VL_CHAT_TEMPLATE

VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
]
FAMILIES = ("qwen2_vl", "qwen2_5_vl")
_TEMPLATES = {"qwen2_vl": QWEN2_VL_CHAT_TEMPLATE, "qwen2_5_vl": QWEN2_5_VL_CHAT_TEMPLATE}


def tiny_vl_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: 7 Qwen-VL special tokens (ids 0..6) + printable ASCII (vocab ~106)."""
    return char_tokenizer(VL_SPECIAL_TOKENS, pad_token="<|endoftext|>", eos_token="<|im_end|>")


def tiny_vl_processor(family: str = "qwen2_vl"):
    """The family's processor (images only) around :func:`tiny_vl_tokenizer`, the default image processor and
    the family's chat template.

    Without torchvision, transformers 5 cannot type-check a processor's ``video_processor`` argument (even None),
    so the processor is a subclass of the family's class whose constructor has no video slot; everything else
    (image-token expansion, ``mm_token_type_ids``, chat template) is the family's own code.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    _check_family(family)
    cls, template = _image_only_processor_class(family), _TEMPLATES[family]
    tokenizer = tiny_vl_tokenizer()
    tokenizer.chat_template = template
    return cls(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, chat_template=template)


def _image_only_processor_class(family: str):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    base = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}[family]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})


def tiny_vl_model(family: str = "qwen2_vl", num_layers: int = 2, seed: int = 0, attn_implementation: str = "sdpa"):
    """A randomly initialised ``family`` model: text hidden 64, 4 query / 2 kv heads (head dim 16), float32.

    Token ids match :func:`tiny_vl_tokenizer`; the vision tower has one block of width 32.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    _check_family(family)
    tok = tiny_vl_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    )}
    text = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    if family == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
        config, model_cls = Qwen2VLConfig(text_config=text, vision_config=vision, **ids), Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=[0])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls = Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    return model_cls._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; use one of {FAMILIES}")
