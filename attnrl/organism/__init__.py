"""A reasoning "model organism": a few-million-parameter causal LM trained here on written Countdown searches.

Cheap enough for many-seed credit-assignment sweeps on a CPU (see benchmarks/organism/). Build it with
``python -m attnrl.organism build`` (or ``python benchmarks/organism/build.py``); importing this package registers
the task ``organism_countdown`` in :data:`attnrl.rewards.TASKS`.
"""

from .build import DEFAULT_CHECKPOINT, OrganismBuildConfig, build_organism
from .load import build_info, checkpoint_dir, load_organism, load_problems
from .model import OrganismModelConfig, build_model, parameter_count
from .task import (
    TASK_NAME,
    CountdownSpec,
    countdown_trace_reward,
    generate_problems,
    is_correct,
    parse_answer,
    verify_trace,
    write_trace,
)
from .tokenizer import organism_tokenizer

__all__ = [
    "DEFAULT_CHECKPOINT",
    "TASK_NAME",
    "CountdownSpec",
    "OrganismBuildConfig",
    "OrganismModelConfig",
    "build_info",
    "build_model",
    "build_organism",
    "checkpoint_dir",
    "countdown_trace_reward",
    "generate_problems",
    "is_correct",
    "load_organism",
    "load_problems",
    "organism_tokenizer",
    "parameter_count",
    "parse_answer",
    "verify_trace",
    "write_trace",
]
