"""Package a training run for sharing: the peft adapter, a model card, figures and a sha256 manifest.

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

from attnrl.models.default import DEFAULT_MODEL
from attnrl.utils.files import sha256_file

logger = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"
# the run's adapter folder minus the peft auto-card (replaced by ours) and the pickled TrainingArguments (unsafe to
# load for whoever downloads it; the configuration is in the card instead)
_ADAPTER_EXCLUDE = ("README.md", "training_args.bin")
_REPORT_FILES = ("results.json", "reward_curve.png", "rhythm.png")
_DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


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
    adapter_config = _read_json(adapter_dir / "adapter_config.json")
    (dest / "README.md").write_text(model_card(results, adapter_config, training_config(run_dir, results), dest))
    write_manifest(dest)


def training_config(run_dir: Path, results: dict) -> dict:
    """The run's configuration: RUN_DIR/train_config.yaml (written by ``attnrl train``), else results.json's job."""
    path = run_dir / "train_config.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text()) or {}
    config = dict(results.get("job", {}))
    if "credit_strategy" in results:
        config["credit_strategy"] = results["credit_strategy"]
    return config


def model_card(results: dict, adapter_config: dict, config: dict, dest: Path) -> str:
    """README.md: Hub metadata, what was trained on what, evaluation table, figures present in ``dest``, config."""
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
        + (f" (recorded path `{base_path}`)" if base_path != base_name else "") + ".",
    ]
    if base_name == DEFAULT_MODEL:
        sections.append(f"The base is attnrl's embedded default: {_DEFAULT_MODEL_HUB_ID} dequantised from its Q4_1 "
                        "GGUF (`smollm2-135m-instruct` in attnrl); on the original weights results may differ.")
    sections += [evaluation_section(results), usage_section(base_name, task)]
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


def usage_section(base_name: str, task: str) -> str:
    return (
        "## Usage\n\n```python\nfrom peft import PeftModel\nfrom attnrl.models import load_model_and_tokenizer\n\n"
        f'model, tokenizer = load_model_and_tokenizer("{base_name}")\n'
        'model = PeftModel.from_pretrained(model, "<this folder or repo id>")\n```\n\n'
        f"or evaluate it: `attnrl eval --model {base_name} --adapter <this folder> --task {task}`"
    )


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
