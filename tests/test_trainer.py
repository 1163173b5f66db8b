"""AttnGRPOTrainer on tiny models: drop-in for trl.GRPOTrainer, every loss type, peft, accumulation, errors."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig

from attnrl import AttnGRPOTrainer
from attnrl.attention.capture import CaptureError
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer


def test_advantages_become_token_level_and_weights_are_logged(grpo_trainer):
    trainer = grpo_trainer()
    trainer.train()
    credit = trainer.last_credit
    assert credit.gamma.shape == (4, 12) and credit.gamma.max() > 1.0
    logged = {k for entry in trainer.state.log_history for k in entry}
    for key in ("credit/amplified_frac", "credit/gamma_mean", "credit/waad_mean", "credit/fai_mean"):
        assert key in logged
    amplified = [e["credit/amplified_frac"] for e in trainer.state.log_history if "credit/amplified_frac" in e]
    assert 0.0 < amplified[0] <= 1.0


def _rollout(trainer):
    batch = [{"prompt": [{"role": "user", "content": "add 3 and 1"}]}] * 4
    torch.manual_seed(0)
    return trainer._generate_and_score_completions(batch)


def _assert_gamma_times_group_advantage(advantages, group_adv, gamma, mask):
    """Each row is its group advantage A_i times gamma_t on response tokens, A_i on padding."""
    want = group_adv[:, None] * torch.where(mask, gamma, torch.ones_like(gamma))
    torch.testing.assert_close(advantages, want)


def test_separate_pass_returns_gamma_times_group_advantage(grpo_trainer):
    trainer = grpo_trainer(credit_stats_pass="separate")
    trainer.credit.generator.manual_seed(0)
    out = _rollout(trainer)
    assert out["advantages"].shape == out["completion_ids"].shape
    gamma, mask = trainer.last_credit.gamma, out["completion_mask"].bool()
    assert gamma.max() > 1
    group_adv = out["advantages"][:, 0] / gamma[:, 0]
    _assert_gamma_times_group_advantage(out["advantages"], group_adv, gamma, mask)


def test_on_policy_statistics_come_from_the_loss_forward_and_match_a_separate_pass(grpo_trainer):
    trainer = grpo_trainer()
    out = _rollout(trainer)
    assert out["advantages"].shape == (4,) and "old_per_token_logps" not in out  # deferred to the loss forward
    model = trainer.accelerator.unwrap_model(trainer.model)
    separate = trainer.credit.assign(model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"],
                                     out["completion_mask"])
    group_adv = out["advantages"].clone()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop in a real run
    loss = trainer._compute_loss(trainer.model, out)
    assert torch.isfinite(loss)
    fused = trainer.last_credit
    torch.testing.assert_close(fused.waad, separate.waad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.fai, separate.fai, atol=1e-6, rtol=1e-5, equal_nan=True)
    assert torch.equal(fused.gamma, separate.gamma)
    _assert_gamma_times_group_advantage(out["advantages"], group_adv, fused.gamma, out["completion_mask"].bool())


def test_multiple_iterations_shape_advantages_at_scoring_time(grpo_trainer):
    trainer = grpo_trainer(num_iterations=2)
    out = _rollout(trainer)
    assert "old_per_token_logps" in out and out["advantages"].shape == out["completion_ids"].shape


class RecordingTrainer(AttnGRPOTrainer):
    """Records, on every loss computation, the batch (by identity), its advantages as the loss reads them (right
    after the loss forward, where TRL reads them), the group advantages on the batch's first use, and gamma."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.uses: list[dict] = []
        self._loss_inputs = None
        self._first_seen: dict[int, torch.Tensor] = {}

    def _compute_loss(self, model, inputs):
        self._first_seen.setdefault(id(inputs), inputs["advantages"].clone())
        self._loss_inputs = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_inputs = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._loss_inputs is not None and torch.is_grad_enabled():  # the loss forward; TRL reads A next
            batch = self._loss_inputs
            self.uses.append({"batch": id(batch), "advantages": batch["advantages"].clone(),
                              "group": self._first_seen[id(batch)], "gamma": self.last_credit.gamma.clone(),
                              "mask": batch["completion_mask"].bool()})
        return out


