"""The sweep harness shared by the learning and organism sweeps: cells, resume, atomic cell files, summary hook.

A *study* (:class:`Study`) names its script module (run as ``python -m MODULE`` from the repository root), its budget
dataclass (what every cell gets), its tasks and strategies, the per-cell runner and the summary. A *cell* is one
(task, strategy, seed); each runs in its own process (``python -m MODULE --cell TASK STRATEGY SEED`` plus the
budget's flags) and writes ``<out>/cells/<task>__<strategy>__s<seed>.json`` atomically when it finishes, so an
interrupted sweep resumes with the cells that are missing (a cell cut off half-way runs again from its start). The
order is seed-major (every strategy of seed 0, then seed 1, ...) so that a partial sweep stays paired. Step 0 (the
starting model, the same for every strategy and seed) is measured once per task into ``<out>/base__<task>.json``.
``<out>/budget.json`` keeps the budget: a folder refuses cells of another one.

A cell trains through the recipe runner's phases (:class:`attnrl.recipes.runner.JobRunner`: setup ->
evaluate_before -> build_trainer -> train -> finish): a study's runner is a recipe runner with :class:`SweepCell`
mixed in, which records the evaluation curve every ``budget.eval_every`` steps (a callback) and whose ``finish``
writes the cell file instead of an adapter and a report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the working directory of the cell processes (``python -m``)


def machine() -> dict:
    """What a cell's floating point depends on besides the code: the CPU model and flags that pick the kernels, and the
    numeric libraries' versions (cells of one code on two machines can differ in the last digits, then drift)."""
    import platform
    from importlib.metadata import version

    cpu, flags = platform.processor(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma")))
                break
    return {"cpu": cpu, "cpu_flags": flags, "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "transformers", "trl", "accelerate")}}


def cell_name(task: str, strategy: str, seed: int) -> str:
    return f"{task}__{strategy}__s{seed}"


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` through a temporary file, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def pending_cells(tasks, strategies, seeds, out: Path) -> list[tuple[str, str, int]]:
    """Cells without a finished results file, in sweep order (seed-major, so partial sweeps stay balanced)."""
    return [
        (task, strategy, seed)
        for seed in seeds for task in tasks for strategy in strategies
        if not (out / "cells" / f"{cell_name(task, strategy, seed)}.json").exists()
    ]


def budget_args(budget) -> list[str]:
    """The budget as command-line flags (``--eval-every 25 ...``): how a cell process receives it."""
    return [arg for key, value in asdict(budget).items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def check_budget_matches(out: Path, budget) -> None:
    """Refuse to mix budgets in one results folder (resuming with other settings would mix incomparable cells)."""
    marker = out / "budget.json"
    if marker.exists():
        # a setting added since the folder was started counts as its default there
        saved = {**asdict(type(budget)()), **json.loads(marker.read_text())}
        if saved != asdict(budget):
            changed = {k: (saved.get(k), v) for k, v in asdict(budget).items() if saved.get(k) != v}
            raise SystemExit(f"{out} holds cells of another budget (changed: {changed}); pass another --out or "
                             "the same settings")
    else:
        write_json_atomic(marker, asdict(budget))


# ------------------------------------------------------------------------------------------------ one cell
class SweepCell:
    """Mixed in before a recipe runner (``class CellRunner(SweepCell, GRPORunner)``): one cell of a sweep.

    Adds a callback appending ``{"step", **score(model), "seconds"}`` to ``self.curve`` every ``budget.eval_every``
    steps and at the last step; ``finish`` writes ``cell_result()`` to ``<out>/cells/<name>.json`` (atomically) and
    returns it. A study fills in :meth:`score` and :meth:`cell_result`.
    """

    def __init__(self, cell: tuple[str, str, int], budget, out: Path, job, args, **kwargs):
        super().__init__(job, args, **kwargs)
        self.task, self.strategy, self.seed = cell
        self.budget, self.out = budget, Path(out)
        self.name = cell_name(*cell)
        self.curve: list[dict] = []
        self.callbacks.append(self._curve_callback())

    def _curve_callback(self):
        from transformers import TrainerCallback

        runner = self

        class EvaluationCurve(TrainerCallback):
            """The cell's score every ``eval_every`` steps and at the last step (into ``runner.curve``)."""

            def on_step_end(self, args, state, control, model=None, **kwargs):
                step = state.global_step
                if step % runner.budget.eval_every == 0 or step == state.max_steps:
                    t0 = time.time()
                    runner.curve.append({"step": step, **runner.score(model), "seconds": round(time.time() - t0, 1)})
                    print(f"[{runner.name}] step {step}: {runner.describe(runner.curve[-1])}", flush=True)

        return EvaluationCurve()

    def score(self, model) -> dict:
        """``{"accuracy": ..., ...}`` of ``model`` (a point of the curve; also step 0, the base file)."""
        raise NotImplementedError

    def describe(self, point: dict) -> str:
        return f"accuracy {100 * point['accuracy']:.1f}%"

    def cell_result(self) -> dict:
        """The cell's results file (called after training)."""
        raise NotImplementedError

    def timing(self) -> dict:
        """Wall, training (without evaluations) and per-step seconds of the cell."""
        wall = self.train_seconds
        eval_seconds = sum(point["seconds"] for point in self.curve)
        return {"wall_seconds": round(wall, 1), "train_seconds": round(wall - eval_seconds, 1),
                "seconds_per_step": round((wall - eval_seconds) / self.budget.steps, 2)}

    def finish(self, out_dir=None, extra=None) -> dict:
        result = {**self.cell_result(), **(extra or {}), "machine": machine()}
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "cells" / f"{self.name}.json", result)
        return result

    def run_base(self) -> dict:
        """Step 0 of every cell of this task: the runner's set-up, then :meth:`score` of the starting model, written
        to ``<out>/base__<task>.json``."""
        self.setup()
        t0 = time.time()
        result = {"task": self.task, **self.score(self.model), "seconds": round(time.time() - t0, 1),
                  "budget": asdict(self.budget)}
        write_json_atomic(self.out / f"base__{self.task}.json", result)
        return result


# ------------------------------------------------------------------------------------------------ the sweep
@dataclass(frozen=True)
class Study:
    """What a sweep script declares; :func:`main` does the rest.

    ``module``: the script's module (``benchmarks.learning.sweep``), run again for each cell; ``budget_cls``: a
    frozen dataclass whose fields (defaults and ``help`` metadata) are the budget flags; ``cell_runner(task,
    strategy, seed, budget, out)``: a :class:`SweepCell` runner; ``summarize(out, tasks, strategies)``: the summary
    hook (tables, plots), also run alone by ``--summarize-only``.
    """

    module: str
    description: str
    budget_cls: type
    tasks: Sequence[str]
    default_tasks: Sequence[str]
    strategies: Sequence[str]
    default_strategies: Sequence[str]
    default_seeds: Sequence[int]
    cell_runner: Callable
    summarize: Callable
    default_out: Path
    default_jobs: int = 1
    default_threads: int = 2
    strategies_help: str | None = None
    before_sweep: Callable | None = None  # before_sweep(budget): checks before any process starts


def run_in_subprocess(module: str, what: list[str], budget, out: Path, threads: int, log_name: str) -> int:
    """``python -m module`` with ``what`` (``--cell ...`` / ``--base ...``), the budget and ``--out`` in a fresh
    process (from the repository root, ``threads`` torch threads); its output goes to ``out/logs/<log_name>.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log = out / "logs" / f"{log_name}.log"
    with log.open("w") as handle:
        cmd = [sys.executable, "-m", module, *what, *budget_args(budget), "--out", str(out)]
        return subprocess.run(cmd, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode


def sweep(study: Study, tasks, strategies, seeds, budget, out: Path, jobs: int, threads: int) -> int:
    """Run every missing cell (``jobs`` at a time), after the base of each task; returns the cells that failed."""
    from tqdm.auto import tqdm

    out = Path(out).resolve()
    for sub in ("cells", "logs", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    check_budget_matches(out, budget)
    for task in tasks:
        if not (out / f"base__{task}.json").exists():
            print(f"base model on {task} ...", flush=True)
            if run_in_subprocess(study.module, ["--base", task], budget, out, threads * jobs, f"base__{task}") != 0:
                raise SystemExit(f"the base-model evaluation of {task} failed; see {out / 'logs'}")
    todo = pending_cells(tasks, strategies, seeds, out)
    total = len(tasks) * len(strategies) * len(seeds)
    print(f"{total - len(todo)}/{total} cells already done; running {len(todo)} ({jobs} at a time)", flush=True)
    with tqdm(total=len(todo), desc="sweep", unit="cell") as bar, ThreadPoolExecutor(jobs) as pool:
        def one(cell):
            name = cell_name(*cell)
            rc = run_in_subprocess(study.module, ["--cell", cell[0], cell[1], str(cell[2])], budget, out, threads,
                                   name)
            bar.update(1)
            bar.set_postfix_str(f"last: {name} {'ok' if rc == 0 else f'FAILED rc={rc}'}")
            return rc

        failures = sum(rc != 0 for rc in pool.map(one, todo))
    if failures:
        print(f"{failures} cells failed; their logs are in {out / 'logs'}; run the same command again to retry them")
    return failures


def parse_args(study: Study, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {study.module}", description=study.description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if len(study.tasks) > 1:
        parser.add_argument("--tasks", nargs="+", default=list(study.default_tasks), choices=list(study.tasks))
    parser.add_argument("--strategies", nargs="+", default=list(study.default_strategies),
                        choices=list(study.strategies), help=study.strategies_help)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(study.default_seeds))
    parser.add_argument("--jobs", type=int, default=study.default_jobs, help="cells run at the same time")
    parser.add_argument("--threads", type=int, default=study.default_threads, help="torch threads per cell")
    parser.add_argument("--out", type=Path, default=study.default_out)
    parser.add_argument("--summarize-only", action="store_true", help="only rebuild the summary (tables, plots)")
    parser.add_argument("--cell", nargs=3, metavar=("TASK", "STRATEGY", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--base", metavar="TASK", help=argparse.SUPPRESS)
    for key, spec in study.budget_cls.__dataclass_fields__.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(spec.default), default=spec.default,
                            help=spec.metadata["help"])
    args = parser.parse_args(argv)
    if len(study.tasks) == 1:
        args.tasks = list(study.tasks)
    return args


def budget_of(study: Study, args: argparse.Namespace):
    budget = study.budget_cls(**{key: getattr(args, key) for key in study.budget_cls.__dataclass_fields__})
    if hasattr(budget, "validate"):
        budget.validate()
    return budget


def main(study: Study, argv=None) -> int:
    """The sweep's command line: every missing cell, then the summary; ``--cell``/``--base``: one process's work."""
    args = parse_args(study, argv)
    budget = budget_of(study, args)
    if args.base:
        study.cell_runner(args.base, study.default_strategies[0], 0, budget, args.out).run_base()
        return 0
    if args.cell:
        task, strategy, seed = args.cell
        study.cell_runner(task, strategy, int(seed), budget, args.out).run()
        return 0
    failures = 0
    if not args.summarize_only:
        if study.before_sweep is not None:
            study.before_sweep(budget)
        failures = sweep(study, args.tasks, args.strategies, args.seeds, budget, args.out, args.jobs, args.threads)
    study.summarize(args.out, args.tasks, args.strategies)
    return 1 if failures else 0
