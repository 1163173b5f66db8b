"""The ``attnrl`` command: train, eval, analyze, premise, publish.

Every sub-command is a plain function (:func:`train`, :func:`evaluate`, :func:`analyze` here,
:func:`attnrl.publish.publish`); :func:`main` parses arguments and prints errors. Usage::

    attnrl train [CONFIG.yaml] [--recipe grpo|ppo|avar|site] [--field value ...]
    attnrl eval --task T [--model M] [--adapter DIR ...] [--n 200] [--pass_k 1 4 --samples 8 --temperature 1.0]
    attnrl analyze --out DIR [--model M] [--adapter DIR] (--prompt TEXT | --rollouts FILE.jsonl [--index I])
    attnrl premise --out DIR [--model M] [--adapter DIR] [--task T] [--problems 120] [--k 4] [--regenerate]
    attnrl publish RUN_DIR --out DIR [--push_to_hub USER/REPO]

``train`` runs the recipe's own ``main`` (:mod:`attnrl.recipes`): the recipe is ``--recipe``, else the YAML's
``recipe:`` key, else grpo; every field of the recipe's dataclasses (job, trainer config, and for grpo/ppo
RayArguments: ``--num_workers 2`` trains on Ray) is a YAML key and a flag. The other commands' options are the
fields of :class:`EvalArguments`, :class:`AnalyzeArguments`, :class:`PremiseArguments` and :class:`PublishArguments`,
parsed the same way (``--config FILE.yaml``, ``--max_new_tokens`` or ``--max-new-tokens``). ``attnrl --help`` loads neither torch nor
trl; ``attnrl COMMAND --help`` lists the command's fields.

Mistakes that can be seen before loading a model (an unknown config field, task or recipe, a missing adapter or
one trained for another base model, a missing optional dependency) raise :class:`UsageError` (or
``MissingExtra``) naming the problem and the fix; the command prints it on one line and exits with status 2. A
failure once training runs is not a usage error: ``train`` prints its traceback and a one-line hint and exits with
status 1, keeping whatever the run saved (:mod:`attnrl.recipes.command`). Tasks, credit strategies, rewards and
recipes are looked up in their registries (:mod:`attnrl.registry`); tasks, strategies and rewards also take an
import path ``module:function`` of your own code. Figures are drawn by :mod:`attnrl.report`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attnrl.models.default import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model_path
from attnrl.recipes import DEFAULT_RECIPE, RECIPES, recipe_module
from attnrl.recipes.command import RESOLVED_CONFIG, run_recipe  # noqa: F401  (RESOLVED_CONFIG: re-exported)
from attnrl.recipes.config import ConfigError, MissingExtra, config_path, load_yaml_config, parse_config

UsageError = ConfigError  # a mistake in the command's arguments or inputs; the message says what to change

# ---------------------------------------------------------------- train


def train(config: str | Path | None = None, overrides: Sequence[str] = (), *, recipe: str | None = None) -> dict:
    """Run a recipe from a YAML config with ``--field value`` overrides (the recipe's make_parser/run, as
    ``attnrl train`` and the example scripts do); returns the recipe's results dictionary.

    The recipe is ``recipe``, else the YAML's ``recipe:`` key, else grpo. Ray fields (``--num_workers 2``,
    ``--ray_address auto``) send a grpo/ppo job to the Ray launcher. Raises UsageError before any model work on
    a config mistake."""
    argv = (["--config", str(config)] if config is not None else []) + list(overrides)
    name = recipe or recipe_of(argv)
    return run_recipe(recipe_module(name), argv, prog="attnrl train")


def recipe_of(argv: Sequence[str]) -> str:
    """The recipe a config names (its ``recipe:`` key), else the default one."""
    path = config_path(argv)
    return (load_yaml_config(path).get("recipe") if path else None) or DEFAULT_RECIPE


def pick_recipe(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(recipe name, the other arguments): ``--recipe NAME`` / ``--recipe=NAME``, else :func:`recipe_of`."""
    rest, name = [], None
    tokens = iter(argv)
    for token in tokens:
        if token == "--recipe":
            name = next(tokens, None)
            if name is None:
                raise UsageError(f"--recipe needs a name: {RECIPES.choices_text()}")
        elif token.startswith("--recipe="):
            name = token.partition("=")[2]
        else:
            rest.append(token)
    return name or recipe_of(rest), rest


# ---------------------------------------------------------------- model + adapter checks


