"""AttnPPOTrainer keeps its word (issue 25, item 6): every config field is implemented, refused when set, or
irrelevant with a reason (attnrl/trainers/ppo_fields.py); evaluation, activation checkpointing and save_total_limit
work as in the HF Trainer."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from transformers import TrainerCallback

from attnrl.trainers.ppo import AttnPPOConfig, AttnPPOTrainer
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer
from tests.conftest import length_reward, prompt_dataset

REPO = Path(__file__).resolve().parents[1]


def _lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM")


@pytest.fixture
def make_trainer(ppo_args):
    """``make(output_dir=None, eval_dataset=None, callbacks=None, **overrides)``: AttnPPOTrainer (LoRA) on the tiny
    Llama, 8 completions of at most 10 tokens per step."""

    def make(output_dir=None, eval_dataset=None, callbacks=None, **overrides):
        kwargs = {} if eval_dataset is None else {"eval_dataset": eval_dataset}
        return AttnPPOTrainer(model=tiny_causal_lm("llama"), reward_funcs=length_reward,
                              args=ppo_args(output_dir, **overrides), train_dataset=prompt_dataset(8),
                              processing_class=tiny_tokenizer(), peft_config=_lora(), callbacks=callbacks, **kwargs)

    return make


# ---------------------------------------------------------------- the reviewed list of fields


def test_every_config_field_is_implemented_refused_or_irrelevant_exactly_once():
    from attnrl.trainers.ppo_fields import IMPLEMENTED, IRRELEVANT, REFUSED

    lists = {"IMPLEMENTED": set(IMPLEMENTED), "REFUSED": set(REFUSED), "IRRELEVANT": set(IRRELEVANT)}
    fields = {f.name for f in dataclasses.fields(AttnPPOConfig)}
    assert not fields - set().union(*lists.values()), "classify these in attnrl/trainers/ppo_fields.py"
    assert not set().union(*lists.values()) - fields, "no longer fields of AttnPPOConfig"
    for a in lists:
        for b in lists:
            assert a == b or not lists[a] & lists[b], (a, b, lists[a] & lists[b])
    assert all(IMPLEMENTED.values()) and all(IRRELEVANT.values()) and all(reason for _, reason in REFUSED.values())


def _other_value(accepted: tuple):
    """A value outside ``accepted``."""
    first = next((a for a in accepted if a is not None), None)
    if isinstance(first, bool):
        return not first
    if isinstance(first, (int, float)):
        return first + 1
    if isinstance(first, str):
        return first + "_other"
    return ["x"] if isinstance(first, list) else "x"


def _refused_names():
    try:
        from attnrl.trainers.ppo_fields import REFUSED
    except ImportError:  # before the list existed: one failing case instead of a collection error
        return ["<attnrl.trainers.ppo_fields is missing>"]
    return sorted(REFUSED)


@pytest.mark.parametrize("name", _refused_names())
def test_every_refused_field_is_refused_when_set_naming_it_and_the_reason(ppo_args, name):
    from attnrl.trainers.ppo_fields import REFUSED

    accepted, reason = REFUSED[name]
    args = ppo_args()
    args.validate_ppo()  # the defaults are accepted
    value = _other_value(accepted)
    setattr(args, name, value)  # as if set in the YAML (TrainingArguments' own checks left aside)
    with pytest.raises(ValueError) as e:
        args.validate_ppo()
    assert str(e.value).startswith(f"{name}={value!r} is not supported by AttnPPOTrainer: {reason}")


@pytest.mark.parametrize("field, value, match", [
    ("report_to", ["tensorboard"], r"report_to=\['tensorboard'\] is not supported by AttnPPOTrainer: .*log_history"),
    ("fp16", True, "fp16=True is not supported by AttnPPOTrainer: use bf16"),
    ("push_to_hub", True, "push_to_hub=True is not supported"),
    ("eval_strategy", "epoch", "eval_strategy='epoch': AttnPPOTrainer counts rollout steps"),
    ("logging_strategy", "no", "logging_strategy='no'"),
    ("gradient_accumulation_steps", 2, "set num_mini_batches instead"),
])
def test_refused_fields_fail_when_the_config_is_built(ppo_args, field, value, match):
    with pytest.raises(ValueError, match=match):
        ppo_args(**{field: value})


def test_implemented_fields_are_read_by_the_trainer():
    """Each implemented field outside the credit settings is read in attnrl/trainers/ppo.py (args.<field>)."""
    from attnrl.trainers.ppo_fields import IMPLEMENTED

    source = (REPO / "attnrl" / "trainers" / "ppo.py").read_text()
    elsewhere = {"tf32": "TrainingArguments.__post_init__", "gradient_checkpointing": "alias",
                 "gradient_checkpointing_kwargs": "alias", "eval_delay": "DefaultFlowCallback",
                 "eval_steps": "DefaultFlowCallback (state.eval_steps, set from args.eval_steps)",
                 "warmup_steps": "args.get_warmup_steps"}
    for name, how in IMPLEMENTED.items():
        if name.startswith("credit_") or name in elsewhere:
            continue
        assert re.search(rf"\.{name}\b", source), f"{name} ({how}) is not read in ppo.py"


# ---------------------------------------------------------------- evaluation


class _Recorder(TrainerCallback):
    def __init__(self):
        self.evaluations = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append((state.global_step, dict(metrics)))


def test_evaluation_runs_on_the_eval_schedule_and_logs_eval_metrics(make_trainer, tmp_path):
    recorder = _Recorder()
    trainer = make_trainer(tmp_path / "a", eval_dataset=prompt_dataset(3, "eval {i}"), callbacks=[recorder],
                           max_steps=3, eval_strategy="steps", eval_steps=2, eval_on_start=True,
                           per_device_eval_batch_size=5)
    trainer.train()
    # at the start, every eval_steps, and at the last step (as the HF Trainer's DefaultFlowCallback)
    assert [step for step, _ in recorder.evaluations] == [0, 2, 3]
    entries = [e for e in trainer.state.log_history if "eval_reward" in e]
    assert [e["step"] for e in entries] == [0, 2, 3]
    for entry in entries:
        assert {"eval_reward", "eval_reward_std", "eval_rewards/length_reward/mean", "eval_completions/mean_length",
                "eval_runtime"} <= set(entry)
        assert 0.0 <= entry["eval_reward"] <= 4.0  # length_reward is a length modulo 5
    # evaluation samples from its own generator: the training run is the one without evaluation
    plain = make_trainer(tmp_path / "b", max_steps=3)
    plain.train()
    train_logs = [e for e in trainer.state.log_history if "eval_reward" not in e]
    assert [e["reward"] for e in train_logs] == [e["reward"] for e in plain.state.log_history]
    # evaluate() by hand, on a dict of datasets
    metrics = trainer.evaluate({"a": prompt_dataset(2, "a {i}"), "b": prompt_dataset(2, "b {i}")})
    assert {"eval_a_reward", "eval_b_reward"} <= set(metrics)


def test_eval_settings_without_an_eval_dataset_are_refused_at_construction(make_trainer):
    for setting in (dict(eval_strategy="steps", eval_steps=1), dict(eval_on_start=True)):
        with pytest.raises(ValueError, match="evaluate on an eval_dataset: pass eval_dataset= to AttnPPOTrainer"):
            make_trainer(**setting)
    with pytest.raises(ValueError, match=r"eval_dataset needs a 'prompt' column"):
        make_trainer(eval_dataset=prompt_dataset(2).rename_column("prompt", "question"))


# ---------------------------------------------------------------- activation checkpointing


def _trainable(trainer):
    modules = {"policy": trainer.model, "critic": trainer.critic, "head": trainer.value_head}
    return {f"{m}.{n}": p.detach().clone() for m, mod in modules.items() for n, p in mod.named_parameters()
            if p.requires_grad}


def test_gradient_checkpointing_is_enabled_on_policy_and_critic_and_trains_the_same(make_trainer, tmp_path):
    checkpointed = make_trainer(tmp_path / "gc", gradient_checkpointing=True, max_steps=1)
    assert checkpointed.model.get_base_model().is_activation_checkpointing
    assert checkpointed.critic.get_base_model().is_activation_checkpointing
    checkpointed.train()
    plain = make_trainer(tmp_path / "plain", max_steps=1)
    assert not plain.model.get_base_model().is_activation_checkpointing
    plain.train()
    a, b = _trainable(checkpointed), _trainable(plain)
    assert a.keys() == b.keys()
    init = _trainable(make_trainer(tmp_path / "init"))
    moved = [n for n in a if "lora" in n and not torch.equal(a[n], init[n])]
    assert moved  # the LoRA weights trained through the checkpointed layers
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- checkpoint rotation


def test_save_total_limit_keeps_only_the_newest_checkpoints(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    resumed = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2)
    resumed.train(resume_from_checkpoint=True)  # the newest is kept whole: it resumes
    assert resumed.state.global_step == 4


# ---------------------------------------------------------------- smaller fields


def test_data_seed_lr_scheduler_kwargs_logging_first_step_and_log_level(make_trainer, tmp_path):
    import transformers

    base = make_trainer(tmp_path / "a")
    other = make_trainer(tmp_path / "b", data_seed=123)
    assert [r["prompt"] for r in base._next_prompts()] != [r["prompt"] for r in other._next_prompts()]
    cosine = make_trainer(tmp_path / "d", lr_scheduler_type="cosine_with_min_lr",
                          lr_scheduler_kwargs={"min_lr": 1e-4}, max_steps=1)
    for _ in range(cosine.args.num_ppo_epochs * cosine.args.num_mini_batches):
        cosine.optimizer.step()
        cosine.lr_scheduler.step()
    assert cosine.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-4)
    first = make_trainer(tmp_path / "e", logging_steps=5, logging_first_step=True, max_steps=3)
    first.state.global_step = 1
    first._step_metrics["reward"].append(1.0)
    assert first._finish_step()[1] is not None
    before = transformers.utils.logging.get_verbosity()
    try:
        make_trainer(tmp_path / "f", log_level="error")
        assert transformers.utils.logging.get_verbosity() == transformers.logging.ERROR
    finally:
        transformers.utils.logging.set_verbosity(before)


# ---------------------------------------------------------------- the recipe


def test_the_ppo_recipe_evaluates_on_the_held_out_split_when_the_config_asks(ppo_args, tmp_path):
    from attnrl.recipes.ppo import PPOJobArguments, run_ppo_job

    model_dir = tmp_path / "tiny"
    tiny_causal_lm("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    job = PPOJobArguments(model_name_or_path=str(model_dir), train_size=16, eval_size=2, eval_batch_size=2,
                          eval_max_new_tokens=4, lora_r=4, lora_alpha=8, skip_eval_before=True)
    results = run_ppo_job(job, ppo_args(tmp_path / "run", max_steps=1, eval_strategy="steps", eval_steps=1))
    assert results["train_steps"] == 1
    log_history = json.loads((tmp_path / "run" / "report" / "log_history.json").read_text())
    assert [e["step"] for e in log_history if "eval_reward" in e] == [1]
