"""Published adapters load anywhere: ``adapter_config.json`` names the base as the user gave it (the embedded
default: its Hub id), a copy of the folder at another path loads with peft, vLLM-refused settings are flagged, and
the lm-evaluation-harness task in ``lm_eval_task/`` scores exactly as ``attnrl eval`` (lm-eval run offline on the
tiny model and on the embedded default, each with its published adapter)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from attnrl.rewards import TASKS, make_examples
from attnrl.rewards.completions import NUMBER_PATTERN
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import attnrl.lm_eval_task as hooks
import attnrl.publish
from attnrl import cli
from attnrl.models.default import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model_path
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture
def offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


def fake_run(run: Path, model, base_name: str, recorded_base: str, *, eval_size: int, max_new_tokens: int,
             task_seed: int = 0, scale: float = 0.1, write_records: bool = True, **lora) -> Path:
    """The output_dir of a LoRA run on ``model`` as `attnrl train` leaves it: adapter/ (random LoRA B, recorded base
    path ``recorded_base``), report/results.json (+ eval_after.jsonl) and train_config.yaml; returns the run dir."""
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **lora))
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:
            weight.data = scale * torch.randn_like(weight)
    peft_model.peft_config["default"].base_model_name_or_path = recorded_base
    peft_model.save_pretrained(run / "adapter")
    (run / "report").mkdir(parents=True)
    rows = make_examples("arithmetic", "test", eval_size, seed=task_seed + 1)
    if write_records:
        (run / "report" / "eval_after.jsonl").write_text(
            "\n".join(json.dumps({**r, "completion": "", "correct": False}) for r in rows))
    results = {"model": base_name, "task": "arithmetic", "credit_strategy": "coupled", "eval_size": eval_size,
               "accuracy_before": 0.0, "accuracy_after": 0.0, "train_steps": 1}
    (run / "report" / "results.json").write_text(json.dumps(results))
    config = {"model_name_or_path": base_name, "task": "arithmetic", "eval_size": eval_size, "task_seed": task_seed,
              "eval_max_new_tokens": max_new_tokens, "credit_strategy": "coupled"}
    (run / "train_config.yaml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose vocabulary is exactly the tokenizer's (lm-eval resizes embeddings that differ)."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    tokenizer = tiny_tokenizer()
    tiny_causal_lm("llama", vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def logits(model, text: str = "What is 1 + 2?") -> torch.Tensor:
    ids = tiny_tokenizer()(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.eval()(ids).logits


# ---------------------------------------------------------------- adapters that load anywhere


def test_a_copy_of_the_published_folder_loads_by_its_config_alone(tiny_dir, tmp_path, offline):
    run = fake_run(tmp_path / "run", AutoModelForCausalLM.from_pretrained(tiny_dir), str(tiny_dir), str(tiny_dir),
                   eval_size=4, max_new_tokens=8)
    out = attnrl.publish.publish(run, tmp_path / "published")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_dir)  # what the user passed (here a local path)

    elsewhere = tmp_path / "another" / "machine" / "adapter"
    shutil.copytree(out, elsewhere)
    shutil.rmtree(out)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(elsewhere))  # the base found from adapter_config.json
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(run / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert torch.equal(logits(loaded), logits(trained)) and not torch.allclose(logits(loaded), logits(base), atol=1e-3)
    # the way most users load it: their base model, then PeftModel.from_pretrained on the copied folder
    base_id = json.loads((elsewhere / "adapter_config.json").read_text())["base_model_name_or_path"]
    by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), str(elsewhere))
    assert torch.equal(logits(by_hand), logits(trained))
    # the manifest still checks after the config rewrite
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=elsewhere, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_embedded_default_is_published_under_its_hub_id(tmp_path):
    """The config of a run on the default names the Hub id, not the machine's cache folder; attnrl maps it back."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/home/me/.cache/attnrl/models/SmolLM2-135M-Instruct", "r": 8, "bias": "none",
         "peft_type": "LORA", "use_dora": False, "modules_to_save": None}))
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    (run / "report").mkdir()
    (run / "report" / "results.json").write_text(json.dumps({"model": DEFAULT_MODEL, "task": "arithmetic",
                                                             "eval_size": 3, "accuracy_after": 0.5}))
    out = attnrl.publish.publish(run, tmp_path / "pub")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    card = (out / "README.md").read_text()
    assert f"base_model: {HUB_ID}" in card and "dequantised from its Q4_1 GGUF" in card
    assert "resolve_model_path" in card and f"pretrained={HUB_ID}" in card and "--max-lora-rank 8" in card
    # no eval_after.jsonl: the held-out set is regenerated as `attnrl train` made it (seed task_seed + 1 = 1)
    rows = [json.loads(line) for line in (out / "lm_eval_task" / "attnrl_arithmetic_heldout.jsonl").read_text()
            .splitlines()]
    assert [r["answer"] for r in rows] == [r["answer"] for r in make_examples("arithmetic", "test", 3, seed=1)]


