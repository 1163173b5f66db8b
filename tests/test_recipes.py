"""The recipes: one parser and one main per recipe shared by the example scripts and `attnrl train`, the job as
runner phases (local, PPO callbacks, the learning sweep), AVAR and SITE end to end on tiny models, and the config
handling: every check before any model work, CPU-safe precision defaults, YAML errors that name the file."""

import ast
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest
import transformers.training_args
import yaml
from trl import TrlParser

import attnrl.recipes.task as task_recipe
from attnrl import cli
from attnrl.recipes import RECIPES, recipe_module
from attnrl.recipes import config as recipe_config
from attnrl.recipes.grpo import GRPOJobArguments, GRPORunner, run_grpo_job
from attnrl.recipes.ppo import PPOJobArguments, PPORunner, run_ppo_job
from attnrl.recipes.runner import JobRunner
from attnrl.trainers.grpo import AttnGRPOConfig
from attnrl.trainers.ppo import AttnPPOConfig, AttnPPOTrainer
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=4, max_steps=1, bf16=False,
             use_cpu=True, report_to=[], save_strategy="no")


@pytest.fixture
def model_work(monkeypatch):
    """Replace the recipe's model loading (a 4-layer tiny model), evaluator and trainer by recorders."""
    calls = []
    monkeypatch.setattr(task_recipe, "load_model_and_tokenizer",
                        lambda name: calls.append("load") or (tiny_causal_lm("llama"), tiny_tokenizer()))

    def evaluator(job, tokenizer, eval_set):
        return lambda model, desc: calls.append("evaluate") or types.SimpleNamespace(accuracy=0.0)

    def trainer(*args, **kwargs):
        calls.append("trainer")
        raise RuntimeError("trainer reached")

    monkeypatch.setattr(task_recipe, "held_out_evaluator", evaluator)
    return calls, trainer


def test_duplicate_credit_layers_fail_when_the_config_is_built(tmp_path, model_work):
    calls, _ = model_work
    with pytest.raises(ValueError, match=r"credit_layers=\[2, 2, 3\] lists layers \[2\] more than once"):
        AttnGRPOConfig(output_dir=str(tmp_path), credit_layers=[2, 2, 3], **SMALL)
    with pytest.raises(ValueError, match="more than once"):
        AttnPPOConfig(output_dir=str(tmp_path), credit_layers=[1, 1], use_cpu=True, report_to=[])
    assert calls == []


@pytest.mark.parametrize("recipe", ["grpo", "ppo"])
def test_out_of_range_credit_layers_fail_right_after_loading_before_the_base_model_evaluation(
        tmp_path, model_work, monkeypatch, recipe):
    calls, trainer = model_work
    if recipe == "grpo":
        monkeypatch.setattr(GRPORunner, "trainer_cls", staticmethod(trainer))
        job = GRPOJobArguments(model_name_or_path="tiny", train_size=4, eval_size=2)
        run = lambda: run_grpo_job(job, AttnGRPOConfig(output_dir=str(tmp_path), credit_layers=[1, 4], **SMALL))  # noqa: E731
    else:
        monkeypatch.setattr(PPORunner, "trainer_cls", staticmethod(trainer))
        job = PPOJobArguments(model_name_or_path="tiny", train_size=4, eval_size=2)
        args = AttnPPOConfig(output_dir=str(tmp_path), credit_layers=[1, 4], use_cpu=True, report_to=[],
                             per_device_train_batch_size=4, num_generations=4, max_steps=1)
        run = lambda: run_ppo_job(job, args)  # noqa: E731
    with pytest.raises(ValueError, match=r"credit_layers=\[1, 4\] includes \[4\], out of range for a model with 4"):
        run()
    assert calls == ["load"]  # no evaluation, no trainer


def test_bad_job_fields_fail_before_the_model_is_loaded(tmp_path, model_work):
    calls, _ = model_work
    args = AttnGRPOConfig(output_dir=str(tmp_path), **SMALL)
    with pytest.raises(ValueError, match="eval_size=0 must be >= 1"):
        run_grpo_job(GRPOJobArguments(eval_size=0), args)
    assert calls == []


