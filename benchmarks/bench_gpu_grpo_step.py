"""Whole GRPO step on one GPU: attnrl.AttnGRPOTrainer vs trl.GRPOTrainer, same run, same rollouts.

    python benchmarks/bench_gpu_grpo_step.py                 # random ~0.5B Llama, bf16, gradient checkpointing
    python benchmarks/bench_gpu_grpo_step.py --cpu-check     # toy sizes on CPU, Triton under TRITON_INTERPRET=1

AttnGRPOTrainer runs coupled credit (docs/methods.md §1.3) with the Triton statistics backend and the statistics
recorded during TRL's own loss forward (on-policy, ``credit_stats_pass="auto"``). Both trainers get the same
model (a random LlamaForCausalLM built here from a config, with an offline character tokenizer widened to the
model's vocabulary, see attnrl/utils/tiny.py), the same LoRA adapter, the same seed and learning rate 0, so the
policy never changes and both draw identical rollouts (checked: a fingerprint of every step's completion ids).
The difference in step time is the credit computation alone; goal: AttnGRPOTrainer <= 1.03x GRPOTrainer.
Each step is also split into the rollout (generation + reward scoring) and the rest (loss, backward, optimiser).
After training, the last batch's gamma is computed again with the Triton and with the torch backend, and
compared with each other and with the gamma the loss forward produced (max abs diff, differing tokens).

Results go to benchmarks/results/grpo_step_<device>.{json,md} (--out to change). ``--cpu-check`` runs the same
code on CPU at toy sizes (results to --out if given, else a temporary folder) and exits non-zero when the
rollouts differ or the two backends' gamma disagree. Needs torch, triton, transformers, trl, peft, datasets.
"""
# ruff: noqa: E402  (TRITON_INTERPRET must be set before the first triton import)

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import hashlib
import json
import os
import re
import statistics
import string
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

if "--cpu-check" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are decorated

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_X = 1.03  # AttnGRPOTrainer step time / GRPOTrainer step time
TRAINERS = ("trl", "attnrl")