@pytest.mark.parametrize(("lora", "fragment"), [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"use_dora": True}, "use_dora=true (DoRA)"),
    ({"bias": "lora_only"}, "bias='lora_only'"),
])
def test_adapters_vllm_refuses_are_flagged_in_a_warning_and_the_card(tiny_dir, tmp_path, caplog, lora, fragment):
    run = fake_run(tmp_path / "run", AutoModelForCausalLM.from_pretrained(tiny_dir), str(tiny_dir), str(tiny_dir),
                   eval_size=2, max_new_tokens=4, **lora)
    with caplog.at_level("WARNING", logger="attnrl.publish"):
        out = attnrl.publish.publish(run, tmp_path / "pub")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "vLLM's LoRA loader will refuse" in warnings[0] and fragment in warnings[0]
    card = (out / "README.md").read_text()
    assert "vLLM's LoRA loader refuses this adapter" in card and fragment in card


def test_a_plain_lora_adapter_gets_no_vllm_warning(tiny_dir, tmp_path, caplog):
    run = fake_run(tmp_path / "run", AutoModelForCausalLM.from_pretrained(tiny_dir), str(tiny_dir), str(tiny_dir),
                   eval_size=2, max_new_tokens=4)
    with caplog.at_level("WARNING", logger="attnrl.publish"):
        out = attnrl.publish.publish(run, tmp_path / "pub")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "--enable-lora --max-lora-rank 4" in (out / "README.md").read_text()


# ---------------------------------------------------------------- the lm-eval task


@pytest.mark.parametrize("text", [
    "42", "The answer is 42.", "42.0", "\\boxed{42}", "\\boxed{41} no, 42", "41 then \\boxed{42}", "1,042", "$42$.",
    "x42", "10-42", "-42", "42/1", "\\boxed{\\frac{84}{2}}", "", "forty-two", "4 2", "0042", "42.50", "2^{42}",
])
@pytest.mark.parametrize("gold", ["42", "1042", "-42", "0"])
def test_the_standalone_lm_eval_checker_agrees_with_attnrls(text, gold):
    assert hooks.NUMBER_PATTERN == NUMBER_PATTERN
    assert hooks.is_correct(text, {"answer": gold}) == TASKS["arithmetic"].is_correct(text, {"answer": gold})


def card_command(folder: Path) -> str:
    """The card's lm-eval command for ``folder`` (shell syntax), run with this interpreter."""
    line = next(line for line in (folder / "README.md").read_text().splitlines() if line.startswith("lm-eval run "))
    line = line.replace("<this folder>", str(folder)).replace("python -c", f"{sys.executable} -c")
    return f"{sys.executable} -m lm_eval" + line.removeprefix("lm-eval")


def run_lm_eval(command: str, task: str, cwd: Path) -> tuple[float, list[str]]:
    """A shell command line running lm-eval's CLI, offline, from ``cwd`` (with --log_samples added): (exact_match,
    generated texts in document order)."""
    out = cwd / "lm_eval_out"
    command += f" --device cpu --log_samples --output_path {out}"
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, command + "\n" + proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    return results["results"][task]["exact_match,none"], [s["resps"][0][0] for s in samples]


