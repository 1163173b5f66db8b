"""From a batch of rollouts to per-token advantage weights: the one object both trainers call (docs/methods.md §1)."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from attnrl.attention.capture import (
    CaptureError,
    attention_layers,
    capture_statistics,
    enable_capture,
    layer_types,
    num_layers,
)
from attnrl.attention.collect import ForwardCaptures, capture_each_forward, collect_statistics
from attnrl.kernels.dispatch import AttentionStats

from .config import CreditConfig
from .heads import HeadProfile, head_distances_and_count, token_fai, token_waad
from .strategies import STRATEGY_NEEDS, CreditInputs, StrategyOutput, get_strategy


@dataclass
class CreditResult:
    """Weights and the statistics behind them, all (B, Tc) over the completion positions."""

    gamma: torch.Tensor
    waad: torch.Tensor | None = None
    fai: torch.Tensor | None = None
    roles: dict[str, torch.Tensor] = field(default_factory=dict)  # the strategy's token roles, each (B, Tc) bool
    profile: HeadProfile | None = None  # the local/global head split used for this batch
    metrics: dict[str, float] = field(default_factory=dict)


class CreditAssigner:
    """Computes gamma (B, Tc) for rollouts of ``model`` according to a :class:`CreditConfig`.

    Construction validates everything that can be checked without data (:meth:`CreditConfig.validate_credit_layers`,
    then capturability) so that a bad configuration fails before training starts.

    ``reduce_across_ranks`` (default): under an initialised torch.distributed group of more than one process, the
    local/global head split is computed from the head-distance statistics of all ranks' rollouts together (per batch,
    or on the first batch when cached), so every rank uses the same split. Every rank must then compute credit in
    step (as data-parallel trainers do); pass False for work one rank does alone (a report).
    """

    def __init__(self, config: CreditConfig, model, reduce_across_ranks: bool = True):
        config.validate_credit()
        self.config = config
        self.reduce_across_ranks = reduce_across_ranks
        self.params = config.credit_params()
        self.strategy = get_strategy(config.credit_strategy)
        self.needs = STRATEGY_NEEDS[config.credit_strategy]
        self.spec = config.stats_spec()
        self.generator = torch.Generator().manual_seed(config.credit_seed)
        self.profile: HeadProfile | None = None
        self.layers: list[int] = []
        self._warned_fai_undefined = False
        if "attention" not in self.needs:
            return
        # the default middle layers are chosen among those with softmax attention (all but in hybrid models);
        # a model without any (Mamba, all-convolution LFM2) is refused here, naming the strategies that still work
        self.layers = config.validate_credit_layers(num_layers(model), attention_layers(model),
                                                    layer_types=layer_types(model))
        try:
            enable_capture(model)
        except CaptureError as e:
            raise CaptureError(f"credit_strategy={config.credit_strategy!r} needs attention capture: {e}") from e
        if config.credit_head_profile_path:
            self.profile = HeadProfile.load(config.credit_head_profile_path)  # its layers were checked above
        self._probe(model)

    def _probe(self, model) -> None:
        """A 3-token forward proving the selected layers are captured (fails early, before any training)."""
        dev = next(model.parameters()).device
        ids = torch.zeros(1, 3, dtype=torch.long, device=dev)
        mask = torch.ones_like(ids)
        try:
            with torch.no_grad(), capture_statistics(
                model, self.layers, mask, torch.tensor([1]), self.spec, backend="torch", stop_after_last_layer=True
            ):
                model(input_ids=ids, attention_mask=mask, use_cache=False)
        except CaptureError as e:
            raise CaptureError(f"credit_strategy={self.config.credit_strategy!r}: {e}") from e

    def collect_statistics(
        self, model, input_ids, attention_mask, resp_start: int, batch_size: int | None = None, **forward_kwargs
    ) -> dict[int, AttentionStats]:
        """Statistics (B, H, T) of ``self.layers`` over full sequences (B, T) whose responses start at
        ``resp_start``: :func:`attnrl.attention.collect.collect_statistics` with this assigner's spec and backend
        (micro-batches of ``batch_size`` rows; see there how image inputs are split)."""
        return collect_statistics(model, self.layers, input_ids, attention_mask, resp_start, self.spec,
                                  batch_size=batch_size, backend=self.config.credit_backend, **forward_kwargs)

    def head_profile(self, stats: dict[int, AttentionStats], response_mask: torch.Tensor,
                     cache: bool = True) -> HeadProfile:
        """The local/global split: cached, or recomputed from this batch (config.credit_head_profile); the batch is
        every rank's together when ``reduce_across_ranks`` (see the class docstring). response_mask: (B, T) bool,
        the query tokens whose distances count (model-written response tokens). ``cache=False`` (evaluation
        rollouts): a profile computed here is used for this batch only and never becomes the cached one."""
        if self.profile is not None and self.config.credit_head_profile == "cached":
            return self.profile
        distances, tokens = head_distances_and_count(stats, response_mask, reduce_across_ranks=self.reduce_across_ranks)
        profile = HeadProfile.from_distances(self.layers, distances, self.config.credit_head_fraction)
        if self.config.credit_head_profile == "cached" and cache and tokens > 0:  # never cache an empty batch's
            self.profile = profile
        return profile

    def state_dict(self) -> dict:
        """What credit carries from step to step and a checkpoint must hold: the ``random`` strategy's generator
        state and the cached head profile (None until profiled), as tensors and lists (``torch.load`` with
        ``weights_only=True`` reads it)."""
        profile = self.profile
        return {"credit_generator": self.generator.get_state(),
                "credit_profile": None if profile is None else asdict(profile)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.generator.set_state(state["credit_generator"].cpu())
        if state["credit_profile"] is not None:
            self.profile = HeadProfile(**state["credit_profile"])

    def assign(
        self,
        model,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        *,
        entropy: torch.Tensor | None = None,
        batch_size: int | None = None,
        response_mask: torch.Tensor | None = None,
        cache_profile: bool = True,
        **forward_kwargs,
    ) -> CreditResult:
        """gamma for a padded batch: prompts (B, Tp) left-padded, completions (B, Tc) right-padded.

        Runs its own statistics forward (stopped after the last analysed layer) when the strategy needs attention.
        response_mask (B, Tc): the model-written tokens credit is for (default ``completion_mask``; see
        :meth:`from_statistics`); cache_profile: see :meth:`head_profile`.
        """
        stats = None
        if "attention" in self.needs:
            ids = torch.cat([prompt_ids, completion_ids], 1)
            mask = torch.cat([prompt_mask, completion_mask], 1)
            stats = self.collect_statistics(model, ids, mask, prompt_ids.shape[1], batch_size, **forward_kwargs)
        return self.from_statistics(stats, prompt_mask, completion_mask, entropy, response_mask=response_mask,
                                    cache_profile=cache_profile)

    def capture_each_forward(self, model, resp_start: int) -> contextlib.AbstractContextManager[ForwardCaptures]:
        """Record this assigner's statistics during every forward of ``model`` the caller runs inside the block
        (e.g. TRL's micro-batched no-grad log-prob pass over [prompt; completion], responses from ``resp_start``);
        :func:`attnrl.attention.collect.capture_each_forward` with this assigner's layers, spec and backend."""
        return capture_each_forward(model, self.layers, resp_start, self.spec, backend=self.config.credit_backend)

    @contextlib.contextmanager
    def capture_during_forward(
        self, model, prompt_mask: torch.Tensor, completion_mask: torch.Tensor,
        on_result: Callable[[CreditResult], None], *, response_mask: torch.Tensor | None = None,
        cache_profile: bool = True,
    ) -> Iterator[None]:
        """Take the statistics from a forward the caller runs anyway over [prompt; completion] (the loss forward).

        ``on_result`` receives the CreditResult inside that forward, right after the last analysed layer, i.e.
        before the caller's loss reads the advantages; its ``credit/seconds`` metric counts only the extra work. Only exact when the forward's weights are the rollout
        policy's (the trainer checks this).
        """
        mask = torch.cat([prompt_mask, completion_mask], 1)
        resp = torch.full((mask.shape[0],), prompt_mask.shape[1], device=mask.device)

        def done(cap):
            start = time.perf_counter()
            result = self.from_statistics(cap.stats, prompt_mask, completion_mask, response_mask=response_mask,
                                          cache_profile=cache_profile)
            # the forward itself is the caller's: only the statistics and the weights are extra work
            if result.metrics:  # an empty micro-batch logs no metric at all
                result.metrics["credit/seconds"] = cap.seconds + time.perf_counter() - start
            on_result(result)

        with capture_statistics(model, self.layers, mask, resp, self.spec, backend=self.config.credit_backend,
                                on_complete=done):
            yield

    def from_statistics(
        self,
        stats: dict[int, AttentionStats] | None,
        prompt_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        entropy: torch.Tensor | None = None,
        *,
        response_mask: torch.Tensor | None = None,
        cache_profile: bool = True,
    ) -> CreditResult:
        """gamma (B, Tc) from per-layer statistics over [prompt; completion] (None for attention-free strategies).

        response_mask (B, Tc), default ``completion_mask``: the tokens credit is for — the model-written tokens the
        loss trains on (``completion_mask * tool_mask`` with tools / environments). Head distances, WAAD/FAI of
        candidates, TopQ counts, medians and metrics use these only; gamma = 1 elsewhere. Tool / environment tokens
        inside the completion still enter the statistics as keys, as queries and as positions (docs/methods.md
        §1.3.1). cache_profile: see :meth:`head_profile`.
        """
        response = (completion_mask if response_mask is None else response_mask).bool()
        inputs = CreditInputs(response_mask=response, entropy=entropy, generator=self.generator)
        result = CreditResult(gamma=torch.ones_like(completion_mask, dtype=torch.float32))
        if stats is not None:
            Tp = prompt_mask.shape[1]
            full_response = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), response], 1)
            profile = result.profile = self.head_profile(stats, full_response, cache=cache_profile)
            inputs.waad = token_waad(stats, profile)[:, Tp:].to(response.device)
            inputs.fai = token_fai(stats, profile)[:, Tp:].to(response.device)
            result.waad, result.fai = inputs.waad, inputs.fai
        out = self.strategy(inputs, self.params)
        if not isinstance(out, StrategyOutput):
            raise TypeError(f"credit strategy {self.config.credit_strategy!r} returned {type(out).__name__}; a "
                            "strategy returns StrategyOutput(gamma, roles) (attnrl.credit.strategies)")
        result.gamma = out.gamma.to(response.device) * response + (~response)
        result.roles = out.roles
        if not response.any():
            return result  # no response token: no metric (its means would read 0 and bias the step's averages)
        if stats is not None:
            result.metrics.update(_attention_metrics(inputs, result.profile))
            self._warn_once_if_fai_undefined(inputs, result.gamma)
        amplified = (result.gamma > 1.0) & response
        n = response.sum()
        result.metrics["credit/amplified_frac"] = (amplified.sum() / n).item()
        result.metrics["credit/gamma_mean"] = ((result.gamma * response).sum() / n).item()
        if "dominated" in result.roles:
            result.metrics["credit/dominated_anchor_frac"] = (result.roles["dominated"].sum() / n).item()
        return result

    def _warn_once_if_fai_undefined(self, x: CreditInputs, gamma: torch.Tensor) -> None:
        """Warn (once per assigner, i.e. per run) when FAI is undefined on every response token of a batch (every
        completion no longer than credit_fai_lo) and so credit amplified nothing: a silent no-op otherwise."""
        r = x.response_mask
        if self._warned_fai_undefined or not torch.isnan(x.fai[r]).all() or (gamma[r] != 1.0).any():
            return
        self._warned_fai_undefined = True
        c, longest = self.config, int(r.sum(1).max())
        warnings.warn(
            f"credit: every completion of this batch has at most credit_fai_lo={c.credit_fai_lo} tokens "
            f"(longest: {longest}), so FAI (attention received from tokens at least credit_fai_lo later) is undefined "
            f"everywhere and credit_strategy={c.credit_strategy!r} amplified no token; set credit_fai_lo below the "
            f"completion length, e.g. credit_fai_lo={max(1, longest // 3)} with credit_window={max(1, longest // 3)} "
            "(or allow longer completions). Warned once per run.",
            UserWarning, stacklevel=3,
        )


def _attention_metrics(x: CreditInputs, profile: HeadProfile) -> dict[str, float]:
    r = x.response_mask
    waad = x.waad[r]
    fai = x.fai[r & ~torch.isnan(x.fai)]
    nan = float("nan")
    return {
        "credit/waad_mean": waad.mean().item() if waad.numel() else nan,
        "credit/waad_std": waad.std().item() if waad.numel() > 1 else nan,
        "credit/fai_mean": fai.mean().item() if fai.numel() else nan,
        "credit/fai_max": fai.max().item() if fai.numel() else nan,
        "credit/local_head_distance": profile.distances[profile.local].mean().item(),
        "credit/global_head_distance": profile.distances[profile.global_].mean().item(),
    }
