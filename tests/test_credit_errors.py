"""Credit settings that cannot work fail early, naming the field and the fix (issue 25, item 4): wrongly typed
fields (from Python, YAML and the command line), models without softmax attention, completions too short for the
FAI horizon, and micro-batches without response tokens."""

import dataclasses
import math
import typing
import warnings

import pytest
import torch
import yaml
from trl import TrlParser

from attnrl.credit import config as credit_config
from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.credit.strategies import STRATEGY_NEEDS
from attnrl.recipes import config as recipe_config
from attnrl.utils.tiny import tiny_causal_lm

HINTS = typing.get_type_hints(CreditConfig)
FIELDS = [f.name for f in dataclasses.fields(CreditConfig)]  # every credit_* field


def credit_field_types():
    return {name: HINTS[name] for name in FIELDS}


def _base(hint):
    return next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))


def _wrong_values(hint) -> list:
    """Values of the wrong type for a field annotated ``hint`` (booleans where numbers are due, non-integers
    where integers are due, strings where numbers or lists are due)."""
    base = _base(hint)
    if base is int:
        return [2.5, 2.0, True, "2"]
    if base is float:
        return [True, False, "0.5", math.nan, math.inf]
    if base is str:
        return [3, True, ["coupled"]]
    return ["2", 2, [1.5], [True], True]  # list[int]


def _default(name):
    return CreditConfig.__dataclass_fields__[name].default


@pytest.mark.parametrize("name", FIELDS)
def test_every_credit_field_refuses_a_wrong_type_naming_field_value_type_and_fix(name):
    for value in _wrong_values(credit_field_types()[name]):
        with pytest.raises(ValueError) as e:
            CreditConfig(**{name: value}).validate_credit()
        msg = str(e.value)
        assert msg.startswith(f"{name}={value!r} is {type(value).__name__}"), msg
        assert f"; set e.g. {name}=" in msg, msg  # the fix
        assert "\n" not in msg
    CreditConfig(**{name: _default(name)}).validate_credit()  # the default has the right type


def test_right_types_in_other_spellings_are_accepted():
    CreditConfig(credit_gamma_amp=2, credit_top_q=1, credit_layers=(1, 2), credit_fai_hi=None,
                 credit_head_profile_path=None).validate_credit()
    field_type_error = credit_config.field_type_error
    assert credit_config.credit_field_types() == credit_field_types()
    assert field_type_error("credit_window", 3, int) is None
    assert field_type_error("credit_fai_hi", None, int | None) is None
    assert field_type_error("x", None, int) == "x=None is NoneType, but x must be an integer; set e.g. x=1"


def test_the_worst_cases_of_the_issue_name_the_fix():
    cases = {
        "credit_layers": ("2", "credit_layers='2' is str, but credit_layers must be a list of integers or None "
                               "(unset); set e.g. credit_layers=[2]"),
        "credit_num_layers": (2.5, "credit_num_layers=2.5 is float, but credit_num_layers must be an integer; set "
                                   "e.g. credit_num_layers=2"),
        "credit_window": (2.5, "credit_window=2.5 is float, but credit_window must be an integer; set e.g. "
                               "credit_window=2"),
        "credit_gamma_amp": (True, "credit_gamma_amp=True is bool (YAML reads true/false/yes/no/on/off as "
                                   "booleans), but credit_gamma_amp must be a number; set e.g. credit_gamma_amp=1.5 "
                                   "(the default)"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ValueError) as e:
            CreditConfig(**{name: value}).validate_credit()
        assert str(e.value) == message


def _yaml_value(hint):
    """A wrongly typed value as YAML gives it (YAML has no string for int fields here: argparse would convert it)."""
    base = _base(hint)
    return {int: 2.5, float: True, str: 3}.get(base, "2")


def _parsers():
    from attnrl.recipes.grpo import GRPOJobArguments
    from attnrl.recipes.ppo import PPOJobArguments
    from attnrl.trainers.grpo import AttnGRPOConfig
    from attnrl.trainers.ppo import AttnPPOConfig

    return {"grpo": lambda: TrlParser((GRPOJobArguments, AttnGRPOConfig)),
            "ppo": lambda: TrlParser((PPOJobArguments, AttnPPOConfig))}


@pytest.mark.parametrize("recipe", ["grpo", "ppo"])
@pytest.mark.parametrize("name", FIELDS)
def test_every_credit_field_is_type_checked_through_the_yaml_recipe_path(tmp_path, recipe, name):
    value = _yaml_value(credit_field_types()[name])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "max_steps": 1, "report_to": "none",
                                    "use_cpu": True, "bf16": False, name: value}))
    with pytest.raises(recipe_config.ConfigError, match=rf"^{name}=.* is (float|bool|int|str)\b.*, but {name} must be "):
        recipe_config.parse_config(_parsers()[recipe](), ["--config", str(path)], exit_on_error=False)