def attnrl_eval(base: str, adapter: Path, n: int, task_seed: int, max_new_tokens: int, out: Path) -> float:
    """``attnrl eval`` of the adapter alone (greedy, batch 1): its accuracy."""
    assert cli.main(["eval", "--model", base, "--adapter", str(adapter), "--task", "arithmetic", "--no-base",
                     "--n", str(n), "--task-seed", str(task_seed), "--max-new-tokens", str(max_new_tokens),
                     "--batch-size", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    return row["accuracy"]


def test_lm_eval_on_the_tiny_model_generates_and_scores_as_attnrl_eval(tiny_dir, tmp_path, offline):
    pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'attnrl[eval]'")
    run = fake_run(tmp_path / "run", AutoModelForCausalLM.from_pretrained(tiny_dir), str(tiny_dir), str(tiny_dir),
                   eval_size=6, max_new_tokens=8)
    copy = tmp_path / "elsewhere" / "pub"
    shutil.copytree(attnrl.publish.publish(run, tmp_path / "pub"), copy)
    work = tmp_path / "cwd"  # neither the folder nor its parent: the task must resolve its data by itself
    work.mkdir()
    command = card_command(copy)
    assert f"--model_args pretrained={tiny_dir},peft={copy} --include_path {copy}/lm_eval_task" in command
    exact_match, texts = run_lm_eval(command, "attnrl_arithmetic_heldout", work)

    accuracy = attnrl_eval(str(tiny_dir), copy, 6, 1, 8, tmp_path / "eval.json")
    policy, tokenizer = cli.load_policy(str(tiny_dir), copy)
    from attnrl.evaluation import evaluate_accuracy

    ours = evaluate_accuracy(policy, tokenizer, make_examples("arithmetic", "test", 6, seed=1),
                             TASKS["arithmetic"].is_correct, max_new_tokens=8, batch_size=1)
    assert texts == [r["completion"] for r in ours.records]  # same prompts, same greedy generations
    assert exact_match == accuracy == ours.accuracy


@pytest.mark.slow
def test_lm_eval_exact_match_equals_attnrl_eval_accuracy_on_the_embedded_default(tmp_path, offline):
    """A LoRA adapter on the embedded SmolLM2 (small random B): the published folder, copied elsewhere, evaluated by
    lm-eval (the card's command, the dequantised base) and by `attnrl eval` on the same 16 held-out problems."""
    pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'attnrl[eval]'")
    model, _ = load_model_and_tokenizer(DEFAULT_MODEL)
    base_path = resolve_model_path(DEFAULT_MODEL)
    run = fake_run(tmp_path / "run", model, DEFAULT_MODEL, base_path, eval_size=16, max_new_tokens=12, scale=0.002,
                   write_records=False)
    copy = tmp_path / "elsewhere" / "pub"
    shutil.copytree(attnrl.publish.publish(run, tmp_path / "pub"), copy)
    assert json.loads((copy / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    work = tmp_path / "cwd"
    work.mkdir()
    exact_match, _ = run_lm_eval(card_command(copy), "attnrl_arithmetic_heldout", work)  # base: attnrl's cache
    # `attnrl eval --model smollm2-135m-instruct` takes the adapter whose config names the Hub id
    accuracy = attnrl_eval(DEFAULT_MODEL, copy, 16, 1, 12, tmp_path / "eval.json")
    print(f"lm-eval exact_match {exact_match} | attnrl eval accuracy {accuracy}")
    assert 0 < accuracy < 1  # the comparison means something: some right, some wrong
    assert exact_match == accuracy


def test_tasks_without_an_integer_answer_are_scored_by_attnrls_checker():
    row = {**make_examples("countdown", "test", 1, seed=1)[0], "task": "countdown"}
    for text in (f"\\boxed{{{row['solution']}}}", "\\boxed{1 + 1}", ""):
        assert hooks.is_correct(text, row) == TASKS["countdown"].is_correct(text, row)
    assert hooks.process_results(row, [f"\\boxed{{{row['solution']}}}"]) == {"exact_match": 1.0}
