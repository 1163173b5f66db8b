"""A reasoning "model organism": a few-million-parameter causal LM trained here on written Countdown searches.

Part of the study, not of the installed package: cheap enough for many-seed credit-assignment sweeps on a CPU
(:mod:`benchmarks.organism.sweep`). Build it with ``python -m benchmarks.organism.build`` from the repository root;
importing this package registers the task ``organism_countdown`` in :data:`attnrl.rewards.TASKS` and its held-out
problems for ``attnrl premise`` (:func:`attnrl.analysis.causal.register_premise_task`).
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


def premise_problems(n: int, *, model_name=None, **_):
    """The premise test's problems (:func:`attnrl.analysis.causal.register_premise_task`): the first ``n`` held-out
    problems saved in the organism checkpoint ``model_name`` (default: the committed one); the answer is the last
    line, of which the last step (the operation giving the target) is taken as the answer span, so the earlier steps
    of that line (which decide whether it can succeed) can be intervened on."""
    return [dict(r) for r in load_problems("test", model_name, n)], is_correct, "last_step"


def _register_premise() -> None:
    from attnrl.analysis.causal import register_premise_task

    register_premise_task(TASK_NAME, premise_problems)


_register_premise()

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
    "premise_problems",
    "verify_trace",
    "write_trace",
]
