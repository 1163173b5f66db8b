"""Step time of AttnGRPOTrainer (coupled credit) vs plain trl.GRPOTrainer, same run, same configuration, CPU.

    python benchmarks/bench_step_time.py [--steps 6] [--warmup 1]

The trainers train SmolLM2-135M-Instruct + LoRA r16 on the main job's task with 16 completions x 24 tokens per
step. The learning rate is 0 so that all see identical rollouts (same seed, same weights): the difference is the
credit computation alone. AttnGRPOTrainer runs twice: with the default ``credit_stats_pass="auto"`` (on-policy:
statistics recorded during TRL's own loss forward) and with ``"separate"`` (the extra no-grad statistics forward
forced). Off-policy rows: both trainers again with ``num_iterations=2`` (TRL then runs its no-grad old log-prob
forward at scoring time, and AttnGRPOTrainer records its statistics during that forward). Runs alternate to
spread machine noise. Prints a table and writes step_time_cpu.{json,md} to ``--results-dir``
(benchmarks/results).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from attnrl.rewards import TASKS, make_dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from attnrl.models import load_model_and_tokenizer
from attnrl.trainers.grpo import AttnGRPOConfig, AttnGRPOTrainer

RESULTS = Path(__file__).parent / "results"
# kind -> (credit_stats_pass, or None for trl.GRPOTrainer; num_iterations); ratios are to the trl row of the same
# num_iterations
KINDS = {"trl": (None, 1), "attnrl": ("auto", 1), "attnrl-separate": ("separate", 1),
         "trl-iter2": (None, 2), "attnrl-iter2": ("auto", 2)}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def run(kind: str, steps: int, seed: int) -> tuple[list[float], float]:
    model, tok = load_model_and_tokenizer()
    data = make_dataset("arithmetic", "train", 200, seed=0)
    common = dict(output_dir=f"/tmp/bench_step_{kind}", max_steps=steps, learning_rate=0.0, per_device_train_batch_size=16,
                  num_generations=8, max_completion_length=24, temperature=0.8, report_to=[], save_strategy="no",
                  use_cpu=True, bf16=False, seed=seed, logging_steps=1, disable_tqdm=True,
                  num_iterations=KINDS[kind][1])
    stats_pass = KINDS[kind][0]
    if stats_pass is None:
        cls, cfg = GRPOTrainer, GRPOConfig(**common)
    else:
        cls, cfg = AttnGRPOTrainer, AttnGRPOConfig(**common, credit_stats_pass=stats_pass)
    timer = StepTimer()
    trainer = cls(model=model, reward_funcs=TASKS["arithmetic"].reward_funcs[0], args=cfg, train_dataset=data,
                  processing_class=tok, callbacks=[timer],
                  peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    credit = [e["credit/seconds"] for e in trainer.state.log_history if "credit/seconds" in e]
    return timer.times, (statistics.mean(credit) if credit else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where step_time_cpu.{json,md} go")
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    times = {kind: [] for kind in KINDS}
    credit_s = {kind: [] for kind in KINDS}
    for r in range(a.repeats):
        for kind in KINDS:
            t, c = run(kind, a.steps, seed=r)
            times[kind] += t[a.warmup:]
            credit_s[kind].append(c)
    mean = {kind: statistics.mean(v) for kind, v in times.items()}
    res = {
        "device": "cpu", "threads": torch.get_num_threads(), "steps_timed_per_trainer": len(times["trl"]),
        "s_per_step": {k: round(v, 2) for k, v in mean.items()},
        "ratio_to_trl": {k: round(v / mean["trl" if KINDS[k][1] == 1 else "trl-iter2"], 3) for k, v in mean.items()},
        "credit_s_per_step": {k: round(statistics.mean(v), 3) for k, v in credit_s.items() if KINDS[k][0]},
        "raw": times,
    }
    labels = {"trl": "trl.GRPOTrainer", "attnrl": "AttnGRPOTrainer, coupled, stats from the loss forward (default)",
              "attnrl-separate": "AttnGRPOTrainer, coupled, separate statistics forward",
              "trl-iter2": "trl.GRPOTrainer, num_iterations=2 (old log-prob forward)",
              "attnrl-iter2": "AttnGRPOTrainer, coupled, num_iterations=2, stats from TRL's old log-prob forward"}
    table = "| trainer | s/step | ratio to trl (same num_iterations) | credit work s/step |\n|---|---|---|---|\n" + "".join(
        f"| {labels[k]} | {res['s_per_step'][k]} | {res['ratio_to_trl'][k]} | "
        f"{res['credit_s_per_step'].get(k, '—')} |\n" for k in KINDS
    )
    print(table)
    a.results_dir.mkdir(parents=True, exist_ok=True)
    (a.results_dir / "step_time_cpu.json").write_text(json.dumps(res, indent=2))
    (a.results_dir / "step_time_cpu.md").write_text(table)


if __name__ == "__main__":
    main()
