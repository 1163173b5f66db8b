"""The command line of every recipe, written once: ``python examples/<script>.py ...`` and
``attnrl train --recipe NAME ...`` both end in :func:`recipe_main` with the recipe's module.

A recipe module provides ``RECIPE`` (its name), ``make_parser(prog=None)`` (a TrlParser over its dataclasses),
``run(*dataclasses) -> dict`` and optionally ``check(*dataclasses)`` (every check that needs no model; raises
ValueError naming the field). :func:`run_recipe` prepares the job (:func:`prepare_recipe`: parse with
:func:`attnrl.recipes.config.parse_config`, i.e. YAML ``--config`` or a first positional ``CONFIG.yaml``,
``--field value`` overrides in either spelling, unknown fields refused; then ``check``), writes the fields that
were set to ``<output_dir>/train_config.yaml`` and runs.

:func:`recipe_main` adds logging, a summary on stdout and the error boundary:

- a configuration or usage mistake (anything raised while preparing, a :class:`ConfigError` found later, e.g.
  credit layers out of range for the loaded model, or a :class:`MissingExtra`): one line
  ``prog: error: ...`` on stderr, exit status 2;
- any other failure once the job runs (training, evaluation, saving): the traceback, then one line saying that the
  run failed, where the traceback is, and what was kept in ``output_dir`` (nothing written is removed: checkpoints,
  ``train_config.yaml`` and logs stay), exit status 1.

``--traceback`` (or ``traceback=True``) raises instead, in both cases.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
import traceback as tb
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, MissingExtra, parse_config

RESOLVED_CONFIG = "train_config.yaml"  # written into output_dir: the recipe and the fields the user set, as parsed


def prepare_recipe(module, argv: Sequence[str], *, prog: str | None = None) -> tuple[tuple, list[str]]:
    """Parse ``argv`` with the recipe's parser and run its ``check``: ``(dataclasses, names of the fields set)``.
    Every mistake found here is a ConfigError (a ValueError), raised before any model work."""
    parser = module.make_parser(prog=prog)
    values, fields_set = parse_config(parser, argv, exit_on_error=False, recipe=module.RECIPE, return_fields=True)
    check = getattr(module, "check", None)
    if check is not None:
        try:
            check(*values)
        except (ConfigError, MissingExtra):
            raise
        except (ValueError, OSError) as e:  # a field's check: the configuration's mistake
            raise ConfigError(str(e)) from e
    return values, fields_set


def run_recipe(module, argv: Sequence[str], *, prog: str | None = None) -> dict:
    """Prepare (:func:`prepare_recipe`), record the resolved config, run; returns the results dictionary.
    Raises ConfigError (a ValueError) on a config mistake, before any model work."""
    values, fields_set = prepare_recipe(module, argv, prog=prog)
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
    status: 0; 2 after a one-line ``prog: error: ...`` for a configuration or usage mistake; 1 after the traceback
    and a one-line hint for a failure once the job runs (see the module docstring). ``--traceback`` in ``argv`` or
    ``traceback``: raise instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--traceback" in argv:
        argv.remove("--traceback")
        traceback = True
    prog = prog or Path(sys.argv[0]).name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        values, fields_set = prepare_recipe(module, argv, prog=prog)
        write_resolved_config(values, module.RECIPE, fields_set)
    except (ConfigError, MissingExtra, OSError) as e:  # a config mistake, a missing extra, an unwritable output_dir
        return _usage_error(prog, e, traceback)
    failure = None
    try:
        results = module.run(*values)
    except (ConfigError, MissingExtra) as e:  # found once the model is known (or Ray is needed): still the config
        return _usage_error(prog, e, traceback)
    except Exception as e:
        if traceback:
            raise
        tb.print_exc()
        failure = failure_summary(e)
    if failure is not None:
        gc.collect()  # the failed run's objects (a progress bar) finish their output first: the hint is the last line
        print(f"{prog}: error: the run failed ({failure}); the traceback above shows where. {kept_outputs(values)}",
              file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


def _usage_error(prog: str, e: Exception, traceback: bool) -> int:
    if traceback:
        raise e
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2


def failure_summary(e: BaseException) -> str:
    """``Type: first line of the message`` (one line)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def kept_outputs(values: Sequence) -> str:
    """One sentence on what a failed run left in its output_dir (nothing is deleted): its checkpoints, if any."""
    output_dir = next((v.output_dir for v in values if getattr(v, "output_dir", None)), None)
    if output_dir is None:
        return "Nothing written so far was removed."
    folder = Path(output_dir)
    checkpoints = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir()),
                         key=lambda p: int(p.name.rpartition("-")[2]) if p.name.rpartition("-")[2].isdigit() else -1)
    if checkpoints:
        return (f"Everything saved so far is kept in {folder}: {len(checkpoints)} checkpoint(s), the latest "
                f"{checkpoints[-1]}, and the logs.")
    return f"Everything saved so far is kept in {folder} (no checkpoint was saved yet)."
