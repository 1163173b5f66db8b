"""The `attnrl` command end to end on a tiny model: train (YAML + overrides, recipe registry, Ray fields), eval
(greedy accuracy, pass@k), analyze (PNGs + an HTML page rendered in headless Chromium), publish (peft reload gives
the same logits, checksums, Hub upload mocked), the arguments of each (dataclasses, both flag spellings, --config)
and the error messages of each."""

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from matplotlib.image import imread
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import attnrl.distributed
import attnrl.publish
from attnrl import cli
from attnrl.evaluation import evaluate_pass_at_k, generate_completions, pass_at_k
from attnrl.models import DEFAULT_MODEL
from attnrl.recipes import RECIPES
from attnrl.recipes.command import recipe_main
from attnrl.report import ROLE_COLOURS
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

TINY_RUN = {  # a 1-step GRPO + LoRA run on the tiny model (seconds)
    "task": "arithmetic", "train_size": 8, "eval_size": 4, "lora_r": 4, "lora_alpha": 8, "eval_max_new_tokens": 8,
    "eval_batch_size": 4, "credit_strategy": "coupled", "credit_window": 3, "credit_fai_lo": 1, "credit_fai_hi": 6,
    "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8,
    "logging_steps": 1, "save_strategy": "no", "report_to": "none", "use_cpu": True, "bf16": False, "seed": 0,
}
COMPLETION = "12 + 30 = 42, so the answer is 42."
ROOT = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, **config) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def give_lora_b_random_values(adapter_dir: Path) -> None:
    """LoRA B starts at 0 and a 1-step run of a random model has no reward variance (zero gradient), so B would
    stay 0 and any adapter would reproduce the base logits; random B values make the logits tests meaningful."""
    path = adapter_dir / "adapter_model.safetensors"
    weights = load_file(path)
    generator = torch.Generator().manual_seed(0)
    for name, w in weights.items():
        if "lora_B" in name:
            weights[name] = 0.1 * torch.randn(w.shape, generator=generator)
    save_file(weights, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_causal_lm("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """`attnrl train` of TINY_RUN with two overrides on the command line: the run's output_dir (LoRA B set to
    random values)."""
    work = tmp_path_factory.mktemp("train")
    config = write_yaml(work / "tiny.yaml", **TINY_RUN, model_name_or_path=tiny_model_dir,
                        output_dir=str(work / "run"))
    assert cli.main(["train", str(config), "--credit_strategy", "local_chunk", "--max_steps", "1"]) == 0
    give_lora_b_random_values(work / "run" / "adapter")
    return work / "run"


# ---------------------------------------------------------------- train


def test_train_writes_adapter_report_and_resolved_config(run_dir, tiny_model_dir):
    results = json.loads((run_dir / "report" / "results.json").read_text())
    assert results["credit_strategy"] == "local_chunk" and results["train_steps"] == 1  # the overrides won
    for name in ("report.md", "reward_curve.png", "rhythm.png", "rhythm.html", "log_history.json"):
        assert (run_dir / "report" / name).stat().st_size > 0
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_model_dir and adapter_config["r"] == 4
    resolved = yaml.safe_load((run_dir / cli.RESOLVED_CONFIG).read_text())
    assert resolved["recipe"] == "grpo" and resolved["credit_strategy"] == "local_chunk"
    assert resolved["max_steps"] == 1 and resolved["train_size"] == 8 and resolved["lora_alpha"] == 8


def fake_recipe(monkeypatch, calls: list, base: str = "grpo", name: str = "fake"):
    """Register recipe ``name``: the parser of recipe ``base``, a run() that records what it was given."""
    module = types.ModuleType(f"fake_recipe_{name}")
    module.RECIPE = name
    module.make_parser = RECIPES.get(base).make_parser
    module.run = lambda *values: calls.append(values) or {"ok": True}
    module.main = lambda argv=None, **kw: recipe_main(module, argv, **kw)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(RECIPES, name, module.__name__)
    return module


def test_yaml_recipe_key_selects_the_recipe_and_overrides_reach_every_dataclass(tmp_path, monkeypatch):
    calls = []
    fake_recipe(monkeypatch, calls)
    config = write_yaml(tmp_path / "c.yaml", **TINY_RUN, recipe="fake", model_name_or_path="not/loaded",
                        output_dir=str(tmp_path / "run"))
    cli.train(config, ["--max_steps", "3", "--credit-strategy=global_anchor", "--lora_r", "2", "--num-workers", "0"])
    (job, args, ray_args), = calls
    assert (job.model_name_or_path, job.lora_r, job.eval_size) == ("not/loaded", 2, 4)
    assert (args.max_steps, args.credit_strategy, args.num_generations) == (3, "global_anchor", 4)
    assert not ray_args.use_ray
    assert yaml.safe_load((tmp_path / "run" / cli.RESOLVED_CONFIG).read_text())["recipe"] == "fake"
    with pytest.raises(cli.UsageError, match=r"recipe 'ppp' is unknown \(did you mean 'ppo'\?\); choose one of "
                                              r"'grpo', 'ppo', 'avar', 'site', 'fake'$"):
        cli.train(config, recipe="ppp")
    with pytest.raises(cli.UsageError, match=r"c\.yaml is a config of recipe 'fake', not 'grpo'"):
        cli.train(config, recipe="grpo")


def test_both_flag_spellings_and_a_positional_config_reach_the_recipe(tmp_path, monkeypatch):
    """`attnrl train CONFIG --recipe=fake --max-steps 2 --per_device_train_batch_size 8` as one command line."""
    calls = []
    fake_recipe(monkeypatch, calls)
    config = write_yaml(tmp_path / "c.yaml", **TINY_RUN, model_name_or_path="not/loaded",
                        output_dir=str(tmp_path / "run"))
    argv = ["train", str(config), "--recipe=fake", "--max-steps", "2", "--per_device_train_batch_size", "8",
            "--eval-batch-size", "2"]
    assert cli.main(argv) == 0
    (job, args, _), = calls
    assert (args.max_steps, args.per_device_train_batch_size, job.eval_batch_size) == (2, 8, 2)


def test_ppo_recipe_parses_its_own_config_fields(tmp_path, monkeypatch):
    import attnrl.recipes.ppo as ppo_recipe

    calls = []
    monkeypatch.setattr(ppo_recipe, "run", lambda *values: calls.append(values) or {})
    config = write_yaml(tmp_path / "c.yaml", recipe="ppo", model_name_or_path="not/loaded", critic_mode="shared",
                        output_dir=str(tmp_path / "run"), use_cpu=True, max_steps=2)
    cli.train(config, ["--vf_coef", "0.3", "--credit_strategy", "local_chunk", "--cpus_per_worker", "2"])
    (job, args, ray_args), = calls
    assert type(args).__name__ == "AttnPPOConfig" and type(job).__name__ == "PPOJobArguments"
    assert (args.critic_mode, args.vf_coef, args.credit_strategy) == ("shared", 0.3, "local_chunk")
    assert ray_args.cpus_per_worker == 2 and not ray_args.use_ray


def test_ray_fields_send_grpo_and_ppo_jobs_to_the_launcher_with_their_runner(tmp_path, monkeypatch):
    from attnrl.distributed import launcher
    from attnrl.recipes.grpo import GRPORunner
    from attnrl.recipes.ppo import PPORunner

    launched = []
    monkeypatch.setattr(launcher, "launch", lambda *a, **kw: launched.append((a, kw)) or {"ok": True})
    config = write_yaml(tmp_path / "c.yaml", **TINY_RUN, model_name_or_path="not/loaded",
                        output_dir=str(tmp_path / "run"))
    flags = ["--max_steps", "5", "--ray-address", "ray://head:10001", "--num_workers", "4", "--use_gpu", "false",
             "--cpus_per_worker", "3", "--reward_actors", "2", "--storage_path", str(tmp_path / "storage")]
    assert cli.train(config, flags) == {"ok": True}
    ((job, args, ray_args), kw), = launched
    assert kw == {"runner": GRPORunner}
    assert isinstance(ray_args, attnrl.distributed.RayArguments) and ray_args.workers == 4
    assert (ray_args.ray_address, ray_args.cpus_per_worker, ray_args.reward_actors) == ("ray://head:10001", 3, 2)
    assert ray_args.storage_path == str(tmp_path / "storage") and args.max_steps == 5

    ppo = write_yaml(tmp_path / "ppo.yaml", recipe="ppo", model_name_or_path="not/loaded", use_cpu=True,
                     max_steps=2, output_dir=str(tmp_path / "ppo_run"))
    assert cli.main(["train", str(ppo), "--num_workers", "2"]) == 0
    ((job, args, ray_args), kw) = launched[-1]
    assert kw == {"runner": PPORunner} and type(args).__name__ == "AttnPPOConfig" and ray_args.workers == 2


def test_recipes_without_ray_refuse_ray_fields_by_name(tmp_path, capsys):
    assert cli.main(["train", "--recipe", "avar", "--output_dir", str(tmp_path), "--num_workers", "2"]) == 2
    assert "attnrl train: error: unknown config field '--num_workers' on the command line" in capsys.readouterr().err


def test_a_missing_ray_is_one_line_saying_what_to_install(tmp_path, monkeypatch, capsys):
    """`attnrl train ray_configs/local.yaml` parses the job spec (num_workers: 2 ...) and, without Ray installed,
    says what to install in one line, before any model work."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    monkeypatch.setitem(sys.modules, "ray.train", None)
    loads = []
    monkeypatch.setattr("attnrl.recipes.task.load_model_and_tokenizer", lambda *a: loads.append(a))
    rc = cli.main(["train", str(ROOT / "ray_configs" / "local.yaml"), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and loads == []
    assert err.strip().splitlines() == ["attnrl train: error: Ray is not installed, and num_workers / ray_address "
                                        "need it: pip install 'attnrl[ray]'"]


def test_unknown_config_fields_name_the_closest_field_before_any_loading(tmp_path, capsys):
    good = {**TINY_RUN, "model_name_or_path": "missing/model", "output_dir": str(tmp_path / "run")}
    typo = write_yaml(tmp_path / "typo.yaml", **{**good, "credit_stratgy": "coupled"})
    with pytest.raises(cli.UsageError, match=r"'credit_stratgy'.*did you mean 'credit_strategy'"):
        cli.train(typo)
    config = write_yaml(tmp_path / "good.yaml", **good)
    with pytest.raises(cli.UsageError, match=r"'--max_step'.*did you mean '--max_steps'"):
        cli.train(config, ["--max_step", "3"])
    assert cli.main(["train", str(typo)]) == 2
    assert "did you mean 'credit_strategy'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_yaml_syntax_error_names_the_config_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: arithmetic\ncredit_layers: [1, 2\nmax_steps: 3\n")
    with pytest.raises(cli.UsageError, match=rf"{bad}, line 3, column 10: invalid YAML"):
        cli.train(bad)
    assert cli.main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"attnrl train: error: {bad}, line 3, column 10: invalid YAML (while parsing a flow sequence" in err
    assert "<unicode string>" not in err


def test_train_without_an_accelerator_defaults_bf16_off_unless_set(tmp_path, monkeypatch, capsys):
    """TRL's GRPOConfig turns an unset bf16 into True, which transformers refuses without a bf16 accelerator."""
    import transformers.training_args

    from attnrl.recipes import config as recipe_config

    monkeypatch.setattr(recipe_config, "bf16_accelerator_available", lambda: False)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: False)
    calls = []
    fake_recipe(monkeypatch, calls)
    minimal = {k: v for k, v in TINY_RUN.items() if k not in ("use_cpu", "bf16")}
    config = write_yaml(tmp_path / "c.yaml", **minimal, recipe="fake", output_dir=str(tmp_path / "run"))
    cli.train(config)
    assert calls[-1][1].bf16 is False
    assert cli.main(["train", str(config), "--bf16", "true"]) == 2  # explicit: refused, naming both fields
    assert "bf16=True needs an accelerator with bf16 support and none was found; set bf16: false to train in " \
           "float32, or use_cpu: true" in capsys.readouterr().err
    cli.train(config, ["--bf16=true", "--use_cpu"])
    assert (calls[-1][1].bf16, calls[-1][1].use_cpu) == (True, True)


# ---------------------------------------------------------------- eval


def test_pass_at_k_is_the_probability_that_a_random_k_subset_holds_a_correct_sample():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
                expected = Fraction(sum(any(s) for s in subsets), len(subsets))
                assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12)
    assert pass_at_k(200, 0, 10) == 0.0 and pass_at_k(200, 1, 200) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def test_evaluate_pass_at_k_averages_the_estimator_over_problems(tiny_model_dir):
    model, tokenizer = cli.load_policy(tiny_model_dir)
    examples = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(5)]
    torch.manual_seed(0)
    result = evaluate_pass_at_k(model, tokenizer, examples, lambda text, row: len(text) % 2 == 0, ks=[1, 3],
                                samples=4, max_new_tokens=5, batch_size=8)
    counts = result.correct_counts
    assert len(counts) == 5 and all(0 <= c <= 4 for c in counts)
    assert result.pass_at_k[1] == pytest.approx(sum(counts) / 20)  # pass@1 = fraction of correct samples
    assert result.pass_at_k[3] == pytest.approx(np.mean([pass_at_k(4, c, 3) for c in counts]))
    assert 0 < result.pass_at_k[1] < result.pass_at_k[3] < 1
    with pytest.raises(ValueError, match="raise --samples"):
        evaluate_pass_at_k(model, tokenizer, examples, lambda text, row: True, ks=[8], samples=4)


