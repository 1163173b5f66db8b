"""Ray: data-parallel training in Ray Train workers, GRPO and PPO through the same recipe runner and `attnrl train`
(identical weights, one adapter, resume after a killed worker), the reward actor pool (hung, raising and crashing
reward functions) and one head split for all ranks. One real local Ray cluster for the module."""

import functools
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from attnrl import cli
from attnrl.distributed import RayArguments, RewardActorPool, launch
from attnrl.recipes.grpo import GRPOJobArguments, GRPORunner
from attnrl.trainers.grpo import AttnGRPOConfig, AttnGRPOTrainer
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray  # a local Ray cluster or Ray's own validators
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 3-CPU cluster; this module's functions travel by value, so Ray workers never import it (slow)."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_causal_lm("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def digit_reward(completions, **kwargs):
    """Digits in each completion: varies across random completions, so the tiny model gets gradients."""
    return [float(sum(ch.isdigit() for ch in c[0]["content"])) for c in completions]


def flaky_reward(completions, mode, **kwargs):
    """Hangs, raises or kills its process for the rows marked so; else scores like digit_reward."""
    if "hang" in mode:
        time.sleep(3600)
    if "crash" in mode:
        os._exit(1)
    if "raise" in mode:
        raise RuntimeError("verifier exploded")
    return digit_reward(completions)


class StepLog(TrainerCallback):
    """Rank 0 appends '<pid> <global_step>' to ``path`` after each optimizer step."""

    def __init__(self, path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == 0:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()} {state.global_step}\n")


class KillRankOnce(TrainerCallback):
    """Rank 1 dies (os._exit) before step ``after_step + 1``, on the first attempt only (``marker`` file), once
    Ray Train has committed checkpoint ``after_step``."""

    def __init__(self, marker, after_step):
        self.marker, self.after_step = marker, after_step

    def on_step_begin(self, args, state, control, **kwargs):
        if args.process_index == 1 and state.global_step == self.after_step and not os.path.exists(self.marker):
            Path(self.marker).touch()
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            os._exit(1)


def _job(model_path):
    return GRPOJobArguments(model_name_or_path=model_path, train_size=16, eval_size=4, eval_max_new_tokens=4,
                            lora_r=4, lora_alpha=8)


def _args(output_dir, **kw):
    base = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        learning_rate=1e-3, bf16=False, use_cpu=True, report_to=[], logging_steps=1, save_strategy="steps",
        save_steps=1, credit_fai_lo=1, credit_fai_hi=6, credit_window=3, seed=0, disable_tqdm=True,
    )
    return AttnGRPOConfig(**{**base, **kw})


def _ray_checkpoints(storage: Path) -> list[Path]:
    return sorted(p for p in storage.glob("*/checkpoint_*") if p.is_dir())


