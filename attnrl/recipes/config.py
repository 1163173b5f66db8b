"""Reading a recipe's YAML config (``attnrl train`` and the example scripts).

- :func:`load_yaml_config`: a syntax error names the file, line and column (yaml's own message names a
  ``<unicode string>``).
- :func:`cpu_safe_defaults`: TRL's configs default ``bf16`` to True (the field is None until ``__post_init__``),
  which transformers refuses without a bf16-capable accelerator. When training will run on the CPU (no such
  accelerator, or ``use_cpu``) and the user left ``bf16`` unset in the YAML and on the command line, ``bf16``
  defaults to False instead (float32) and the log says so. An explicit ``bf16: true`` without an accelerator or
  ``use_cpu`` is refused with a message naming both fields (:func:`precision_errors`).
- :func:`parse_config`: ``TrlParser.parse_args_and_config`` with both of the above, for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "bf16_accelerator_available", "cpu_safe_defaults", "load_yaml_config", "parse_config",
           "precision_errors"]

_TRANSFORMERS_BF16_ERROR = "doesn't support bf16/gpu"


class ConfigError(ValueError):
    """A mistake in a config file or its fields; the message names the file or field and the fix."""


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


def parse_config(parser, args: Sequence[str] | None = None, *, exit_on_error: bool = True) -> tuple:
    """``parser.parse_args_and_config(args)`` (a ``trl.TrlParser``; args default to ``sys.argv[1:]``) with the
    config file read by :func:`load_yaml_config` and the CPU-safe ``bf16`` default.

    A ConfigError exits with ``prog: error: ...`` (status 2, no traceback) unless ``exit_on_error`` is False.
    """
    args = list(sys.argv[1:] if args is None else args)
    try:
        config = {}
        if "--config" in args:
            i = args.index("--config")
            if i + 1 >= len(args):
                raise ConfigError("--config needs a YAML file, e.g. --config examples/configs/"
                                  "grpo_arithmetic_coupled.yaml")
            config = load_yaml_config(args[i + 1])
        cpu_safe_defaults(parser, config, args)
        with precision_errors():
            return parser.parse_args_and_config(args)
    except ConfigError as e:
        if not exit_on_error:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