# ---------------------------------------------------------------- CPU-safe precision defaults


@pytest.fixture
def no_accelerator(monkeypatch):
    """As on a machine without a GPU, whatever this one has (transformers' own bf16 check included)."""
    monkeypatch.setattr(recipe_config, "bf16_accelerator_available", lambda: False)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: False)


def _config(tmp_path, name="c.yaml", **fields) -> list[str]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "max_steps": 1, "report_to": "none",
                                    **fields}))
    return ["--config", str(path)]


def _grpo_parser():
    return TrlParser((GRPOJobArguments, AttnGRPOConfig))


def test_a_minimal_config_trains_in_float32_without_an_accelerator_and_says_so(tmp_path, no_accelerator, caplog):
    with caplog.at_level(logging.WARNING, logger="attnrl.recipes.config"):
        job, args = recipe_config.parse_config(_grpo_parser(), _config(tmp_path), exit_on_error=False)
    assert args.bf16 is False and args.use_cpu is False
    assert "no accelerator with bf16 support was found: bf16 defaults to False" in caplog.text
    # use_cpu on the command line: bf16 defaults to False too
    _, args = recipe_config.parse_config(_grpo_parser(), [*_config(tmp_path), "--use_cpu"], exit_on_error=False)
    assert (args.bf16, args.use_cpu) == (False, True)


def test_an_explicit_bf16_is_kept_or_refused_naming_both_fields(tmp_path, no_accelerator):
    _, args = recipe_config.parse_config(_grpo_parser(), _config(tmp_path, bf16=True, use_cpu=True),
                                         exit_on_error=False)
    assert args.bf16 is True  # bf16 on the CPU, as asked
    for argv in (_config(tmp_path, "bf16.yaml", bf16=True), [*_config(tmp_path), "--bf16", "true"]):
        with pytest.raises(recipe_config.ConfigError, match=r"set bf16: false to train in float32, or use_cpu: true"):
            recipe_config.parse_config(_grpo_parser(), argv, exit_on_error=False)


def test_with_an_accelerator_trl_default_bf16_is_left_alone(monkeypatch):
    monkeypatch.setattr(recipe_config, "bf16_accelerator_available", lambda: True)
    parser = _grpo_parser()
    recipe_config.cpu_safe_defaults(parser, {}, [])
    assert parser.get_default("bf16") is None  # TRL's "True unless fp16"
    recipe_config.cpu_safe_defaults(parser, {"use_cpu": True}, [])
    assert parser.get_default("bf16") is False


# ---------------------------------------------------------------- YAML errors name the file


BAD_YAML = "output_dir: runs/x\ncredit_layers: [1, 2\nmax_steps: 3\n"


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    with pytest.raises(recipe_config.ConfigError, match=rf"{bad}, line 3, column 10: invalid YAML \(while parsing a "
                                                        r"flow sequence: expected ',' or '\]', but got ':'\)"):
        recipe_config.parse_config(_grpo_parser(), ["--config", str(bad)], exit_on_error=False)