@dataclass(frozen=True)
class StepBenchConfig:
    """What is trained and how (defaults: the GPU measurement)."""

    family: str = field(default="llama", metadata={"help": "model family: llama, qwen2 or qwen3"})
    hidden: int = field(default=1024, metadata={"help": "hidden size"})
    layers: int = field(default=24, metadata={"help": "decoder layers"})
    heads: int = field(default=16, metadata={"help": "query heads"})
    kv_heads: int = field(default=8, metadata={"help": "key/value heads"})
    intermediate: int = field(default=4096, metadata={"help": "MLP width"})
    vocab: int = field(default=49152, metadata={"help": "vocabulary (the tokenizer is widened to it)"})
    prompt_chars: int = field(default=64, metadata={"help": "characters (= tokens) of each prompt's text"})
    completion_tokens: int = field(default=256, metadata={"help": "max_completion_length"})
    batch: int = field(default=16, metadata={"help": "completions per step (per_device_train_batch_size)"})
    generations: int = field(default=8, metadata={"help": "completions per prompt (num_generations)"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank on all linear layers; 0 = full fine-tuning"})
    credit_window: int = field(default=10, metadata={"help": "WAAD window W (tokens)"})
    credit_fai_lo: int = field(default=10, metadata={"help": "FAI horizon start (tokens)"})
    credit_fai_hi: int = field(default=100, metadata={"help": "FAI horizon end (tokens)"})
    steps: int = field(default=3, metadata={"help": "timed steps per trainer"})
    warmup: int = field(default=1, metadata={"help": "untimed steps first (Triton compilation, allocator)"})
    seed: int = field(default=0, metadata={"help": "seed of the model, the adapter and the rollouts"})
    bf16: bool = field(default=True, metadata={"help": "bf16 weights and autocast"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "TRL's gradient checkpointing"})
    cpu: bool = field(default=False, metadata={"help": "run on CPU (use_cpu=True)"})

    def validate(self) -> None:
        """Raise ValueError naming the bad setting and the fix, before any model is built."""
        if self.family not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"family={self.family!r}: use llama, qwen2 or qwen3")
        if self.batch % self.generations:
            raise ValueError(f"batch={self.batch} must be a multiple of generations={self.generations} (TRL groups "
                             "completions by prompt)")
        if self.generations < 2:
            raise ValueError(f"generations={self.generations}: GRPO needs at least 2 completions per prompt")
        if self.heads % self.kv_heads or self.hidden % self.heads:
            raise ValueError(f"heads={self.heads} must divide hidden={self.hidden} and be a multiple of "
                             f"kv_heads={self.kv_heads}")
        if self.vocab < len(base_vocabulary()):
            raise ValueError(f"vocab={self.vocab} is below the character tokenizer's {len(base_vocabulary())} "
                             "tokens; raise it")
        if self.steps < 1 or self.warmup < 0 or self.completion_tokens < 1 or self.prompt_chars < 1:
            raise ValueError("steps, completion_tokens and prompt_chars must be >= 1, warmup >= 0")
        if not 0 <= self.credit_fai_lo <= self.credit_fai_hi or self.credit_window < 1:
            raise ValueError(f"need credit_window >= 1 and 0 <= credit_fai_lo <= credit_fai_hi, got {self.credit_window}, "
                             f"{self.credit_fai_lo}, {self.credit_fai_hi}")


# toy sizes: the Triton interpreter costs ~0.3 s per (row, head) program, so few rows and heads; a short FAI
# horizon so that the completions hold anchors and gamma is not all ones
CPU_CHECK = StepBenchConfig(hidden=32, layers=4, heads=2, kv_heads=1, intermediate=64, vocab=160, prompt_chars=8,
                            completion_tokens=10, batch=2, generations=2, lora_rank=4, credit_window=3,
                            credit_fai_lo=1, credit_fai_hi=6, steps=1, warmup=0, bf16=False, cpu=True)


# ------------------------------------------------------------------------------------------ model and data
def base_vocabulary() -> list[str]:
    """The tokens of attnrl.utils.tiny's character tokenizer (special tokens, then printable ASCII)."""
    from attnrl.utils.tiny import SPECIAL_TOKENS

    return SPECIAL_TOKENS + [c for c in string.printable if c not in "\r\x0b\x0c"]


def bench_tokenizer(vocab: int):
    """attnrl.utils.tiny's offline character tokenizer (ChatML template), widened with plain tokens '⟨i⟩' to
    ``vocab`` entries so that every id the model samples decodes to text. Prompts still encode char by char."""
    from attnrl.utils.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_tokens([f"⟨{i}⟩" for i in range(vocab - len(tok))])
    if len(tok) != vocab:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {vocab}")
    return tok


def build_model(cfg: StepBenchConfig, device: torch.device):
    """Random causal LM of ``cfg.family`` from a config (attnrl.utils.tiny), bf16 or fp32, on ``device``."""
    from attnrl.utils.tiny import tiny_causal_lm

    overrides = dict(hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                     num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.intermediate,
                     max_position_embeddings=max(2048, 2 * (cfg.prompt_chars + cfg.completion_tokens)),
                     tie_word_embeddings=False)
    if cfg.family == "qwen3":
        overrides["head_dim"] = cfg.hidden // cfg.heads
    with torch.device(device):  # initialised where it runs (seconds on a GPU, not a minute on its host)
        model = tiny_causal_lm(cfg.family, vocab_size=cfg.vocab, seed=cfg.seed, **overrides)
    return model.to(dtype=torch.bfloat16 if cfg.bf16 else torch.float32)


def prompt_dataset(cfg: StepBenchConfig, n: int):
    """``n`` conversational prompts of ``cfg.prompt_chars`` random lowercase letters each."""
    from datasets import Dataset

    gen = torch.Generator().manual_seed(cfg.seed)
    letters = string.ascii_lowercase
    rows = []
    for _ in range(n):
        text = "".join(letters[i] for i in torch.randint(0, 26, (cfg.prompt_chars,), generator=gen).tolist())
        rows.append({"prompt": [{"role": "user", "content": text}]})
    return Dataset.from_list(rows)


def hash_reward(prompts, completions, **kwargs) -> list[float]:
    """A deterministic reward in [0, 1) from each completion's text (varied, so advantages are non-zero)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [(zlib.crc32(t.encode()) % 1000) / 1000 for t in texts]


# ------------------------------------------------------------------------------------------ trainers
def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_recording(base):
    """``base`` (a GRPO trainer class) that also records, per rollout: a fingerprint of the completion ids and
    the rollout's wall time (generation + scoring); and the last loss batch's prompt and completion tensors."""

    class Recording(base):
        def _generate_and_score_completions(self, inputs):
            synchronize()
            start = time.perf_counter()
            output = super()._generate_and_score_completions(inputs)
            synchronize()
            self.bench_rollout_s.append(time.perf_counter() - start)
            ids = output["completion_ids"].detach().cpu()
            self.bench_fingerprints.append(f"{tuple(ids.shape)}:{hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]}")
            return output

        def _compute_loss(self, model, inputs):
            # the rows the loss (and the credit) sees: TRL shuffles the rollout batch before splitting it
            self.bench_last_batch = {k: inputs[k].detach().clone()
                                     for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
            return super()._compute_loss(model, inputs)

    Recording.__name__ = f"Recording{base.__name__}"
    return Recording


def step_timer():
    """A TrainerCallback collecting each optimiser step's wall time (s), the device synchronised at both ends."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def make_trainer(kind: str, cfg: StepBenchConfig, model, tokenizer, dataset, work_dir: Path):
    """A recording trl.GRPOTrainer ("trl") or AttnGRPOTrainer ("attnrl", coupled, Triton, loss-forward stats)."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from attnrl.trainers.grpo import AttnGRPOConfig, AttnGRPOTrainer

    common = dict(
        output_dir=str(work_dir / f"trainer_{kind}"), max_steps=cfg.warmup + cfg.steps, learning_rate=0.0,
        per_device_train_batch_size=cfg.batch, num_generations=cfg.generations,
        max_completion_length=cfg.completion_tokens, temperature=1.0, report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=cfg.seed, bf16=cfg.bf16, use_cpu=cfg.cpu,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    if kind == "trl":
        cls, args = make_recording(GRPOTrainer), GRPOConfig(**common)
    else:
        cls = make_recording(AttnGRPOTrainer)
        args = AttnGRPOConfig(**common, credit_strategy="coupled", credit_backend="triton", credit_stats_pass="auto",
                              credit_window=cfg.credit_window, credit_fai_lo=cfg.credit_fai_lo,
                              credit_fai_hi=cfg.credit_fai_hi)
    peft_config = (LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, target_modules="all-linear",
                              task_type="CAUSAL_LM") if cfg.lora_rank else None)
    timer = step_timer()
    torch.manual_seed(cfg.seed)  # same adapter initialisation for both trainers
    trainer = cls(model=model, reward_funcs=hash_reward, args=args, train_dataset=dataset, processing_class=tokenizer,
                  callbacks=[timer], peft_config=peft_config)
    trainer.bench_rollout_s, trainer.bench_fingerprints, trainer.bench_last_batch = [], [], None
    trainer.bench_timer = timer
    return trainer


def compare_backends(trainer) -> dict:
    """gamma of the trainer's last batch, computed again by a separate statistics forward with the Triton and
    with the torch backend: max abs diffs between them and to the gamma the loss forward produced."""
    from attnrl.credit.assigner import CreditAssigner

    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    batch = trainer.bench_last_batch
    results = {}
    with torch.no_grad():
        for backend in ("triton", "torch"):
            assigner = CreditAssigner(dataclasses.replace(trainer.credit_config, credit_backend=backend), model)
            results[backend] = assigner.assign(model, batch["prompt_ids"], batch["prompt_mask"],
                                               batch["completion_ids"], batch["completion_mask"])
    mask = batch["completion_mask"].bool()
    tri, tor = results["triton"], results["torch"]
    out = {
        "gamma_triton_vs_torch_max_abs_diff": _masked_max(tri.gamma - tor.gamma, mask),
        "gamma_triton_vs_torch_differing_tokens": int(((tri.gamma != tor.gamma) & mask).sum()),
        "waad_triton_vs_torch_max_abs_diff": _masked_max(tri.waad - tor.waad, mask),
        "fai_triton_vs_torch_max_abs_diff": _masked_max(torch.nan_to_num(tri.fai - tor.fai), mask),
        "response_tokens": int(mask.sum()),
        "amplified_tokens": int(((tri.gamma > 1) & mask).sum()),
    }
    loss_forward = trainer.last_credit
    if loss_forward is not None and loss_forward.gamma.shape == tri.gamma.shape:
        out["gamma_loss_forward_vs_triton_max_abs_diff"] = _masked_max(loss_forward.gamma.to(tri.gamma) - tri.gamma,
                                                                       mask)
    return out


def _masked_max(x: torch.Tensor, mask: torch.Tensor) -> float:
    x = x.float().abs()[mask.to(x.device)]
    return float(x.max()) if x.numel() else 0.0


def run_trainer(kind: str, cfg: StepBenchConfig, pristine, tokenizer, dataset, work_dir: Path) -> dict:
    """Train ``cfg.warmup + cfg.steps`` steps with a fresh copy of ``pristine``; times, fingerprints, credit."""
    print(f"{kind}: {cfg.warmup} warm-up + {cfg.steps} timed steps ...", flush=True)
    trainer = make_trainer(kind, cfg, copy.deepcopy(pristine), tokenizer, dataset, work_dir)
    trainer.train()
    times, rollouts = trainer.bench_timer.times, trainer.bench_rollout_s
    if len(times) != cfg.warmup + cfg.steps or len(rollouts) != len(times):
        raise RuntimeError(f"{kind}: expected {cfg.warmup + cfg.steps} steps with one rollout each, got "
                           f"{len(times)} steps and {len(rollouts)} rollouts")
    step, rollout = times[cfg.warmup:], rollouts[cfg.warmup:]
    result = {
        "step_s": step, "rollout_s": rollout, "warmup_step_s": times[:cfg.warmup],
        "mean_step_s": statistics.mean(step), "mean_rollout_s": statistics.mean(rollout),
        "mean_rest_s": statistics.mean(s - r for s, r in zip(step, rollout)),
        "fingerprints": trainer.bench_fingerprints,
    }
    credit = [e["credit/seconds"] for e in trainer.state.log_history if "credit/seconds" in e]
    if kind == "attnrl":
        result["credit_host_s_per_step"] = statistics.mean(credit[cfg.warmup:] or credit) if credit else None
        result["backends"] = compare_backends(trainer)
    if torch.cuda.is_available():
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


# ------------------------------------------------------------------------------------------ reporting
def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def device_label(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu_interpreter"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def summarise(results: dict) -> None:
    """Ratios, the rollout check and the goal flag, from results["trainers"]."""
    trl_r, attn = results["trainers"]["trl"], results["trainers"]["attnrl"]
    results["ratio_step"] = attn["mean_step_s"] / trl_r["mean_step_s"]
    results["ratio_rest"] = attn["mean_rest_s"] / trl_r["mean_rest_s"] if trl_r["mean_rest_s"] > 0 else None
    results["rollouts_identical"] = trl_r["fingerprints"] == attn["fingerprints"]
    results["goal_met"] = results["ratio_step"] <= GOAL_X


def markdown(results: dict) -> str:
    cfg = results["config"]
    t = results["trainers"]
    labels = {"trl": "trl.GRPOTrainer",
              "attnrl": "AttnGRPOTrainer (coupled, Triton, statistics from the loss forward)"}
    lines = [
        f"## Whole GRPO step ({results['device']}; torch {results['torch']}, triton {results['triton']}, "
        f"transformers {results['transformers']}, trl {results['trl']}, peft {results['peft']})",
        "",
        f"random {cfg['family']} model, {results['params_m']:.3g}M params, "
        f"{'LoRA r' + str(cfg['lora_rank']) if cfg['lora_rank'] else 'full fine-tuning'}, "
        f"{'bf16' if cfg['bf16'] else 'fp32'}, gradient checkpointing {'on' if cfg['gradient_checkpointing'] else 'off'}; "
        f"{cfg['batch']} completions ({cfg['generations']} per prompt) x {cfg['completion_tokens']} tokens, prompts of "
        f"{cfg['prompt_chars']} characters; learning rate 0; mean of {cfg['steps']} steps after {cfg['warmup']} warm-up",
        "",
        "| trainer | s/step | rollout s/step | rest s/step | step x trl | rest x trl | credit host s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in TRAINERS:
        r = t[kind]
        ratio = 1.0 if kind == "trl" else results["ratio_step"]
        rest = 1.0 if kind == "trl" else results["ratio_rest"]
        credit = r.get("credit_host_s_per_step")
        lines.append(f"| {labels[kind]} | {r['mean_step_s']:.3f} | {r['mean_rollout_s']:.3f} | {r['mean_rest_s']:.3f} "
                     f"| {ratio:.3f}x | {'—' if rest is None else f'{rest:.3f}x'} | "
                     f"{'—' if credit is None else f'{credit:.4f}'} |")
    b = t["attnrl"]["backends"]
    lines += [
        "",
        f"**goal: AttnGRPOTrainer step <= {GOAL_X}x GRPOTrainer: {'met' if results['goal_met'] else 'NOT met'} "
        f"({results['ratio_step']:.3f}x)**",
        "",
        f"rollouts identical in both trainers: {'yes' if results['rollouts_identical'] else 'NO'}",
        "",
        f"last batch, separate statistics forward, Triton vs torch backend: gamma max abs diff "
        f"{b['gamma_triton_vs_torch_max_abs_diff']:.3g} ({b['gamma_triton_vs_torch_differing_tokens']} of "
        f"{b['response_tokens']} tokens differ; {b['amplified_tokens']} amplified), WAAD {b['waad_triton_vs_torch_max_abs_diff']:.3g}, "
        f"FAI {b['fai_triton_vs_torch_max_abs_diff']:.3g}"
        + (f"; loss-forward gamma vs Triton: {b['gamma_loss_forward_vs_triton_max_abs_diff']:.3g}"
           if "gamma_loss_forward_vs_triton_max_abs_diff" in b else ""),
    ]
    return "\n".join(lines)


def run(cfg: StepBenchConfig, out_dir: Path, label: str) -> dict:
    """Both trainers on ``cfg`` (trl first); writes ``out_dir/grpo_step_<label>.{json,md}``."""
    cfg.validate()
    import triton

    device = torch.device("cpu" if cfg.cpu else "cuda")
    tokenizer = bench_tokenizer(cfg.vocab)
    pristine = build_model(cfg, device)
    dataset = prompt_dataset(cfg, n=(cfg.warmup + cfg.steps) * cfg.batch // cfg.generations)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__, "triton": triton.__version__, "transformers": _version("transformers"),
        "trl": _version("trl"), "peft": _version("peft"), "config": asdict(cfg),
        "params_m": sum(p.numel() for p in pristine.parameters()) / 1e6, "goal_x": GOAL_X, "trainers": {},
    }
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as work_dir:  # the trainers' output_dir (nothing kept)
        for kind in TRAINERS:
            results["trainers"][kind] = run_trainer(kind, cfg, pristine, tokenizer, dataset, Path(work_dir))
    summarise(results)
    text = markdown(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"grpo_step_{label}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"grpo_step_{label}.md").write_text(text + "\n")
    print("\n" + text + f"\n\nwrote {out_dir / f'grpo_step_{label}'}.json and .md")
    return results


def cpu_check_passed(results: dict, tol: float = 1e-4) -> bool:
    b = results["trainers"]["attnrl"]["backends"]
    return (results["rollouts_identical"] and b["amplified_tokens"] > 0 and b["gamma_triton_vs_torch_max_abs_diff"] <= tol
            and b.get("gamma_loss_forward_vs_triton_max_abs_diff", 0.0) <= tol)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = StepBenchConfig()
    for f in dataclasses.fields(StepBenchConfig):
        if f.name in ("cpu", "bf16", "gradient_checkpointing"):
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=None,
                            help=f"{f.metadata['help']} (default {getattr(defaults, f.name)})")
    parser.add_argument("--cpu-check", action="store_true", help="toy sizes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    base = CPU_CHECK if args.cpu_check else defaults
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(StepBenchConfig)
                 if getattr(args, f.name, None) is not None}
    cfg = dataclasses.replace(base, **overrides)
    try:
        cfg.validate()
    except ValueError as e:
        parser.error(str(e))
    if not cfg.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-check to check the script on CPU", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        out = args.out or (Path(stack.enter_context(tempfile.TemporaryDirectory())) if args.cpu_check else RESULTS_DIR)
        results = run(cfg, out, "cpu_check" if cfg.cpu else device_label(torch.device("cuda")))
    if args.cpu_check:
        ok = cpu_check_passed(results)
        print(f"\ncpu check: {'PASS' if ok else 'FAIL'} (rollouts identical, Triton and torch gamma agree)")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
