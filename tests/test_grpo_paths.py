"""AttnGRPOTrainer off-policy (statistics from TRL's old log-prob forward), exact resume, evaluation and the
embedded default model by name."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnrl.trainers.grpo import AttnGRPOTrainer

README = Path(__file__).resolve().parents[1] / "README.md"


def _rollout(trainer, n=4):
    batch = [{"prompt": [{"role": "user", "content": f"add {i % 2} and 1"}]} for i in range(n)]
    torch.manual_seed(0)
    return trainer._generate_and_score_completions(batch)


class FullForwardCounter:
    """Counts rows of full [prompt; completion] forwards of a model (generation's prefill and decode steps are
    shorter), through a forward pre-hook."""

    def __init__(self, model):
        self.lengths: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(tuple(ids.shape))

    def rows_of_length(self, T: int) -> int:
        return sum(b for b, t in self.lengths if t == T)


@pytest.mark.parametrize("overrides", [dict(num_iterations=2),
                                       dict(per_device_train_batch_size=2, steps_per_generation=2)],
                         ids=["num_iterations", "steps_per_generation_micro_batched"])
def test_off_policy_statistics_come_from_trls_old_logprob_forward(grpo_trainer, overrides):
    """TRL computes old log-probs here; the gamma recorded during that forward (micro-batched by TRL in the second
    case) equals a separate statistics pass's on the same batch, and only that one full forward runs."""
    trainer = grpo_trainer(**overrides)
    model = trainer.accelerator.unwrap_model(trainer.model)
    counter = FullForwardCounter(model)
    out = _rollout(trainer)
    counter.handle.remove()
    assert "old_per_token_logps" in out and out["advantages"].shape == out["completion_ids"].shape
    T = out["prompt_ids"].shape[1] + out["completion_ids"].shape[1]
    assert counter.rows_of_length(T) == out["prompt_ids"].shape[0]  # one forward over the batch: TRL's
    fused = trainer.last_credit
    separate = trainer.credit.assign(model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"],
                                     out["completion_mask"])
    torch.testing.assert_close(fused.waad, separate.waad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.fai, separate.fai, atol=1e-6, rtol=1e-5, equal_nan=True)
    assert torch.equal(fused.gamma, separate.gamma) and fused.gamma.max() > 1


def test_off_policy_gamma_equals_the_separate_pass_trainer(grpo_trainer, tmp_path):
    """Same model, seed and batch: credit_stats_pass="auto" (TRL's forward) and "separate" give the same gamma and
    the same shaped advantages with num_iterations=2."""
    results = {}
    for stats_pass in ("auto", "separate"):
        trainer = grpo_trainer(num_iterations=2, credit_stats_pass=stats_pass, output_dir=tmp_path / stats_pass)
        model = trainer.accelerator.unwrap_model(trainer.model)
        counter = FullForwardCounter(model)
        out = _rollout(trainer)
        counter.handle.remove()
        T = out["prompt_ids"].shape[1] + out["completion_ids"].shape[1]
        results[stats_pass] = (out, trainer.last_credit, counter.rows_of_length(T))
    (a, ca, rows_a), (b, cb, rows_b) = results["auto"], results["separate"]
    assert torch.equal(a["completion_ids"], b["completion_ids"])
    assert torch.equal(ca.gamma, cb.gamma)
    torch.testing.assert_close(a["advantages"], b["advantages"])
    assert rows_a == 4 and rows_b == 8  # the separate pass pays a second forward; the default does not


# grad_norm depends on which tokens were amplified, also where the loss does not (equal-length responses of the
# random strategy all get ceil(q * n) amplified tokens, so their losses cancel across the group alike)
def _losses(trainer, keys=("loss", "grad_norm", "credit/amplified_frac", "credit/local_head_distance",
                           "credit/gamma_mean")):
    return [{k: e[k] for k in keys if k in e} for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("credit", [dict(credit_head_profile="cached"), dict(credit_head_profile="per_batch"),
                                    dict(credit_strategy="random")], ids=["cached", "per_batch", "random"])
def test_resume_trains_on_the_losses_of_the_uninterrupted_run(grpo_trainer, tmp_path, credit):
    common = dict(max_steps=4, learning_rate=1e-2, save_strategy="steps", save_steps=2, **credit)
    full = grpo_trainer(output_dir=tmp_path / "full", **common)
    full.train()
    first = grpo_trainer(output_dir=tmp_path / "resumed", **common)
    first.train()  # writes checkpoint-2 (and checkpoint-4); resume from checkpoint-2 in a fresh trainer
    resumed = grpo_trainer(output_dir=tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    want, got = _losses(full), _losses(resumed)
    assert len(want) == 4 and len(got) == 4
    for w, g in zip(want, got):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k] == pytest.approx(w[k], abs=1e-6), (k, want, got)
    if credit.get("credit_head_profile") == "cached":
        assert torch.equal(resumed.credit.profile.local, full.credit.profile.local)


@pytest.mark.parametrize("stats_pass", ["auto", "separate"])
def test_evaluation_never_sets_the_cached_training_profile(grpo_trainer, stats_pass):
    from tests.conftest import prompt_dataset

    eval_data = prompt_dataset(4, template="what is {i} times 7")
    trainer = grpo_trainer(credit_head_profile="cached", credit_stats_pass=stats_pass, per_device_eval_batch_size=4,
                           trainer_kwargs={"eval_dataset": eval_data})
    trainer.evaluate()
    assert any("credit/amplified_frac" in k for e in trainer.state.log_history for k in e)  # eval computed credit
    assert trainer.credit.profile is None
    trainer.train()
    assert trainer.credit.profile is not None  # from the first training batch


def _quick_start_code() -> str:
    text = README.read_text()
    section = text.split("\n## Quick start for TRL users\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_quick_start_runs_as_written_outside_the_repository(tmp_path):
    """The README's quick start, as written, with model="smollm2-135m-instruct", run from a folder outside the
    repository (the default model is downloaded from the registry on first use, then cached)."""
    code = _quick_start_code()
    assert 'model="smollm2-135m-instruct"' in code
    (tmp_path / "quick_start.py").write_text(code)
    proc = subprocess.run([sys.executable, "quick_start.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_model_name_resolves_the_embedded_default(grpo_args, monkeypatch, tmp_path):
    """AttnGRPOTrainer(model="smollm2-135m-instruct") loads the embedded default's local copy, never the hub."""
    from attnrl.models import default
    from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

    local = tmp_path / "smollm2"
    tiny_causal_lm("llama").save_pretrained(local)
    tiny_tokenizer().save_pretrained(local)
    monkeypatch.setattr(default, "default_model_path", lambda: local)
    from tests.conftest import length_reward, prompt_dataset

    trainer = AttnGRPOTrainer(model="smollm2-135m-instruct", reward_funcs=length_reward, args=grpo_args(),
                              train_dataset=prompt_dataset())
    assert trainer.model.config.num_hidden_layers == 4 and trainer.credit.layers
