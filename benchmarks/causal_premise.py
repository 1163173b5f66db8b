"""Causal test of the preplan-and-anchor premise (docs/methods.md §1): do anchor / preplan tokens steer the rest of
a response more than random or high-entropy tokens?

    python -m benchmarks.causal_premise --threads 1          # SmolLM2-135M-Instruct, arithmetic CoT, teacher-forced
    python -m benchmarks.causal_premise --threads 1 --regenerate --problems 30 --k 2 --name smollm2-135m-instruct_regen
    python -m benchmarks.causal_premise --model benchmarks/organism/checkpoint --task organism_countdown --regenerate
    python -m benchmarks.causal_premise --model PATH --examples problems.jsonl --verifier pkg.module:is_correct

(from the repository root). The study's runner of the user command ``attnrl premise`` with every option: it
registers the organism's task (``organism_countdown``, its problems those saved in the ``--model`` checkpoint).

For each held-out problem one response is sampled; its tokens are scored with the trainer's statistics
(CreditAssigner, default credit settings: W = 10, FAI horizon [s+10, s+100], q = 0.4); k tokens per selector
(anchor, preplan, coupled, entropy, random) are replaced, one at a time, by the policy's most likely other token;
the effect on the final answer is measured (see :mod:`attnrl.analysis.causal` for the exact protocol). Writes
``<out>/<name>.json`` (all records), ``<name>.md`` (table) and ``<name>.png`` (bar chart with CIs, random as the
reference line) and prints the table.

Default task: held-out two-digit additions with a chain-of-thought instruction ("Let's think step by step."), so
that responses are long enough (about 100 tokens) for the W = 10 window and the [s+10, s+100] FAI horizon, while
SmolLM2-135M still gets some right (three-number sums: almost none). Ours, not the paper's task.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import organism  # noqa: F401  (registers organism_countdown and its premise problems)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "causal"


def premise_tasks() -> list[str]:
    """Every task the premise test takes: the registered ones (attnrl.analysis.causal.premise_task)."""
    from attnrl.rewards import TASKS

    from attnrl.analysis.causal import PREMISE_TASKS

    return sorted(set(TASKS) | set(PREMISE_TASKS))


def load_verifier(spec: str):
    """``module:function`` -> the function (``is_correct(response_text, example) -> bool``)."""
    if ":" not in spec:
        raise SystemExit(f"--verifier {spec!r}: use the form package.module:function")
    module, name = spec.split(":", 1)
    return getattr(importlib.import_module(module), name)


def load_examples(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or any("prompt" not in r for r in rows):
        raise SystemExit(f"--examples {path}: need a JSONL file whose rows all have a 'prompt' field")
    return rows


def load_model(name: str):
    """(model, tokenizer): the embedded default, an organism checkpoint (its own loader) or any local path."""
    from attnrl.models import load_model_and_tokenizer

    if (Path(name) / "build_info.json").exists():
        from benchmarks.organism import load_organism

        return load_organism(name)
    return load_model_and_tokenizer(name)


def model_fingerprint(name: str) -> dict:
    """For a local checkpoint: sha256 of its weights and, for an organism, its build record's headline numbers."""
    from attnrl.utils.files import sha256_file

    folder = Path(name)
    out: dict = {}
    if (folder / "model.safetensors").exists():
        out["weights_sha256"] = sha256_file(folder / "model.safetensors")
    if (folder / "build_info.json").exists():
        info = json.loads((folder / "build_info.json").read_text())
        out.update({k: info.get(k) for k in ("parameters", "sft_steps", "val_accuracy", "data_seed")})
    return out


def problems_and_verifier(args):
    """(examples, is_correct, answer-span name) from --task / --examples / --verifier / --answer-span."""
    from attnrl.analysis.causal import premise_task

    if args.examples:
        if not args.verifier:
            raise SystemExit("--examples needs --verifier module:function (the task's checker does not apply)")
        examples, verify, span = load_examples(args.examples), load_verifier(args.verifier), "final"
    else:
        examples, verify, span = premise_task(args.task, args.problems, terms=args.terms, model_name=args.model)
    if args.verifier:
        verify = load_verifier(args.verifier)
    return examples[: args.problems], verify, (span if args.answer_span == "auto" else args.answer_span)


