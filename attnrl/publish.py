"""Package a training run for sharing: the peft adapter, a model card, figures, an lm-eval task and a sha256 manifest.

The adapter loads anywhere: its ``adapter_config.json`` names the base model as the user gave it (a Hub id; attnrl's
embedded default becomes its Hub id, ``HuggingFaceTB/SmolLM2-135M-Instruct``), not the training machine's cache
path. ``lm_eval_task/`` holds an lm-evaluation-harness task over the run's held-out problems, scored with attnrl's
checker (:mod:`attnrl.lm_eval_task`); the card gives the ``lm-eval`` command. Adapters that vLLM's LoRA loader
refuses (``modules_to_save``, DoRA, a bias) are flagged with a warning and in the card.

``publish(RUN_DIR, OUT)`` reads RUN_DIR (the ``output_dir`` of ``attnrl train``: ``adapter/`` and ``report/``) and
never writes to it. OUT is assembled in a temporary folder next to it and moved into place only when complete, so
a failure leaves neither a half-written OUT nor a changed RUN_DIR.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import yaml

import attnrl.lm_eval_task
from attnrl.models.default import DEFAULT_MODEL
from attnrl.utils.files import sha256_file

logger = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"
# the run's adapter folder minus the peft auto-card (replaced by ours) and the pickled TrainingArguments (unsafe to
# load for whoever downloads it; the configuration is in the card instead)
_ADAPTER_EXCLUDE = ("README.md", "training_args.bin")
_REPORT_FILES = ("results.json", "reward_curve.png", "rhythm.png")
_DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LM_EVAL_DIR = "lm_eval_task"  # not "lm_eval": a folder of that name in the working directory could shadow lm-eval
_LM_EVAL_HOOKS = "attnrl_lm_eval.py"


def publish(run_dir: str | Path, out: str | Path, push_to_hub: str | None = None, private: bool = False) -> Path:
    """Write the shareable folder ``out`` from ``run_dir`` (optionally upload it as Hub model repo ``push_to_hub``).

    Returns ``out``. Raises FileNotFoundError when RUN_DIR holds no adapter, FileExistsError when OUT is in use.
    """
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    adapter_dir = check_run_dir(run_dir)
    check_destination(run_dir, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; OUT is meant to be shared
    try:
        assemble(run_dir, adapter_dir, staging)
        os.rename(staging, out)  # same file system: atomic; replaces OUT only if it is an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("published %s -> %s", run_dir, out)
    if push_to_hub:
        upload(out, push_to_hub, private)
    return out


def check_run_dir(run_dir: Path) -> Path:
    """RUN_DIR/adapter, after checking it holds a peft adapter."""
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} holds no peft adapter (adapter_config.json); RUN_DIR must be the output_dir of "
            "`attnrl train` (a LoRA run, lora_r > 0)"
        )
    return adapter_dir


def check_destination(run_dir: Path, out: Path) -> None:
    """OUT must be new (or an empty folder) and lie outside RUN_DIR (and RUN_DIR outside OUT)."""
    if out == run_dir or run_dir in out.parents or out in run_dir.parents:
        raise ValueError(f"--out {out} overlaps RUN_DIR {run_dir}; choose a folder outside the run (RUN_DIR is "
                         "never modified)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} already exists and is not an empty folder; choose a new path or remove it")


def assemble(run_dir: Path, adapter_dir: Path, dest: Path) -> None:
    """Adapter files, report figures + results, README.md (card) and the manifest, all written into ``dest``."""
    shutil.copytree(adapter_dir, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_ADAPTER_EXCLUDE))
    for name in _REPORT_FILES:
        if (run_dir / "report" / name).is_file():
            shutil.copy2(run_dir / "report" / name, dest / name)
    results = _read_json(run_dir / "report" / "results.json")
    config = training_config(run_dir, results)
    adapter_config = _read_json(adapter_dir / "adapter_config.json")
    adapter_config["base_model_name_or_path"] = portable_base_model(results, config, adapter_config)
    (dest / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    for problem in vllm_incompatibilities(adapter_config):
        logger.warning("vLLM's LoRA loader will refuse this adapter: %s", problem)
    task_name = write_lm_eval_task(run_dir, results, config, dest / LM_EVAL_DIR)
    (dest / "README.md").write_text(model_card(results, adapter_config, config, dest, task_name))
    write_manifest(dest)


def portable_base_model(results: dict, config: dict, adapter_config: dict) -> str:
    """``base_model_name_or_path`` for the published config: the base as the user named it (results.json's
    ``model``, else the config's ``model_name_or_path``), attnrl's embedded default as its Hub id; the recorded
    value (the training machine's path) only when the run names no model."""
    name = results.get("model") or config.get("model_name_or_path")
    if not name:
        return adapter_config.get("base_model_name_or_path") or ""
    return _DEFAULT_MODEL_HUB_ID if name == DEFAULT_MODEL else str(name)


def vllm_incompatibilities(adapter_config: dict) -> list[str]:
    """What in a peft LoRA config vLLM's LoRA loader refuses (one sentence each; empty: vLLM can serve it)."""
    problems = []
    if adapter_config.get("modules_to_save"):
        problems.append(f"modules_to_save={adapter_config['modules_to_save']} (fully trained modules besides LoRA)")
    if adapter_config.get("use_dora"):
        problems.append("use_dora=true (DoRA)")
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"bias={adapter_config['bias']!r} (trained biases; vLLM needs bias='none')")
    return problems


def held_out_rows(run_dir: Path, results: dict, config: dict) -> list[dict]:
    """The run's held-out problems with their gold columns: report/eval_after.jsonl, else the generator's split
    (seed task_seed + 1, as ``attnrl train``), else nothing."""
    records = run_dir / "report" / "eval_after.jsonl"
    if records.is_file():
        rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
        return [{k: v for k, v in row.items() if k not in ("completion", "correct")} for row in rows]
    task, size = results.get("task") or config.get("task"), results.get("eval_size") or config.get("eval_size")
    if not task or not size:
        return []
    from attnrl.rewards import TASKS, make_examples

    if task not in TASKS:
        return []
    return make_examples(task, "test", int(size), seed=int(config.get("task_seed", 0)) + 1)


def write_lm_eval_task(run_dir: Path, results: dict, config: dict, folder: Path) -> str | None:
    """``folder``/TASK.yaml + TASK.jsonl + the hooks (:mod:`attnrl.lm_eval_task`): an lm-evaluation-harness task
    over the run's held-out set, generating as ``attnrl eval`` does (greedy, the run's eval_max_new_tokens, chat
    template) and scoring with attnrl's checker. Returns the task name, None when the run has no held-out set."""
    rows = held_out_rows(run_dir, results, config)
    task = results.get("task") or config.get("task")
    if not rows or not all(isinstance(row.get("prompt"), list) for row in rows):
        logger.info("no text held-out set in %s: no lm-eval task written", run_dir)
        return None
    name = f"attnrl_{task}_heldout"
    folder.mkdir()
    lines = [json.dumps({**row, "task": task, "question": row["prompt"][-1]["content"],
                         "gold": str(row.get("answer", row.get("target", "")))}) for row in rows]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copyfile(attnrl.lm_eval_task.__file__, folder / _LM_EVAL_HOOKS)
    hooks = Path(_LM_EVAL_HOOKS).stem
    spec = {
        "task": name,
        "custom_dataset": f"!function {hooks}.load_held_out",
        "dataset_kwargs": {"data_file": f"{name}.jsonl"},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "question",
        "doc_to_target": "gold",
        "num_fewshot": 0,
        "generation_kwargs": {"until": [], "do_sample": False,
                              "max_gen_toks": int(config.get("eval_max_new_tokens", 24))},
        "process_results": f"!function {hooks}.process_results",
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "attnrl publish", "task": task, "problems": len(rows)},
    }
    text = yaml.safe_dump(spec, sort_keys=False)
    text = text.replace("'!function ", "!function ").replace(".load_held_out'", ".load_held_out")
    text = text.replace(".process_results'", ".process_results")
    (folder / f"{name}.yaml").write_text(text)
    return name


