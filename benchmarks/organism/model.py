"""The organism's network: a small Llama or Qwen3 causal LM sized for CPU reinforcement learning."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ARCHITECTURES = ("llama", "qwen3")


@dataclass(frozen=True)
class OrganismModelConfig:
    """Shape of the network (defaults: 6 layers x 96 wide, 6 heads of 16, about 0.9 M parameters)."""

    architecture: str = field(default="llama", metadata={"help": f"One of {ARCHITECTURES}."})
    hidden_size: int = field(default=96, metadata={"help": "Residual width."})
    num_layers: int = field(default=6, metadata={"help": "Decoder layers (credit analyses the middle third)."})
    num_heads: int = field(default=6, metadata={"help": "Attention heads per layer (all key/value heads kept)."})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width."})
    max_positions: int = field(default=384, metadata={"help": "Longest prompt + completion (tokens)."})

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}; use one of {ARCHITECTURES}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if min(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size, self.max_positions) < 1:
            raise ValueError(f"every size must be >= 1, got {asdict(self)}")


def build_model(cfg: OrganismModelConfig, tokenizer, seed: int):
    """A randomly initialised float32 causal LM (SDPA attention, tied embeddings) for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    cfg.validate()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    if cfg.architecture == "qwen3":
        config = Qwen3Config(head_dim=cfg.hidden_size // cfg.num_heads, **common)
    else:
        config = LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
