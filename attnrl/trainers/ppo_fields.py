"""What AttnPPOTrainer does with every field of its config: the reviewed list behind "no accepted field is silently
ignored" (issue 25, item 6).

:class:`attnrl.trainers.ppo.AttnPPOConfig` inherits every field of ``transformers.TrainingArguments``, but
AttnPPOTrainer is not the HF Trainer: it has its own loop (rollout, GAE, PPO epochs). Each field is in exactly one
of three lists, and ``tests/test_ppo_fields.py`` checks that the lists cover every field of the config:

- :data:`IMPLEMENTED`: the trainer does what the field says, as the HF Trainer does (with where);
- :data:`REFUSED`: values other than the accepted ones raise a ValueError when the config is built, with the reason;
- :data:`IRRELEVANT`: the field has no meaning for this trainer whatever its value (with the reason), like the
  fields the HF Trainer itself leaves to scripts (``do_train``, ``resume_from_checkpoint``).

A new TrainingArguments field (a transformers upgrade) fails that test until it is classified here.
"""

from __future__ import annotations

from transformers.trainer_pt_utils import AcceleratorConfig

_CREDIT = "read by CreditAssigner (attnrl.credit), as in AttnGRPOTrainer"

#: field -> where AttnPPOTrainer honours it
IMPLEMENTED: dict[str, str] = {
    # run length, batch, optimisation
    "output_dir": "checkpoints (checkpoint-<step>) and save_model",
    "max_steps": "number of rollout steps (required, > 0)",
    "per_device_train_batch_size": "completions per rollout step and process",
    "learning_rate": "AdamW learning rate of the policy (and of the critic unless critic_learning_rate)",
    "lr_scheduler_type": "get_scheduler",
    "lr_scheduler_kwargs": "get_scheduler(scheduler_specific_kwargs=...)",
    "warmup_steps": "get_scheduler (args.get_warmup_steps)",
    "weight_decay": "AdamW",
    "adam_beta1": "AdamW",
    "adam_beta2": "AdamW",
    "adam_epsilon": "AdamW",
    "max_grad_norm": "policy and critic gradients clipped separately",
    "seed": "set_seed, the prompt order (unless data_seed) and the PPO mini-batch shuffles",
    "data_seed": "the prompt order (default: seed)",
    "full_determinism": "enable_full_determinism(seed) instead of set_seed, as the HF Trainer",
    # precision and memory
    "use_cpu": "Accelerator(cpu=...)",
    "bf16": "autocast (Accelerator mixed_precision='bf16')",
    "tf32": "applied by TrainingArguments.__post_init__ itself (torch's TF32 matmul mode)",
    "activation_checkpointing": "activation_checkpointing_enable on the policy and the critic, as the HF Trainer",
    "activation_checkpointing_kwargs": "passed to activation_checkpointing_enable (every_n_layers, offload too)",
    "gradient_checkpointing": "alias of activation_checkpointing (resolved by TrainingArguments)",
    "gradient_checkpointing_kwargs": "alias of activation_checkpointing_kwargs (resolved by TrainingArguments)",
    # logging
    "logging_strategy": "'steps' (others refused in validate_ppo)",
    "logging_steps": "a log entry every logging_steps rollout steps (and at the last)",
    "logging_first_step": "a log entry after the first step too",
    "log_level": "transformers' verbosity on the main process, as the HF Trainer ('passive': unchanged)",
    "log_level_replica": "transformers' verbosity on the other processes ('passive': unchanged)",
    "log_on_each_node": "which processes use log_level (the main process of each node, or only the first)",
    "disable_tqdm": "the progress bar and printed log entries",
    # evaluation
    "eval_strategy": "'no' or 'steps' (evaluate(): rewards of generated completions for eval_dataset's prompts)",
    "eval_steps": "evaluate every eval_steps rollout steps (and at the last), via DefaultFlowCallback",
    "eval_delay": "no evaluation before this step, via DefaultFlowCallback",
    "eval_on_start": "evaluate before the first step",
    "per_device_eval_batch_size": "completions generated per evaluation batch",
    # checkpoints
    "save_strategy": "'no' or 'steps' (others refused in validate_ppo)",
    "save_steps": "a checkpoint-<step> folder every save_steps rollout steps",
    "save_total_limit": "older checkpoint-* folders deleted (transformers' rotate_checkpoints), as the HF Trainer",
    # PPO
    "num_generations": "completions per prompt",
    "max_completion_length": "generation length",
    "temperature": "sampling and log-prob temperature",
    "reward_weights": "weights of the reward functions in the score",
    "num_ppo_epochs": "passes over each rollout batch",
    "num_mini_batches": "optimizer steps per pass",
    "cliprange": "ppo_core.policy_loss",
    "cliprange_value": "ppo_core.value_loss",
    "vf_coef": "weight of the value loss",
    "gamma": "GAE discount",
    "lam": "GAE lambda",
    "kl_coef": "per-token KL penalty (0: no reference forward)",
    "whiten_advantages": "masked whitening of the GAE advantages",
    "critic_mode": "separate critic or value head on the policy",
    "critic_learning_rate": "AdamW learning rate of the critic",
    # credit (CreditConfig)
    **{name: _CREDIT for name in (
        "credit_strategy", "credit_layers", "credit_num_layers", "credit_head_fraction", "credit_head_profile",
        "credit_head_profile_path", "credit_window", "credit_fai_lo", "credit_fai_hi", "credit_gamma_amp",
        "credit_top_q", "credit_coupled_k", "credit_coupled_alpha", "credit_sign_mode", "credit_backend",
        "credit_seed")},
    "credit_stats_pass": "'auto' and 'separate' both mean a separate no-grad statistics forward of the rollout "
                         "policy here: PPO's loss forwards run on updated weights, never on the rollout policy",
}

