"""AttnPPOTrainer end to end on tiny models: the critic learns, checkpoints resume exactly, credit scales GAE."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel

from attnrl.algos import ppo_core
from attnrl.trainers.ppo import AttnPPOTrainer, completion_mask_until_eos, nan_mean
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer
from tests.conftest import prompt_dataset


def a_fraction_reward(completions, answer, **kwargs):
    """1 + the fraction of 'a' characters: nearly constant, so a critic can learn it."""
    texts = [c[0]["content"] for c in completions]
    assert len(answer) == len(texts)  # gold columns arrive repeated per completion
    return [1.0 + t.count("a") / max(1, len(t)) for t in texts]


def _dataset():
    return prompt_dataset(8, "say {i}", answers=True)


def _lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM")


@pytest.fixture
def ppo_trainer(ppo_args):
    """``make(output_dir=None, peft_config="lora", **overrides)``: AttnPPOTrainer on the tiny Llama."""

    def make(output_dir=None, peft_config="lora", **overrides):
        return AttnPPOTrainer(
            model=tiny_causal_lm("llama"), reward_funcs=a_fraction_reward, args=ppo_args(output_dir, **overrides),
            train_dataset=_dataset(), processing_class=tiny_tokenizer(),
            peft_config=_lora() if peft_config == "lora" else None,
        )

    return make


def _trainable(trainer):
    modules = {"policy": trainer.model, "critic": trainer.critic, "head": trainer.value_head}
    return {f"{m}.{n}": p.detach().clone() for m, mod in modules.items() if mod is not None
            for n, p in mod.named_parameters() if p.requires_grad}


def test_value_loss_falls_and_metrics_are_logged(ppo_trainer):
    trainer = ppo_trainer(max_steps=6, kl_coef=0.0, num_ppo_epochs=4, cliprange_value=10.0)
    trainer.train()
    log = trainer.state.log_history
    assert [e["step"] for e in log] == list(range(1, 7))
    value_losses = [e["loss/value"] for e in log]
    assert sum(value_losses[-2:]) / 2 < 0.25 * value_losses[0], value_losses
    assert abs(log[-1]["value/mean"] - log[-1]["reward"]) < 0.5 * log[0]["reward"]  # V(s) near the outcome
    for key in ("reward", "loss/policy", "loss/value", "policy/clipfrac", "value/clipfrac", "entropy",
                "credit/gamma_mean", "credit/amplified_frac", "rewards/a_fraction_reward/mean", "learning_rate"):
        assert key in log[0], key
    assert all(1.0 <= e["reward"] <= 2.0 for e in log)


@pytest.mark.parametrize(
    "critic_mode,peft_config,extra",
    [("separate", "lora", {"credit_head_profile": "cached"}), ("shared", "lora", {}), ("separate", None, {})],
)
def test_resume_continues_identically(ppo_trainer, tmp_path, critic_mode, peft_config, extra):
    """Train 3 steps with a checkpoint after step 2; a fresh trainer resuming from it must redo step 3 exactly."""
    kw = dict(critic_mode=critic_mode, max_steps=3, lr_scheduler_type="linear", **extra)
    straight = ppo_trainer(tmp_path, peft_config, save_strategy="steps", save_steps=2, **kw)
    straight.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]

    resumed = ppo_trainer(tmp_path, peft_config, **kw)
    resumed.train(resume_from_checkpoint=True)  # the latest checkpoint in output_dir

    assert resumed.state.global_step == 3
    for a, b in zip(straight.state.log_history, resumed.state.log_history, strict=True):
        for key in ("loss/policy", "loss/value", "reward", "objective/kl", "value/mean", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    params_a, params_b = _trainable(straight), _trainable(resumed)
    assert params_a.keys() == params_b.keys() and len(params_a) > 2
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], atol=1e-6, rtol=1e-5, msg=name)
    untrained = _trainable(ppo_trainer(tmp_path / "fresh", peft_config, **kw))
    assert any(not torch.equal(untrained[n], params_a[n]) for n in params_a), "nothing trained"


def test_saved_adapter_loads_with_peft(ppo_trainer, tmp_path):
    trainer = ppo_trainer(max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    for f in ("adapter_config.json", "adapter_model.safetensors", "training_state.pt", "rng_state_0.pt",
              "critic/adapter_model.safetensors", "critic/value_head.safetensors"):
        assert (tmp_path / "out" / f).exists(), f
    reloaded = PeftModel.from_pretrained(tiny_causal_lm("llama"), str(tmp_path / "out")).eval()
    ids = torch.randint(3, 100, (2, 9))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits)


def _first_rollout(ppo_trainer, tmp_path, strategy, **kw):
    trainer = ppo_trainer(tmp_path / strategy, credit_strategy=strategy, **kw)
    return trainer, trainer.make_rollout(trainer._next_prompts())


def test_uniform_is_plain_ppo_and_coupled_only_multiplies_by_gamma(ppo_trainer, tmp_path):
    _, plain = _first_rollout(ppo_trainer, tmp_path, "uniform")
    _, coupled = _first_rollout(ppo_trainer, tmp_path, "coupled")
    assert torch.equal(plain.completion_ids, coupled.completion_ids)  # same seed, same rollout
    m = plain.loss_mask
    gae, _ = ppo_core.compute_gae(plain.rewards, plain.values, m, gamma=1.0, lam=0.95)
    expected_plain = ppo_core.masked_whiten(gae, m)
    assert (plain.gamma == 1).all()
    torch.testing.assert_close(plain.advantages, expected_plain)
    assert (coupled.gamma[m] > 1).any() and (coupled.gamma[m] == 1).any()
    torch.testing.assert_close(coupled.advantages, expected_plain * coupled.gamma * m)
    torch.testing.assert_close(coupled.returns, plain.returns)  # the critic's targets are not reshaped


@pytest.mark.parametrize("strategy", ["entropy", "random", "global_anchor"])
def test_other_strategies_amplify_some_tokens(ppo_trainer, tmp_path, strategy):
    trainer, rollout = _first_rollout(ppo_trainer, tmp_path, strategy, credit_sign_mode="nonnegative")
    g, m = rollout.gamma, rollout.loss_mask
    assert (g[m] > 1).any() and (g[~m] == 1).all()
    gae, _ = ppo_core.compute_gae(rollout.rewards, rollout.values, m, 1.0, 0.95)
    plain = ppo_core.masked_whiten(gae, m)
    torch.testing.assert_close(rollout.advantages, torch.where(plain >= 0, plain * g, plain) * m)


def test_completion_mask_until_eos():
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 2, 0, 0]])
    assert completion_mask_until_eos(ids, eos_token_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("num_generations", 3, "per_device_train_batch_size=8 .* multiple of num_generations=3"),
        ("num_mini_batches", 3, "num_mini_batches=3 must be >= 1 and divide"),
        ("critic_mode", "twin", "critic_mode='twin'"),
        ("lam", 1.5, "lam=1.5"),
        ("max_steps", -1, "max_steps=-1"),
        ("gradient_accumulation_steps", 2, "set num_mini_batches instead"),
        ("credit_strategy", "cupled", "credit_strategy='cupled' is unknown"),
    ],
)
def test_bad_config_fails_at_construction(ppo_args, field, value, match):
    with pytest.raises(ValueError, match=match):
        ppo_args(**{field: value})


def test_run_ppo_job_on_a_tiny_model(ppo_args, tmp_path):
    from attnrl.recipes.ppo import PPOJobArguments, run_ppo_job

    model_dir = tmp_path / "tiny"
    tiny_causal_lm("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    job = PPOJobArguments(model_name_or_path=str(model_dir), train_size=16, eval_size=4, eval_batch_size=4,
                          eval_max_new_tokens=6, lora_r=4, lora_alpha=8)
    results = run_ppo_job(job, ppo_args(tmp_path / "run", max_steps=1))
    assert results["algorithm"] == "ppo" and results["train_steps"] == 1 and results["eval_size"] == 4
    assert 0.0 <= results["accuracy_before"] <= 1.0 and 0.0 <= results["accuracy_after"] <= 1.0
    for f in ("report/results.json", "report/report.md", "report/reward_curve.png", "report/rhythm.html",
              "adapter/adapter_model.safetensors", "adapter/critic/value_head.safetensors"):
        assert (tmp_path / "run" / f).exists(), f


def test_rollout_samples_from_the_distribution_whose_log_probs_it_trains(ppo_args):
    """The model ships a generation_config with logits processors (as instruct checkpoints do); the rollout must
    ignore them: the sampler's processed scores are exactly softmax(logits / temperature) of the trainer's forward."""
    model = tiny_causal_lm("llama")
    shipped = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_p=0.2, typical_p=0.9, top_k=5,
                   suppress_tokens=[40, 41], min_new_tokens=3, epsilon_cutoff=0.01)
    model.generation_config.update(**shipped)
    trainer = AttnPPOTrainer(model=model, reward_funcs=a_fraction_reward, train_dataset=_dataset(),
                             args=ppo_args(temperature=0.7, max_completion_length=8),
                             processing_class=tiny_tokenizer(), peft_config=_lora())
    scores, generate = [], trainer.model.generate

    def generate_recording_scores(generation_config, **kwargs):
        config = copy.deepcopy(generation_config)
        config.output_scores = config.return_dict_in_generate = True
        out = generate(generation_config=config, **kwargs)
        scores.append(torch.stack(out.scores, 1))  # (B, Tc, V) the sampler's processed logits
        return out.sequences

    trainer.model.generate = generate_recording_scores
    rollout = trainer.make_rollout(trainer._next_prompts())
    m = rollout.completion_mask.bool()
    sampler = torch.log_softmax(scores[0].float(), -1)
    sampled = sampler.gather(-1, rollout.completion_ids[..., None]).squeeze(-1)
    assert m.sum() > 8
    torch.testing.assert_close(sampled[m], rollout.logprobs[m], atol=1e-4, rtol=1e-4)
    entropy = -(sampler.exp() * sampler.nan_to_num(neginf=0.0)).sum(-1)
    torch.testing.assert_close(entropy[m], rollout.entropy[m], atol=1e-4, rtol=1e-4)  # the whole distribution
    assert {k: getattr(trainer.model.get_base_model().generation_config, k) for k in shipped} == shipped  # restored


def test_nan_mean_ignores_nan_and_is_quiet_when_all_are_nan():
    import math
    import warnings

    assert nan_mean([1.0, float("nan"), 3.0]) == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would raise here
        assert math.isnan(nan_mean([float("nan"), float("nan")]))