def check_task(task: str) -> None:
    """``task`` is a registered task or the import path of one (UsageError saying why not)."""
    from attnrl.registry import RegistryError
    from attnrl.rewards import TASKS

    try:
        TASKS.get(task)
    except RegistryError as e:
        raise UsageError(str(e)) from e


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
    is_correct = TASKS.get(task).is_correct
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
    from attnrl.report import analysis_page, analyze_response, plot_head_map, plot_rhythm

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


# ---------------------------------------------------------------- eval / analyze / publish arguments


@dataclass
class EvalArguments:
    """``attnrl eval``: greedy accuracy (and sampled pass@k) of the base model and adapters on held-out problems."""

    task: str = field(metadata={"help": "A registered task (attnrl.rewards.TASKS, e.g. arithmetic) or the import "
                                        "path of a Task, 'module:TASK'."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": f"Base model: {DEFAULT_MODEL!r}, a path or Hub id."})
    adapter: list[str] = field(default_factory=list, metadata={
        "help": "peft adapter folder (repeatable: --adapter A --adapter B, or --adapter A B).", "action": "extend"})
    base: bool = field(default=True, metadata={"help": "Include the base model's row (--no_base leaves it out)."})
    n: int = field(default=200, metadata={"help": "Held-out problems."})
    pass_k: list[int] = field(default_factory=list, metadata={"help": "k values of pass@k (sampled)."})
    samples: int | None = field(default=None, metadata={"help": "Samples per problem for pass@k (default: the "
                                                                "largest k)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for pass@k."})
    max_new_tokens: int = field(default=24, metadata={"help": "Generation budget per problem (tokens)."})
    batch_size: int = field(default=50, metadata={"help": "Sequences per generation batch."})
    task_seed: int = field(default=1, metadata={"help": "Problem generator seed (1: a default run's held-out set)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    out: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})


@dataclass
class AnalyzeArguments:
    """``attnrl analyze``: the attention rhythm of one response (PNGs, HTML page, JSON)."""

    out: str = field(metadata={"help": "Output folder."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": f"Base model: {DEFAULT_MODEL!r}, a path or Hub id."})
    adapter: str | None = field(default=None, metadata={"help": "peft adapter folder."})
    prompt: str | None = field(default=None, metadata={"help": "User message; the response is generated greedily."})
    rollouts: str | None = field(default=None, metadata={
        "help": "JSONL with prompt/completion fields (e.g. RUN_DIR/report/eval_after.jsonl)."})
    index: int = field(default=0, metadata={"help": "Line of --rollouts to analyse."})
    max_new_tokens: int = field(default=64, metadata={"help": "Generation budget with --prompt (tokens)."})


@dataclass
class PremiseArguments:
    """``attnrl premise --out DIR``: the causal premise test (attnrl.analysis.causal) on held-out problems of a task:
    do the tokens the credit rules amplify steer the final answer more than random tokens? Writes <name>.json/.md/.png
    to --out."""

    out: str = field(metadata={"help": "Output folder."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": f"Base model: {DEFAULT_MODEL!r}, a path or Hub id."})
    adapter: str | None = field(default=None, metadata={"help": "peft adapter folder."})
    task: str = field(default="arithmetic", metadata={
        "help": "Any registered task (its held-out split); arithmetic and countdown get a chain-of-thought "
                "instruction (attnrl.analysis.causal.premise_task)."})
    problems: int = field(default=120, metadata={"help": "Held-out problems."})
    k: int = field(default=4, metadata={"help": "Interventions per selector per response."})
    terms: int = field(default=2, metadata={"help": "arithmetic: numbers to add (2 or 3)."})
    answer_span: str | None = field(default=None, metadata={
        "help": "Where the final answer is: 'final' (last \\boxed{} or number), 'last_line' or 'last_step' (last "
                "'a op b=r'); default: the task's."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the responses (0 = greedy)."})
    max_new_tokens: int = field(default=224, metadata={"help": "Response budget (tokens)."})
    regenerate: bool = field(default=False, metadata={
        "help": "Also regenerate after each intervention (outcome flips; about 15x slower)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling and position draws."})
    name: str = field(default="premise", metadata={"help": "Output file stem."})


@dataclass
class PublishArguments:
    """``attnrl publish RUN_DIR --out DIR``: adapter + model card + checksums, optional Hub upload."""

    run_dir: str = field(metadata={"help": "output_dir of a training run (holds adapter/ and report/); never "
                                           "modified. Also the first positional argument."})
    out: str = field(metadata={"help": "New folder to write."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload to this Hub model repo (USER/NAME)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


def run_eval(a: EvalArguments) -> None:
    evaluate(a.model, a.task, a.adapter, include_base=a.base, n=a.n, pass_k=a.pass_k, samples=a.samples,
             temperature=a.temperature, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
             task_seed=a.task_seed, seed=a.seed, out=a.out)


def run_premise(a: PremiseArguments) -> None:
    """``attnrl premise``: the premise test of docs/methods.md §1 on the model (and adapter)."""
    from attnrl.analysis.causal import CausalConfig, format_table, run_causal_analysis

    config = CausalConfig(interventions_per_selector=a.k, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                          regenerate=a.regenerate, seed=a.seed)
    config.validate()  # before the model loads
    check_task(a.task)
    if a.adapter is not None:
        check_adapter(a.adapter, a.model)
    policy, tokenizer = load_policy(a.model, a.adapter)
    result, paths = run_causal_analysis(policy, tokenizer, a.out, task=a.task, problems=a.problems, name=a.name,
                                        config=config, terms=a.terms, model_name=a.model, answer_span=a.answer_span,
                                        meta={"model": a.model, "adapter": a.adapter})
    print(format_table(result.summary))
    print(f"wrote {paths.get('json', Path(a.out))}")


def run_analyze(a: AnalyzeArguments) -> None:
    analyze(a.out, a.model, a.adapter, prompt=a.prompt, rollouts=a.rollouts, index=a.index,
            max_new_tokens=a.max_new_tokens)
    print(f"wrote {Path(a.out) / 'rhythm.html'}")


def run_publish(a: PublishArguments) -> None:
    from attnrl.publish import publish

    print(f"wrote {publish(a.run_dir, a.out, push_to_hub=a.push_to_hub, private=a.private)}")


# ---------------------------------------------------------------- command line

# command -> (one-line help, arguments dataclass or None for train, function running it)
COMMANDS = {
    "train": (f"Train a recipe ({'|'.join(RECIPES)}) from a YAML config; any field: --field value.", None, None),
    "eval": ("Held-out greedy accuracy and pass@k; comparison table.", EvalArguments, run_eval),
    "analyze": ("Attention rhythm of a response: PNGs + HTML page.", AnalyzeArguments, run_analyze),
    "premise": ("Causal premise test: do amplified tokens steer the answer?", PremiseArguments, run_premise),
    "publish": ("Adapter + model card + checksums; optional Hub upload.", PublishArguments, run_publish),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the command's name and --traceback; each command parses its own arguments."""
    parser = argparse.ArgumentParser(
        prog="attnrl", allow_abbrev=False, description="Train, evaluate, analyse and publish attention-aware RL runs.",
        epilog="`attnrl COMMAND --help` lists the command's fields; `attnrl train --recipe NAME --help` a "
        f"recipe's (recipes: {', '.join(RECIPES)}).")
    parser.add_argument("--traceback", action="store_true", help="Show the full traceback of an error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, _, _) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def command_arguments(name: str, argv: Sequence[str]):
    """The command's arguments dataclass parsed from ``argv`` (a YAML ``--config`` too); UsageError on a mistake."""
    from transformers import HfArgumentParser

    _, dataclass_type, _ = COMMANDS[name]
    argv = list(argv)
    if name == "publish" and argv and not argv[0].startswith("-"):
        argv = ["--run_dir", *argv]  # attnrl publish RUN_DIR --out DIR
    parser = HfArgumentParser((dataclass_type,), prog=f"attnrl {name}", allow_abbrev=False,
                              description=dataclass_type.__doc__.replace("``", "`"))
    (args,) = parse_config(parser, argv, exit_on_error=False)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a usage error, printed on one line without traceback)."""
    ns, rest = build_parser().parse_known_args(argv)
    show_traceback = ns.traceback or "--traceback" in rest
    rest = [token for token in rest if token != "--traceback"]
    prog = f"attnrl {ns.command}"
    try:
        if ns.command == "train":
            name, rest = pick_recipe(rest)
            return recipe_module(name).main(rest, prog=prog, traceback=show_traceback)
        COMMANDS[ns.command][2](command_arguments(ns.command, rest))
    except (ValueError, OSError, MissingExtra) as e:
        if show_traceback:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
