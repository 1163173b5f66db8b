"""The ``attnrl`` command: train, eval, analyze, publish.

Every sub-command is a plain function (:func:`train`, :func:`evaluate`, :func:`analyze` here,
:func:`attnrl.publish.publish`); :func:`main` only parses arguments and prints errors. Usage::

    attnrl train CONFIG.yaml [--recipe grpo] [--any_field value ...]
    attnrl eval --model M [--adapter DIR ...] --task T [--n 200] [--pass-k 1 4 --samples 8 --temperature 1.0]
    attnrl analyze --model M [--adapter DIR] (--prompt TEXT | --rollouts FILE.jsonl [--index I]) --out DIR
    attnrl publish RUN_DIR --out DIR [--push-to-hub USER/REPO]

Mistakes that can be seen before loading a model (an unknown config field, task or recipe, a missing adapter or
one trained for another base model) raise :class:`UsageError` naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import yaml
from trl import TrlParser

from attnrl.models.default import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model_path
from attnrl.publish import publish
from attnrl.recipes import config as recipe_config
from attnrl.recipes.grpo import GRPOJobArguments, run_grpo_job
from attnrl.recipes.ppo import PPOJobArguments, run_ppo_job
from attnrl.trainers.grpo import AttnGRPOConfig
from attnrl.trainers.ppo import AttnPPOConfig

logger = logging.getLogger(__name__)

# recipe name -> (job dataclass, trainer config dataclass, run(job, config) -> results dict)
RECIPES = {
    "grpo": (GRPOJobArguments, AttnGRPOConfig, run_grpo_job),
    "ppo": (PPOJobArguments, AttnPPOConfig, run_ppo_job),
}
RESOLVED_CONFIG = "train_config.yaml"  # written into output_dir by `train`: the fields the user set, as parsed


class UsageError(ValueError):
    """A mistake in the command's arguments or inputs; the message says what to change."""


def closest(name: str, candidates) -> str:
    """' (did you mean X?)' for the candidate closest to ``name``, or '' when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------- train


def train(config: str | Path, overrides: Sequence[str] = (), *, recipe: str | None = None,
          ray_address: str | None = None, num_workers: int | None = None) -> dict:
    """Run a recipe from a YAML config (TRL-style: every dataclass field settable) with ``--field value`` overrides.

    The recipe is ``recipe``, else the YAML's ``recipe:`` key, else "grpo". With ``ray_address`` or ``num_workers``
    the run goes to the Ray launcher ``attnrl.distributed.launch``. Returns the recipe's results dictionary.
    """
    raw = load_yaml_config(config)
    recipe_name = recipe or raw.get("recipe", "grpo")
    raw.pop("recipe", None)
    job_cls, config_cls, run = get_recipe(recipe_name)
    parser = recipe_parser(job_cls, config_cls)
    check_config_keys(raw, parser, config)
    override_fields = check_override_flags(overrides, parser)
    for key, value in raw.pop("env", {}).items():  # TrlParser's `env:` section
        os.environ[key] = str(value)
    parser.set_defaults_with_config(**raw)
    recipe_config.cpu_safe_defaults(parser, raw, overrides)  # bf16 False when training on the CPU, unless set
    with recipe_config.precision_errors():
        job, args = parser.parse_args_into_dataclasses(args=list(overrides))
    write_resolved_config(Path(args.output_dir), recipe_name, job, args, [*raw, *override_fields])
    if ray_address or num_workers:
        return launch_distributed(recipe_name, job, args, ray_address, num_workers)
    return run(job, args)


def load_yaml_config(path: str | Path) -> dict:
    """The config's mapping; UsageError naming the file (and the line of a YAML syntax error)."""
    try:
        return recipe_config.load_yaml_config(path)
    except recipe_config.ConfigError as e:
        raise UsageError(str(e)) from None


def get_recipe(name: str) -> tuple:
    if name not in RECIPES:
        raise UsageError(f"recipe {name!r} is unknown{closest(name, RECIPES)}; available: {sorted(RECIPES)}")
    return RECIPES[name]


