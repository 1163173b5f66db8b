"""attnrl: RL fine-tuning with attention-aware credit assignment.

Main entry points: :class:`attnrl.AttnGRPOTrainer` / :class:`attnrl.AttnGRPOConfig` (drop-in for trl's GRPO) and
:class:`attnrl.AttnPPOTrainer` / :class:`attnrl.AttnPPOConfig` (PPO with a critic, GAE and the same credit).
"""

__version__ = "0.1.0"

_LAZY = {
    "AttnGRPOTrainer": "attnrl.trainers.grpo",
    "AttnGRPOConfig": "attnrl.trainers.grpo",
    "AttnPPOTrainer": "attnrl.trainers.ppo",
    "AttnPPOConfig": "attnrl.trainers.ppo",
    "CreditConfig": "attnrl.credit.config",
}


def __getattr__(name):  # lazy: importing attnrl must not import trl/transformers
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnrl' has no attribute {name!r}")


__all__ = list(_LAZY)