@pytest.mark.parametrize("name", [n for n in FIELDS if _base(credit_field_types()[n]) is not str])
def test_every_non_string_credit_field_is_type_checked_on_the_command_line(tmp_path, capsys, name):
    """On the command line argparse converts each value with the field's type and exits naming the flag."""
    base = _base(credit_field_types()[name])
    bad = {int: "2.5", float: "true"}.get(base, "two")
    argv = ["--output_dir", str(tmp_path), "--max_steps", "1", "--use_cpu", "--bf16", "false", f"--{name}", bad]
    with pytest.raises(SystemExit):
        recipe_config.parse_config(_parsers()["grpo"](), argv)
    err = capsys.readouterr().err
    assert f"--{name}" in err and repr(bad) in err


# ---------------------------------------------------------------- models without softmax attention


def _mamba():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    return MambaForCausalLM(MambaConfig(vocab_size=128, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2,
                                        conv_kernel=2, pad_token_id=0, eos_token_id=2, bos_token_id=1))


def _lfm2_all_conv():
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(0)
    return Lfm2ForCausalLM(Lfm2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1, layer_types=["conv"] * 3,
                                      pad_token_id=0, eos_token_id=2, bos_token_id=1))


ATTENTION_STRATEGIES = sorted(n for n, needs in STRATEGY_NEEDS.items() if "attention" in needs)


@pytest.mark.parametrize("make, found", [(_mamba, "layers found: 2 x 'linear_attention'"),
                                         (_lfm2_all_conv, "layers found: 3 x 'conv'")], ids=["mamba", "lfm2_conv"])
def test_attention_strategies_are_refused_on_a_model_without_softmax_attention(make, found):
    model = make()
    free = sorted(n for n, needs in STRATEGY_NEEDS.items() if "attention" not in needs)
    assert {"uniform", "entropy", "random"} <= set(free)
    for strategy in ATTENTION_STRATEGIES:
        for layers in (None, [0]):
            with pytest.raises(ValueError) as e:
                CreditAssigner(CreditConfig(credit_strategy=strategy, credit_layers=layers), model)
            assert str(e.value) == (
                f"credit_strategy={strategy!r} reads attention, but the model has no softmax attention layer to read "
                f"({found}); set credit_strategy to a strategy that needs no attention: 'entropy', 'random' or "
                "'uniform'")
    for strategy in free:
        assert CreditAssigner(CreditConfig(credit_strategy=strategy), model).layers == []
    # the same check without a model (as the recipes run it right after loading one)
    with pytest.raises(ValueError, match=r"none of its 4 layers has softmax attention"):
        CreditConfig().validate_credit_layers(4, [])


def test_uniform_credit_trains_a_tiny_mamba_with_grpo(grpo_trainer):
    trainer = grpo_trainer(_mamba(), credit_strategy="uniform", max_completion_length=6)
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.credit.layers == []
    assert torch.equal(trainer.last_credit.gamma, torch.ones_like(trainer.last_credit.gamma))


# ---------------------------------------------------------------- completions shorter than the FAI horizon


