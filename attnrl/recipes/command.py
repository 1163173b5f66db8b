"""The command line of every recipe, written once: ``python examples/<script>.py ...`` and
``attnrl train --recipe NAME ...`` both end in :func:`recipe_main` with the recipe's module.

A recipe module provides ``RECIPE`` (its name), ``make_parser(prog=None)`` (a TrlParser over its dataclasses) and
``run(*dataclasses) -> dict``. :func:`run_recipe` parses (:func:`attnrl.recipes.config.parse_config`: YAML
``--config`` or a first positional ``CONFIG.yaml``, ``--field value`` overrides in either spelling, unknown fields
refused before any model work), writes the fields that were set to ``<output_dir>/train_config.yaml`` and runs.
:func:`recipe_main` adds logging, a summary on stdout and one-line errors (exit status 2; ``--traceback`` shows
the traceback instead).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, MissingExtra, parse_config

RESOLVED_CONFIG = "train_config.yaml"  # written into output_dir: the recipe and the fields the user set, as parsed


def run_recipe(module, argv: Sequence[str], *, prog: str | None = None) -> dict:
    """Parse ``argv`` with the recipe's parser, record the resolved config, run; returns the results dictionary.
    Raises ConfigError (a ValueError) on a config mistake, before any model work."""
    parser = module.make_parser(prog=prog)
    values, fields_set = parse_config(parser, argv, exit_on_error=False, recipe=module.RECIPE, return_fields=True)
    write_resolved_config(values, module.RECIPE, fields_set)
    return module.run(*values)


def write_resolved_config(values: Sequence, recipe: str, keys: Sequence[str]) -> Path | None:
    """``<output_dir>/train_config.yaml``: the recipe and every field set in the YAML or on the command line (None
    when no dataclass has an ``output_dir``)."""
    import yaml

    merged: dict = {}
    for value in values:
        merged.update(value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value))
    if "output_dir" not in merged:
        return None
    path = Path(merged["output_dir"]) / RESOLVED_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"recipe": recipe, **{k: merged[k] for k in keys if k in merged}},
                                   sort_keys=False))
    return path


def recipe_main(module, argv: Sequence[str] | None = None, *, prog: str | None = None,
                traceback: bool = False) -> int:
    """Console entry of a recipe: :func:`run_recipe`, then the results' scalars as JSON on stdout. Returns the exit
    status: 0, or 2 after a one-line ``prog: error: ...`` on stderr (``--traceback`` in ``argv`` or ``traceback``:
    raise instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--traceback" in argv:
        argv.remove("--traceback")
        traceback = True
    prog = prog or Path(sys.argv[0]).name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        results = run_recipe(module, argv, prog=prog)
    except (ConfigError, MissingExtra) as e:  # a config mistake or a missing extra: the message says the fix
        if traceback:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        if traceback:
            raise
        print(f"{prog}: error: {e} (--traceback shows where)", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0
