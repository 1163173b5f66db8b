"""Build the organism from scratch: problems, reference searches, SFT with TRL's SFTTrainer, stop in the band.

    python -m benchmarks.organism.build            # the committed checkpoint (benchmarks/organism/checkpoint), from scratch
    python -m benchmarks.organism.build --help     # every setting (model shape, data, SFT, stopping band)

Run from the repository root. SFT stops at the first evaluation (greedy, on the first ``stop_eval_size`` problems of
the ``val`` split, never the held-out ``test`` split) whose accuracy reaches ``stop_accuracy``; the band
[band_low, band_high] is checked at the end. Deterministic given ``seed`` and the thread count (float reductions
differ between thread counts).

The checkpoint folder holds ``config.json``, ``model.safetensors``, the tokenizer files, ``problems/<split>.jsonl``
(``test``: the sweep's held-out set, ``val``, ``grpo``: GRPO training prompts) and ``build_info.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .model import OrganismModelConfig, build_model, parameter_count
from .task import CountdownSpec, generate_problems, is_correct, sft_examples
from .tokenizer import organism_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"  # the study's committed checkpoint
SAVED_SPLITS = ("test", "val", "grpo")


@dataclass
class OrganismBuildConfig:
    """Everything the build depends on (all recorded in build_info.json)."""

    out_dir: str = field(default=str(DEFAULT_CHECKPOINT), metadata={"help": "Checkpoint folder (replaced)."})
    seed: int = field(default=0, metadata={"help": "Seed of the problems, the traces, the init and SFT."})
    sft_problems: int = field(default=16000, metadata={"help": "Distinct SFT problems."})
    traces_per_problem: int = field(default=2, metadata={"help": "Reference searches (random orders) per problem."})
    grpo_problems: int = field(default=4000, metadata={"help": "GRPO training problems saved with the model."})
    val_problems: int = field(default=500, metadata={"help": "Validation problems (SFT stopping, pilots)."})
    test_problems: int = field(default=1000, metadata={"help": "Held-out problems (the sweep evaluates on these)."})
    stop_eval_size: int = field(default=200, metadata={"help": "Validation problems evaluated during SFT."})
    learning_rate: float = field(default=2e-3, metadata={"help": "SFT peak learning rate (AdamW, constant)."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    batch_size: int = field(default=32, metadata={"help": "SFT sequences per step."})
    max_steps: int = field(default=6000, metadata={"help": "SFT steps at most (stops earlier in the band)."})
    eval_every: int = field(default=100, metadata={"help": "SFT steps between validation evaluations."})
    stop_accuracy: float = field(default=0.25, metadata={"help": "Stop at the first evaluation at least this good."})
    band_low: float = field(default=0.15, metadata={"help": "Lowest accepted final validation accuracy."})
    band_high: float = field(default=0.50, metadata={"help": "Highest accepted final validation accuracy."})
    max_new_tokens: int = field(default=128, metadata={"help": "Generation budget of an answer (tokens)."})
    eval_batch_size: int = field(default=100, metadata={"help": "Prompts per evaluation batch."})
    threads: int = field(default=2, metadata={"help": "torch threads."})
    workers: int = field(default=2, metadata={"help": "Processes generating problems."})
    model: OrganismModelConfig = field(default_factory=OrganismModelConfig, metadata={"help": "Network shape."})
    task: CountdownSpec = field(default_factory=CountdownSpec, metadata={"help": "Problem distribution."})

    def validate(self) -> None:
        self.model.validate()
        self.task.validate()
        if not 0.0 <= self.band_low <= self.stop_accuracy <= self.band_high <= 1.0:
            raise ValueError(f"need 0 <= band_low ({self.band_low}) <= stop_accuracy ({self.stop_accuracy}) <= "
                             f"band_high ({self.band_high}) <= 1")
        if self.stop_eval_size > self.val_problems:
            raise ValueError(f"stop_eval_size={self.stop_eval_size} exceeds val_problems={self.val_problems}")
        small = {k: v for k, v in asdict(self).items()
                 if k in ("sft_problems", "val_problems", "test_problems", "grpo_problems", "batch_size",
                          "max_steps", "eval_every", "stop_eval_size", "threads", "workers", "traces_per_problem")
                 and v < 1}
        if small:
            raise ValueError(f"these settings must be >= 1: {small}")


def length_stats(lengths: list[int]) -> dict:
    """Mean, quantiles and a 16-token histogram of answer lengths (tokens)."""
    ordered = sorted(lengths)

    def q(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    hist: dict[str, int] = {}
    for n in ordered:
        lo = 16 * (n // 16)
        hist[f"{lo}-{lo + 15}"] = hist.get(f"{lo}-{lo + 15}", 0) + 1
    return {"count": len(ordered), "mean": round(statistics.fmean(ordered), 2), "min": ordered[0],
            "p10": q(0.1), "p25": q(0.25), "median": q(0.5), "p75": q(0.75), "p90": q(0.9), "p99": q(0.99),
            "max": ordered[-1], "histogram_16": hist}


def build_organism(cfg: OrganismBuildConfig) -> dict:
    """Build, SFT and save the organism into ``cfg.out_dir``; returns build_info (also written there)."""
    import datasets
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from attnrl.evaluation import evaluate_accuracy

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    datasets.disable_progress_bars()
    t0 = time.time()
    sizes = {"test": cfg.test_problems, "val": cfg.val_problems, "grpo": cfg.grpo_problems, "sft": cfg.sft_problems}
    problems = generate_problems(cfg.task, sizes, seed=cfg.seed, workers=cfg.workers)
    examples = sft_examples(problems["sft"], cfg.task, seed=cfg.seed, traces_per_problem=cfg.traces_per_problem)
    data_seconds = time.time() - t0
    tokenizer = organism_tokenizer()
    lengths = [len(tokenizer(e["completion"][0]["content"], add_special_tokens=False)["input_ids"]) + 1
               for e in examples]  # + </s>
    logger.info("%d SFT examples from %d problems (%.0f s); answer length mean %.1f tokens", len(examples),
                len(problems["sft"]), data_seconds, statistics.fmean(lengths))
    model = build_model(cfg.model, tokenizer, cfg.seed)
    val = problems["val"][: cfg.stop_eval_size]
    curve: list[dict] = []

    class StopInBand(TrainerCallback):
        """Greedy validation accuracy every ``eval_every`` steps; stop at the first >= ``stop_accuracy``."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % cfg.eval_every:
                return
            result = evaluate_accuracy(model, tokenizer, val, is_correct, max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.eval_batch_size, desc="validation")
            loss = next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None)
            curve.append({"step": state.global_step, "val_accuracy": result.accuracy, "train_loss": loss,
                          "seconds": round(time.time() - t0, 1)})
            logger.info("SFT step %d: validation %.1f%% (loss %s)", state.global_step, 100 * result.accuracy, loss)
            if result.accuracy >= cfg.stop_accuracy:
                control.should_training_stop = True

    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.warmup_steps,
            weight_decay=0.0, logging_steps=10, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
            seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.model.max_positions, disable_tqdm=True,
            dataloader_num_workers=0,
        )
        columns = [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples]
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(columns),
                             processing_class=tokenizer, callbacks=[StopInBand()])
        trainer.train()
    steps = trainer.state.global_step
    final = curve[-1]["val_accuracy"] if curve and curve[-1]["step"] == steps else None
    if final is None:  # stopped at max_steps between evaluations
        final = evaluate_accuracy(model, tokenizer, val, is_correct, max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.eval_batch_size).accuracy
        curve.append({"step": steps, "val_accuracy": final, "seconds": round(time.time() - t0, 1)})
    info = {
        "sft_steps": steps, "val_accuracy": final, "val_eval_size": len(val),
        "in_band": cfg.band_low <= final <= cfg.band_high, "parameters": parameter_count(model),
        "data_seed": cfg.seed, "sft_examples": len(examples), "sft_problems": len(problems["sft"]),
        "split_sizes": {s: len(rows) for s, rows in problems.items()},
        "sft_answer_tokens": length_stats(lengths), "val_curve": curve,
        "seconds": round(time.time() - t0, 1), "data_seconds": round(data_seconds, 1),
        "threads": cfg.threads, "versions": _versions(), "config": asdict(cfg),
    }
    save_checkpoint(Path(cfg.out_dir), model, tokenizer, {s: problems[s] for s in SAVED_SPLITS}, info)
    if not info["in_band"]:
        raise RuntimeError(f"SFT ended at validation accuracy {final:.3f}, outside [{cfg.band_low}, {cfg.band_high}] "
                           f"after {steps} steps (saved anyway in {cfg.out_dir}); change max_steps, eval_every or "
                           "the learning rate")
    return info


def save_checkpoint(out: Path, model, tokenizer, problems: dict[str, list[dict]], info: dict) -> None:
    """Write the checkpoint into a staging folder next to ``out``, then swap it in (never half a checkpoint)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "problems").mkdir()
        for split, rows in problems.items():
            (staging / "problems" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (staging / "build_info.json").write_text(json.dumps(info, indent=1))
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _versions() -> dict:
    from importlib.metadata import version

    import reasoning_gym  # noqa: F401
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "reasoning_gym": version("reasoning-gym")}


# ------------------------------------------------------------------------------------------------ command line
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.organism.build", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
