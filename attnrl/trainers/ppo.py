"""AttnPPOTrainer: PPO with a learned critic, GAE and attention-aware token credit (TRL has no PPO any more).

One training step (:meth:`AttnPPOTrainer.train`), top to bottom:

1. rollout: sample ``per_device_train_batch_size / num_generations`` prompts, generate ``num_generations``
   completions each (left-padded prompts, plain sampling from softmax(logits / ``temperature``) with every other
   logits processor off, whatever the model's own ``generation_config`` says, so the sampler is the policy whose
   log-probs are trained: :func:`sampling_generation_config`), score them with the reward functions (TRL
   signature);
2. rollout statistics under no grad: old log-probs, reference log-probs (peft: the adapter disabled; otherwise a
   frozen copy; skipped when ``kl_coef == 0``), values, and gamma_t from :class:`CreditAssigner` on the rollout
   policy (detached);
3. advantages: outcome score at the last response token minus ``kl_coef * KL`` per token, GAE, optional masked
   whitening, then multiplied by gamma_t (docs/methods.md §1.3) — so the 'uniform' strategy is plain PPO;
4. ``num_ppo_epochs`` passes over ``num_mini_batches`` shuffled mini-batches, one optimizer step each, on
   ``policy_loss + vf_coef * value_loss`` (clipped surrogate, clipped value loss; :mod:`attnrl.algos.ppo_core`).

Devices and processes are handled in one place (``_setup_devices``, ``_average_gradients``, ``_reduce_metrics``):
an ``accelerate.Accelerator`` picks the device and joins a torch.distributed group that is already initialised
(a Ray Train worker); each process samples its own prompts and gradients are averaged by hand, so generation and
adapter switching never go through a DDP wrapper.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    DefaultFlowCallback,
    GenerationConfig,
    PreTrainedModel,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    get_scheduler,
    set_seed,
)
from transformers.trainer_callback import CallbackHandler
from transformers.trainer_utils import TrainOutput, enable_full_determinism, get_last_checkpoint, rotate_checkpoints
from transformers.training_args import trainer_log_levels
from trl.trainer.utils import get_callable_name

from attnrl.algos import ppo_core
from attnrl.credit.assigner import CreditAssigner, CreditResult
from attnrl.credit.config import CreditConfig
from attnrl.credit.strategies import shape_advantages

from .ppo_fields import refused_settings

CRITIC_MODES = ("separate", "shared")
CRITIC_DIR = "critic"
VALUE_HEAD_FILE = "value_head.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
RNG_STATE_FILE = "rng_state_{rank}.pt"


@dataclass
class AttnPPOConfig(TrainingArguments, CreditConfig):
    """``transformers.TrainingArguments`` + PPO settings + the ``credit_*`` fields of :class:`CreditConfig`.

    What the trainer does with each TrainingArguments field is listed in :mod:`attnrl.trainers.ppo_fields`:
    implemented (e.g. max_steps = rollout steps, per_device_train_batch_size = completions per rollout step and
    process, evaluation with eval_strategy "steps", activation/gradient checkpointing, save_strategy "steps" with
    save_total_limit), refused when set (with the reason, when the config is built), or irrelevant (with the reason).
    Credit statistics always come from a separate no-grad forward of the rollout policy (``credit_stats_pass``
    'auto' resolves to it).
    """

    num_generations: int = field(
        default=4, metadata={"help": "Completions sampled per prompt; per_device_train_batch_size must be a multiple."}
    )
    max_completion_length: int = field(default=64, metadata={"help": "Maximum generated tokens per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (log-probs use the same one)."})
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "Weight of each reward function in the score (default: all 1)."}
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(
        default=1, metadata={"help": "Mini-batches per pass (one optimizer step each); must divide the batch."}
    )
    cliprange: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip: V stays within ± this of V_old."})
    vf_coef: float = field(
        default=0.1,
        metadata={"help": "Weight of the value loss in the total loss (what it trades off against the policy loss "
                  "in 'shared' mode; in 'separate' mode it only scales the critic's gradients)."},
    )
    gamma: float = field(
        default=1.0, metadata={"help": "GAE discount per token (not the credit weight gamma_t, see credit_*)."}
    )
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    kl_coef: float = field(
        default=0.05,
        metadata={"help": "Per-token KL penalty to the reference policy (initial weights; peft: adapter disabled), "
                  "subtracted from the token rewards. 0 skips the reference forward."},
    )
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Whiten GAE advantages over the batch's tokens before gamma_t is applied."}
    )
    critic_mode: str = field(
        default="separate",
        metadata={"help": "'separate': a copy of the base model's backbone + scalar value head, with its own LoRA "
                  "(same peft_config), trained only by the value loss. 'shared': a value head on the policy's last "
                  "hidden state; the value loss (times vf_coef) trains the head AND the policy's LoRA (or weights), "
                  "one forward gives log-probs and values."},
    )
    critic_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the critic (value head + critic LoRA); None: learning_rate."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.validate_credit()
        self.validate_ppo()

    def validate_ppo(self) -> None:
        """Raise ValueError naming the bad field and the fix."""
        if self.max_steps <= 0:
            raise ValueError(f"max_steps={self.max_steps}: AttnPPOTrainer counts rollout steps; set max_steps > 0")
        if self.num_generations < 1:
            raise ValueError(f"num_generations={self.num_generations} must be >= 1")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} counts completions and must be a "
                f"multiple of num_generations={self.num_generations}"
            )
        if self.num_mini_batches < 1 or self.per_device_train_batch_size % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches={self.num_mini_batches} must be >= 1 and divide per_device_train_batch_size="
                f"{self.per_device_train_batch_size}"
            )
        if self.num_ppo_epochs < 1:
            raise ValueError(f"num_ppo_epochs={self.num_ppo_epochs} must be >= 1")
        if self.critic_mode not in CRITIC_MODES:
            raise ValueError(f"critic_mode={self.critic_mode!r}; use one of {CRITIC_MODES}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"gamma={self.gamma}, lam={self.lam}: both must lie in [0, 1]")
        if self.cliprange <= 0 or self.cliprange_value <= 0:
            raise ValueError(f"cliprange={self.cliprange}, cliprange_value={self.cliprange_value} must be > 0")
        if self.kl_coef < 0 or self.vf_coef < 0:
            raise ValueError(f"kl_coef={self.kl_coef}, vf_coef={self.vf_coef} must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (PPO samples; use evaluation for greedy)")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length={self.max_completion_length} must be >= 1")
        refused = refused_settings(self)
        if refused:
            raise ValueError(refused[0])
        if self.save_strategy not in ("no", "steps"):
            raise ValueError(f"save_strategy={_plain(self.save_strategy)!r}: AttnPPOTrainer supports 'no' or 'steps'")
        if self.eval_strategy not in ("no", "steps"):
            raise ValueError(f"eval_strategy={_plain(self.eval_strategy)!r}: AttnPPOTrainer counts rollout steps, not "
                             "epochs; use 'steps' (with eval_steps) or 'no'")
        if self.logging_strategy != "steps":
            raise ValueError(f"logging_strategy={_plain(self.logging_strategy)!r}: AttnPPOTrainer logs every logging_steps "
                             "rollout steps; use 'steps'")


@dataclass
class Rollout:
    """One rollout batch and everything PPO needs from it. Token tensors are (B, Tc) over completion positions."""

    prompt_ids: torch.Tensor  # (B, Tp) left-padded
    prompt_mask: torch.Tensor  # (B, Tp)
    completion_ids: torch.Tensor  # (B, Tc) right-padded
    completion_mask: torch.Tensor  # (B, Tc) 1 up to and including the first EOS
    loss_mask: torch.Tensor  # (B, Tc) bool: completion_mask of rows some reward function scored
    scores: torch.Tensor  # (B,) weighted sum of rewards
    logprobs: torch.Tensor  # rollout policy log-probs (nats)
    ref_logprobs: torch.Tensor | None
    values: torch.Tensor  # V(s_t), the state before token t
    rewards: torch.Tensor  # per-token rewards (score at the last token, minus the KL penalty)
    returns: torch.Tensor
    advantages: torch.Tensor  # GAE (whitened if configured) times gamma
    gamma: torch.Tensor  # credit weights gamma_t (1 on padding)
    entropy: torch.Tensor  # per-token policy entropy (nats)

    def select(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-row tensors of a mini-batch."""
        names = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "loss_mask", "logprobs", "values",
                 "returns", "advantages")
        return {n: getattr(self, n)[rows] for n in names}