_NO_LABELS = ("AttnPPOTrainer's evaluation generates completions for eval_dataset's prompts and logs their rewards; "
              "there are no predictions or labels for this field to act on")
_OWN_LOOP = "AttnPPOTrainer has its own training loop, which does not implement this"
_LAUNCHER = ("the process group is created by the launcher (Ray Train, accelerate launch, torchrun), not by "
             "AttnPPOTrainer: set it there")

#: field -> (accepted values, why other values are refused)
REFUSED: dict[str, tuple[tuple, str]] = {
    "gradient_accumulation_steps": ((1,), "one mini-batch is one optimizer step — set num_mini_batches instead"),
    "optim": (("adamw_torch", "adamw_torch_fused"), "the optimizer is torch.optim.AdamW (a policy and a critic "
                                                    "parameter group)"),
    "optim_args": ((None, ""), "the optimizer is torch.optim.AdamW, configured by adam_* and weight_decay"),
    "optim_target_modules": ((None,), "the optimizer is torch.optim.AdamW over every trainable parameter"),
    "fp16": ((False,), "use bf16 (autocast); fp16 needs a gradient scaler AttnPPOTrainer does not have"),
    "bf16_full_eval": ((False,), _OWN_LOOP),
    "fp16_full_eval": ((False,), _OWN_LOOP),
    "torch_compile": ((False,), _OWN_LOOP),
    "torch_compile_backend": ((None,), _OWN_LOOP),
    "torch_compile_mode": ((None,), _OWN_LOOP),
    "use_liger_kernel": ((False,), "PPO computes its own log-probs and values from the model's logits"),
    "liger_kernel_config": ((None,), "PPO computes its own log-probs and values from the model's logits"),
    "neftune_noise_alpha": ((None,), _OWN_LOOP),
    "torch_empty_cache_steps": ((None,), _OWN_LOOP),
    "auto_find_batch_size": ((False,), _OWN_LOOP),
    "label_smoothing_factor": ((0.0,), "PPO has no labels to smooth"),
    "include_num_input_tokens_seen": (("no", False), _OWN_LOOP),
    "logging_nan_inf_filter": ((True,), "log entries always average each metric with NaN values left out"),
    "report_to": (([], None, "none", ["none"]), "AttnPPOTrainer reports to no logging integration: read "
                  "trainer.state.log_history, or add the integration's TrainerCallback to callbacks"),
    "prediction_loss_only": ((False,), _NO_LABELS),
    "eval_do_concat_batches": ((True,), _NO_LABELS),
    "eval_use_gather_object": ((False,), _NO_LABELS),
    "eval_accumulation_steps": ((None,), _NO_LABELS),
    "include_for_metrics": (([],), _NO_LABELS),
    "batch_eval_metrics": ((False,), _NO_LABELS),
    "save_only_model": ((False,), "checkpoints always hold the optimizer, scheduler, credit and RNG states, so a "
                                  "run resumes exactly"),
    "save_on_each_node": ((False,), "the main process writes the checkpoint (each process its RNG state)"),
    "enable_jit_checkpoint": ((False,), _OWN_LOOP),
    "push_to_hub": ((False,), "AttnPPOTrainer does not push to the Hub; upload the saved folder yourself"),
    "load_best_model_at_end": ((False,), "AttnPPOTrainer keeps no best checkpoint"),
    "metric_for_best_model": ((None,), "AttnPPOTrainer keeps no best checkpoint"),
    "greater_is_better": ((None,), "AttnPPOTrainer keeps no best checkpoint"),
    "ignore_data_skip": ((False,), "a resumed run continues the prompt order exactly (a function of the seed and "
                                   "the step): there is no data loader to skip"),
    "restore_callback_states_from_checkpoint": ((False,), "checkpoints hold no callback states"),
    "accelerator_config": ((None, AcceleratorConfig()), "AttnPPOTrainer builds its own Accelerator (device and bf16 "
                                                        "only) and uses no DataLoader"),
    "parallelism_config": ((None,), "AttnPPOTrainer trains data-parallel only (gradients averaged over processes)"),
    "label_names": ((None,), "PPO has no labels"),
    "train_sampling_strategy": (("random",), "prompts are drawn in a seeded random order per pass over the dataset"),
    "ddp_backend": ((None,), _LAUNCHER),
    "ddp_timeout": ((1800,), _LAUNCHER),
    "fsdp": ((None, "", []), "AttnPPOTrainer trains data-parallel only (no FSDP)"),
    "fsdp_config": ((None,), "AttnPPOTrainer trains data-parallel only (no FSDP)"),
    "deepspeed": ((None,), "AttnPPOTrainer trains data-parallel only (no DeepSpeed)"),
    "debug": (([], ""), _OWN_LOOP),
    "skip_memory_metrics": ((True,), "AttnPPOTrainer records no memory metrics"),
}