def test_eval_compares_base_and_adapters_in_a_table_and_json(run_dir, tiny_model_dir, tmp_path, capsys):
    adapter, out = str(run_dir / "adapter"), tmp_path / "eval.json"
    argv = ["eval", "--model", tiny_model_dir, "--adapter", adapter, "--adapter", adapter, "--task", "arithmetic",
            "--n", "3", "--pass-k", "1", "2", "--samples", "3", "--max-new-tokens", "6", "--out", str(out)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [row["adapter"] for row in result["rows"]] == [None, adapter, adapter]
    assert result["n"] == 3 and result["pass_k"] == {"ks": [1, 2], "samples": 3, "temperature": 1.0, "seed": 0}
    for row in result["rows"]:
        assert row["total"] == 3 and row["accuracy"] == row["correct"] / 3
        assert 0 <= row["pass_at_k"]["1"] <= row["pass_at_k"]["2"] <= 1
    assert result["rows"][1] == result["rows"][2]  # the same adapter, the same seed: the same numbers
    assert "| model | greedy accuracy | pass@1 (3 samples, T=1.0) | pass@2 (3 samples, T=1.0) |" in table
    assert f"| base {tiny_model_dir} | " in table and table.count(f"| {adapter} | ") == 2
    only_adapter = cli.evaluate(tiny_model_dir, "arithmetic", [adapter], include_base=False, n=3, max_new_tokens=6)
    assert [row["name"] for row in only_adapter["rows"]] == [adapter] and only_adapter["pass_k"] is None


def test_eval_errors_name_the_problem_before_loading(run_dir, tiny_model_dir, tmp_path):
    with pytest.raises(cli.UsageError, match=r"task 'arithmetik' is unknown \(did you mean 'arithmetic'\?\)"):
        cli.evaluate(tiny_model_dir, "arithmetik")
    with pytest.raises(FileNotFoundError, match=r"adapter folder .*nowhere does not exist; pass RUN_DIR/adapter"):
        cli.evaluate(tiny_model_dir, "arithmetic", [tmp_path / "nowhere"])
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        cli.evaluate(tiny_model_dir, "arithmetic", [tmp_path])
    other_model = tmp_path / "other"
    tiny_causal_lm("llama", hidden_size=32, intermediate_size=64).save_pretrained(other_model)
    tiny_tokenizer().save_pretrained(other_model)
    with pytest.raises(cli.UsageError, match=rf"trained on base model '{re.escape(tiny_model_dir)}', not on --model"):
        cli.evaluate(str(other_model), "arithmetic", [run_dir / "adapter"])
    moved = f"/machine/that/trained/{Path(tiny_model_dir).name}"  # a recorded path absent here: compare names
    assert cli.same_base_model(moved, tiny_model_dir) and not cli.same_base_model("/machine/x/other", tiny_model_dir)
    with pytest.raises(cli.UsageError, match="--pass-k \\[4\\] needs 1 <= k <= --samples \\(2\\)"):
        cli.evaluate(tiny_model_dir, "arithmetic", pass_k=[4], samples=2)


def test_an_adapter_of_other_shapes_is_caught_on_load(run_dir, tiny_model_dir, tmp_path):
    """adapter_config.json names our model, but the weights were trained on a narrower one."""
    narrow = tmp_path / "narrow"
    tiny_causal_lm("llama", hidden_size=32, intermediate_size=64).save_pretrained(narrow)
    tiny_tokenizer().save_pretrained(narrow)
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(narrow), LoraConfig(r=4, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "base_model_name_or_path": tiny_model_dir}))
    with pytest.raises(cli.UsageError, match=r"does not fit --model .*weight shapes differ \(size mismatch"):
        cli.evaluate(tiny_model_dir, "arithmetic", [tmp_path / "adapter"], n=2)