class AttnPPOTrainer:
    """PPO with a critic, GAE and preplan/anchor (or any registered) token credit.

    Args mirror ``trl.GRPOTrainer``: ``model`` (a causal LM or a path / :data:`attnrl.models.DEFAULT_MODEL`),
    ``reward_funcs`` (callables ``(prompts, completions, **columns) -> list[float | None]``), ``args``
    (:class:`AttnPPOConfig`), ``train_dataset`` (a ``prompt`` column, conversational or text; other columns go to
    the rewards), ``processing_class`` (tokenizer), ``peft_config`` (LoRA for the policy and a separate critic),
    ``callbacks`` (``transformers.TrainerCallback`` instances or classes, called as the HF Trainer calls them:
    ``on_train_begin``, ``on_step_begin`` before each rollout, ``on_step_end`` after the update, ``on_log`` with each
    ``log_history`` entry, ``on_save`` after each ``checkpoint-<step>`` folder is written (on every process),
    ``on_train_end``; ``control.should_training_stop`` ends training after the step). ``eval_dataset`` (a dataset
    with a ``prompt`` column, or a dict of them): what :meth:`evaluate` scores, run as ``eval_strategy``,
    ``eval_steps``, ``eval_delay`` and ``eval_on_start`` say (``on_evaluate`` is called after each evaluation).
    """

    def __init__(self, model, reward_funcs, args: AttnPPOConfig, train_dataset, processing_class=None,
                 peft_config=None, callbacks=None, eval_dataset=None):
        args.validate_credit()
        args.validate_ppo()
        self.args = args
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        _check_prompt_datasets(train_dataset, eval_dataset, args)
        if isinstance(model, str):
            from attnrl.models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(model)
            processing_class = processing_class or tokenizer
        if processing_class is None:
            raise ValueError("processing_class (the tokenizer) is required when model is a PreTrainedModel")
        self.processing_class = processing_class
        self.reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self.reward_names = [get_callable_name(f) for f in self.reward_funcs]
        weights = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(weights)} entries for {len(self.reward_funcs)} reward_funcs")
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset

        self.model, self.ref_model, self.critic, self.value_head = self._build_models(model, peft_config)
        self._setup_devices()
        self._set_log_level()
        self._enable_activation_checkpointing()
        self.credit = CreditAssigner(args, self.model)
        self.last_credit: CreditResult | None = None
        self.last_rollout: Rollout | None = None
        self.optimizer, self.lr_scheduler = self._build_optimizer()
        self.eos_token_id = processing_class.eos_token_id
        self.generation_config = sampling_generation_config(
            args.max_completion_length, args.temperature, processing_class.pad_token_id, self.eos_token_id
        )
        self.state = TrainerState(max_steps=args.max_steps, logging_steps=self._every(args.logging_steps),
                                  save_steps=self._every(args.save_steps), log_history=[])
        if args.eval_steps is not None:
            self.state.eval_steps = self._every(args.eval_steps)
        self._pending_metrics: list[dict[str, float]] = []  # one dict per step since the last log entry
        self._step_metrics: dict[str, list[float]] = defaultdict(list)
        self.control = TrainerControl()
        self.callback_handler = CallbackHandler([DefaultFlowCallback, *(callbacks or [])], self.model,
                                                processing_class, self.optimizer, self.lr_scheduler)

    def add_callback(self, callback) -> None:
        """Add a ``TrainerCallback`` (instance or class), as ``transformers.Trainer.add_callback``."""
        self.callback_handler.add_callback(callback)

    # ------------------------------------------------------------------------------------------ construction

    def _build_models(self, model: PreTrainedModel, peft_config):
        """(policy, reference or None, critic backbone or None, value head)."""
        args = self.args
        hidden = model.config.get_text_config().hidden_size
        critic = None
        if args.critic_mode == "separate":
            critic = copy.deepcopy(model.base_model)  # the backbone only: no LM head
            if peft_config is not None:
                critic = get_peft_model(critic, replace(peft_config, task_type=None))
        ref = None
        if peft_config is not None:
            model = get_peft_model(model, peft_config)  # reference = the same model with the adapter disabled
        elif args.kl_coef > 0:
            ref = copy.deepcopy(model).eval().requires_grad_(False)
        value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(value_head.weight)  # V = 0 at the start; deterministic
        nn.init.zeros_(value_head.bias)
        return model, ref, critic, value_head

    def _setup_devices(self) -> None:
        """The one place that knows about devices and processes (single CPU/GPU, or torch.distributed ranks)."""
        mixed = "bf16" if self.args.bf16 else "no"
        self.accelerator = Accelerator(cpu=self.args.use_cpu, mixed_precision=mixed)
        device = self.accelerator.device
        for module in (self.model, self.ref_model, self.critic, self.value_head):
            if module is not None:
                module.to(device)

    def _set_log_level(self) -> None:
        """transformers' verbosity from log_level (main process) / log_level_replica (the others), as the HF Trainer;
        'passive' leaves it alone. With log_on_each_node the main process of each node counts as main."""
        acc = self.accelerator
        main = acc.is_local_main_process if self.args.log_on_each_node else acc.is_main_process
        level = self.args.log_level if main else self.args.log_level_replica
        if level != "passive":
            transformers.utils.logging.set_verbosity(trainer_log_levels[level])

    def _enable_activation_checkpointing(self) -> None:
        """``activation_checkpointing`` (alias ``gradient_checkpointing``) on the policy and the critic, as the HF
        Trainer does (``every_n_layers`` and ``offload`` read from the kwargs). Only training forwards recompute:
        rollouts run in eval mode under no grad."""
        if not self.args.activation_checkpointing:
            return
        kwargs = dict(self.args.activation_checkpointing_kwargs or {})
        every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
        for module in (self.model, self.critic):
            if module is not None:
                base = module.get_base_model() if isinstance(module, PeftModel) else module
                base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None,
                                                     every_n_layers=every_n_layers, offload=offload)

    def _set_training(self, training: bool) -> None:
        """Train (update) or eval (rollout) mode for the policy and critic; the reference stays in eval."""
        for module in (self.model, self.critic, self.value_head):
            if module is not None:
                module.train(training)

    def _policy_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _critic_parameters(self) -> list[nn.Parameter]:
        backbone = [] if self.critic is None else [p for p in self.critic.parameters() if p.requires_grad]
        return backbone + list(self.value_head.parameters())

    def _build_optimizer(self):
        args = self.args
        critic_lr = args.critic_learning_rate if args.critic_learning_rate is not None else args.learning_rate
        optimizer = torch.optim.AdamW(
            [{"params": self._policy_parameters(), "lr": args.learning_rate},
             {"params": self._critic_parameters(), "lr": critic_lr}],
            betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, weight_decay=args.weight_decay,
        )
        total = args.max_steps * args.num_ppo_epochs * args.num_mini_batches
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(total),
                                  num_training_steps=total, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        return optimizer, scheduler

    def _every(self, interval: float) -> int:
        """A TrainingArguments interval in steps (a value below 1 is a fraction of max_steps)."""
        return max(1, math.ceil(interval * self.args.max_steps) if interval < 1 else int(interval))

    # ------------------------------------------------------------------------------------------ training loop

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Run PPO until ``max_steps`` rollout steps; ``resume_from_checkpoint`` continues a saved run exactly."""
        if resume_from_checkpoint:
            path = resume_from_checkpoint
            if path is True:
                path = get_last_checkpoint(self.args.output_dir)
                if path is None:
                    raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} has no checkpoint-*")
            self._load_checkpoint(Path(path))
        bar = tqdm(total=self.args.max_steps, initial=self.state.global_step, desc="PPO",
                   disable=self.args.disable_tqdm or not self.accelerator.is_main_process)
        start, losses = time.time(), []
        events, args, state = self.callback_handler, self.args, self.state
        self.control = events.on_train_begin(args, state, TrainerControl())  # a fresh control per train() call
        if args.eval_on_start:
            self.evaluate()
        while state.global_step < args.max_steps:
            self.control = events.on_step_begin(args, state, self.control)
            t0 = time.perf_counter()
            rollout = self.make_rollout(self._next_prompts())
            self.ppo_update(rollout)
            self._step_metrics["step_seconds"].append(time.perf_counter() - t0)
            state.global_step += 1
            metrics, log_entry = self._finish_step()
            losses.append(metrics["loss/policy"] + args.vf_coef * metrics["loss/value"])
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", vf=f"{metrics['loss/value']:.3f}")
            self.control = events.on_step_end(args, state, self.control)
            if log_entry is not None:
                self.control = events.on_log(args, state, self.control, logs=log_entry)
                self.control.should_log = False
            if self.control.should_evaluate:  # set by DefaultFlowCallback (eval_strategy, eval_steps, eval_delay)
                self.evaluate()
                self.control.should_evaluate = False
            if args.save_strategy == "steps" and state.global_step % state.save_steps == 0:
                self._save_checkpoint()
            if self.control.should_training_stop and state.global_step < args.max_steps:
                break  # a callback (early stopping, a time limit) asked to stop
        bar.close()
        self.control = events.on_train_end(args, state, self.control)
        runtime = time.time() - start
        return TrainOutput(self.state.global_step, float(np.mean(losses)) if losses else float("nan"),
                           {"train_runtime": runtime})

    def _save_checkpoint(self) -> None:
        """``checkpoint-<step>`` in output_dir, then (main process) the oldest beyond ``save_total_limit`` deleted,
        as the HF Trainer's checkpoint rotation; ``on_save`` is called after."""
        self.save_model(str(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"))
        if self.accelerator.is_main_process:
            rotate_checkpoints(self.args.output_dir, self.args.save_total_limit, use_mtime=True)
        self.control = self.callback_handler.on_save(self.args, self.state, self.control)
        self.control.should_save = False

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Generate ``num_generations`` completions for every prompt of ``eval_dataset`` (default: the trainer's;
        a dict of datasets is evaluated one by one, prefix ``eval_<name>``), score them with the reward functions
        and log the means (``<prefix>_reward``, ``<prefix>_reward_std``, ``<prefix>_rewards/<func>/mean``,
        ``<prefix>_completions/mean_length``, ``<prefix>_runtime``) as a ``log_history`` entry; calls ``on_log``
        and ``on_evaluate``. Returns the metrics.

        Sampling as in training, from a generator seeded with ``seed`` and forked from the training one, so an
        evaluation changes neither the training run nor its credit state (head profile, random generator)."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset (pass it to AttnPPOTrainer or to evaluate)")
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, f"{metric_key_prefix}_{name}"))
            return metrics
        start = time.time()
        # the same keys on every process (their means are averaged over processes), even with an empty shard
        sink: dict[str, list[float]] = defaultdict(list, {k: [] for k in (
            "reward", "completions/mean_length", *(f"rewards/{name}/mean" for name in self.reward_names))})
        acc, args = self.accelerator, self.args
        rows = [dataset[i] for i in range(acc.process_index, len(dataset), acc.num_processes)]
        rows = [row for row in rows for _ in range(args.num_generations)]
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        self._set_training(False)
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(args.seed)
            for i in range(0, len(rows), args.per_device_eval_batch_size):
                batch = rows[i:i + args.per_device_eval_batch_size]
                prompts = [row["prompt"] for row in batch]
                _, _, completion_ids, completion_mask = self._generate(prompts)
                scores, _ = self._score(batch, prompts, completion_ids, completion_mask, sink)
                sink["reward"] += scores.tolist()
                sink["completions/mean_length"] += completion_mask.sum(1).float().tolist()
        values = {k: nan_mean(v) for k, v in sink.items()}
        values["reward_std"] = float(np.std(sink["reward"], ddof=1)) if len(sink["reward"]) > 1 else 0.0
        values = self._reduce_metrics(values)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in sorted(values.items())}
        metrics[f"{metric_key_prefix}_runtime"] = time.time() - start
        self.state.log_history.append({**metrics, "step": self.state.global_step})
        if acc.is_main_process and not args.disable_tqdm:
            tqdm.write(str({k: round(v, 4) for k, v in metrics.items()}))
        self.control = self.callback_handler.on_log(args, self.state, self.control, logs=metrics)
        self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics=metrics)
        return metrics

    def _next_prompts(self) -> list[dict]:
        """This process's prompts for the current step: a seeded permutation per pass over the dataset, so the
        sequence is a pure function of (seed, step, rank) and resumes exactly."""
        n_prompts = self.args.per_device_train_batch_size // self.args.num_generations
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        first = (self.state.global_step * world + rank) * n_prompts
        seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
        n = len(self.train_dataset)
        rows, perms = [], {}
        for k in range(first, first + n_prompts):
            data_epoch = k // n
            if data_epoch not in perms:
                perms[data_epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + data_epoch))
            rows.append(self.train_dataset[int(perms[data_epoch][k % n])])
        return rows

    # ------------------------------------------------------------------------------------------ rollout

    @torch.no_grad()
    def make_rollout(self, rows: list[dict]) -> Rollout:
        """Generate, score, and compute log-probs, values, credit weights and advantages for ``rows``."""
        args, device = self.args, self.accelerator.device
        self._set_training(False)
        rows = [row for row in rows for _ in range(args.num_generations)]
        prompts = [row["prompt"] for row in rows]
        prompt_ids, prompt_mask, completion_ids, completion_mask = self._generate(prompts)
        scores, scored = self._score(rows, prompts, completion_ids, completion_mask)
        loss_mask = completion_mask.bool() & scored[:, None]

        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        logprobs, entropy, values = self._batched_forward(self.model, ids, mask, completion_ids.shape[1], values=True)
        ref_logprobs = kl = None
        if args.kl_coef > 0:
            ref_logprobs = self._reference_logprobs(ids, mask, completion_ids.shape[1])
            kl = ppo_core.kl_penalty(logprobs, ref_logprobs, loss_mask)
        t0 = time.perf_counter()
        credit = self.credit.assign(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                    entropy=entropy, batch_size=self._mini_batch_size())
        credit.metrics["credit/seconds"] = time.perf_counter() - t0

        rewards = ppo_core.token_rewards(scores, loss_mask, kl, args.kl_coef)
        advantages, returns = ppo_core.compute_gae(rewards, values, loss_mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = ppo_core.masked_whiten(advantages, loss_mask)
        advantages = shape_advantages(advantages, credit.gamma.to(device), loss_mask, args.credit_sign_mode)
        rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask, scores, logprobs,
                          ref_logprobs, values, rewards, returns, advantages, credit.gamma, entropy)
        self._log_rollout(rollout, kl, credit)
        self.last_rollout, self.last_credit = rollout, credit
        return rollout

    def _generate(self, prompts: list) -> tuple[torch.Tensor, ...]:
        """Left-padded prompts (B, Tp) and right-padded completions (B, Tc) with their masks (long, 0/1)."""
        tok = self.processing_class
        texts = [p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        prompt_ids = enc["input_ids"].to(self.accelerator.device)
        prompt_mask = enc["attention_mask"].to(self.accelerator.device)
        with self.accelerator.autocast(), generation_config_as_model_default(self.model, self.generation_config):
            out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                      generation_config=self.generation_config)
        completion_ids = out[:, prompt_ids.shape[1]:]
        return prompt_ids, prompt_mask, completion_ids, completion_mask_until_eos(completion_ids, self.eos_token_id)

    def _score(self, rows, prompts, completion_ids, completion_mask, sink: dict[str, list[float]] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), scored (B,) bool): the weighted sum of rewards, NaN-free; a row every reward function
        answered None for is not scored and is left out of the update. Per-function means and the reward functions'
        own ``log_metric`` values go to ``sink`` (default: this step's metrics)."""
        sink = self._step_metrics if sink is None else sink
        ids_list = [c[m.bool()].tolist() for c, m in zip(completion_ids, completion_mask)]
        texts = self.processing_class.batch_decode(ids_list, skip_special_tokens=True)
        completions = [t if isinstance(p, str) else [{"role": "assistant", "content": t}] for p, t in zip(prompts, texts)]
        columns = {k: [row[k] for row in rows] for k in rows[0] if k != "prompt"}
        per_func = torch.zeros(len(rows), len(self.reward_funcs))
        for i, (func, name) in enumerate(zip(self.reward_funcs, self.reward_names)):
            out = func(prompts=prompts, completions=completions, completion_ids=ids_list, trainer_state=self.state,
                       log_metric=lambda key, value: sink[key].append(float(value)), **columns)
            if len(out) != len(rows):
                raise ValueError(f"reward function {name!r} returned {len(out)} rewards for {len(rows)} completions")
            per_func[:, i] = torch.tensor([math.nan if r is None else float(r) for r in out])
            sink[f"rewards/{name}/mean"].append(torch.nanmean(per_func[:, i]).item())
        scored = ~torch.isnan(per_func).all(1)
        scores = (per_func * self.reward_weights).nansum(1)
        device = self.accelerator.device
        return scores.to(device), scored.to(device)

    def _reference_logprobs(self, ids, mask, n_completion) -> torch.Tensor:
        if self.ref_model is not None:
            return self._batched_forward(self.ref_model, ids, mask, n_completion, values=False)[0]
        with self.model.disable_adapter():
            return self._batched_forward(self.model, ids, mask, n_completion, values=False)[0]

    def _batched_forward(self, model, ids, mask, n_completion, values: bool):
        """:meth:`_forward` in chunks of the mini-batch size, concatenated: (logprobs, entropy, values|None)."""
        size = self._mini_batch_size()
        parts = [self._forward(model, ids[i:i + size], mask[i:i + size], n_completion, values)
                 for i in range(0, ids.shape[0], size)]
        return tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts))

    def _forward(self, model, ids, mask, n_completion: int, values: bool):
        """Log-probs and entropy (B, Tc) of the last ``n_completion`` tokens at ``temperature``, and the critic's
        values V(s_t) (B, Tc) read at the position that predicts token t (None unless ``values``)."""
        with self.accelerator.autocast():
            out = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=n_completion + 1,
                        output_hidden_states=values and self.critic is None)
            logprobs, entropy = token_logprobs_and_entropy(
                out.logits[:, :-1].float() / self.args.temperature, ids[:, -n_completion:]
            )
            if not values:
                return logprobs, entropy, None
            if self.critic is None:
                hidden = out.hidden_states[-1]
            else:
                hidden = self.critic(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            state_values = self.value_head(hidden[:, -(n_completion + 1):-1].float()).squeeze(-1)
        return logprobs, entropy, state_values

    def _mini_batch_size(self) -> int:
        return self.args.per_device_train_batch_size // self.args.num_mini_batches

    # ------------------------------------------------------------------------------------------ update

    def ppo_update(self, rollout: Rollout) -> None:
        """``num_ppo_epochs`` passes of shuffled mini-batches, one optimizer step each (clipped losses)."""
        args = self.args
        batch = rollout.completion_ids.shape[0]
        self._set_training(True)
        for epoch in range(args.num_ppo_epochs):  # a fresh shuffle per (step, epoch), reproducible on resume
            order = torch.randperm(batch, generator=torch.Generator().manual_seed(
                args.seed + 1_000_003 * (self.state.global_step * args.num_ppo_epochs + epoch)))
            for rows in order.to(rollout.completion_ids.device).chunk(args.num_mini_batches):
                mb = rollout.select(rows)
                ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], 1)
                mask = torch.cat([mb["prompt_mask"], mb["completion_mask"]], 1)
                logprobs, _, values = self._forward(self.model, ids, mask, mb["completion_ids"].shape[1], True)
                pg_loss, pg_clip, approx_kl = ppo_core.policy_loss(
                    logprobs, mb["logprobs"], mb["advantages"], mb["loss_mask"], args.cliprange)
                vf_loss, vf_clip = ppo_core.value_loss(
                    values, mb["values"], mb["returns"], mb["loss_mask"], args.cliprange_value)
                loss = pg_loss + args.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._average_gradients()
                if args.max_grad_norm and args.max_grad_norm > 0:
                    policy_norm = nn.utils.clip_grad_norm_(self._policy_parameters(), args.max_grad_norm)
                    critic_norm = nn.utils.clip_grad_norm_(self._critic_parameters(), args.max_grad_norm)
                    self._step_metrics["grad_norm/policy"].append(policy_norm.item())
                    self._step_metrics["grad_norm/critic"].append(critic_norm.item())
                self.optimizer.step()
                self.lr_scheduler.step()
                for name, value in (("loss/policy", pg_loss), ("loss/value", vf_loss), ("policy/clipfrac", pg_clip),
                                    ("policy/approx_kl", approx_kl), ("value/clipfrac", vf_clip)):
                    self._step_metrics[name].append(value.item())
        self._step_metrics["learning_rate"].append(self.lr_scheduler.get_last_lr()[0])

    def _average_gradients(self) -> None:
        """Average trainable gradients over processes (one all-reduce); a no-op with one process."""
        if self.accelerator.num_processes == 1:
            return
        params = self._policy_parameters() + self._critic_parameters()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
        for p, g in zip(params, torch.split(flat, [g.numel() for g in grads])):
            p.grad = g.view_as(p).clone()

    # ------------------------------------------------------------------------------------------ logging

    def _log_rollout(self, r: Rollout, kl: torch.Tensor | None, credit: CreditResult) -> None:
        m, lengths = r.loss_mask, r.completion_mask.sum(1).float()
        ended = (r.completion_ids == self.eos_token_id).any(1)
        values = {
            "reward": r.scores.mean().item(),
            "reward_std": r.scores.std().item() if r.scores.numel() > 1 else 0.0,
            "completions/mean_length": lengths.mean().item(),
            "completions/clipped_ratio": (~ended).float().mean().item(),
            "entropy": ppo_core.masked_mean(r.entropy, m).item(),
            "value/mean": ppo_core.masked_mean(r.values, m).item(),
            "value/explained_variance": ppo_core.explained_variance(r.values, r.returns, m).item(),
            "returns/mean": ppo_core.masked_mean(r.returns, m).item(),
            **credit.metrics,
        }
        if kl is not None:
            values["objective/kl"] = kl.sum(1).mean().item()  # nats per sequence
            values["objective/non_score_reward"] = (-self.args.kl_coef * kl).sum(1).mean().item()
        for name, value in values.items():
            self._step_metrics[name].append(value)

    def _finish_step(self) -> tuple[dict[str, float], dict[str, float] | None]:
        """This step's metrics (means over its mini-batches, averaged over processes), and every
        ``logging_steps`` the log entry (their mean over the interval), which goes to ``state.log_history`` and is
        printed; None on the other steps."""
        metrics = self._reduce_metrics({k: float(np.mean(v)) for k, v in self._step_metrics.items()})
        self._step_metrics.clear()
        self._pending_metrics.append(metrics)
        entry = None
        step = self.state.global_step
        if step % self.state.logging_steps == 0 or step == self.args.max_steps or (
                step == 1 and self.args.logging_first_step):
            keys = {k for p in self._pending_metrics for k in p}
            entry = {k: nan_mean([p[k] for p in self._pending_metrics if k in p]) for k in sorted(keys)}
            entry["step"] = self.state.global_step
            self.state.log_history.append(entry)
            self._pending_metrics = []
            if self.accelerator.is_main_process and not self.args.disable_tqdm:
                tqdm.write(str({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}))
        return metrics, entry

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return metrics
        names = sorted(metrics)
        values = torch.tensor([metrics[n] for n in names], device=self.accelerator.device)
        return dict(zip(names, self.accelerator.reduce(values, reduction="mean").tolist()))

    # ------------------------------------------------------------------------------------------ checkpoints

    def save_model(self, output_dir: str | None = None) -> None:
        """Write a resumable checkpoint: the policy (peft adapter, or the full model without peft) + tokenizer in
        ``output_dir``, the critic (critic adapter or backbone, and ``value_head.safetensors``) in ``critic/``, and
        ``training_state.pt`` (optimizer, scheduler, step, logs, credit state) + one RNG state file per process."""
        out = Path(output_dir or self.args.output_dir)
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(out)
            self.processing_class.save_pretrained(out)
            (out / CRITIC_DIR).mkdir(exist_ok=True)
            if self.critic is not None:
                self.critic.save_pretrained(out / CRITIC_DIR)
            save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()},
                      out / CRITIC_DIR / VALUE_HEAD_FILE)
            torch.save({
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "global_step": self.state.global_step,
                "log_history": self.state.log_history,
                "pending_metrics": self._pending_metrics,
                **self.credit.state_dict(),  # credit_generator, credit_profile
            }, out / TRAINING_STATE_FILE)
        acc.wait_for_everyone()
        torch.save(_rng_state(), out / RNG_STATE_FILE.format(rank=acc.process_index))

    def _load_checkpoint(self, path: Path) -> None:
        """Restore everything :meth:`save_model` wrote (weights, optimizer, scheduler, step, logs, RNG)."""
        device = self.accelerator.device
        _load_weights(self.model, path)
        if self.critic is not None:
            _load_weights(self.critic, path / CRITIC_DIR)
        self.value_head.load_state_dict(load_file(path / CRITIC_DIR / VALUE_HEAD_FILE, device=str(device)))
        state = torch.load(path / TRAINING_STATE_FILE, map_location=device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.state.global_step = state["global_step"]
        self.state.log_history = state["log_history"]
        self._pending_metrics = state["pending_metrics"]
        self.credit.load_state_dict(state)
        # our own file: Python/NumPy RNG states are not plain tensors
        _set_rng_state(torch.load(path / RNG_STATE_FILE.format(rank=self.accelerator.process_index),
                                  weights_only=False))


def _plain(value):
    """The string of a TrainingArguments enum (IntervalStrategy.STEPS -> 'steps'), for messages."""
    return getattr(value, "value", value)


def _check_prompt_datasets(train_dataset, eval_dataset, args) -> None:
    """ValueError unless the datasets have a ``prompt`` column and evaluation has a dataset when it is asked for."""
    named = {"train_dataset": train_dataset}
    if isinstance(eval_dataset, dict):
        named.update({f"eval_dataset[{k!r}]": v for k, v in eval_dataset.items()})
    elif eval_dataset is not None:
        named["eval_dataset"] = eval_dataset
    for name, dataset in named.items():
        if "prompt" not in dataset.column_names:
            raise ValueError(f"{name} needs a 'prompt' column; it has {dataset.column_names}")
    if eval_dataset is None and (args.eval_strategy != "no" or args.eval_on_start):
        raise ValueError(f"eval_strategy={_plain(args.eval_strategy)!r}, "
                         f"eval_on_start={args.eval_on_start} evaluate on an eval_dataset: pass eval_dataset= to "
                         "AttnPPOTrainer, or set eval_strategy='no' and eval_on_start=False")


def sampling_generation_config(max_new_tokens: int, temperature: float, pad_token_id: int | None,
                               eos_token_id: int | None) -> GenerationConfig:
    """Ancestral sampling from softmax(logits / temperature), the distribution whose log-probs PPO trains.

    Every logits-processing field with a neutral value is set to it explicitly. The ones whose only neutral value
    is None (min_p, top_h, bad_words_ids, suppress_tokens, begin_suppress_tokens, sequence_bias, forced_bos/eos,
    exponential_decay_length_penalty, watermarking_config; also stop_strings, assistant settings) would be filled in
    from the model's ``generation_config`` by ``generate``: generate inside :func:`generation_config_as_model_default`.
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_length=0, min_new_tokens=0, do_sample=True, num_beams=1,
        num_return_sequences=1, temperature=temperature, top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0,
        eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, guidance_scale=1.0, renormalize_logits=False, remove_invalid_values=False,
        token_healing=False, use_cache=True, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
    )


@contextlib.contextmanager
def generation_config_as_model_default(model: nn.Module, config: GenerationConfig):
    """Make ``config`` the model's own ``generation_config`` for the duration, restored afterwards.

    ``generate`` fills every field its ``generation_config`` argument leaves None from the model's (instruct
    checkpoints ship repetition_penalty, min_p, suppress_tokens, ...); with ``config`` as both, nothing is inherited.
    A peft model generates through its base model, whose ``generation_config`` is the one swapped.
    """
    target = model.get_base_model() if isinstance(model, PeftModel) else model
    saved = target.generation_config
    target.generation_config = config
    try:
        yield
    finally:
        target.generation_config = saved


def nan_mean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN (without numpy's empty-slice warning) when every value is NaN."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def completion_mask_until_eos(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on tokens up to and including the first EOS (all tokens when there is none). (B, Tc) -> (B, Tc) long."""
    is_eos = completion_ids == eos_token_id
    length = completion_ids.shape[1]
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), length)
    return (torch.arange(length, device=completion_ids.device)[None] <= first_eos[:, None]).long()


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy of p = softmax(logits), both (B, T), nats. logits: (B, T, V); targets: (B, T)."""
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), entropy


def _load_weights(module: nn.Module, path: Path) -> None:
    """Load what ``module.save_pretrained(path)`` wrote back into ``module`` (peft adapter or full weights)."""
    if isinstance(module, PeftModel):
        set_peft_model_state_dict(module, load_peft_weights(str(path), device=str(next(module.parameters()).device)))
    else:
        module.load_state_dict(type(module).from_pretrained(path, dtype=next(module.parameters()).dtype).state_dict())


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
