"""Credit-assignment settings shared by the GRPO and PPO trainers (docs/methods.md §1).

Every numeric default is read from where the code that uses it defines it, and written nowhere else:
:class:`attnrl.credit.strategies.CreditParams` (gamma_amp, q, k, alpha), :class:`attnrl.kernels.dispatch.StatsSpec` (W, H_lo,
H_hi) and :mod:`attnrl.credit.heads` (number of layers, head fraction). All checks of the credit settings live in
:meth:`CreditConfig.validate_credit` and :meth:`CreditConfig.validate_credit_layers`.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from attnrl.kernels.dispatch import BACKENDS, StatsSpec
from attnrl.registry import RegistryError

from .heads import DEFAULT_HEAD_FRACTION, DEFAULT_NUM_LAYERS, HeadProfile, default_layers
from .strategies import SIGN_MODES, STRATEGIES, CreditParams, strategy_needs

HEAD_PROFILE_MODES = ("per_batch", "cached")
STATS_PASSES = ("auto", "separate")

_PARAMS = CreditParams()  # the defaults of the strategy hyper-parameters
_SPEC = StatsSpec()  # the defaults of W, H_lo, H_hi


@dataclass
class CreditConfig:
    """Attention-aware credit settings. Defaults follow docs/methods.md; values marked "ours" are attnrl's choices."""

    credit_strategy: str = field(
        default="coupled",
        metadata={"help": "How advantages are re-weighted per token: a registered strategy (" + ", ".join(STRATEGIES)
                  + "; 'uniform' is plain GRPO, 'coupled' the paper's best) or the import path of your own "
                  "function, 'module:function' (attnrl.credit.strategies)."},
    )
    credit_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Decoder layers whose attention is analysed. Default: `credit_num_layers` layers evenly "
                  "spaced in [floor(L/3), floor(2L/3)] (among the attention layers of a hybrid model)."},
    )
    credit_num_layers: int = field(
        default=DEFAULT_NUM_LAYERS, metadata={"help": "Number of middle layers when credit_layers is unset."}
    )
    credit_head_fraction: float = field(
        default=DEFAULT_HEAD_FRACTION,
        metadata={"help": "Fraction of heads (by mean attention distance) taken as local / global."},
    )
    credit_head_profile: str = field(
        default="per_batch",
        metadata={"help": "'per_batch': re-split local/global heads on every rollout batch; 'cached': split once on "
                  "the first batch (or load credit_head_profile_path) and keep it."},
    )
    credit_head_profile_path: str | None = field(
        default=None, metadata={"help": "JSON head profile to load (cached mode) — see HeadProfile.save."}
    )
    credit_window: int = field(default=_SPEC.window, metadata={"help": "WAAD window W (tokens)."})
    credit_fai_lo: int = field(default=_SPEC.fai_lo, metadata={"help": "FAI horizon start H_lo (tokens)."})
    credit_fai_hi: int | None = field(
        default=_SPEC.fai_hi, metadata={"help": "FAI horizon end H_hi (tokens; None = end)."}
    )
    credit_gamma_amp: float = field(
        default=_PARAMS.gamma_amp, metadata={"help": "Advantage multiplier of amplified tokens."}
    )
    credit_top_q: float = field(
        default=_PARAMS.top_q, metadata={"help": "Fraction q of response tokens selected by TopQ."}
    )
    credit_coupled_k: int = field(
        default=_PARAMS.coupled_k, metadata={"help": "Coupled: look-back k for an anchor's introducer."}
    )
    credit_coupled_alpha: float = field(
        default=_PARAMS.coupled_alpha,
        metadata={"help": "Coupled: share of a dominated anchor's bonus given to its introducer (ours)."},
    )
    credit_sign_mode: str = field(
        default="both",
        metadata={"help": "'both': shape positive and negative advantages (paper v2); 'nonnegative': only A >= 0."},
    )
    credit_backend: str = field(
        default="auto", metadata={"help": "Statistics backend: 'auto' (Triton on CUDA), 'torch' or 'triton'."}
    )
    credit_stats_pass: str = field(
        default="auto",
        metadata={"help": "Where attention statistics come from. 'auto': from the loss forward itself when TRL runs "
                  "it on the rollout policy (on-policy: no old log-probs needed), else a separate no-grad forward "
                  "at scoring time; 'separate': always the separate forward."},
    )
    credit_seed: int = field(default=0, metadata={"help": "Seed of the 'random' strategy's scores."})

    def validate_credit(self) -> None:
        """Raise ValueError naming the bad field and the fix (types first: :func:`field_type_error`)."""
        for name, hint in credit_field_types().items():
            problem = field_type_error(name, getattr(self, name), hint, _credit_default(name))
            if problem:
                raise ValueError(problem)
        try:
            STRATEGIES.get(self.credit_strategy)  # a registered name or an import path
        except RegistryError as e:
            raise ValueError(f"credit_strategy={self.credit_strategy!r} {e.reason}") from e
        if not 0.0 < self.credit_top_q <= 1.0:
            raise ValueError(
                f"credit_top_q={self.credit_top_q} must lie in (0, 1]; the paper's default is {_PARAMS.top_q}"
            )
        if not 0.0 < self.credit_head_fraction <= 0.5:
            raise ValueError(
                f"credit_head_fraction={self.credit_head_fraction} must lie in (0, 0.5] so local and global heads "
                f"do not overlap; the paper uses {DEFAULT_HEAD_FRACTION}"
            )
        if self.credit_head_profile not in HEAD_PROFILE_MODES:
            raise ValueError(f"credit_head_profile={self.credit_head_profile!r}; use one of {HEAD_PROFILE_MODES}")
        if self.credit_sign_mode not in SIGN_MODES:
            raise ValueError(f"credit_sign_mode={self.credit_sign_mode!r}; use one of {SIGN_MODES}")
        if self.credit_stats_pass not in STATS_PASSES:
            raise ValueError(f"credit_stats_pass={self.credit_stats_pass!r}; use one of {STATS_PASSES}")
        if self.credit_backend not in BACKENDS:
            raise ValueError(f"credit_backend={self.credit_backend!r}; use one of {BACKENDS}")
        if self.credit_gamma_amp < 1.0:
            raise ValueError(f"credit_gamma_amp={self.credit_gamma_amp} must be >= 1 (1 disables amplification)")
        if self.credit_window < 1:
            raise ValueError(f"credit_window={self.credit_window} must be >= 1 token")
        if self.credit_fai_lo < 0 or (self.credit_fai_hi is not None and self.credit_fai_hi < self.credit_fai_lo):
            raise ValueError(
                f"FAI horizon credit_fai_lo={self.credit_fai_lo}, credit_fai_hi={self.credit_fai_hi}: need "
                "0 <= credit_fai_lo <= credit_fai_hi (or credit_fai_hi=None for the end of the sequence)"
            )
        if not 0.0 <= self.credit_coupled_alpha <= 1.0:
            raise ValueError(f"credit_coupled_alpha={self.credit_coupled_alpha} must lie in [0, 1]")
        if self.credit_coupled_k < 1:
            raise ValueError(f"credit_coupled_k={self.credit_coupled_k} must be >= 1")
        if self.credit_layers is not None and len(self.credit_layers) == 0:
            raise ValueError("credit_layers=[] selects no layer; leave it unset for the default middle layers")
        if self.credit_layers is not None:
            repeated = sorted({layer for layer in self.credit_layers if self.credit_layers.count(layer) > 1})
            if repeated:
                raise ValueError(
                    f"credit_layers={self.credit_layers} lists layers {repeated} more than once; list each layer once, "
                    f"e.g. credit_layers={sorted(set(self.credit_layers))}"
                )
            negative = [layer for layer in self.credit_layers if layer < 0]
            if negative:
                raise ValueError(f"credit_layers={self.credit_layers} includes negative layers {negative}; layers "
                                 "are counted from 0 (the first decoder layer)")
        if self.credit_num_layers < 1:
            raise ValueError(f"credit_num_layers={self.credit_num_layers} must be >= 1")

    def credit_layer_indices(self, num_layers: int, attention_layers: Sequence[int] | None = None) -> list[int]:
        """The analysed decoder layers, sorted: ``credit_layers``, or ``credit_num_layers`` middle layers
        (docs/methods.md §1.1) among ``attention_layers`` (the layers with softmax attention; default: all
        ``num_layers``). No checks: see :meth:`validate_credit_layers`."""
        if self.credit_layers:
            return sorted(self.credit_layers)
        attn = list(range(num_layers)) if attention_layers is None else list(attention_layers)
        return [attn[i] for i in default_layers(len(attn), self.credit_num_layers)]

    def validate_credit_layers(self, num_layers: int, attention_layers: Sequence[int] | None = None, *,
                               layer_types: Sequence[str] | None = None) -> list[int]:
        """:meth:`validate_credit`, then: the model has a softmax attention layer (``attention_layers`` not empty;
        ``layer_types``, e.g. from :func:`attnrl.attention.capture.layer_types`, only sharpens the message), the
        layers (:meth:`credit_layer_indices`) lie in 0..num_layers-1 and match the layers of
        ``credit_head_profile_path`` if set. Returns those layers ([] for a strategy that reads no attention).
        Raises ValueError (FileNotFoundError for a missing profile).

        Cheap (no forward): call it right after loading the model, before any evaluation or trainer set-up."""
        self.validate_credit()
        if "attention" not in strategy_needs(self.credit_strategy):
            return []  # strategies without attention never read the layers
        if attention_layers is not None and not list(attention_layers):
            raise ValueError(no_attention_message(self.credit_strategy, num_layers, layer_types))
        layers = self.credit_layer_indices(num_layers, attention_layers)
        bad = [layer for layer in layers if not 0 <= layer < num_layers]
        if bad:
            raise ValueError(
                f"credit_layers={self.credit_layers} includes {bad}, out of range for a model with {num_layers} "
                f"layers (valid: 0..{num_layers - 1}); leave credit_layers unset for the default middle layers"
            )
        if self.credit_head_profile_path:
            if not Path(self.credit_head_profile_path).is_file():
                raise FileNotFoundError(f"credit_head_profile_path={self.credit_head_profile_path} does not exist; "
                                        "write one with HeadProfile.save or leave it unset")
            profile = HeadProfile.load(self.credit_head_profile_path)
            if profile.layers != layers:
                raise ValueError(
                    f"credit_head_profile_path holds layers {profile.layers} but credit_layers resolve to {layers}; "
                    "set credit_layers to match or profile again"
                )
        return layers

    def credit_params(self) -> CreditParams:
        """The strategy hyper-parameters of these settings."""
        return CreditParams(
            gamma_amp=self.credit_gamma_amp,
            top_q=self.credit_top_q,
            coupled_k=self.credit_coupled_k,
            coupled_alpha=self.credit_coupled_alpha,
        )

    def stats_spec(self) -> StatsSpec:
        """W, H_lo and H_hi of these settings, for the statistics kernels."""
        return StatsSpec(self.credit_window, self.credit_fai_lo, self.credit_fai_hi)