# ---------------------------------------------------------------- analyze


def count_colour(png: Path, hex_colour: str, tolerance: int = 10) -> int:
    """Pixels of the image within ``tolerance`` (0-255 per channel) of ``hex_colour``."""
    image = imread(png)[..., :3]
    pixels = (image * 255).round() if image.dtype != np.uint8 else image.astype(float)
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return int((np.abs(pixels - target).max(-1) <= tolerance).sum())


def screenshot(html: Path, png: Path) -> None:
    """Render ``html`` with headless Chromium (installed by `make browser`). Without it the test skips, except in
    CI (CI=true), where a missing browser is a failure."""
    chromium = shutil.which("chromium")
    if not chromium:
        message = "the HTML screenshot test needs headless Chromium: run `make browser` (as root it installs " \
                  "Debian's chromium) or `apt-get install -y chromium`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={png.parent / 'chromium-profile'}", f"--screenshot={png}", "--window-size=1000,600",
         html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    assert png.stat().st_size > 1000


def test_a_missing_browser_skips_the_screenshot_except_in_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make browser"):
        screenshot(tmp_path / "page.html", tmp_path / "page.png")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the HTML screenshot test needs headless Chromium"):
        screenshot(tmp_path / "page.html", tmp_path / "page.png")


def test_analyze_rollout_writes_figures_and_a_page_with_role_colours(run_dir, tiny_model_dir, tmp_path):
    rollouts = tmp_path / "rollouts.jsonl"
    rows = [{"prompt": "ignored", "completion": "x"}, {"prompt": "What is 12 + 30?", "completion": COMPLETION}]
    rollouts.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "analysis"
    argv = ["analyze", "--model", tiny_model_dir, "--adapter", str(run_dir / "adapter"), "--rollouts", str(rollouts),
            "--index", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    record = json.loads((out / "analysis.json").read_text())
    assert record["completion"] == COMPLETION and "".join(record["tokens"]) == COMPLETION
    assert record["fai"][-1] is None and len(record["head_distances"]) == len(record["layers"]) == 2
    assert (out / "rhythm.png").stat().st_size > 5000 and (out / "heads.png").stat().st_size > 5000
    page = (out / "rhythm.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "http" not in page  # self-contained

    # the anchor colour on the tokens: compare with the same page whose token spans lost their colours
    plain = tmp_path / "plain.html"
    plain.write_text(re.sub(r'(<span class="tok" data-role="\w+" title="[^"]*") style="[^"]*"', r"\1", page))
    screenshot(out / "rhythm.html", tmp_path / "page.png")
    screenshot(plain, tmp_path / "plain.png")
    anchors_only = sum(a and not p for a, p in zip(record["anchor"], record["preplan"]))
    extra_anchor = count_colour(tmp_path / "page.png", ROLE_COLOURS["anchor"]) - count_colour(
        tmp_path / "plain.png", ROLE_COLOURS["anchor"])
    assert anchors_only >= 3 and extra_anchor >= 40 * anchors_only  # a monospace glyph cell is about 8 x 17 px
    assert count_colour(tmp_path / "plain.png", ROLE_COLOURS["anchor"]) > 200  # the legend swatch


def test_analyze_prompt_uses_the_greedy_response(tiny_model_dir, tmp_path):
    assert cli.main(["analyze", "--model", tiny_model_dir, "--prompt", "What is 2 + 3?", "--max-new-tokens", "12",
                     "--out", str(tmp_path)]) == 0
    model, tokenizer = cli.load_policy(tiny_model_dir)
    greedy = generate_completions(model, tokenizer, [[{"role": "user", "content": "What is 2 + 3?"}]],
                                  max_new_tokens=12)[0]
    record = json.loads((tmp_path / "analysis.json").read_text())
    assert record["completion"] == greedy and len(record["tokens"]) == len(record["waad"]) == len(greedy)
    assert {p.name for p in tmp_path.iterdir()} >= {"rhythm.png", "heads.png", "rhythm.html", "analysis.json"}
    with pytest.raises(cli.UsageError, match="exactly one of --prompt"):
        cli.analyze(tmp_path, tiny_model_dir)


# ---------------------------------------------------------------- publish


def test_publish_reloads_to_the_same_logits_and_leaves_the_run_untouched(run_dir, tiny_model_dir, tmp_path):
    before = tree_digest(run_dir)
    out = tmp_path / "published"
    assert cli.main(["publish", str(run_dir), "--out", str(out)]) == 0
    assert tree_digest(run_dir) == before

    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "SHA256SUMS", "reward_curve.png",
            "rhythm.png", "results.json", "lm_eval_task/attnrl_arithmetic_heldout.yaml",
            "lm_eval_task/attnrl_arithmetic_heldout.jsonl"} <= files and "training_args.bin" not in files
    lines = (out / "SHA256SUMS").read_text().splitlines()
    manifest = {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
    assert set(manifest) == files - {"SHA256SUMS"}
    assert all(hashlib.sha256((out / name).read_bytes()).hexdigest() == digest for name, digest in manifest.items())
    assert manifest["adapter_model.safetensors"] == before["adapter/adapter_model.safetensors"]

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "credit-local_chunk" in card
    assert f"LoRA adapter for {tiny_model_dir}" in card and "the `arithmetic` task" in card
    assert "| + this adapter (1 steps) | 0.0% |" in card and "| base | 0.0% |" in card
    assert "![Training curve" in card and "(rhythm.png)" in card and "credit_strategy: local_chunk" in card

    ids = tiny_tokenizer()("What is 1 + 2?", return_tensors="pt")["input_ids"]
    trained, _ = cli.load_policy(tiny_model_dir, run_dir / "adapter")
    published = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out)).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected, got, base_logits = trained(ids).logits, published(ids).logits, base(ids).logits
    assert torch.equal(got, expected) and not torch.allclose(got, base_logits, atol=1e-3)