def summarize_only(out: Path, name: str) -> dict:
    """Summary, table and plot again from the records of ``out/name.json`` (e.g. after the summary changed)."""
    from attnrl.analysis.causal import CausalConfig, format_table, load_causal_result, summarize, write_causal_report

    path = out / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist; run the benchmark first (without --summarize-only)")
    result = load_causal_result(path)
    c = CausalConfig(**{**result.config, "selectors": tuple(result.config["selectors"])})
    result.summary = summarize(result.records, c.selectors, c.measures(), n_boot=c.n_boot, level=c.level, seed=c.seed)
    write_causal_report(result, out, name)
    print(format_table(result.summary))
    return result.summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or local path")
    p.add_argument("--name", default=None, help="output file stem (default: from --model)")
    p.add_argument("--task", default="arithmetic", choices=premise_tasks(),
                   help="held-out task (organism_countdown: the problems saved in the --model checkpoint)")
    p.add_argument("--terms", type=int, default=2, choices=(2, 3), help="arithmetic: numbers to add")
    p.add_argument("--examples", default=None, help="JSONL problems (rows with 'prompt' + gold) instead of --task")
    p.add_argument("--verifier", default=None, help="module:function judging (text, example) instead of the task's")
    p.add_argument("--answer-span", default="auto", choices=("auto", "final", "last_line", "last_step"),
                   help="where the final answer is: last \\boxed{} or number ('final'), the last line ('last_line') "
                   "or the last 'a op b=r' step ('last_step'); auto: last_step for organism_countdown, else final")
    p.add_argument("--problems", type=int, default=120, help="held-out problems")
    p.add_argument("--k", type=int, default=4, help="interventions per selector per response")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=224, help="length budget of responses (tokens)")
    p.add_argument("--regenerate", action="store_true",
                   help="also regenerate greedily after each intervention (flip / answer_change); about 15x slower "
                   "on a CPU, so off by default: teacher-forced measures only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=10000)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (use 1 on a CPU shared with other jobs: oversubscribed threads spin)")
    p.add_argument("--sample-batch-size", type=int, default=60, help="prompts per sampling generate call")
    p.add_argument("--regen-batch-size", type=int, default=48, help="rows per regeneration generate call")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--summarize-only", action="store_true",
                   help="recompute the summary, table and plot from an existing <out>/<name>.json (no model)")
    args = p.parse_args(argv)
    if args.summarize_only:
        return summarize_only(Path(args.out), args.name or Path(args.model.rstrip("/")).name)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from attnrl.analysis.causal import ANSWER_SPANS, CausalConfig, causal_premise, format_table, write_causal_report

    if args.threads:
        torch.set_num_threads(args.threads)
    config = CausalConfig(interventions_per_selector=args.k, temperature=args.temperature,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, regenerate=args.regenerate,
                          n_boot=args.n_boot, regen_batch_size=args.regen_batch_size,
                          sample_batch_size=args.sample_batch_size)
    config.validate()
    examples, verify, span = problems_and_verifier(args)
    name = args.name or Path(args.model.rstrip("/")).name
    model, tokenizer = load_model(args.model)
    t0 = time.time()
    meta = {"model": args.model, "task": None if args.examples else args.task, "terms": args.terms,
            "examples": args.examples, "verifier": args.verifier, "answer_span": span,
            "threads": torch.get_num_threads(), "checkpoint": model_fingerprint(args.model),
            "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}
    result = causal_premise(model, tokenizer, examples, verify, config, span_fn=ANSWER_SPANS[span], meta=meta)
    paths = write_causal_report(result, args.out, name)
    print(format_table(result.summary))
    print(f"\n{len(examples)} problems in {time.time() - t0:.0f} s; wrote {', '.join(str(v) for v in paths.values())}")
    return result.summary


if __name__ == "__main__":
    main()