def training_config(run_dir: Path, results: dict) -> dict:
    """The run's configuration: RUN_DIR/train_config.yaml (written by ``attnrl train``), else results.json's job."""
    path = run_dir / "train_config.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text()) or {}
    config = dict(results.get("job", {}))
    if "credit_strategy" in results:
        config["credit_strategy"] = results["credit_strategy"]
    return config


def model_card(results: dict, adapter_config: dict, config: dict, dest: Path, lm_eval_task: str | None = None) -> str:
    """README.md: Hub metadata, what was trained on what, evaluation table, usage (peft, attnrl eval, lm-eval),
    vLLM notes, figures present in ``dest``, config."""
    base_path = adapter_config.get("base_model_name_or_path") or "?"
    base_name = results.get("model", base_path)
    hub_id = base_model_hub_id(base_name)
    strategy = results.get("credit_strategy", config.get("credit_strategy", "?"))
    task = results.get("task", config.get("task", "?"))
    metadata = {"library_name": "peft", "tags": ["attnrl", "grpo", "lora", f"credit-{strategy}", task]}
    if hub_id:
        metadata["base_model"] = hub_id
    sections = [
        "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---",
        f"# AttnGRPO ({strategy} credit) LoRA adapter for {base_name}",
        f"Trained with attnrl (GRPO with attention-aware credit assignment, strategy "
        f"`{strategy}`) on the `{task}` task. Base model: `{base_name}`"
        + (f" (`base_model_name_or_path`: `{base_path}`)" if base_path != base_name else "") + ".",
    ]
    if base_name == DEFAULT_MODEL:
        sections.append(f"The base is attnrl's embedded default: {_DEFAULT_MODEL_HUB_ID} dequantised from its Q4_1 "
                        "GGUF (`smollm2-135m-instruct` in attnrl); on the original weights results may differ. "
                        f"`adapter_config.json` names the Hub id `{_DEFAULT_MODEL_HUB_ID}`; to apply the adapter to "
                        "the dequantised weights it was trained on, load the base with attnrl (below).")
    sections += [evaluation_section(results), usage_section(base_name, task, config, hub_id)]
    if lm_eval_task:
        sections.append(lm_eval_section(base_name, hub_id, lm_eval_task, config))
    sections.append(vllm_section(adapter_config))
    for name, caption in (("reward_curve.png", "Training curve (mean reward per step)"),
                          ("rhythm.png", "Attention rhythm of a held-out response (preplan and anchor tokens)")):
        if (dest / name).is_file():
            sections.append(f"## {caption}\n\n![{caption}]({name})")
    sections.append("## Configuration\n\n```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```")
    sections.append(f"## Files\n\n`{MANIFEST}` lists the sha256 of every file; check with `sha256sum -c {MANIFEST}`.")
    return "\n\n".join(sections) + "\n"


