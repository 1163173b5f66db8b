r"""AVAR visual-anchored reward (docs/methods.md §2) as a TRL reward function.

    r_visual = 0 if the answer is wrong, else (1/|R|) sum_{t in R} (1/|L'|) sum_{l in L'} mass_V / (mass_S + eps)

The attention term needs the policy's attention over the rollout, which a reward function cannot compute by itself:
:class:`attnrl.multimodal.AVARGRPOTrainer` runs one statistics pass per rollout batch (shared with credit
assignment) and hands each completion's term to the reward functions as the column ``avar_visual_ratio``. This
function only applies the correctness gate. Default recipe (TRL ``reward_weights``)::

    reward_funcs = [accuracy_reward, visual_anchor_reward, format_reward], reward_weights = [1.0, 0.3, 0.1]
"""

from __future__ import annotations

from collections.abc import Callable

from .math import accuracy_reward

AVAR_RATIO_COLUMN = "avar_visual_ratio"
AVAR_REWARD_WEIGHTS = (1.0, 0.3, 0.1)  # r_acc + 0.3 r_visual + 0.1 r_format

__all__ = ["AVAR_RATIO_COLUMN", "AVAR_REWARD_WEIGHTS", "gated_visual_reward", "visual_anchor_reward"]


def gated_visual_reward(ratios: list[float], correct: list[float | None]) -> list[float]:
    """r_visual per completion: the attention ratio where ``correct`` is 1.0, else 0.0 (wrong or unscorable)."""
    return [float(ratio) if ok == 1.0 else 0.0 for ratio, ok in zip(ratios, correct, strict=True)]


def visual_anchor_reward(
    completions: list,
    answer: list[str],
    avar_visual_ratio: list[float] | None = None,
    *,
    accuracy: Callable[..., list[float | None]] = accuracy_reward,
    **kwargs,
) -> list[float]:
    """TRL reward: the rollout's AVAR attention ratio (column ``avar_visual_ratio``) gated by ``accuracy``
    (default :func:`attnrl.rewards.accuracy_reward` against the ``answer`` column)."""
    if avar_visual_ratio is None:
        raise ValueError(
            f"visual_anchor_reward needs the '{AVAR_RATIO_COLUMN}' column, computed from the policy's attention by "
            "attnrl.multimodal.AVARGRPOTrainer; a plain GRPOTrainer does not provide it"
        )
    kwargs.pop("log_metric", None)  # the accuracy reward itself logs its verifier counts once
    return gated_visual_reward(avar_visual_ratio, accuracy(completions, answer, **kwargs))
