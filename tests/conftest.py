"""Test-session set-up that must happen before any test module imports triton, then the factories tests share.

Triton reads TRITON_INTERPRET when triton.language and our kernels are decorated (import time), so the
interpreter mode is switched on here, for the whole session, unless ATTNRL_TEST_GPU=1 asks for compiled kernels.

Markers (registered in pyproject.toml): ``slow`` (minutes), ``ray`` (needs Ray; most start a local cluster), ``gpu``
(skipped unless ATTNRL_TEST_GPU=1). Every test has the ini ``timeout``; ``slow`` and ``ray`` tests without a timeout
marker of their own get SLOW_TIMEOUT_S.

Factories (fixtures returning a function, so one test can build several): ``grpo_args`` / ``grpo_trainer`` (a
1-step CPU GRPO run of 4 completions on the tiny Llama, or any AttnGRPOTrainer subclass and config) and
``ppo_args``. Imports of trl and the trainers happen inside them, so collecting the fast tests stays cheap.
"""

import os

if os.environ.get("ATTNRL_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest_plugins = ["pytester"]  # tests/test_markers.py runs pytest on small generated test files

GPU_TESTS = os.environ.get("ATTNRL_TEST_GPU") == "1"
SLOW_TIMEOUT_S = 1800  # per test, for tests marked slow or ray (the ini timeout covers the others)

# credit settings scaled to completions of about 10 tokens: a short FAI horizon, so that responses hold anchors
TINY_CREDIT = dict(credit_fai_lo=1, credit_fai_hi=6, credit_window=3)
# a CPU run that writes neither checkpoints nor reports
CPU_RUN = dict(use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, seed=0)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs ATTNRL_TEST_GPU=1 (compiled kernels on a CUDA device)")
    for item in items:
        if "gpu" in item.keywords and not GPU_TESTS:
            item.add_marker(skip_gpu)
        if ("slow" in item.keywords or "ray" in item.keywords) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def prompt_dataset(n: int = 8, template: str = "add {i} and 1", answers: bool = False):
    """A TRL conversational dataset of ``n`` one-turn prompts (``template`` formatted with i); ``answers`` adds an
    ``answer`` column (str(i))."""
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": template.format(i=i)}]} for i in range(n)]
    if answers:
        rows = [{**row, "answer": str(i)} for i, row in enumerate(rows)]
    return Dataset.from_list(rows)


def length_reward(completions, **kwargs):
    """A reward that varies between completions: their length in characters, modulo 5."""
    return [float(len(c[0]["content"]) % 5) for c in completions]


@pytest.fixture
def grpo_args(tmp_path):
    """``make(config_cls=AttnGRPOConfig, output_dir=tmp_path, **overrides)``: 1 step on 4 completions of at most 12
    tokens, on CPU, with TINY_CREDIT."""

    def make(config_cls=None, output_dir=None, **overrides):
        if config_cls is None:
            from attnrl.trainers.grpo import AttnGRPOConfig as config_cls
        base = dict(output_dir=str(output_dir or tmp_path), per_device_train_batch_size=4, num_generations=4,
                    max_completion_length=12, max_steps=1, bf16=False, **CPU_RUN, **TINY_CREDIT)
        return config_cls(**{**base, **overrides})

    return make


@pytest.fixture
def grpo_trainer(grpo_args):
    """``make(model=None, *, trainer_cls=AttnGRPOTrainer, config_cls=None, reward_funcs=length_reward,
    train_dataset=None, processing_class=None, output_dir=None, trainer_kwargs=None, **overrides)``: a trainer on
    the tiny Llama (default), :func:`prompt_dataset` and the character tokenizer; ``overrides`` go to
    :func:`grpo_args`, ``trainer_kwargs`` (peft_config, site, ...) to the trainer."""

    def make(model=None, *, trainer_cls=None, config_cls=None, reward_funcs=length_reward, train_dataset=None,
             processing_class=None, output_dir=None, trainer_kwargs=None, **overrides):
        from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

        if trainer_cls is None:
            from attnrl.trainers.grpo import AttnGRPOTrainer as trainer_cls
        return trainer_cls(
            model=model if model is not None else tiny_causal_lm("llama"), reward_funcs=reward_funcs,
            args=grpo_args(config_cls, output_dir, **overrides),
            train_dataset=train_dataset if train_dataset is not None else prompt_dataset(),
            processing_class=processing_class if processing_class is not None else tiny_tokenizer(),
            **(trainer_kwargs or {}),
        )

    return make


@pytest.fixture
def ppo_args(tmp_path):
    """``make(output_dir=tmp_path, **overrides)``: AttnPPOConfig of 2 CPU steps on 8 completions (2 prompts x 4) of
    at most 10 tokens, 2 PPO epochs of 2 mini-batches, with TINY_CREDIT."""

    def make(output_dir=None, **overrides):
        from attnrl.trainers.ppo import AttnPPOConfig

        base = dict(output_dir=str(output_dir or tmp_path), max_steps=2, per_device_train_batch_size=8,
                    num_generations=4, max_completion_length=10, num_ppo_epochs=2, num_mini_batches=2,
                    learning_rate=1e-3, critic_learning_rate=1e-2, kl_coef=0.05, disable_tqdm=True,
                    **CPU_RUN, **TINY_CREDIT)
        return AttnPPOConfig(**{**base, **overrides})

    return make