def base_model_hub_id(name: str) -> str | None:
    """The Hub id for the card's ``base_model`` field, or None for a local path."""
    if name == DEFAULT_MODEL:
        return _DEFAULT_MODEL_HUB_ID
    if Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


def evaluation_section(results: dict) -> str:
    """Markdown table of held-out greedy accuracy before/after training (results.json), or a note without it."""
    if "accuracy_after" not in results:
        return "## Evaluation\n\nNo evaluation results (report/results.json) were found in the run."
    before = results.get("accuracy_before")
    rows = [
        "| model | held-out accuracy (greedy) |",
        "|---|---|",
        f"| base | {'—' if before is None else f'{100 * before:.1f}%'} |",
        f"| + this adapter ({results.get('train_steps', '?')} steps) | {100 * results['accuracy_after']:.1f}% |",
    ]
    return (f"## Evaluation\n\n{results.get('eval_size', '?')} held-out `{results.get('task')}` problems, exact "
            "checker.\n\n" + "\n".join(rows))


def usage_section(base_name: str, task: str, config: dict | None = None, hub_id: str | None = None) -> str:
    config = config or {}
    size = config.get("eval_size")
    eval_flags = (f" --n {size} --task_seed {int(config.get('task_seed', 0)) + 1} --max_new_tokens "
                  f"{config.get('eval_max_new_tokens', 24)}") if size else ""
    transformers_route = (
        "\n\nWithout attnrl (base from the Hub):\n\n```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("<this folder or repo id>")\n```'
    ) if hub_id else ""
    return (
        "## Usage\n\n```python\nfrom peft import PeftModel\nfrom attnrl.models import load_model_and_tokenizer\n\n"
        f'model, tokenizer = load_model_and_tokenizer("{base_name}")\n'
        'model = PeftModel.from_pretrained(model, "<this folder or repo id>")\n```'
        + transformers_route + "\n\n"
        f"Evaluate it on the run's held-out problems: `attnrl eval --model {base_name} --adapter <this folder> "
        f"--task {task}{eval_flags}`"
    )


