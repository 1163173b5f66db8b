"""Recipes: one module per job, each with ``make_parser()``, ``run(...)`` and ``main(argv)``.

``main`` is shared by the recipe's example script (``python examples/train_grpo.py --config C.yaml``) and the
``attnrl train --recipe NAME C.yaml`` command, so both parse the same fields the same way. Importing this package
is light (no torch): a recipe module loads on first use (:func:`recipe_module`).

| recipe | module | example script |
|---|---|---|
| ``grpo`` | :mod:`attnrl.recipes.grpo` (AttnGRPOTrainer, local or Ray) | ``examples/train_grpo.py`` |
| ``ppo`` | :mod:`attnrl.recipes.ppo` (AttnPPOTrainer, local or Ray) | ``examples/train_ppo.py`` |
| ``avar`` | :mod:`attnrl.recipes.avar` (AVAR-GRPO on synthetic images) | ``examples/train_grpo_avar.py`` |
| ``site`` | :mod:`attnrl.recipes.site` (SITE vs 0-shot vs ICL) | ``examples/site_icl.py`` |
"""

RECIPES = {
    "grpo": "attnrl.recipes.grpo",
    "ppo": "attnrl.recipes.ppo",
    "avar": "attnrl.recipes.avar",
    "site": "attnrl.recipes.site",
}
DEFAULT_RECIPE = "grpo"


def recipe_module(name: str):
    """The module of recipe ``name``; ConfigError naming the closest recipe when there is none of that name."""
    import importlib

    from .config import ConfigError, closest

    if name not in RECIPES:
        raise ConfigError(f"recipe {name!r} is unknown{closest(name, RECIPES)}; available: {sorted(RECIPES)}")
    return importlib.import_module(RECIPES[name])


__all__ = ["DEFAULT_RECIPE", "RECIPES", "recipe_module"]