@pytest.mark.parametrize("credit_stats_pass", ["auto", "separate"])
def test_reused_rollout_batch_is_shaped_once_on_every_use(grpo_trainer, credit_stats_pass):
    """num_iterations=2 with accumulation 2 and steps_per_generation 1: TRL computes no old log-probs (on-policy)
    and hands the same buffered batch to the loss twice in one optimizer step; both uses must see gamma * A."""
    trainer = grpo_trainer(trainer_cls=RecordingTrainer, max_steps=2, num_iterations=2, gradient_accumulation_steps=2,
                           steps_per_generation=1, credit_stats_pass=credit_stats_pass)
    trainer.train()
    assert len(trainer.uses) == 4
    assert [u["batch"] for u in trainer.uses[::2]] == [u["batch"] for u in trainer.uses[1::2]]  # each used twice
    for first, second in zip(trainer.uses[::2], trainer.uses[1::2]):
        torch.testing.assert_close(second["advantages"], first["advantages"])
    if credit_stats_pass == "separate":  # shaped once at scoring time (before TRL shuffles the rows)
        assert all(u["group"].shape == u["advantages"].shape == (4, 12) for u in trainer.uses)
        return
    for use in trainer.uses:  # on-policy: gamma from this loss forward, applied to the unshaped A (B,)
        assert use["group"].shape == (4,) and use["group"].abs().max() > 0 and use["gamma"].max() > 1
        _assert_gamma_times_group_advantage(use["advantages"], use["group"], use["gamma"], use["mask"])


def test_applying_credit_twice_is_idempotent(grpo_trainer):
    trainer = grpo_trainer(credit_stats_pass="separate")
    out = _rollout(trainer)
    shaped, result = out["advantages"].clone(), trainer.last_credit
    trainer._apply_credit(out, result, "train")
    torch.testing.assert_close(out["advantages"], shaped)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"])
def test_every_trl_loss_type_trains(grpo_trainer, loss_type):
    kw = {"importance_sampling_level": "sequence"} if loss_type == "luspo" else {}
    trainer = grpo_trainer(loss_type=loss_type, **kw)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_peft_lora_grad_accumulation_and_multiple_iterations(grpo_trainer, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = grpo_trainer(max_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=2, num_iterations=2,
                           credit_head_profile="cached", trainer_kwargs={"peft_config": lora})
    lora_before = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and not torch.equal(p, lora_before[n])]
    assert changed, "LoRA weights did not move"
    assert trainer.credit.profile is not None  # cached after the first batch
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_gradient_accumulation_on_policy_takes_statistics_from_each_micro_batch_forward(grpo_trainer):
    trainer = grpo_trainer(max_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "credit/amplified_frac" in e]
    # the generation batch holds 4 completions; statistics from the loss forward cover one micro-batch of 2
    assert len(logged) == 2 and trainer.last_credit.gamma.shape == (2, 12)


@pytest.mark.parametrize("strategy", ["uniform", "random", "entropy", "local_chunk", "global_anchor"])
def test_other_strategies_train(grpo_trainer, strategy):
    trainer = grpo_trainer(credit_strategy=strategy)
    trainer.train()
    g = trainer.last_credit.gamma
    assert (g == 1).all() if strategy == "uniform" else (g > 1).any()


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("credit_strategy", "cupled", "credit_strategy='cupled' is unknown"),
        ("credit_top_q", 0.0, r"credit_top_q=0.0 must lie in \(0, 1\]"),
        ("credit_top_q", 1.5, "credit_top_q"),
        ("credit_sign_mode", "pos", "credit_sign_mode"),
        ("credit_fai_hi", 0, "credit_fai_lo"),
    ],
)
def test_bad_config_fails_at_construction(grpo_args, field, value, match):
    with pytest.raises(ValueError, match=match):
        grpo_args(**{field: value})


