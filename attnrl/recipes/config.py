"""Reading a recipe's YAML config (``attnrl train`` and the example scripts).

- :func:`load_yaml_config`: a syntax error names the file, line and column (yaml's own message names a
  ``<unicode string>``).
- :func:`cpu_safe_defaults`: TRL's configs default ``bf16`` to True (the field is None until ``__post_init__``),
  which transformers refuses without a bf16-capable accelerator. When training will run on the CPU (no such
  accelerator, or ``use_cpu``) and the user left ``bf16`` unset in the YAML and on the command line, ``bf16``
  defaults to False instead (float32) and the log says so. An explicit ``bf16: true`` without an accelerator or
  ``use_cpu`` is refused with a message naming both fields (:func:`precision_errors`).
- :func:`parse_config`: what ``TrlParser.parse_args_and_config`` does (YAML defaults, ``env:``, command-line
  overrides; both spellings ``--max_steps`` / ``--max-steps``) with both of the above, plus: an unknown field in the
  YAML or on the command line is refused naming the closest field, a YAML ``recipe:`` key must name the parser's
  recipe, and a first positional ``CONFIG.yaml`` stands for ``--config CONFIG.yaml``. Works with any
  ``transformers.HfArgumentParser`` (``trl.TrlParser`` is one).
- :class:`MissingExtra`: an optional dependency is not installed; the message is the one line saying what to install.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "MissingExtra", "bf16_accelerator_available", "closest", "config_path", "cpu_safe_defaults",
           "load_yaml_config", "parse_config", "precision_errors"]

RECIPE_KEY = "recipe"  # YAML key naming the recipe a config is for (read by `attnrl train`)

_TRANSFORMERS_BF16_ERROR = "doesn't support bf16/gpu"


class ConfigError(ValueError):
    """A mistake in a config file or its fields; the message names the file or field and the fix."""


class MissingExtra(ImportError):
    """An optional dependency is missing; the message says what to install (one line, shown without traceback)."""


def closest(name: str, candidates) -> str:
    """' (did you mean X?)' for the candidate closest to ``name``, or '' when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def load_yaml_config(path: str | Path) -> dict:
    """The YAML mapping in ``path``; ConfigError naming the file (and line, column) when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see examples/configs/ for one to copy")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error_message(path, e)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of field: value, not a {type(raw).__name__}")
    return raw


def _yaml_error_message(path: Path, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    parts = [p for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p]
    detail = ": ".join(parts) if parts else str(e)
    snippet = mark.get_snippet() if mark is not None else None
    return f"{path}{where}: invalid YAML ({detail})" + (f"\n{snippet}" if snippet else "")


def bf16_accelerator_available() -> bool:
    """Whether transformers accepts ``bf16=True`` without ``use_cpu`` here (a bf16 GPU, NPU/XPU or an XLA device)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return bool(is_torch_bf16_gpu_available() or is_torch_xla_available())


def cpu_safe_defaults(parser, config: dict, overrides: Sequence[str]) -> None:
    """Default ``bf16`` to False on ``parser`` when training will run on the CPU and the user did not set it.

    "On the CPU": no bf16 accelerator is present, or ``use_cpu`` is true (YAML or command line). "Not set": neither
    the YAML (``config``, a null value counts as unset) nor the command line (``overrides``, ``--field [value]``
    tokens) names ``bf16``. Only a parser whose ``bf16`` default is None (TRL's configs) is changed.
    """
    if not any(a.dest == "bf16" and a.default is None for a in parser._actions):
        return
    if config.get("bf16") is not None or _cli_value(overrides, "bf16") is not None:
        return
    use_cpu = _cli_value(overrides, "use_cpu")
    use_cpu = bool(config.get("use_cpu")) if use_cpu is None else use_cpu
    if use_cpu:
        reason = "use_cpu is set"
    elif not bf16_accelerator_available():
        reason = "no accelerator with bf16 support was found"
    else:
        return
    parser.set_defaults(bf16=False)
    logger.warning("%s: bf16 defaults to False (float32 training); set bf16 in the config to choose explicitly",
                   reason)


def _cli_value(overrides: Sequence[str], name: str) -> bool | None:
    """The boolean a command line gives field ``name`` (``--name``, ``--name V``, ``--name=V``); None if absent."""
    from transformers.hf_argparser import string_to_bool

    value = None
    tokens = list(overrides)
    for i, token in enumerate(tokens):
        flag, _, inline = token.partition("=")
        if not flag.startswith("--") or flag[2:].replace("-", "_") != name:
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else None
        text = inline if "=" in token else following
        try:
            value = True if text is None else bool(string_to_bool(text))
        except argparse.ArgumentTypeError:  # the parser reports the bad value itself
            value = True
    return value