def lm_eval_section(base_name: str, hub_id: str | None, task_name: str, config: dict) -> str:
    """The exact lm-evaluation-harness command for the task in ``lm_eval_task/`` (any working directory)."""
    if base_name == DEFAULT_MODEL:
        base = "$(python -c 'from attnrl.models.default import resolve_model_path as r; print(r(\"smollm2-135m-instruct\"))')"
        note = (f" `pretrained=` is the dequantised base the adapter was trained on (attnrl's cache); "
                f"`pretrained={hub_id}` evaluates it on the original weights instead.")
    else:
        base, note = base_name, ""
    command = (f"lm-eval run --model hf --model_args pretrained={base},peft=<this folder> "
               f"--include_path <this folder>/{LM_EVAL_DIR} --tasks {task_name} --apply_chat_template "
               "--batch_size 1")  # batch 1: no padding, the generations of `attnrl eval --batch_size 1`
    return (
        "## lm-evaluation-harness\n\n"
        f"`{LM_EVAL_DIR}/` holds the task `{task_name}`: the run's held-out problems, greedy generation of at most "
        f"{config.get('eval_max_new_tokens', 24)} tokens with the chat template, scored by attnrl's exact checker "
        "(`exact_match`, the accuracy `attnrl eval` reports). It resolves its data next to its YAML, so it works "
        "from any folder (`pip install 'attnrl[eval]'` or `pip install lm-eval==0.4.13`):\n\n"
        f"```bash\n{command}\n```\n\n" + note.strip()
    ).rstrip() + "\n"


def vllm_section(adapter_config: dict) -> str:
    problems = vllm_incompatibilities(adapter_config)
    if problems:
        return ("## vLLM\n\nvLLM's LoRA loader refuses this adapter: " + "; ".join(problems) + ". Serve it with "
                "transformers + peft, or merge it into the base (`merge_and_unload()`).")
    return (f"## vLLM\n\nServe it with `vllm serve <base> --enable-lora --max-lora-rank "
            f"{adapter_config.get('r', '?')} --lora-modules attnrl=<this folder>`.")


def write_manifest(folder: Path) -> None:
    """``SHA256SUMS`` (``sha256sum`` format, sorted relative paths) over every other file under ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")




def upload(folder: Path, repo_id: str, private: bool) -> None:
    """Create the Hub model repo ``repo_id`` (if needed) and upload ``folder`` to it (token: HF_TOKEN / login)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message="Upload AttnGRPO adapter published with attnrl")
    logger.info("uploaded %s to https://huggingface.co/%s", folder, repo_id)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