def test_publish_push_to_hub_uploads_the_published_folder(run_dir, tmp_path, monkeypatch):
    calls = []

    class FakeHfApi:
        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", {**kw, "files": sorted(p.name for p in Path(kw["folder_path"]).iterdir())}))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    out = attnrl.publish.publish(run_dir, tmp_path / "pub", push_to_hub="me/tiny-attngrpo", private=True)
    (create, create_kw), (upload, upload_kw) = calls
    assert create == "create_repo" and create_kw == {"repo_id": "me/tiny-attngrpo", "repo_type": "model",
                                                     "private": True, "exist_ok": True}
    assert upload == "upload_folder" and upload_kw["repo_id"] == "me/tiny-attngrpo"
    assert upload_kw["folder_path"] == str(out) and upload_kw["files"] == sorted(p.name for p in out.iterdir())
    assert {"README.md", "adapter_model.safetensors", "SHA256SUMS"} <= set(upload_kw["files"])


def test_card_of_the_embedded_default_names_its_hub_base_and_the_gguf_origin(tmp_path):
    results = {"model": DEFAULT_MODEL, "task": "countdown", "credit_strategy": "coupled", "accuracy_before": 0.25,
               "accuracy_after": 0.5, "train_steps": 40, "eval_size": 200}
    card = attnrl.publish.model_card(results, {"base_model_name_or_path": "/cache/SmolLM2-135M-Instruct"},
                                     {"credit_strategy": "coupled"}, tmp_path)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "dequantised from its Q4_1 GGUF" in card
    assert "| base | 25.0% |" in card and "| + this adapter (40 steps) | 50.0% |" in card
    assert "--task countdown" in card and "![" not in card  # no figure files in tmp_path
    assert "base_model:" not in attnrl.publish.model_card({"model": str(tmp_path)}, {}, {}, tmp_path)


