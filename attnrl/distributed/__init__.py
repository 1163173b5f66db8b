"""Ray: data-parallel training in Ray Train workers (:func:`launch`), reward scoring in Ray actors
(:class:`RewardActorPool`), and the flags every example script accepts (:class:`RayArguments`).

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