def attention_free_strategies() -> list[str]:
    """The registered credit strategies that read no attention (they work on any model)."""
    return sorted(name for name in STRATEGIES if "attention" not in strategy_needs(name))


def no_attention_message(strategy: str, num_layers: int, layer_types: Sequence[str] | None = None) -> str:
    """Why ``strategy`` cannot run on a model without a softmax attention layer, and what can."""
    if layer_types:
        counts = {t: list(layer_types).count(t) for t in dict.fromkeys(layer_types)}
        found = "layers found: " + ", ".join(f"{n} x {t!r}" for t, n in counts.items())
    else:
        found = f"none of its {num_layers} layers has softmax attention"
    *first, last = [repr(s) for s in attention_free_strategies()]
    choices = f"{', '.join(first)} or {last}" if first else last
    return (f"credit_strategy={strategy!r} reads attention, but the model has no softmax attention layer to read "
            f"({found}); set credit_strategy to a strategy that needs no attention: {choices}")


@functools.cache
def credit_field_types() -> dict[str, object]:
    """Each credit field's annotation, resolved (``list[int] | None``, ``int``, ...)."""
    hints = typing.get_type_hints(CreditConfig)
    return {f.name: hints[f.name] for f in fields(CreditConfig)}


def _credit_default(name: str):
    f = CreditConfig.__dataclass_fields__[name]
    return f.default if f.default is not MISSING else f.default_factory()


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def field_type_error(name: str, value, hint, default=None) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` of field ``name`` (None when it fits), in one sentence
    naming the field, the value, its type and the fix (an example value; ``default`` when it fits).

    A pure function of the dataclass annotation, so a field is checked the same way whether it came from Python,
    YAML or the command line. Understood: ``int`` (a bool or a non-integer is refused), ``float`` (any finite real
    number but a bool), ``str`` (a path too for ``*_path`` fields), ``bool``, ``list[int]``, and ``X | None``.
    """
    args = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)
    optional = type(None) in args
    (base,) = [a for a in args if a is not type(None)]
    if value is None and optional:
        return None
    if base is int:
        ok = _is_int(value)
    elif base is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    elif base is str:
        ok = isinstance(value, str) or (name.endswith("_path") and isinstance(value, os.PathLike))
    elif base is bool:
        ok = isinstance(value, bool)
    elif typing.get_origin(base) is list and typing.get_args(base) == (int,):
        ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
    else:
        raise TypeError(f"field_type_error: annotation {hint} of {name} is not understood; add it here")
    if ok:
        return None
    kind = _KINDS.get(base, "a list of integers")
    if base is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        kind = "a finite number"
    example = _example(value, base, default)
    why = " (YAML reads true/false/yes/no/on/off as booleans)" if isinstance(value, bool) else ""
    return (f"{name}={value!r} is {type(value).__name__}{why}, but {name} must be {kind}"
            f"{' or None (unset)' if optional else ''}; set e.g. {name}={example!r}"
            f"{' (the default)' if example == default else ''}")


def _example(value, base, default):
    """A value of type ``base`` for the fix: the one the user probably meant where that is clear, else the default."""
    if base is int and isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return round(value)
    if base is int and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if base is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if typing.get_origin(base) is list:
        found = [int(v) for v in re.findall(r"-?\d+", str(value))] if not isinstance(value, bool) else []
        return found or ([default] if default is not None else [2])
    return default if default is not None else {int: 1, float: 1.0, bool: False}.get(base, "...")


def credit_config_from(args) -> CreditConfig:
    """The credit fields of any config object (defaults for those it lacks, e.g. a plain trl.GRPOConfig)."""
    names = CreditConfig.__dataclass_fields__
    cfg = CreditConfig(**{n: getattr(args, n) for n in names if hasattr(args, n)})
    cfg.validate_credit()
    return cfg
