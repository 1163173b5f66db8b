"""The error boundary of `attnrl train` and the recipe scripts: a configuration mistake is one line and exit status
2, before any model work; a failure once training runs is exit status 1 with its traceback and a one-line hint,
and everything saved before it (checkpoints, the resolved config) stays. Plotting lives in attnrl.report."""

from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from attnrl import cli
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

RUN = {  # 3 GRPO steps on the tiny model, a checkpoint after every step (seconds)
    "task": "arithmetic", "train_size": 12, "eval_size": 2, "eval_max_new_tokens": 4, "eval_batch_size": 2,
    "skip_eval_before": True, "lora_r": 4, "lora_alpha": 8, "credit_strategy": "uniform", "max_steps": 3,
    "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 6, "logging_steps": 1,
    "save_strategy": "steps", "save_steps": 1, "report_to": "none", "use_cpu": True, "bf16": False, "seed": 0,
}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_causal_lm("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def _config(tmp_path: Path, model: str, **fields) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**RUN, "model_name_or_path": model, "output_dir": str(tmp_path / "run"),
                                    **fields}))
    return path


def test_a_config_error_is_one_line_with_status_2_before_any_model_work(tmp_path, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr("attnrl.recipes.task.load_model_and_tokenizer", lambda *a: loads.append(a))
    config = _config(tmp_path, "not/loaded", credit_strategy="cupled")
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attnrl train: error: credit_strategy='cupled' is unknown (did you mean 'coupled'?); choose one of "
                   "'uniform', 'random', 'entropy', 'local_chunk', 'global_anchor', 'coupled' or an import path "
                   "'module:function'"]
    assert cli.main(["train", str(_config(tmp_path, "not/loaded", eval_size=0))]) == 2  # a job field's own check
    assert capsys.readouterr().err.strip().splitlines() == ["attnrl train: error: eval_size=0 must be >= 1"]
    assert loads == []


def test_a_model_that_cannot_be_loaded_is_a_config_error(tmp_path, capsys):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    for model in (empty, tmp_path / "missing"):
        assert cli.main(["train", str(_config(tmp_path, str(model)))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"attnrl train: error: model_name_or_path='{model}' could not be "
                                                   "loaded: "), err


class DiskFullAtStep(TrainerCallback):
    """Raises OSError when optimizer step ``step`` begins (the checkpoints of the steps before it are saved)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise OSError(28, "No space left on device")


def test_a_failure_during_training_is_status_1_with_the_traceback_and_keeps_the_checkpoints(
        tmp_path, tiny_model_dir, monkeypatch, capsys):
    from attnrl.recipes.grpo import GRPORunner

    build_trainer = GRPORunner.build_trainer

    def build_trainer_that_fails_at_step_2(self):
        build_trainer(self)
        self.trainer.add_callback(DiskFullAtStep(2))

    monkeypatch.setattr(GRPORunner, "build_trainer", build_trainer_that_fails_at_step_2)
    run = tmp_path / "run"
    assert cli.main(["train", str(_config(tmp_path, tiny_model_dir))]) == 1

    err = capsys.readouterr().err.strip()
    assert "Traceback (most recent call last)" in err and "OSError: [Errno 28] No space left on device" in err
    assert "in on_step_begin" in err  # the traceback shows where
    assert err.splitlines()[-1] == (
        "attnrl train: error: the run failed (OSError: [Errno 28] No space left on device); the traceback above "
        f"shows where. Everything saved so far is kept in {run}: 1 checkpoint(s), the latest {run / 'checkpoint-1'}, "
        "and the logs.")
    assert (run / "checkpoint-1" / "adapter_model.safetensors").is_file()  # saved before the failure, still there
    assert (run / "checkpoint-1" / "trainer_state.json").is_file() and (run / "train_config.yaml").is_file()
    assert not (run / "checkpoint-2").exists() and not (run / "adapter").exists()


def test_traceback_flag_raises_the_training_failure(tmp_path, monkeypatch):
    from attnrl.recipes import grpo

    def failing_run(*values):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(grpo, "run", failing_run)
    config = _config(tmp_path, "not/loaded")
    with pytest.raises(RuntimeError, match="boom in training"):
        cli.main(["train", str(config), "--traceback"])
    assert cli.main(["train", str(config)]) == 1


def test_plotting_lives_in_the_report_module():
    from attnrl import report

    source = Path(cli.__file__).read_text()
    assert "matplotlib" not in source and "def plot_" not in source
    assert callable(report.plot_head_map) and callable(report.analysis_page)
