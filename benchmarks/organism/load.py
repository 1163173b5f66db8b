"""Loading a built organism: model + tokenizer, its saved problem splits and its build record."""

from __future__ import annotations

import json
from pathlib import Path

from .build import DEFAULT_CHECKPOINT, SAVED_SPLITS


def checkpoint_dir(path: str | Path | None = None) -> Path:
    """The checkpoint folder (default: the committed one); a clear error when it was never built."""
    folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not (folder / "config.json").exists() or not (folder / "build_info.json").exists():
        raise FileNotFoundError(f"no organism checkpoint in {folder}; build it with "
                                "`python -m benchmarks.organism.build` (from the repository root)")
    return folder


def load_organism(path: str | Path | None = None):
    """(model, tokenizer) of a built organism, float32, SDPA attention, left padding."""
    from attnrl.models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(checkpoint_dir(path)))


def load_problems(split: str, path: str | Path | None = None, n: int | None = None):
    """The first ``n`` (default all) saved problems of ``split`` as a ``datasets.Dataset`` (TRL-ready rows)."""
    from datasets import Dataset

    if split not in SAVED_SPLITS:
        raise ValueError(f"split={split!r}: the checkpoint saves {SAVED_SPLITS}")
    rows = [json.loads(line) for line in (checkpoint_dir(path) / "problems" / f"{split}.jsonl").read_text().splitlines()]
    if n is not None:
        if n > len(rows):
            raise ValueError(f"{n} {split} problems requested but the checkpoint holds {len(rows)}; rebuild it with "
                             f"more (--{split}-problems)")
        rows = rows[:n]
    return Dataset.from_list(rows)


def build_info(path: str | Path | None = None) -> dict:
    """The checkpoint's build_info.json (SFT steps, validation accuracy, parameters, data seed, settings)."""
    return json.loads((checkpoint_dir(path) / "build_info.json").read_text())