@pytest.mark.slow
def test_two_cpu_workers_train_identical_lora_save_one_adapter_and_score_in_actors(ray_cluster, tiny_model_path, tmp_path):
    ray_args = RayArguments(num_workers=2, max_failures=0, storage_path=str(tmp_path / "storage"), reward_actors=1)
    results = launch(_job(tiny_model_path), _args(tmp_path / "run", max_steps=2, save_strategy="no"), ray_args,
                     reward_funcs=[digit_reward], runner=GRPORunner)

    assert results["num_workers"] == 2 and results["train_steps"] == 2
    hashes = results["trainable_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    adapters = list((tmp_path / "storage").rglob("adapter_model.safetensors"))
    assert len(adapters) == 1 and adapters[0].parent.name == "adapter"  # saved once, by rank 0
    lora_b = [w for name, w in load_file(adapters[0]).items() if "lora_B" in name]
    assert any(w.abs().sum() > 0 for w in lora_b), "the LoRA weights did not train"
    local = tmp_path / "run"  # the driver's copy of the final checkpoint
    assert (local / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((local / "report" / "results.json").read_text())["trainable_sha256"] == hashes
    log = json.loads((local / "report" / "log_history.json").read_text())
    assert [e["reward_pool/digit_reward/failures"] for e in log if "loss" in e] == [0.0, 0.0]  # scored in actors
    assert results["accuracy_before"] is not None and "accuracy_after" in results


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes_without_lost_or_repeated_steps(ray_cluster, tiny_model_path, tmp_path):
    steps_file = tmp_path / "steps.txt"
    ray_args = RayArguments(num_workers=2, max_failures=1, num_to_keep=2, storage_path=str(tmp_path / "storage"))
    results = launch(
        _job(tiny_model_path), _args(tmp_path / "run", max_steps=4), ray_args, reward_funcs=[digit_reward],
        callbacks=[StepLog(str(steps_file)), KillRankOnce(str(tmp_path / "killed"), after_step=2)], runner=GRPORunner,
    )

    assert (tmp_path / "killed").exists()
    pids, steps = zip(*(line.split() for line in steps_file.read_text().splitlines()))
    assert [int(s) for s in steps] == [1, 2, 3, 4]  # each optimizer step exactly once
    assert pids[0] == pids[1] != pids[2] == pids[3]  # steps 3-4 ran in the restarted worker group
    assert results["train_steps"] == 4 and results["trainable_sha256"][0] == results["trainable_sha256"][1]

    trained = [c / "checkpoint" for c in _ray_checkpoints(tmp_path / "storage") if (c / "checkpoint").exists()]
    assert len(trained) == 1  # num_to_keep=2: the final checkpoint and the step-4 one
    state = json.loads((trained[0] / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert {p.name for p in trained[0].glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    optimizer = torch.load(trained[0] / "optimizer.pt", weights_only=False)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {4}  # 2 before the kill + 2 after resuming


def _write_yaml(path: Path, **config) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_attnrl_train_runs_the_local_ray_job_spec(ray_cluster, tiny_model_path, tmp_path):
    """`attnrl train ray_configs/local.yaml` (its 2 CPU workers, checkpoint and restart settings) on the tiny model."""
    out = tmp_path / "run"
    argv = ["train", str(ROOT / "ray_configs" / "local.yaml"), "--model_name_or_path", tiny_model_path,
            "--max_steps", "1", "--train_size", "16", "--eval_size", "4", "--eval_max_new_tokens", "4",
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
            "--lora_r", "4", "--lora_alpha", "8", "--credit_fai_lo", "1", "--credit_fai_hi", "6",
            "--credit_window", "3", "--disable_tqdm", "true", "--output_dir", str(out), "--storage_path",
            str(tmp_path / "storage")]
    assert cli.main(argv) == 0
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["algorithm"] == "grpo" and results["num_workers"] == 2 and results["train_steps"] == 1
    assert results["trainable_sha256"][0] == results["trainable_sha256"][1]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    final = [p for p in (tmp_path / "storage").rglob("adapter_model.safetensors") if p.parent.name == "adapter"]
    assert len(final) == 1  # the final adapter, saved once (beside the step-1 training checkpoint)
    resolved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert resolved["recipe"] == "grpo" and resolved["num_workers"] == 2 and resolved["max_steps"] == 1


@pytest.mark.slow
def test_attnrl_train_ppo_on_two_ray_workers_resumes_a_killed_worker_without_lost_or_repeated_steps(
        ray_cluster, tiny_model_path, tmp_path, monkeypatch):
    """`attnrl train --recipe ppo CONFIG --num_workers 2`: rank 1 dies before step 3; the restarted group resumes
    from the step-2 checkpoint (policy, critic, optimizer, each rank's RNG) and logs each step exactly once."""
    from attnrl.distributed import launcher

    steps_file = tmp_path / "steps.txt"
    callbacks = [StepLog(str(steps_file)), KillRankOnce(str(tmp_path / "killed"), after_step=2)]
    monkeypatch.setattr(launcher, "launch", functools.partial(launch, callbacks=callbacks, reward_funcs=[digit_reward]))
    config = _write_yaml(
        tmp_path / "ppo.yaml", recipe="ppo", model_name_or_path=tiny_model_path, train_size=16, eval_size=4,
        eval_max_new_tokens=4, lora_r=4, lora_alpha=8, max_steps=4, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, num_ppo_epochs=1, num_mini_batches=1, kl_coef=0.0, learning_rate=1e-3,
        credit_fai_lo=1, credit_fai_hi=6, credit_window=3, logging_steps=1, save_strategy="steps", save_steps=1,
        use_cpu=True, bf16=False, report_to="none", seed=0, disable_tqdm=True, output_dir=str(tmp_path / "run"))
    argv = ["train", "--recipe", "ppo", str(config), "--num_workers", "2", "--max_failures", "1", "--num_to_keep", "2",
            "--storage_path", str(tmp_path / "storage")]
    assert cli.main(argv) == 0

    assert (tmp_path / "killed").exists()
    pids, steps = zip(*(line.split() for line in steps_file.read_text().splitlines()))
    assert [int(s) for s in steps] == [1, 2, 3, 4]  # each rollout step exactly once
    assert pids[0] == pids[1] != pids[2] == pids[3]  # steps 3-4 ran in the restarted worker group
    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    assert results["algorithm"] == "ppo" and results["train_steps"] == 4 and results["num_workers"] == 2
    assert results["trainable_sha256"][0] == results["trainable_sha256"][1]  # policy + critic + value head
    assert (tmp_path / "run" / "adapter" / "critic" / "value_head.safetensors").exists()

    trained = [c / "checkpoint" for c in _ray_checkpoints(tmp_path / "storage") if (c / "checkpoint").exists()]
    assert len(trained) == 1  # num_to_keep=2: the final checkpoint and the step-4 one
    assert {p.name for p in trained[0].glob("rng_state_*")} == {"rng_state_0.pt", "rng_state_1.pt"}
    state = torch.load(trained[0] / "training_state.pt", weights_only=True)
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"]] == [1, 2, 3, 4]
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {4}  # 2 before the kill + 2 after


def test_reward_pool_bounds_time_and_counts_hangs_crashes_and_errors(ray_cluster):
    completions = [[{"role": "assistant", "content": f"{i} and 7"}] for i in range(8)]
    modes = ["ok", "ok", "hang", "hang", "raise", "ok", "crash", "crash"]
    logged = {}
    with RewardActorPool(flaky_reward, num_actors=4, timeout_s=5.0) as pool:
        start = time.monotonic()
        rewards = pool.reward_funcs[0](prompts=["p"] * 8, completions=completions, mode=modes,
                                       trainer_state=object(), log_metric=logged.__setitem__)
        assert time.monotonic() - start < 5.0 + 30.0  # the deadline, plus replacing two actors
        assert rewards == [2.0, 2.0, None, None, None, 2.0, None, None]
        assert pool.stats.snapshot() == {"calls": 1, "completions": 8, "failures": 5, "timeouts": 2, "crashes": 2,
                                         "errors": 1, "restarts": 2}
        assert logged["reward_pool/flaky_reward/failures"] == 5.0
        assert pool.reward_funcs[0](prompts=["p"] * 2, completions=completions[:2], mode=["ok", "ok"]) == [2.0, 2.0]


@pytest.mark.slow
def test_training_survives_hung_and_raising_rewards_and_logs_the_failures(ray_cluster, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"add {i} and 1"}], "mode": mode}
            for i, mode in enumerate(["ok", "hang", "ok", "raise"])]
    with RewardActorPool(flaky_reward, num_actors=2, timeout_s=3.0) as pool:
        trainer = AttnGRPOTrainer(
            model=tiny_causal_lm("llama"), reward_funcs=pool.reward_funcs, processing_class=tiny_tokenizer(),
            args=_args(tmp_path, per_device_train_batch_size=4, num_generations=2, max_steps=2, save_strategy="no"),
            train_dataset=Dataset.from_list(rows),
        )
        trainer.train()
        stats = pool.stats.snapshot()

    assert trainer.state.global_step == 2
    assert stats["timeouts"] == 2 and stats["errors"] == 2 and stats["restarts"] == 1
    logged = [e for e in trainer.state.log_history if "reward_pool/flaky_reward/failures" in e]
    assert sum(e["reward_pool/flaky_reward/failures"] for e in logged) > 0
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logged)


# ------------------------------------------------------------------ one local/global head split for all ranks


def _head_split_batch():
    """4 rollouts (prompts (4, 6) left-padded, completions (4, 16) right-padded) whose two halves, one per rank,
    have different head splits of their own."""
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, 100, (4, 6), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[1, :2] = prompt_mask[3, :3] = 0
    completion_ids = torch.randint(3, 100, (4, 16), generator=g)
    completion_mask = (torch.arange(16)[None] < torch.tensor([4, 6, 16, 13])[:, None]).long()
    return prompt_ids * prompt_mask, prompt_mask, completion_ids * completion_mask, completion_mask


def _head_split_config(mode="per_batch"):
    from attnrl.credit.config import CreditConfig

    return CreditConfig(credit_fai_lo=1, credit_fai_hi=6, credit_window=3, credit_head_profile=mode)


def _head_split_worker(rank, world_size, init_file, out_dir):
    """One gloo rank: the head split of its half of the batch, per batch and cached (then a second, other batch)."""
    import torch.distributed as dist

    from attnrl.credit.assigner import CreditAssigner

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = tiny_causal_lm("llama")
        rows = slice(2 * rank, 2 * rank + 2)
        mine = [t[rows] for t in _head_split_batch()]
        per_batch = CreditAssigner(_head_split_config("per_batch"), model).assign(model, *mine).profile
        cached = CreditAssigner(_head_split_config("cached"), model)
        first = cached.assign(model, *mine).profile
        later = cached.assign(model, *[t[rank:rank + 1] for t in _head_split_batch()]).profile  # no collective
        torch.save({"per_batch": per_batch, "cached_first": first, "cached_later": later}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _same_split(a, b):
    return torch.equal(a.local, b.local) and torch.equal(a.global_, b.global_)


def test_gloo_ranks_get_one_head_split_equal_to_the_whole_batch_split(tmp_path):
    """Two gloo processes, each holding half of a batch, get the same local/global split, and it is the split of
    the whole batch on one process (head-distance sums and token counts are reduced over ranks)."""
    from attnrl.credit.assigner import CreditAssigner

    torch.multiprocessing.spawn(_head_split_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    model = tiny_causal_lm("llama")
    batch = _head_split_batch()
    whole = CreditAssigner(_head_split_config(), model).assign(model, *batch).profile
    halves = [CreditAssigner(_head_split_config(), model).assign(model, *[t[2 * r:2 * r + 2] for t in batch]).profile
              for r in range(2)]
    assert not _same_split(halves[0], halves[1]) and not _same_split(halves[0], whole)  # the test can tell
    for rank in ranks:
        for key in ("per_batch", "cached_first", "cached_later"):
            assert _same_split(rank[key], whole), key
            torch.testing.assert_close(rank[key].distances, whole.distances, atol=1e-5, rtol=1e-5)
    assert torch.equal(ranks[0]["per_batch"].distances, ranks[1]["per_batch"].distances)  # bitwise, on every rank


ROLLOUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


def _grpo_head_split_worker(config):
    """Ray Train worker: one on-policy AttnGRPOTrainer step (learning rate 0, so the weights stay the rollout
    policy's); saves the head split the loss forward used and the rollout batch it was computed on."""
    import ray.train

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    rows = [{"prompt": [{"role": "user", "content": f"add {i} and {7 * i}"}]} for i in range(8)]
    trainer = AttnGRPOTrainer(model=tiny_causal_lm("llama"), reward_funcs=digit_reward, processing_class=tiny_tokenizer(),
                              args=_args(config["output_dir"], **config["args"]), train_dataset=Dataset.from_list(rows))
    trainer.train()
    batch = trainer._buffered_inputs[0]  # the batch of the (single) loss forward
    assert "old_per_token_logps" not in batch  # statistics came from the loss forward inside DDP
    torch.save({"profile": trainer.last_credit.profile, **{k: batch[k].cpu() for k in ROLLOUT_KEYS}},
               f"{config['output_dir']}/rank{rank}.pt")
    ray.train.report({})


def _pad_cat(batches):
    """Rollout batches of different widths as one: prompts left-padded, completions right-padded (id 0, mask 0)."""
    tp = max(b["prompt_ids"].shape[1] for b in batches)
    tc = max(b["completion_ids"].shape[1] for b in batches)
    pad = torch.nn.functional.pad
    out = {k: [] for k in ROLLOUT_KEYS}
    for b in batches:
        for k in ("prompt_ids", "prompt_mask"):
            out[k].append(pad(b[k], (tp - b[k].shape[1], 0)))
        for k in ("completion_ids", "completion_mask"):
            out[k].append(pad(b[k], (0, tc - b[k].shape[1])))
    return [torch.cat(out[k]) for k in ROLLOUT_KEYS]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["per_batch", "cached"])
def test_two_ray_train_workers_use_the_head_split_of_both_ranks_rollouts(ray_cluster, tmp_path, mode):
    """2 gloo workers in Ray Train, one AttnGRPOTrainer step each on different prompts: both ranks use the same
    local/global split, the split one process computes on both rollout batches together."""
    from ray.train.torch import TorchConfig, TorchTrainer

    from attnrl.credit.assigner import CreditAssigner

    out = tmp_path / "run"
    out.mkdir()
    ray_args = RayArguments(num_workers=2, storage_path=str(tmp_path / "storage"))
    TorchTrainer(
        _grpo_head_split_worker,
        train_loop_config={"output_dir": str(out), "args": dict(
            max_steps=1, learning_rate=0.0, save_strategy="no", max_completion_length=12, credit_head_profile=mode)},
        scaling_config=ray_args.scaling_config(),
        run_config=ray_args.run_config(out),
        torch_config=TorchConfig(backend="gloo"),
    ).fit()
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert not torch.equal(ranks[0]["prompt_ids"], ranks[1]["prompt_ids"])  # different slices of the data

    model = tiny_causal_lm("llama")  # = the rollout policy (learning rate 0)
    config = _head_split_config(mode)
    whole = CreditAssigner(config, model).assign(model, *_pad_cat(ranks)).profile
    own = [CreditAssigner(config, model).assign(model, *[r[k] for k in ROLLOUT_KEYS]).profile for r in ranks]
    assert not (_same_split(own[0], whole) and _same_split(own[1], whole))  # per-rank splits would differ
    for rank in ranks:
        assert _same_split(rank["profile"], whole)
        torch.testing.assert_close(rank["profile"].distances, whole.distances, atol=1e-4, rtol=1e-4)