def _batch(lengths: list[int], tc: int = 8, tp: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    prompt_ids = torch.randint(3, 100, (B, tp), generator=g)
    completion_ids = torch.randint(3, 100, (B, tc), generator=g)
    completion_mask = (torch.arange(tc)[None] < torch.tensor(lengths)[:, None]).long()
    return prompt_ids, torch.ones_like(prompt_ids), completion_ids, completion_mask


def test_completions_too_short_for_the_fai_horizon_warn_once_per_run_naming_the_fields():
    model = tiny_causal_lm("llama")
    assigner = CreditAssigner(CreditConfig(credit_strategy="coupled"), model)  # credit_fai_lo = 10 (the paper's)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):  # three steps, one warning
            result = assigner.assign(model, *_batch([8, 6, 3], seed=seed))
            assert torch.equal(result.gamma, torch.ones_like(result.gamma))  # credit did nothing
    messages = [str(w.message) for w in caught if "credit_fai_lo" in str(w.message)]
    assert len(messages) == 1, messages
    assert messages[0].startswith("credit: every completion of this batch has at most credit_fai_lo=10 tokens "
                                  "(longest: 8), so FAI")
    assert "set credit_fai_lo below the completion length, e.g. credit_fai_lo=2 with credit_window=2" in messages[0]


def test_completions_long_enough_for_the_fai_horizon_do_not_warn():
    model = tiny_causal_lm("llama")
    for strategy in ("coupled", "local_chunk"):
        assigner = CreditAssigner(CreditConfig(credit_strategy=strategy, credit_fai_lo=2, credit_window=2), model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assigner.assign(model, *_batch([8, 6, 3]))
        assert not [w for w in caught if "credit_fai_lo" in str(w.message)]
    # local_chunk reads no FAI: short completions still get credit, so nothing to warn about
    assigner = CreditAssigner(CreditConfig(credit_strategy="local_chunk"), model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assigner.assign(model, *_batch([8, 6, 3]))
    assert not [w for w in caught if "credit_fai_lo" in str(w.message)]


# ---------------------------------------------------------------- micro-batches without response tokens


@pytest.mark.parametrize("strategy", ["coupled", "local_chunk", "uniform", "random"])
def test_a_micro_batch_without_response_tokens_logs_no_metric(strategy):
    model = tiny_causal_lm("llama")
    assigner = CreditAssigner(CreditConfig(credit_strategy=strategy, credit_fai_lo=1, credit_window=3), model)
    result = assigner.assign(model, *_batch([0, 0]))
    assert result.metrics == {}
    assert torch.equal(result.gamma, torch.ones_like(result.gamma))
    # the loss-forward path: nothing either, not even the time it cost
    if "attention" in assigner.needs:
        prompt_ids, prompt_mask, completion_ids, completion_mask = _batch([0, 0])
        got = []
        with torch.no_grad(), assigner.capture_during_forward(model, prompt_mask, completion_mask, got.append):
            model(input_ids=torch.cat([prompt_ids, completion_ids], 1),
                  attention_mask=torch.cat([prompt_mask, completion_mask], 1))
        assert got[0].metrics == {}
    # a batch with response tokens still logs them all
    assert "credit/gamma_mean" in assigner.assign(model, *_batch([4, 2])).metrics


def test_an_empty_first_batch_never_becomes_the_cached_head_profile():
    model = tiny_causal_lm("llama")
    config = CreditConfig(credit_strategy="coupled", credit_fai_lo=1, credit_window=3, credit_head_profile="cached")
    assigner = CreditAssigner(config, model)
    assigner.assign(model, *_batch([0, 0]))
    assert assigner.profile is None  # no response token: its zero distances are no profile
    assigner.assign(model, *_batch([8, 6]))
    profile = assigner.profile
    assert profile is not None and profile.distances.gt(0).any()
    assigner.assign(model, *_batch([0, 0]))
    assert assigner.profile is profile  # kept once made
