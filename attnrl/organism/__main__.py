"""``python -m attnrl.organism build [--flags]``: build the organism checkpoint (see attnrl.organism.build)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from .build import OrganismBuildConfig, build_organism

_NESTED = {"model": "model-", "task": "task-"}


def _add_fields(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    for f in dataclasses.fields(cls):
        if f.name in _NESTED and not prefix:
            _add_fields(parser, type(f.default_factory()), _NESTED[f.name])
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument(f"--{prefix}{f.name.replace('_', '-')}", type=type(default), default=default,
                            help=f.metadata.get("help"))


def config_from_args(args: argparse.Namespace) -> OrganismBuildConfig:
    """An OrganismBuildConfig from the flat command-line namespace (``--model-*``, ``--task-*`` for the parts)."""
    values = vars(args)
    nested = {}
    for name, prefix in _NESTED.items():
        cls = type(OrganismBuildConfig.__dataclass_fields__[name].default_factory())
        key = prefix.replace("-", "_")
        nested[name] = cls(**{f.name: values[key + f.name] for f in dataclasses.fields(cls)})
    top = {f.name: values[f.name] for f in dataclasses.fields(OrganismBuildConfig) if f.name not in _NESTED}
    return OrganismBuildConfig(**top, **nested)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m attnrl.organism", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["build"])
    _add_fields(parser, OrganismBuildConfig)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config_from_args(parse_args(argv))
    info = build_organism(cfg)
    print(f"built {cfg.out_dir}: {info['parameters']} parameters, {info['sft_steps']} SFT steps, validation "
          f"accuracy {100 * info['val_accuracy']:.1f}% ({info['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
