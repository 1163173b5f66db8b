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

from attnrl.registry import Registry, RegistryError

#: recipe name -> its module, imported on first use (a registered import path). A recipe of your own:
#: ``RECIPES.register("mine", "my_pkg.my_recipe")`` (a module with RECIPE, make_parser, run and main).
RECIPES: Registry = Registry("recipe", import_paths=False)
RECIPES.register("grpo", "attnrl.recipes.grpo")
RECIPES.register("ppo", "attnrl.recipes.ppo")
RECIPES.register("avar", "attnrl.recipes.avar")
RECIPES.register("site", "attnrl.recipes.site")
DEFAULT_RECIPE = "grpo"


def recipe_module(name: str):
    """The module of recipe ``name``; ConfigError naming the closest recipe when there is none of that name."""
    from .config import ConfigError

    try:
        return RECIPES.get(name)
    except RegistryError as e:
        raise ConfigError(str(e)) from e


__all__ = ["DEFAULT_RECIPE", "RECIPES", "recipe_module"]
