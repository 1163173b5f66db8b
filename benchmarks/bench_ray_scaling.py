"""Step time of the main job on Ray Train with 1 and 2 CPU workers, same global batch, on this machine.

    python benchmarks/bench_ray_scaling.py [--steps 4] [--warmup 1]

Every run goes through :func:`attnrl.distributed.launch` on one local 2-CPU Ray cluster: 1 worker x 2 CPUs
(2 torch threads), 1 worker x 1 CPU (the single-thread baseline) and 2 workers x 1 CPU, each training
SmolLM2-135M-Instruct + LoRA r16 with coupled credit on 16 completions x 24 tokens per step in total (per worker:
16 / workers). Rank 0 times each optimizer step (DDP keeps the ranks in step); the first ``--warmup`` steps are
dropped. Prints a table and writes benchmarks/results/ray_scaling_cpu.json, with the load average (the machine
may be shared: other processes slow multi-threaded torch most).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from attnrl.distributed import RayArguments, launch
from attnrl.recipes.grpo import GRPOJobArguments, GRPORunner
from attnrl.trainers.grpo import AttnGRPOConfig

RESULTS = Path(__file__).parent / "results"
TOTAL_COMPLETIONS = 16
LAYOUTS = [(1, 2), (1, 1), (2, 1)]  # (workers, CPUs per worker) on a 2-CPU cluster


class StepTimer(TrainerCallback):
    """Rank 0 appends each optimizer step's wall time (s) to ``path``."""

    def __init__(self, path: str):
        self.path, self.start = path, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == 0:
            with open(self.path, "a") as f:
                f.write(f"{time.perf_counter() - self.start}\n")


def run(workers: int, cpus_per_worker: float, steps: int, scratch: Path) -> list[float]:
    """Step times (s) of one Ray run with ``workers`` workers of ``cpus_per_worker`` CPUs (= torch threads)."""
    name = f"{workers}x{cpus_per_worker:g}"
    times_file = scratch / f"steps_{name}.txt"
    job = GRPOJobArguments(train_size=200, eval_size=4, skip_eval_before=True)
    args = AttnGRPOConfig(
        output_dir=str(scratch / name), max_steps=steps, learning_rate=2e-4,
        per_device_train_batch_size=TOTAL_COMPLETIONS // workers, num_generations=8, max_completion_length=24,
        temperature=0.8, beta=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        seed=0, disable_tqdm=True,
    )
    ray_args = RayArguments(num_workers=workers, cpus_per_worker=cpus_per_worker, max_failures=0)
    launch(job, args, ray_args, callbacks=[StepTimer(str(times_file))], runner=GRPORunner)
    return [float(line) for line in times_file.read_text().split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    a = ap.parse_args()

    import ray

    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = {layout: run(*layout, a.steps, Path(tmp)) for layout in LAYOUTS}
    finally:
        ray.shutdown()
    mean = {layout: statistics.mean(times[a.warmup:]) for layout, times in raw.items()}
    rows = [{"workers": w, "cpus_per_worker": c, "s_per_step": round(mean[w, c], 2),
             "raw_step_seconds": [round(x, 2) for x in raw[w, c]]} for w, c in LAYOUTS]
    res = {
        "device": "cpu", "cluster_cpus": 2, "machine_cpus": os.cpu_count(), "completions_per_step": TOTAL_COMPLETIONS,
        "max_completion_length": 24, "steps_timed": a.steps - a.warmup, "runs": rows,
        "ratio_1x2_over_2x1": round(mean[1, 2] / mean[2, 1], 3),
        "ratio_1x1_over_2x1": round(mean[1, 1] / mean[2, 1], 3),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
    }
    table = "\n".join(
        [f"| Ray Train workers x CPUs (threads) | s/step (mean of {res['steps_timed']}) |", "|---|---|"]
        + [f"| {r['workers']} x {r['cpus_per_worker']} | {r['s_per_step']} |" for r in rows]
        + [f"| step time 1x2 / 2x1 | {res['ratio_1x2_over_2x1']} |",
           f"| step time 1x1 / 2x1 | {res['ratio_1x1_over_2x1']} |",
           "", f"load average before {res['load_average_1_5_15_before']}, after {res['load_average_1_5_15_after']}"]
    )
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_scaling_cpu.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