def recipe_parser(job_cls, config_cls) -> TrlParser:
    """TrlParser over the recipe's two dataclasses, which must not share a field name (argparse would clash)."""
    shared = sorted({f.name for f in fields(job_cls)} & {f.name for f in fields(config_cls)})
    if shared:
        raise UsageError(f"fields {shared} are defined by both {job_cls.__name__} and {config_cls.__name__}, so "
                         f"they cannot be set unambiguously; rename them in {job_cls.__name__}")
    return TrlParser((job_cls, config_cls))


def check_config_keys(raw: dict, parser: TrlParser, source) -> None:
    """Every YAML key must be a field of the recipe's dataclasses (or TrlParser's ``env``)."""
    known = {a.dest for a in parser._actions} - {"help"} | {"env"}
    for key in raw:
        if key not in known:
            raise UsageError(f"unknown config field {key!r} in {source}{closest(key, known)}; fields are those of "
                             "the recipe's job and trainer config dataclasses")


def check_override_flags(overrides: Sequence[str], parser: TrlParser) -> list[str]:
    """Field names set by ``--flag [value]`` overrides; raises on a flag that names no field."""
    dest_of = {opt: a.dest for a in parser._actions for opt in a.option_strings if a.dest != "help"}
    names = []
    for token in overrides:
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        if flag not in dest_of:
            raise UsageError(f"unknown config field {flag!r} on the command line{closest(flag, dest_of)}")
        names.append(dest_of[flag])
    return names


def write_resolved_config(output_dir: Path, recipe_name: str, job, args, keys: Sequence[str]) -> None:
    """``output_dir``/train_config.yaml: the recipe and every field set in the YAML or on the command line."""
    values = {**asdict(job), **args.to_dict()}
    config = {"recipe": recipe_name, **{k: values[k] for k in dict.fromkeys(keys)}}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESOLVED_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))


def launch_distributed(recipe_name: str, job, args, ray_address: str | None, num_workers: int | None) -> dict:
    """Hand the parsed run to the Ray launcher: ``attnrl.distributed.launch(job, args, RayArguments(...))``."""
    distributed = importlib.import_module("attnrl.distributed")
    if not hasattr(distributed, "launch") or not hasattr(distributed, "RayArguments"):
        raise UsageError("--ray-address/--num-workers need the Ray launcher attnrl.distributed.launch, which this "
                         "installation lacks; drop both flags to train in one process")
    if recipe_name != "grpo":
        raise UsageError(f"the Ray launcher trains the grpo recipe only; drop --ray-address/--num-workers to train "
                         f"recipe {recipe_name!r} in one process")
    ray_args = distributed.RayArguments(ray_address=ray_address, num_workers=num_workers or 0)
    return distributed.launch(job, args, ray_args)


# ---------------------------------------------------------------- model + adapter checks


def check_task(task: str) -> None:
    from attnrl.rewards import TASKS

    if task not in TASKS:
        raise UsageError(f"task {task!r} is unknown{closest(task, TASKS)}; choose one of {sorted(TASKS)}")


def check_adapter(adapter: str | Path, model: str) -> None:
    """The adapter folder exists, is peft-format and was trained on ``model`` (adapter_config.json's base)."""
    folder = Path(adapter)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist; pass RUN_DIR/adapter of a training run "
                                "or a folder written by `attnrl publish`")
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} holds no adapter_config.json, so it is not a peft adapter; pass "
                                "RUN_DIR/adapter of a training run or a folder written by `attnrl publish`")
    recorded = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if recorded and not same_base_model(recorded, model):
        raise UsageError(f"adapter {folder} was trained on base model {recorded!r}, not on --model {model!r}; "
                         f"pass --model {recorded} (or an adapter trained on {model})")


def same_base_model(recorded: str, given: str) -> bool:
    """Whether two model names/paths denote the same model (DEFAULT_MODEL resolved to its cached folder).

    Two existing folders compare by real path; a recorded path absent here (an adapter trained on another
    machine) compares by folder / repository name.
    """
    a, b = Path(resolve_model_path(recorded)), Path(resolve_model_path(given))
    if a.exists() and b.exists():
        return a.resolve() == b.resolve()
    return a == b or a.name == b.name


def load_policy(model: str, adapter: str | Path | None = None):
    """(model in eval mode, with the peft adapter applied if given, tokenizer); shape mismatches become UsageError."""
    from peft import PeftModel

    policy, tokenizer = load_model_and_tokenizer(model)
    if adapter is not None:
        try:
            policy = PeftModel.from_pretrained(policy, str(adapter))
        except RuntimeError as e:
            if "size mismatch" not in str(e):
                raise
            detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), "")
            raise UsageError(f"adapter {adapter} does not fit --model {model}: weight shapes differ ({detail}); it "
                             "was trained for another base model, pass that one with --model") from e
    return policy.eval(), tokenizer