def test_publish_never_overwrites_and_leaves_nothing_behind_on_failure(run_dir, tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not an empty folder"):
        attnrl.publish.publish(run_dir, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="overlaps RUN_DIR"):
        attnrl.publish.publish(run_dir, run_dir / "published")
    with pytest.raises(FileNotFoundError, match="holds no peft adapter"):
        attnrl.publish.publish(tmp_path, tmp_path.parent / "out-of-nothing")

    def disk_full(folder):
        raise OSError("No space left on device")

    monkeypatch.setattr(attnrl.publish, "write_manifest", disk_full)
    before = tree_digest(run_dir)
    with pytest.raises(OSError, match="No space left"):
        attnrl.publish.publish(run_dir, tmp_path / "new" / "pub")
    assert list((tmp_path / "new").iterdir()) == [] and tree_digest(run_dir) == before


# ---------------------------------------------------------------- command line


def test_console_entry_point_prints_usage_errors_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "attnrl.cli", "eval", "--task", "countdwn"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "attnrl eval: error: task 'countdwn' is unknown (did you mean 'countdown'?)" in proc.stderr


def test_top_level_help_lists_the_commands_without_importing_torch_or_trl():
    code = ("import sys\nfrom attnrl.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nheavy = sorted({'torch', 'trl', 'transformers'} & set(sys.modules))\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    for command in ("train", "eval", "analyze", "publish"):
        assert re.search(rf"^\s+{command}\s+\S", proc.stdout, re.MULTILINE), command
    assert "grpo|ppo|avar|site" in proc.stdout


def test_command_arguments_are_dataclasses_with_both_spellings_a_config_file_and_help(tmp_path, capsys):
    a = cli.command_arguments("eval", ["--task", "arithmetic", "--max-new-tokens", "6", "--pass_k", "1", "2",
                                       "--adapter", "a", "--adapter", "b", "c", "--no-base", "--task-seed", "3"])
    assert isinstance(a, cli.EvalArguments)
    assert (a.max_new_tokens, a.pass_k, a.adapter, a.base, a.task_seed) == (6, [1, 2], ["a", "b", "c"], False, 3)
    assert cli.command_arguments("eval", ["--task", "countdown", "--max_new_tokens", "7"]).max_new_tokens == 7

    config = write_yaml(tmp_path / "eval.yaml", task="countdown", n=5, max_new_tokens=9)
    a = cli.command_arguments("eval", ["--config", str(config), "--max_new_tokens", "11"])
    assert (a.task, a.n, a.max_new_tokens, a.model) == ("countdown", 5, 11, DEFAULT_MODEL)  # the flag wins
    with pytest.raises(cli.UsageError, match=r"unknown config field '--max-new-token' on the command line \(did "
                                              r"you mean '--max-new-tokens'\?\)"):
        cli.command_arguments("eval", ["--task", "arithmetic", "--max-new-token", "6"])
    with pytest.raises(cli.UsageError, match=r"unknown config field 'sample' in .*eval\.yaml \(did you mean "
                                              r"'samples'\?\)"):
        cli.command_arguments("eval", ["--config", str(write_yaml(tmp_path / "eval.yaml", task="x", sample=2))])

    a = cli.command_arguments("analyze", ["--out", "o", "--rollouts", "r.jsonl", "--max-new-tokens", "5"])
    assert (a.out, a.rollouts, a.prompt, a.max_new_tokens) == ("o", "r.jsonl", None, 5)
    a = cli.command_arguments("publish", ["runs/x", "--out", "pub", "--push-to-hub", "me/repo", "--private"])
    assert (a.run_dir, a.out, a.push_to_hub, a.private) == ("runs/x", "pub", "me/repo", True)

    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "usage: attnrl eval" in help_text and "Held-out problems." in help_text  # help from field metadata
    assert "--pass_k PASS_K [PASS_K ...], --pass-k PASS_K [PASS_K ...]" in help_text


def test_train_help_is_the_recipe_parser_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--recipe", "ppo", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: attnrl train") and "--critic_mode" in help_text and "--num_workers" in help_text


def test_premise_runs_the_causal_test_on_a_task_registered_by_the_study(tmp_path, capsys):
    """``attnrl premise``: the premise test on the committed organism checkpoint (its task registered by importing
    the study package, its problems those saved with the model) writes its table, JSON and plot, with the same
    number of interventions for every selector."""
    import json

    import benchmarks.organism  # noqa: F401  (registers organism_countdown and its premise problems)

    checkpoint = Path(__file__).resolve().parents[1] / "benchmarks" / "organism" / "checkpoint"
    out = tmp_path / "premise"
    cli.main(["premise", "--task", "organism_countdown", "--model", str(checkpoint), "--problems", "6", "--k", "1",
              "--max_new_tokens", "160", "--out", str(out)])
    assert "| logp_abs | anchor |" in capsys.readouterr().out
    data = json.loads((out / "premise.json").read_text())
    assert (out / "premise.png").stat().st_size > 0 and (out / "premise.md").exists()
    assert data["meta"]["answer_span"] == "last_step" and data["meta"]["task"] == "organism_countdown"
    counts = {s: e["interventions"] for s, e in data["summary"]["measures"]["logp_abs"].items()}
    assert len(set(counts.values())) == 1 and next(iter(counts.values())) > 0, counts


def test_premise_refuses_an_unknown_task_before_loading_a_model(tmp_path, capsys):
    assert cli.main(["premise", "--task", "nosuchtask", "--model", str(tmp_path / "missing"), "--out",
                     str(tmp_path / "o")]) == 2
    assert "nosuchtask" in capsys.readouterr().err
