"""The recipes' and example scripts' config handling: every check before any model work, CPU-safe precision
defaults, YAML errors that name the file."""

import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest
import transformers.training_args
import yaml
from trl import TrlParser

import attnrl.recipes.grpo as grpo_recipe
from attnrl.recipes import config as recipe_config
from attnrl.recipes.grpo import GRPOJobArguments, run_grpo_job
from attnrl.recipes.ppo import PPOJobArguments, run_ppo_job
from attnrl.trainers.grpo import AttnGRPOConfig
from attnrl.trainers.ppo import AttnPPOConfig
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=4, max_steps=1, bf16=False,
             use_cpu=True, report_to=[], save_strategy="no")


@pytest.fixture
def model_work(monkeypatch):
    """Replace the recipe's model loading (a 4-layer tiny model), evaluator and trainer by recorders."""
    calls = []
    monkeypatch.setattr(grpo_recipe, "load_model_and_tokenizer",
                        lambda name: calls.append("load") or (tiny_causal_lm("llama"), tiny_tokenizer()))

    def evaluator(job, tokenizer, eval_set):
        return lambda model, desc: calls.append("evaluate") or types.SimpleNamespace(accuracy=0.0)

    def trainer(*args, **kwargs):
        calls.append("trainer")
        raise RuntimeError("trainer reached")

    monkeypatch.setattr(grpo_recipe, "held_out_evaluator", evaluator)
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
        monkeypatch.setattr(grpo_recipe, "AttnGRPOTrainer", trainer)
        job = GRPOJobArguments(model_name_or_path="tiny", train_size=4, eval_size=2)
        run = lambda: run_grpo_job(job, AttnGRPOConfig(output_dir=str(tmp_path), credit_layers=[1, 4], **SMALL))  # noqa: E731
    else:
        monkeypatch.setattr("attnrl.recipes.ppo.AttnPPOTrainer", trainer)
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
