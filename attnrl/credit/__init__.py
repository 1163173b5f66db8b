"""Token roles and advantage weights from attention statistics (docs/methods.md §1)."""

from .heads import (
    DEFAULT_HEAD_FRACTION,
    DEFAULT_NUM_LAYERS,
    HeadProfile,
    default_layers,
    head_mean_distances,
    token_fai,
    token_waad,
)
from .strategies import (
    STRATEGIES,
    STRATEGY_NEEDS,
    CreditInputs,
    CreditParams,
    StrategyOutput,
    coupled_roles,
    get_strategy,
    register_strategy,
    shape_advantages,
    strategy_needs,
    top_q_mask,
    waad_jumps,
)

__all__ = [
    "DEFAULT_HEAD_FRACTION",
    "DEFAULT_NUM_LAYERS",
    "STRATEGIES",
    "STRATEGY_NEEDS",
    "CreditInputs",
    "CreditParams",
    "HeadProfile",
    "StrategyOutput",
    "coupled_roles",
    "default_layers",
    "get_strategy",
    "head_mean_distances",
    "register_strategy",
    "shape_advantages",
    "strategy_needs",
    "token_fai",
    "token_waad",
    "top_q_mask",
    "waad_jumps",
]