def test_the_example_script_reports_a_yaml_error_with_the_file_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    proc = subprocess.run([sys.executable, "examples/train_grpo.py", "--config", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {bad}, line 3, column 10: invalid YAML" in proc.stderr


# ---------------------------------------------------------------- one parser and one main per recipe

EXAMPLES = {"grpo": "train_grpo.py", "ppo": "train_ppo.py", "avar": "train_grpo_avar.py", "site": "site_icl.py"}


def test_every_example_script_is_a_thin_call_of_its_recipes_main():
    assert sorted(p.name for p in (REPO / "examples").glob("*.py")) == sorted(EXAMPLES.values())
    assert set(EXAMPLES) == set(RECIPES)
    for recipe, script in EXAMPLES.items():
        tree = ast.parse((REPO / "examples" / script).read_text())
        docstring, *code = tree.body
        assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant), script
        dumped = [ast.unparse(node) for node in code]
        assert dumped == ["import sys", f"from attnrl.recipes.{recipe} import main",
                          "if __name__ == '__main__':\n    sys.exit(main())"], script


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_attnrl_train_runs_the_recipes_own_main(recipe, monkeypatch):
    module = recipe_module(recipe)
    assert module.RECIPE == recipe and callable(module.make_parser) and callable(module.run)
    calls = []
    monkeypatch.setattr(module, "main", lambda argv, **kw: calls.append((argv, kw)) or 0)
    assert cli.main(["train", "--recipe", recipe, "--max_steps", "3"]) == 0
    assert calls == [(["--max_steps", "3"], {"prog": "attnrl train", "traceback": False})]


def test_the_example_and_the_command_parse_with_the_same_parser(tmp_path):
    """Both spellings of every flag, and the Ray fields, are in the recipe's one parser."""
    import attnrl.recipes.grpo as grpo
    import attnrl.recipes.ppo as ppo

    for module in (grpo, ppo):
        options = {o for a in module.make_parser()._actions for o in a.option_strings}
        assert {"--max_steps", "--max-steps", "--num_workers", "--num-workers", "--use_gpu", "--cpus_per_worker",
                "--reward_actors", "--storage_path", "--eval_max_new_tokens", "--eval-max-new-tokens"} <= options
    job, args, ray_args = recipe_config.parse_config(
        ppo.make_parser(), [*_config(tmp_path, use_cpu=True, bf16=False), "--num-workers", "2", "--critic-mode",
                            "shared"], exit_on_error=False)
    assert (ray_args.workers, args.critic_mode, args.max_steps) == (2, "shared", 1)


@pytest.mark.parametrize("path", sorted((REPO / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse_with_the_recipe_they_name(path):
    recipe = cli.recipe_of(["--config", str(path)])
    values = recipe_config.parse_config(recipe_module(recipe).make_parser(), [str(path)], recipe=recipe,
                                        exit_on_error=False)  # a positional CONFIG.yaml works too
    for value in values:
        getattr(value, "validate", lambda: None)()


def test_a_config_of_another_recipe_is_refused(tmp_path):
    import attnrl.recipes.grpo as grpo

    config = _config(tmp_path, recipe="ppo")
    with pytest.raises(recipe_config.ConfigError, match=r"c\.yaml is a config of recipe 'ppo', not 'grpo'; run it "
                                                        r"with `attnrl train .*c\.yaml` \(or `--recipe ppo`\)"):
        recipe_config.parse_config(grpo.make_parser(), config, recipe="grpo", exit_on_error=False)


def test_a_field_check_at_parse_time_is_a_one_line_config_error(tmp_path, capsys):
    import attnrl.recipes.ppo as ppo

    assert ppo.main([*_config(tmp_path), "--max_steps", "-1", "--use_cpu"], prog="train_ppo.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train_ppo.py: error: max_steps=-1: AttnPPOTrainer counts rollout steps; set max_steps > 0"]


# ---------------------------------------------------------------- the job as runner phases


def test_run_calls_the_phases_in_order():
    order = []

    class Recorder(JobRunner):
        def setup(self):
            order.append("setup")

        def evaluate_before(self):
            order.append("evaluate_before")

        def build_trainer(self):
            order.append("build_trainer")

        def train(self):
            order.append("train")

        def finish(self, out_dir=None, extra=None):
            order.append("finish")
            return {"done": True}

    assert Recorder(job=None, args=None).run() == {"done": True}
    assert order == ["setup", "evaluate_before", "build_trainer", "train", "finish"]


class EventLog:
    """A TrainerCallback-like recorder of (event, global_step)."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda args, state, control, **kw: self.events.append((name, state.global_step))


def test_the_ppo_trainer_calls_trainer_callbacks_like_the_hf_trainer(tmp_path):
    from datasets import Dataset

    log = EventLog()
    args = AttnPPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                         max_completion_length=4, num_ppo_epochs=1, num_mini_batches=1, use_cpu=True, report_to=[],
                         save_strategy="steps", save_steps=1, credit_fai_lo=1, credit_fai_hi=4, credit_window=2,
                         disable_tqdm=True)
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": f"say {i}"}]} for i in range(4)])
    trainer = AttnPPOTrainer(model=tiny_causal_lm("llama"), reward_funcs=lambda completions, **kw: [1.0] * len(
        completions), args=args, train_dataset=rows, processing_class=tiny_tokenizer(), callbacks=[log])
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))  # not a checkpoint: no on_save
    assert log.events == [("on_train_begin", 0), ("on_step_begin", 0), ("on_step_end", 1), ("on_save", 1),
                          ("on_step_begin", 1), ("on_step_end", 2), ("on_log", 2), ("on_save", 2), ("on_train_end", 2)]



def test_a_callback_can_stop_ppo_training_early(tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback

    class StopAfterOne(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    args = AttnPPOConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, num_generations=2,
                         max_completion_length=4, num_ppo_epochs=1, num_mini_batches=1, use_cpu=True, report_to=[],
                         save_strategy="no", credit_fai_lo=1, credit_fai_hi=4, credit_window=2, disable_tqdm=True)
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": f"say {i}"}]} for i in range(4)])
    trainer = AttnPPOTrainer(model=tiny_causal_lm("llama"), reward_funcs=lambda completions, **kw: [1.0] * len(
        completions), args=args, train_dataset=rows, processing_class=tiny_tokenizer())
    trainer.add_callback(StopAfterOne)  # a class, as transformers.Trainer.add_callback takes
    assert trainer.train().global_step == 1

def test_the_learning_sweep_trains_each_cell_with_the_recipes_runner(tmp_path):
    from benchmarks.learning import sweep
    runner = sweep.cell_runner("countdown", "coupled_short", 2, sweep.SweepBudget(steps=3), tmp_path)
    assert isinstance(runner, GRPORunner) and type(runner).run is JobRunner.run
    assert (runner.args.max_steps, runner.args.seed, runner.args.credit_strategy, runner.args.credit_window) == \
        (3, 2, "coupled", 4)
    assert runner.job.task == "countdown" and runner.job.skip_eval_before
    train, held_out = runner.datasets()  # the benchmark's two-number Countdown
    assert len(held_out) == 200 and all(len(row["numbers"]) == 2 for row in train.select(range(20)))


# ---------------------------------------------------------------- AVAR and SITE end to end (tiny models)


@pytest.mark.slow
def test_avar_recipe_trains_a_tiny_vl_model_through_attnrl_train(tmp_path):
    out = tmp_path / "avar"
    argv = ["train", str(REPO / "examples" / "configs" / "avar_tiny_qwen2_vl.yaml"), "--max_steps", "1",
            "--train_size", "4", "--eval_size", "2", "--image_size", "56", "--per_device_train_batch_size", "4",
            "--num_generations", "2", "--max_completion_length", "6", "--eval_max_new_tokens", "4",
            "--tiny_num_layers", "2", "--output_dir", str(out)]
    assert cli.main(argv) == 0
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["algorithm"] == "avar" and results["train_steps"] == 1 and results["eval_size"] == 2
    assert 0 <= results["accuracy_before"] <= 1 and 0 < results["vas_before"] and 0 < results["vas_after"]
    log = json.loads((out / "report" / "log_history.json").read_text())
    assert any("avar/vas" in entry for entry in log)
    assert yaml.safe_load((out / "train_config.yaml").read_text())["recipe"] == "avar"


@pytest.mark.slow
def test_site_recipe_compares_zero_shot_icl_and_site_through_attnrl_train(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_causal_lm("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "site.json"
    argv = ["train", str(REPO / "examples" / "configs" / "site_smollm2.yaml"), "--model_name_or_path", str(model_dir),
            "--tasks", "next_in_sequence", "capital_city", "--n_prompts", "2", "--n_shots", "1", "--steps", "2",
            "--val_every", "1", "--val_size", "2", "--test_size", "2", "--max_new_tokens", "3",
            "--output_json", str(out), "--artifact_dir", str(tmp_path / "artifacts")]
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    assert [r["task"] for r in results["results"]] == ["next_in_sequence", "capital_city"]
    for row in results["results"]:
        assert set(row["accuracy"]) == {"zero_shot", "icl_1_shot", "site"} and row["n_test"] == 2
        assert [v["step"] for v in row["validation"]][-1] == 2
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} == {"site_next_in_sequence.safetensors",
                                                                    "site_capital_city.safetensors"}
