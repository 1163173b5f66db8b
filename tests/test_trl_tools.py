"""Credit on TRL's tool and environment paths: ``tools=``, ``environment_factory`` and ``rollout_func`` + ``env_mask``.

A random tiny model never writes a tool call, so generation is driven as TRL's own tests drive it: the trainer's
``_generate_single_turn`` returns fixed token ids (a tool call first, then a short answer after the tool result),
and the ``rollout_func`` returns fixed completions with an ``env_mask``; identically for ``trl.GRPOTrainer`` and
``AttnGRPOTrainer``. TRL marks tool-result / environment tokens with ``tool_mask`` 0 and trains on
``completion_mask * tool_mask``; credit must treat exactly those tokens as the response (docs/methods.md §1.3.1).
"""

import math

import pytest
import torch
from trl import GRPOTrainer

from attnrl.trainers.grpo import AttnGRPOTrainer

TOOL_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
ANSWERS = ["7", "It is 7.", "The sum is 7.", "3 + 4 = 7, so 7."]  # after the tool result; one per row


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


class AdderEnv:
    """An environment whose one tool adds two integers (TRL's environment_factory protocol)."""

    def reset(self, **kwargs) -> str | None:
        return None

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        return a + b


def tool_tokenizer():
    """The tiny character tokenizer with TRL's Qwen3 chat template (tool calling, response parsing)."""
    from trl.chat_template_utils import qwen3_chat_template

    from attnrl.utils.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = qwen3_chat_template
    return tok


def scripted_generation(trainer):
    """Replace generation: the first turn writes TOOL_CALL, each turn after a tool result one of ANSWERS."""
    tok = trainer.processing_class
    eos = tok.eos_token_id

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        # prompts arrive repeated already; TRL's tool loop asks for one generation per row
        if num_generations > 1:
            texts = [TOOL_CALL] * len(prompt_ids)
        else:
            texts = [ANSWERS[i % len(ANSWERS)] for i in range(len(prompt_ids))]
        return [tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts], None

    trainer._generate_single_turn = generate
    return trainer


def env_rollout(prompts, trainer):
    """A rollout_func: fixed completions of model text, environment feedback (env_mask 0), model text."""
    tok = trainer.processing_class
    prompt_ids, completion_ids, env_mask = [], [], []
    for i, prompt in enumerate(prompts):
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        model_a = tok(f"look {i}", add_special_tokens=False)["input_ids"]
        feedback = tok(" [env: nothing here] " * (1 + i % 2), add_special_tokens=False)["input_ids"]
        model_b = tok("ok" * (1 + i), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt_ids.append(list(ids))
        completion_ids.append(model_a + feedback + model_b)
        env_mask.append([1] * len(model_a) + [0] * len(feedback) + [1] * len(model_b))
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": env_mask}


def model_token_mask(batch):
    """(B, Tc) bool: the tokens TRL's loss trains on, completion_mask * tool_mask."""
    return batch["completion_mask"].bool() & batch["tool_mask"].bool()


def text_reward(completions, **kwargs):
    return [float(len(str(c)) % 7) for c in completions]


PATHS = ["tools", "environment_factory", "rollout_func"]


def make(grpo_trainer, path, trainer_cls=AttnGRPOTrainer, **overrides):
    from attnrl.utils.tiny import tiny_causal_lm

    # the tool schema in the system prompt makes prompts of ~700 characters: room for them and the tool results
    kw = dict(model=tiny_causal_lm("llama", max_position_embeddings=2048), trainer_cls=trainer_cls,
              reward_funcs=text_reward, max_completion_length=256, processing_class=tool_tokenizer())
    if path == "tools":
        kw["trainer_kwargs"] = {"tools": [add]}
    elif path == "environment_factory":
        kw["trainer_kwargs"] = {"environment_factory": AdderEnv}
    else:
        kw["trainer_kwargs"] = {"rollout_func": env_rollout}
    trainer = grpo_trainer(**kw, **overrides)
    return scripted_generation(trainer) if path != "rollout_func" else trainer


def credit_on_rollout(trainer):
    """(batch, CreditResult) of one scored rollout, through whichever statistics path the trainer takes."""
    batch = [{"prompt": [{"role": "user", "content": "add 3 and 4"}]}] * 4
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    if out["advantages"].dim() == 1:  # on-policy: credit comes from the loss forward
        trainer.current_gradient_accumulation_steps = 1
        trainer._compute_loss(trainer.model, out)
    return out, trainer.last_credit


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stats", ["loss_forward", "rollout_forward", "separate"])
def test_tool_and_environment_tokens_are_never_credited(grpo_trainer, path, stats):
    overrides = {"loss_forward": {}, "rollout_forward": {"num_iterations": 2},
                 "separate": {"credit_stats_pass": "separate"}}[stats]
    trainer = make(grpo_trainer, path, credit_strategy="global_anchor", **overrides)
    out, credit = credit_on_rollout(trainer)
    assert "tool_mask" in out and (out["tool_mask"] == 0).any()
    model = model_token_mask(out)
    outside = out["completion_mask"].bool() & ~model  # tool results / environment feedback
    assert outside.sum() > 10
    assert (credit.gamma[outside] == 1).all()
    amplified = (credit.gamma > 1) & model
    assert amplified.any()
    # TopQ counts model tokens only: at most ceil(q * model tokens) per row (fewer only where FAI is undefined)
    q = trainer.credit_config.credit_top_q
    k = [math.ceil(q * n - 1e-9) for n in model.sum(1).tolist()]
    assert all(a <= b for a, b in zip(amplified.sum(1).tolist(), k))
    n = model.sum().item()
    assert credit.metrics["credit/amplified_frac"] == pytest.approx(amplified.sum().item() / n)
    assert credit.metrics["credit/gamma_mean"] == pytest.approx((credit.gamma * model).sum().item() / n)
    # the head profile is measured on model tokens: WAAD statistics of tool tokens do not enter the metric
    assert credit.metrics["credit/waad_mean"] == pytest.approx(credit.waad[model].mean().item(), rel=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_random_topq_selects_ceil_q_of_model_tokens(grpo_trainer, path):
    trainer = make(grpo_trainer, path, credit_strategy="random")
    out, credit = credit_on_rollout(trainer)
    model = model_token_mask(out)
    amplified = (credit.gamma > 1) & model
    assert not (credit.gamma[out["completion_mask"].bool() & ~model] > 1).any()
    q = trainer.credit_config.credit_top_q
    assert amplified.sum(1).tolist() == [math.ceil(q * n - 1e-9) for n in model.sum(1).tolist()]


@pytest.mark.parametrize("path", PATHS)
def test_uniform_credit_trains_on_trl_losses(grpo_trainer, path, tmp_path):
    losses = {}
    for name, cls in (("trl", GRPOTrainer), ("attnrl", AttnGRPOTrainer)):
        trainer = make(grpo_trainer, path, trainer_cls=cls, credit_strategy="uniform", max_steps=2,
                       output_dir=tmp_path / name)
        trainer.train()
        losses[name] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses["trl"]) == 2 and any(v != 0 for v in losses["trl"])
    assert losses["attnrl"] == pytest.approx(losses["trl"], abs=1e-6)
