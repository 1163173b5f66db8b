from .grpo import AttnGRPOConfig, AttnGRPOTrainer
from .ppo import AttnPPOConfig, AttnPPOTrainer

__all__ = ["AttnGRPOConfig", "AttnGRPOTrainer", "AttnPPOConfig", "AttnPPOTrainer"]
