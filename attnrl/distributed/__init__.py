"""Ray: data-parallel training of the GRPO and PPO recipes in Ray Train workers (:func:`launch`), reward scoring in
Ray actors (:class:`RewardActorPool`), and the recipes' Ray fields (:class:`RayArguments`).

Importing this package needs neither Ray nor the trainers: ``launch`` and ``RewardActorPool`` load on first use.
"""

from .config import RayArguments

_LAZY = {"launch": "attnrl.distributed.launcher", "RewardActorPool": "attnrl.distributed.reward_pool"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnrl.distributed' has no attribute {name!r}")


__all__ = ["RayArguments", *_LAZY]
