"""JobRunner: a job as a few named phases, written once and driven by the local recipe, the Ray worker and the
learning benchmark.

    setup -> evaluate_before -> build_trainer -> train -> finish

- ``setup``: check every config field (before any model work), load the model, check what depends on it (credit
  layers against its layer count), build the datasets and the evaluator;
- ``evaluate_before``: the base model's held-out score (skipped when already known, e.g. after a restart, or when
  this process does not evaluate);
- ``build_trainer``: the trainer, with the runner's callbacks and reward functions;
- ``train``: ``trainer.train(resume_from_checkpoint=...)``, timed;
- ``finish``: save the trained weights (every process calls it: a save may be collective), then, on the main
  process, evaluate again and write the report; returns the results (None on the other processes).

:meth:`JobRunner.run` calls them in order. A recipe subclasses JobRunner and fills the phases in; a driver that needs
something in between (the Ray worker moves the model to its device after ``setup`` and adds its checkpoint callback
before ``build_trainer``) calls the phases itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path


class JobRunner:
    """Base of every recipe's runner; see the module docstring.

    Args: ``job`` (the recipe's job dataclass) and ``args`` (its trainer config); ``callbacks`` (transformers
    TrainerCallbacks added to the trainer); ``reward_funcs`` (replace the job's reward functions);
    ``resume_from_checkpoint`` (a checkpoint folder to continue from); ``accuracy_before`` (the base model's score
    when it is already known: not measured again); ``evaluate_before`` (False: this process does not measure it);
    ``start_step`` (optimizer steps done before this attempt, for the seconds-per-step figure).
    """

    name = "job"  # the recipe's name (`attnrl train --recipe NAME`)

    def __init__(self, job, args, *, callbacks: Sequence = (), reward_funcs: Sequence[Callable] | None = None,
                 resume_from_checkpoint: str | None = None, accuracy_before: float | None = None,
                 evaluate_before: bool = True, start_step: int = 0):
        self.job, self.args = job, args
        self.callbacks = list(callbacks)
        self.reward_funcs = None if reward_funcs is None else list(reward_funcs)
        self.resume_from_checkpoint = resume_from_checkpoint
        self.accuracy_before = accuracy_before
        self.should_evaluate_before = evaluate_before and accuracy_before is None
        self.start_step = start_step
        self.trainer = None
        self.train_seconds = 0.0

    # ---------------------------------------------------------------- the phases

    @classmethod
    def check(cls, job, args) -> None:
        """Raise ValueError naming a bad field of ``job`` or ``args``; needs no model (runs before any model work)."""
        job.validate()

    def setup(self) -> None:
        raise NotImplementedError

    def evaluate_before(self) -> float | None:
        raise NotImplementedError

    def build_trainer(self) -> None:
        raise NotImplementedError

    def train(self) -> None:
        """``trainer.train`` (resuming if asked), timed into ``train_seconds``."""
        start = time.time()
        self.trainer.train(resume_from_checkpoint=self.resume_from_checkpoint)
        self.train_seconds = time.time() - start

    def finish(self, out_dir: str | Path | None = None, extra: dict | None = None) -> dict | None:
        raise NotImplementedError

    def run(self) -> dict:
        """Every phase in order, in this process; returns the results."""
        self.setup()
        self.evaluate_before()
        self.build_trainer()
        self.train()
        return self.finish()

    # ---------------------------------------------------------------- helpers for the drivers

    @property
    def steps_trained(self) -> int:
        """Optimizer steps of this attempt (after a resume: those since the checkpoint)."""
        return self.trainer.state.global_step - self.start_step

    @classmethod
    def for_worker(cls, args, output_dir: str):
        """The trainer config rebuilt in a worker process with ``output_dir`` (see attnrl.distributed.worker)."""
        import dataclasses

        return dataclasses.replace(args, output_dir=output_dir)

    def trainable_model(self):
        """The module whose trainable parameters training changes (fingerprinted on every Ray worker)."""
        return self.trainer.model
