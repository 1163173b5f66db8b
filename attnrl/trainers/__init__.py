from .grpo import AttnGRPOConfig, AttnGRPOTrainer

__all__ = ["AttnGRPOConfig", "AttnGRPOTrainer"]