def test_layers_out_of_range_fail_at_trainer_construction(grpo_trainer):
    with pytest.raises(ValueError, match=r"credit_layers=\[1, 9\].*0\.\.3"):
        grpo_trainer(credit_layers=[1, 9])


def test_uncapturable_model_fails_at_construction(grpo_trainer):
    model = tiny_causal_lm("llama")
    # a model whose layer 1 bypasses AttentionInterface (as hand-written attention code would)
    attn = model.model.layers[1].self_attn
    orig = attn.forward

    def custom_forward(hidden_states, *args, **kwargs):  # e.g. a hand-written attention kernel
        attn.config._attn_implementation = "sdpa"
        try:
            return orig(hidden_states, *args, **kwargs)
        finally:
            attn.config._attn_implementation = "attnrl_sdpa"

    attn.forward = custom_forward
    with pytest.raises(CaptureError, match="credit_strategy='coupled'.*layers \\[1\\]"):
        grpo_trainer(model, credit_layers=[1, 2])


TRL_DOCS_STYLE_SCRIPT = """
# Written the way TRL's documentation writes a GRPO script; only the import line differs between the runs.
from datasets import load_dataset
{import_line}

dataset = load_dataset("json", data_files="{data}", split="train")

# Dummy reward function: count the number of unique characters in the completions
def reward_num_unique_chars(completions, **kwargs):
    return [len(set(c[0]["content"])) for c in completions]

training_args = GRPOConfig(output_dir="{out}", max_steps=2, per_device_train_batch_size=4, num_generations=4,
                           max_completion_length=8, report_to="none", use_cpu=True, bf16=False)
trainer = GRPOTrainer(
    model="{model}",
    reward_funcs=reward_num_unique_chars,
    args=training_args,
    train_dataset=dataset,
)
trainer.train()
print("TRAINED", type(trainer).__name__, trainer.state.global_step)
"""


@pytest.mark.parametrize(
    "import_line",
    ["from trl import GRPOConfig, GRPOTrainer",
     "from trl import GRPOConfig\nfrom attnrl import AttnGRPOTrainer as GRPOTrainer"],
)
def test_drop_in_for_a_trl_documentation_script(tmp_path, import_line):
    model_dir = tmp_path / "model"
    tiny_causal_lm("qwen2").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": [{"role": "user", "content": f"say {i}"}]}) for i in range(8)))
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRL_DOCS_STYLE_SCRIPT.format(
        import_line=import_line, data=data, out=tmp_path / "out", model=model_dir)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = "AttnGRPOTrainer" if "attnrl" in import_line else "GRPOTrainer"
    assert f"TRAINED {expected} 2" in proc.stdout


def test_logits_processors_inherited_from_the_model_are_reported(grpo_trainer, tmp_path, caplog):
    """TRL's loss models softmax(logits / T): a rollout that inherits an n-gram ban or a typical-p cut-off from the
    model's generation_config samples from another distribution, and the trainer says so (naming the fix)."""
    model = tiny_causal_lm()
    model.generation_config.no_repeat_ngram_size = 2
    model.generation_config.typical_p = 0.9
    with caplog.at_level("WARNING", logger="attnrl.trainers.sampling"):
        trainer = grpo_trainer(model)
    assert trainer.inherited_logits_processing == {"no_repeat_ngram_size": 2, "typical_p": 0.9}
    assert "no_repeat_ngram_size=2" in caplog.text and "generation_kwargs" in caplog.text

    neutralised = grpo_trainer(model, output_dir=tmp_path / "b",
                               generation_kwargs={"no_repeat_ngram_size": 0, "typical_p": 1.0})
    assert neutralised.inherited_logits_processing == {}
