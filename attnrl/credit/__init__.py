"""Token roles and advantage weights from attention statistics (METHODS.md §1)."""

from .heads import HeadProfile, default_layers, head_mean_distances, token_fai, token_waad
from .strategies import (
    STRATEGIES,
    STRATEGY_NEEDS,
    CreditInputs,
    CreditParams,
    coupled_roles,
    get_strategy,
    register_strategy,
    shape_advantages,
    top_q_mask,
    waad_jumps,
)

__all__ = [
    "STRATEGIES",
    "STRATEGY_NEEDS",
    "CreditInputs",
    "CreditParams",
    "HeadProfile",
    "coupled_roles",
    "default_layers",
    "get_strategy",
    "head_mean_distances",
    "register_strategy",
    "shape_advantages",
    "token_fai",
    "token_waad",
    "top_q_mask",
    "waad_jumps",
]