# ---------------------------------------------------------------- eval


def evaluate(model: str = DEFAULT_MODEL, task: str = "arithmetic", adapters: Sequence[str | Path] = (), *,
             include_base: bool = True, n: int = 200, pass_k: Sequence[int] = (), samples: int | None = None,
             temperature: float = 1.0, max_new_tokens: int = 24, batch_size: int = 50, task_seed: int = 1,
             seed: int = 0, out: str | Path | None = None) -> dict:
    """Greedy accuracy (and sampled pass@k) of the base model and each adapter on ``n`` held-out problems.

    ``task_seed`` 1 gives the held-out set of a training run with the recipe's default seed. Prints a markdown
    comparison table; writes the result dictionary as JSON to ``out`` if given, and returns it.
    """
    import torch

    from attnrl.evaluation import evaluate_accuracy, evaluate_pass_at_k
    from attnrl.rewards import TASKS, make_examples

    check_task(task)
    for adapter in adapters:
        check_adapter(adapter, model)
    if not adapters and not include_base:
        raise UsageError("nothing to evaluate: give --adapter DIR or drop --no-base")
    ks = sorted(set(pass_k))
    samples = samples or max(ks, default=0)
    if ks and (min(ks) < 1 or samples < max(ks)):
        raise UsageError(f"--pass-k {ks} needs 1 <= k <= --samples ({samples}); raise --samples")
    examples = make_examples(task, "test", n, seed=task_seed)
    is_correct = TASKS[task].is_correct
    rows = []
    for adapter in ([None] if include_base else []) + list(adapters):
        policy, tokenizer = load_policy(model, adapter)
        name = f"base {model}" if adapter is None else str(adapter)
        greedy = evaluate_accuracy(policy, tokenizer, examples, is_correct, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, desc=f"greedy: {name}")
        row = {"name": name, "adapter": None if adapter is None else str(adapter), "accuracy": greedy.accuracy,
               "correct": greedy.correct, "total": greedy.total}
        if ks:
            torch.manual_seed(seed)
            sampled = evaluate_pass_at_k(policy, tokenizer, examples, is_correct, ks=ks, samples=samples,
                                         temperature=temperature, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, desc=f"sampling: {name}")
            row["pass_at_k"] = {str(k): v for k, v in sampled.pass_at_k.items()}
        rows.append(row)
    settings = {"ks": ks, "samples": samples, "temperature": temperature, "seed": seed} if ks else None
    result = {"model": model, "task": task, "n": len(examples), "task_seed": task_seed,
              "max_new_tokens": max_new_tokens, "pass_k": settings, "rows": rows}
    print(comparison_table(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def comparison_table(result: dict) -> str:
    """Markdown: one row per model (greedy accuracy, then pass@k columns)."""
    settings = result["pass_k"]
    ks = settings["ks"] if settings else []
    head = ["model", "greedy accuracy"] + [
        f"pass@{k} ({settings['samples']} samples, T={settings['temperature']})" for k in ks
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["name"], f"{100 * row['accuracy']:.1f}% ({row['correct']}/{row['total']})"]
        cells += [f"{100 * row['pass_at_k'][str(k)]:.1f}%" for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    return f"{result['n']} held-out {result['task']} problems\n\n" + "\n".join(lines)


# ---------------------------------------------------------------- analyze


def analyze(out: str | Path, model: str = DEFAULT_MODEL, adapter: str | Path | None = None, *,
            prompt: str | None = None, rollouts: str | Path | None = None, index: int = 0,
            max_new_tokens: int = 64):
    """Attention rhythm of one response: generated greedily for ``prompt``, or line ``index`` of ``rollouts``.

    Writes to ``out``: rhythm.png (WAAD/FAI curves), heads.png (local/global head map), rhythm.html (tokens
    coloured by role, both figures embedded) and analysis.json. Returns the RhythmAnalysis.
    """
    from attnrl.credit.config import CreditConfig
    from attnrl.evaluation import generate_completions
    from attnrl.report import analyze_response, plot_rhythm

    if (prompt is None) == (rollouts is None):
        raise UsageError("give exactly one of --prompt TEXT or --rollouts FILE.jsonl")
    if adapter is not None:
        check_adapter(adapter, model)
    if rollouts is not None:
        messages, completion = read_rollout(rollouts, index)
    policy, tokenizer = load_policy(model, adapter)
    if prompt is not None:
        messages = [{"role": "user", "content": prompt}]
        completion = generate_completions(policy, tokenizer, [messages], max_new_tokens=max_new_tokens)[0]
        if not completion:
            raise UsageError("the model's greedy response to --prompt is empty: nothing to analyse; try another "
                             "prompt or --rollouts")
    # docs/methods.md §1.2: for analysis the FAI horizon is H_lo = 1 to the end of the sequence
    config = CreditConfig(credit_strategy="coupled", credit_fai_lo=1, credit_fai_hi=None)
    analysis = analyze_response(policy, tokenizer, messages, completion, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = messages[-1]["content"] if isinstance(messages[-1]["content"], str) else "attention rhythm"
    plot_rhythm(analysis, out / "rhythm.png", title=title)
    plot_head_map(analysis, out / "heads.png", config.credit_head_fraction)
    (out / "rhythm.html").write_text(analysis_page(analysis, title, [out / "rhythm.png", out / "heads.png"]))
    fai = [None if math.isnan(v) else v for v in analysis.fai]  # NaN: undefined (end of the response)
    record = {"prompt": messages, "completion": completion, **asdict(analysis), "fai": fai}
    (out / "analysis.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return analysis


def read_rollout(path: str | Path, index: int) -> tuple[list[dict], str]:
    """(conversational prompt, completion text) of line ``index`` of a JSONL file with prompt/completion fields."""
    from attnrl.rewards import completion_text

    if not Path(path).is_file():
        raise FileNotFoundError(f"rollouts file {path} does not exist; e.g. RUN_DIR/report/eval_after.jsonl")
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not 0 <= index < len(lines):
        raise UsageError(f"{path} holds {len(lines)} rollouts; --index {index} is out of range")
    row = json.loads(lines[index])
    if "prompt" not in row or "completion" not in row:
        raise UsageError(f"line {index} of {path} lacks a 'prompt' or 'completion' field (the layout of "
                         "RUN_DIR/report/eval_after.jsonl)")
    prompt = row["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return messages, completion_text(row["completion"])


def plot_head_map(a, path: str | Path, fraction: float) -> None:
    """PNG heatmap of mean attention distance (n_layers, H), local heads outlined blue (L), global red (G)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Patch, Rectangle

    from attnrl.credit.heads import HeadProfile

    profile = HeadProfile.from_distances(a.layers, torch.tensor(a.head_distances), fraction)
    n_layers, n_heads = profile.distances.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * n_heads + 2.5), max(2.5, 0.45 * n_layers + 1.5)))
    image = ax.imshow(profile.distances.numpy(), cmap="viridis", aspect="auto")
    for i in range(n_layers):
        for j in range(n_heads):
            kind = "L" if profile.local[i, j] else "G" if profile.global_[i, j] else None
            if kind:
                colour = "#1d6fa5" if kind == "L" else "#d62828"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=2.5))
                ax.text(j, i, kind, ha="center", va="center", color="white", fontsize=8, weight="bold")
    ax.set_yticks(range(n_layers), [f"layer {layer}" for layer in profile.layers])
    ax.set_xticks(range(n_heads))
    ax.set_xlabel("head")
    fig.colorbar(image, ax=ax, label="mean attention distance (tokens)")
    ax.legend(handles=[Patch(fill=False, edgecolor="#1d6fa5", label=f"local (bottom {fraction:.0%})"),
                       Patch(fill=False, edgecolor="#d62828", label=f"global (top {fraction:.0%})")],
              loc="upper center", bbox_to_anchor=(0.5, -0.25 if n_layers > 3 else -0.45), ncol=2, fontsize=8)
    ax.set_title("local / global heads")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def analysis_page(a, title: str, figures: Sequence[Path]) -> str:
    """attnrl.report.rhythm_html with the figures embedded as data URIs (one self-contained file)."""
    from attnrl.report import rhythm_html

    images = "".join(
        f'<p><img alt="{p.stem}" style="max-width:100%" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></p>' for p in figures
    )
    return rhythm_html(a, title=title).replace("</body>", images + "</body>")


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnrl", allow_abbrev=False,
                                     description="Train, evaluate, analyse and publish attention-aware RL runs.")
    parser.add_argument("--traceback", action="store_true", help="Show the full traceback of an error.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", allow_abbrev=False, help="Train from a YAML config (any field: --field value).",
                       description="Overrides (--field value, after CONFIG) set any field of the recipe's job and "
                       "trainer config dataclasses, e.g. --max_steps 3 --credit_strategy local_chunk.")
    p.add_argument("config", help="YAML file, e.g. examples/configs/grpo_arithmetic_coupled.yaml")
    p.add_argument("--recipe", help=f"One of {sorted(RECIPES)} (default: the YAML's `recipe:`, else grpo).")
    p.add_argument("--ray-address", "--ray_address", dest="ray_address", help="Ray cluster address (distributed).")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, help="Ray workers (distributed).")

    p = sub.add_parser("eval", allow_abbrev=False, help="Held-out greedy accuracy and pass@k; comparison table.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"Base model: {DEFAULT_MODEL!r}, a path or Hub id.")
    p.add_argument("--adapter", action="append", default=[], help="peft adapter folder (repeatable).")
    p.add_argument("--no-base", dest="include_base", action="store_false", help="Leave out the base model row.")
    p.add_argument("--task", required=True, help="Task name, e.g. arithmetic or countdown.")
    p.add_argument("--n", type=int, default=200, help="Held-out problems.")
    p.add_argument("--pass-k", type=int, nargs="+", default=[], help="k values of pass@k (sampled).")
    p.add_argument("--samples", type=int, help="Samples per problem for pass@k (default: the largest k).")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature for pass@k.")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=50, help="Sequences per generation batch.")
    p.add_argument("--task-seed", type=int, default=1, help="Problem generator seed (1: a default run's held-out set).")
    p.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    p.add_argument("--out", help="Write the results as JSON here.")

    p = sub.add_parser("analyze", allow_abbrev=False, help="Attention rhythm of a response: PNGs + HTML page.")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--adapter")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="User message; the response is generated greedily.")
    source.add_argument("--rollouts", help="JSONL with prompt/completion fields (e.g. report/eval_after.jsonl).")
    p.add_argument("--index", type=int, default=0, help="Line of --rollouts to analyse.")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", required=True, help="Output folder.")

    p = sub.add_parser("publish", allow_abbrev=False, help="Adapter + model card + checksums; optional Hub upload.")
    p.add_argument("run_dir", help="output_dir of a training run (holds adapter/ and report/); never modified.")
    p.add_argument("--out", required=True, help="New folder to write.")
    p.add_argument("--push-to-hub", metavar="REPO", help="Upload to this Hub model repo (USER/NAME).")
    p.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    return parser


def run_command(ns: argparse.Namespace, overrides: list[str]) -> None:
    if ns.command == "train":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        results = train(ns.config, overrides, recipe=ns.recipe, ray_address=ns.ray_address,
                        num_workers=ns.num_workers)
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (dict, list))}, indent=2))
    elif ns.command == "eval":
        evaluate(ns.model, ns.task, ns.adapter, include_base=ns.include_base, n=ns.n, pass_k=ns.pass_k,
                 samples=ns.samples, temperature=ns.temperature, max_new_tokens=ns.max_new_tokens,
                 batch_size=ns.batch_size, task_seed=ns.task_seed, seed=ns.seed, out=ns.out)
    elif ns.command == "analyze":
        analyze(ns.out, ns.model, ns.adapter, prompt=ns.prompt, rollouts=ns.rollouts, index=ns.index,
                max_new_tokens=ns.max_new_tokens)
        print(f"wrote {Path(ns.out) / 'rhythm.html'}")
    else:
        print(f"wrote {publish(ns.run_dir, ns.out, push_to_hub=ns.push_to_hub, private=ns.private)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a usage error, printed without traceback)."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.command != "train":
        parser.error(f"unrecognized arguments for {ns.command}: {' '.join(extra)}")
    try:
        run_command(ns, extra)
    except (ValueError, OSError) as e:
        if ns.traceback:
            raise
        print(f"attnrl {ns.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