_REPORTING = "read only by report_to integrations, which AttnPPOTrainer refuses"
_HUB = "read only with push_to_hub, which AttnPPOTrainer refuses"
_NO_DATALOADER = "there is no DataLoader: each step's prompts are read from the dataset by index"
_NO_DDP = "there is no DistributedDataParallel wrapper: gradients are averaged over processes by hand"
_SCRIPTS = "read by scripts, not by the trainer (the HF Trainer does not read it either)"

#: field -> why it has no effect on AttnPPOTrainer, whatever its value
IRRELEVANT: dict[str, str] = {
    "num_train_epochs": "max_steps (required, > 0) sets the length, and overrides num_train_epochs in the HF "
                        "Trainer too",
    "average_tokens_across_devices": "PPO's losses are token means over each process's mini-batch and the gradients "
                                     "are averaged over processes; there is no token count to share",
    "use_cache": "training forwards never use a KV cache (use_cache=False) and generation always does",
    "remove_unused_columns": "every dataset column but prompt goes to the reward functions, as in TRL's "
                             "GRPOTrainer (whose config sets it to False)",
    "length_column_name": "read only by train_sampling_strategy='group_by_length', which is refused",
    "run_name": _REPORTING,
    "project": _REPORTING,
    "trackio_space_id": _REPORTING,
    "trackio_bucket_id": _REPORTING,
    "trackio_static_space_id": _REPORTING,
    "hub_token": _HUB,
    "hub_private_repo": _HUB,
    "hub_model_id": _HUB,
    "hub_strategy": _HUB,
    "hub_always_push": _HUB,
    "hub_revision": _HUB,
    "dataloader_drop_last": _NO_DATALOADER,
    "dataloader_num_workers": _NO_DATALOADER,
    "dataloader_pin_memory": _NO_DATALOADER,
    "dataloader_persistent_workers": _NO_DATALOADER,
    "dataloader_prefetch_factor": _NO_DATALOADER,
    "dataloader_multiprocessing_context": _NO_DATALOADER,
    "dataloader_in_order": _NO_DATALOADER,
    "ddp_find_unused_parameters": _NO_DDP,
    "ddp_bucket_cap_mb": _NO_DDP,
    "ddp_broadcast_buffers": _NO_DDP,
    "ddp_static_graph": _NO_DDP,
    "do_train": _SCRIPTS,
    "do_eval": _SCRIPTS + "; evaluation follows eval_strategy",
    "do_predict": _SCRIPTS,
    "resume_from_checkpoint": _SCRIPTS + "; pass it to train(resume_from_checkpoint=...)",
    "local_rank": "set by the launcher; the process's rank comes from torch.distributed",
}


def refused_settings(args) -> list[str]:
    """One message per field of ``args`` set to a value :data:`REFUSED` does not accept, naming the field, the value
    and the reason (empty when every field is acceptable)."""
    problems = []
    for name, (accepted, reason) in REFUSED.items():
        value = getattr(args, name)
        if not any(value == ok and type(value == ok) is bool for ok in accepted):
            shown = ", ".join(repr(getattr(ok, "value", ok)) for ok in accepted)
            problems.append(f"{name}={getattr(value, 'value', value)!r} is not supported by AttnPPOTrainer: {reason} "
                            f"(accepted: {shown})")
    return problems