@contextlib.contextmanager
def precision_errors() -> Iterator[None]:
    """Turn transformers' "Your setup doesn't support bf16/gpu" (raised while the config is built) into a
    ConfigError naming both fields that fix it."""
    try:
        yield
    except ValueError as e:
        if _TRANSFORMERS_BF16_ERROR not in str(e):
            raise
        raise ConfigError(
            "bf16=True needs an accelerator with bf16 support and none was found; set bf16: false to train in "
            "float32, or use_cpu: true to train in bf16 on the CPU (slow)"
        ) from e


def config_path(args: Sequence[str]) -> str | None:
    """The YAML file named by ``args``: ``--config FILE``, ``--config=FILE`` or a first positional ``FILE.yaml``."""
    args = list(args)
    for i, token in enumerate(args):
        if token == "--config":
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError("--config needs a YAML file, e.g. --config examples/configs/"
                                  "grpo_arithmetic_coupled.yaml")
            return args[i + 1]
        if token.startswith("--config="):
            return token.partition("=")[2]
    if args and not args[0].startswith("-") and args[0].endswith((".yaml", ".yml")):
        return args[0]
    return None


def _without_config(args: Sequence[str]) -> list[str]:
    args = list(args)
    if args and not args[0].startswith("-") and args[0].endswith((".yaml", ".yml")):
        return args[1:]
    out, skip = [], False
    for token in args:
        if skip:
            skip = False
        elif token == "--config":
            skip = True
        elif not token.startswith("--config="):
            out.append(token)
    return out


def _fields(parser) -> dict[str, str]:
    """option string -> field name, for every option of ``parser`` but help."""
    return {opt: a.dest for a in parser._actions for opt in a.option_strings if a.dest != "help"}


def _check_config_keys(config: dict, parser, source) -> None:
    known = {a.dest for a in parser._actions} - {"help"} | {"env"}
    for key in config:
        if key not in known:
            raise ConfigError(f"unknown config field {key!r} in {source}{closest(key, known)}; the fields are those "
                              f"listed by --help")


def _check_flags(args: Sequence[str], parser) -> list[str]:
    """Field names set by ``--flag [value]`` tokens; ConfigError naming the closest field for an unknown flag."""
    dest_of = _fields(parser)
    names = []
    for token in args:
        if not token.startswith("--") or token in ("--help",):
            continue
        flag = token.split("=", 1)[0]
        if flag not in dest_of:
            raise ConfigError(f"unknown config field {flag!r} on the command line{closest(flag, dest_of)}; the "
                              "fields are those listed by --help")
        names.append(dest_of[flag])
    return names


def _set_defaults(parser, config: dict) -> None:
    """The YAML values as the parser's defaults (a required field given in the YAML is no longer required)."""
    for action in parser._actions:
        if action.dest in config:
            action.default = config[action.dest]
            action.required = False


def parse_config(parser, args: Sequence[str] | None = None, *, exit_on_error: bool = True, recipe: str | None = None,
                 return_fields: bool = False) -> tuple:
    """The parser's dataclasses from ``args`` (default ``sys.argv[1:]``): YAML values (``--config FILE``, see
    :func:`config_path`) as defaults, then ``--field value`` overrides; see the module docstring for the checks.

    ``recipe``: the recipe this parser belongs to; a YAML ``recipe:`` naming another one is refused (without
    ``recipe`` the key is ignored). ``return_fields``: return ``(dataclasses, names of the fields the YAML or the
    command line set)``. A ConfigError exits with ``prog: error: ...`` (status 2, no traceback) unless
    ``exit_on_error`` is False.
    """
    args = list(sys.argv[1:] if args is None else args)
    try:
        path = config_path(args)
        config = load_yaml_config(path) if path is not None else {}
        named = config.pop(RECIPE_KEY, None)
        if recipe is not None and named is not None and named != recipe:
            raise ConfigError(f"{path} is a config of recipe {named!r}, not {recipe!r}; run it with "
                              f"`attnrl train {path}` (or `--recipe {named}`)")
        env = config.pop("env", None) or {}
        if not isinstance(env, dict):
            raise ConfigError(f"{path}: `env:` must be a mapping of environment variable: value")
        _check_config_keys(config, parser, path)
        overrides = _without_config(args)
        flag_fields = _check_flags(overrides, parser)
        for key, value in env.items():
            os.environ[key] = str(value)
        _set_defaults(parser, config)
        cpu_safe_defaults(parser, config, overrides)
        try:
            with precision_errors():
                values = tuple(parser.parse_args_into_dataclasses(args=overrides))
        except ConfigError:
            raise
        except ValueError as e:  # a field's own check (a dataclass __post_init__): a config mistake too
            raise ConfigError(str(e)) from e
    except ConfigError as e:
        if not exit_on_error:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if return_fields:
        return values, list(dict.fromkeys([*config, *flag_fields]))
    return values
