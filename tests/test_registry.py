"""The registries: one Registry type (register, get, choices, did-you-mean, duplicate guard, import paths) behind
strategies, tasks, rewards and recipes; the assigner takes gamma and roles from the strategy; a user's strategy,
reward and task named by import path in a YAML config train a step."""

import json
import os
import sys

import pytest
import torch
import yaml

from attnrl.credit import strategies
from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.credit.strategies import STRATEGIES, StrategyOutput, register_strategy
from attnrl.registry import Registry, RegistryError
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer
from tests.conftest import TINY_CREDIT


def test_registering_another_function_under_an_existing_name_fails():
    before = STRATEGIES["coupled"]
    with pytest.raises(ValueError, match="'coupled' is already registered"):

        @register_strategy("coupled")
        def coupled(x, p):  # noqa: ARG001 - a different function under the same name
            return x.response_mask.float()

    assert STRATEGIES["coupled"] is before


@pytest.fixture
def registered():
    """Register strategies for one test: ``registered(name, fn, needs=())``; removed afterwards."""
    names = []

    def register(name, fn, needs=()):
        names.append(name)
        return register_strategy(name, needs)(fn)

    yield register
    for name in names:
        STRATEGIES.unregister(name)


def test_a_new_name_registers_and_reregistering_the_same_definition_is_allowed(registered):
    def mine(x, p):
        return StrategyOutput(x.response_mask.float())

    registered("test_mine", mine)
    registered("test_mine", mine)  # same definition again (module reload)
    assert strategies.get_strategy("test_mine") is mine


def _batch():
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 100, (2, 5), generator=g)
    completion = torch.randint(3, 100, (2, 9), generator=g)
    completion_mask = torch.ones_like(completion)
    completion_mask[1, 6:] = 0
    return prompt, torch.ones_like(prompt), completion, completion_mask


def test_the_assigner_reports_the_roles_a_strategy_returns(registered):
    """No strategy is special-cased: gamma and roles are whatever the registered function returns."""

    def last_token_dominated(x, p):
        last = x.response_mask & ~torch.roll(x.response_mask, -1, 1)
        last[:, -1] = x.response_mask[:, -1]
        return StrategyOutput(1.0 + last.float(), {"dominated": last, "mine": x.response_mask})

    registered("test_last", last_token_dominated, needs=("attention",))
    model = tiny_causal_lm("llama").eval()
    result = CreditAssigner(CreditConfig(credit_strategy="test_last", **TINY_CREDIT), model).assign(model, *_batch())
    assert result.roles.keys() == {"dominated", "mine"} and result.waad is not None
    assert result.roles["dominated"].nonzero().tolist() == [[0, 8], [1, 5]]
    assert result.gamma[0, 8] == 2.0 and result.gamma[1, 5] == 2.0 and result.gamma[1, 6:].eq(1).all()
    assert result.metrics["credit/dominated_anchor_frac"] == pytest.approx(2 / 15)

    anchors = CreditAssigner(CreditConfig(credit_strategy="global_anchor", **TINY_CREDIT), model).assign(
        model, *_batch())
    assert anchors.roles.keys() == {"anchors"} and torch.equal(anchors.roles["anchors"], anchors.gamma > 1)
    assert "credit/dominated_anchor_frac" not in anchors.metrics


def test_a_strategy_returning_a_bare_tensor_is_refused_by_name(registered):
    registered("test_bare", lambda x, p: torch.ones(x.response_mask.shape))
    model = tiny_causal_lm("llama").eval()
    with pytest.raises(TypeError, match=r"credit strategy 'test_bare' returned Tensor; .*StrategyOutput"):
        CreditAssigner(CreditConfig(credit_strategy="test_bare"), model).assign(model, *_batch())


# ---------------------------------------------------------------- the one registry type


def test_registry_register_get_choices_and_did_you_mean():
    reg = Registry("widget")

    @reg.register("alpha", colour="red")
    def alpha():
        return "a"

    reg.register("beta", len)
    assert reg.get("alpha") is alpha and reg["beta"] is len and reg.choices() == ("alpha", "beta")
    assert reg.info("alpha") == {"colour": "red"} and "alpha" in reg and list(reg) == ["alpha", "beta"]
    with pytest.raises(RegistryError, match=r"^widget 'alpah' is unknown \(did you mean 'alpha'\?\); choose one of "
                                            r"'alpha', 'beta' or an import path 'module:function'$") as e:
        reg.get("alpah")
    assert isinstance(e.value, ValueError) and isinstance(e.value, KeyError) and e.value.reason.startswith("is unknown")
    assert reg.get("nothing", None) is None  # a default, as dict.get
    with pytest.raises(RegistryError, match=r"widget 'alpha' is already registered \(.*alpha\); choose another name"):
        reg.register("alpha", len)
    assert reg.get("alpha") is alpha
    with pytest.raises(RegistryError, match="not a valid name"):
        reg.register("a.b", len)
    reg.unregister("beta")
    assert reg.choices() == ("alpha",)


def test_registry_resolves_import_paths_and_lazy_entries():
    reg = Registry("function", check=lambda obj, name: obj if callable(obj) else (_ for _ in ()).throw(
        TypeError("not callable")))
    assert reg.get("os.path:join") is os.path.join and reg.get("os.path.join") is os.path.join  # both spellings
    assert reg.choices() == ()  # found, not registered
    reg.register("dumps", "json:dumps")  # a lazy entry: imported on first get
    assert reg.get("dumps") is json.dumps
    with pytest.raises(RegistryError, match=r"function 'no_such_module_xyz.f' could not be imported from "
                                            r"'no_such_module_xyz.f': No module named 'no_such_module_xyz' \(is its "
                                            r"folder on PYTHONPATH\?\)"):
        reg.get("no_such_module_xyz.f")
    with pytest.raises(RegistryError, match=r"'os.path:nope' could not be imported .*has no attribute 'nope'"):
        reg.get("os.path:nope")
    with pytest.raises(RegistryError, match=r"function 'os:sep' is not usable: not callable"):
        reg.get("os:sep")
    closed = Registry("recipe", import_paths=False)
    with pytest.raises(RegistryError, match=r"recipe 'os.path' is unknown; choose one of $"):
        closed.get("os.path")


def test_strategies_tasks_rewards_and_recipes_share_the_registry_and_help_texts_list_its_names():
    from attnrl.rewards import REWARDS, TASKS

    from attnrl.recipes import RECIPES
    from attnrl.recipes.task import TaskJobArguments

    assert all(isinstance(r, Registry) for r in (STRATEGIES, TASKS, REWARDS, RECIPES))
    strategy_help = CreditConfig.__dataclass_fields__["credit_strategy"].metadata["help"]
    # the names attnrl registers itself (tests and studies register more after the help texts were built)
    builtin_strategies = ("uniform", "random", "entropy", "local_chunk", "global_anchor", "coupled")
    assert set(builtin_strategies) <= set(STRATEGIES)
    assert all(f"{name}," in strategy_help or f"{name};" in strategy_help for name in builtin_strategies)
    assert "import path" in strategy_help
    fields = TaskJobArguments.__dataclass_fields__
    assert all(name in fields["task"].metadata["help"] for name in ("arithmetic", "countdown"))
    assert all(name in fields["reward_names"].metadata["help"] for name in ("accuracy", "format", "countdown",
                                                                             "visual_anchor"))
    assert REWARDS.get("visual_anchor").__name__ == "visual_anchor_reward"  # a lazy entry


USER_EXTENSION = '''
"""A user's own credit strategy, reward and task, outside the attnrl package."""
from pathlib import Path

from attnrl.credit.strategies import StrategyOutput
from attnrl.rewards import Task

CALLS = Path(__file__).with_name("calls.txt")


def _note(what):
    with CALLS.open("a") as f:
        f.write(what + "\\n")


def quarter_credit(x, p):
    """gamma = 1.25 on every response token."""
    _note("strategy")
    return StrategyOutput(1.0 + 0.25 * x.response_mask.float())


quarter_credit.needs = ()  # reads no statistics


def length_reward(completions, **kwargs):
    _note("reward")
    return [min(len(str(c)), 10) / 10 for c in completions]


def sample(rng):
    a = rng.randint(0, 999)
    return f"echo:{a}", {"prompt": [{"role": "user", "content": f"Say {a}."}], "answer": str(a)}


def echo_correct(completions, answer, **kwargs):
    _note("task reward")
    return [float(str(a) in str(c)) for c, a in zip(completions, answer)]


def echo_format(completions, **kwargs):
    return [0.0 for _ in completions]


ECHO = Task("echo", sample, (echo_correct, echo_format), lambda completion, example: example["answer"] in str(completion))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``my_attnrl_ext`` in a folder outside the package, put on sys.path as PYTHONPATH would."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_attnrl_ext.py").write_text(USER_EXTENSION)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("my_attnrl_ext", None)
    for path in ("my_attnrl_ext:quarter_credit", "my_attnrl_ext.length_reward", "my_attnrl_ext.ECHO"):
        for registry in (STRATEGIES, *_reward_registries()):
            registry.unregister(path)  # drops the cached resolution


def _reward_registries():
    from attnrl.rewards import REWARDS, TASKS

    return REWARDS, TASKS


def test_a_user_strategy_reward_and_task_named_by_path_in_yaml_train_one_step(user_module, tmp_path, capsys):
    """`attnrl train` with credit_strategy, reward_names and task given as import paths of a file outside the
    package: no registration and no import beforehand; the strategy shapes the advantages (gamma 1.25 logged), the
    rewards are called, the results name them."""
    from attnrl import cli

    model_dir = tmp_path / "tiny"
    tiny_causal_lm("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    config = tmp_path / "user.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(model_dir), "output_dir": str(tmp_path / "run"),
        "credit_strategy": "my_attnrl_ext:quarter_credit", "task": "my_attnrl_ext.ECHO",
        "reward_names": ["correct", "my_attnrl_ext.length_reward"],
        "train_size": 8, "eval_size": 2, "eval_max_new_tokens": 4, "eval_batch_size": 2, "skip_eval_before": True,
        "lora_r": 4, "lora_alpha": 8, "max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4,
        "max_completion_length": 6, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "use_cpu": True, "bf16": False, "seed": 0,
    }))
    assert "my_attnrl_ext" not in sys.modules  # nothing imported it: found by its path alone

    assert cli.main(["train", str(config)]) == 0, capsys.readouterr().err

    calls = (user_module / "calls.txt").read_text().split("\n")
    assert {"strategy", "reward", "task reward"} <= set(calls)
    log = json.loads((tmp_path / "run" / "report" / "log_history.json").read_text())
    step = next(e for e in log if "credit/gamma_mean" in e)
    assert step["credit/gamma_mean"] == pytest.approx(1.25)  # the user's gamma shaped the advantages
    assert "rewards/length_reward/mean" in step and "rewards/echo_correct/mean" in step
    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    assert (results["credit_strategy"], results["task"], results["train_steps"]) == (
        "my_attnrl_ext:quarter_credit", "my_attnrl_ext.ECHO", 1)


def test_a_user_name_that_does_not_import_is_a_one_line_config_error(user_module, tmp_path, capsys):
    from attnrl import cli

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "use_cpu": True, "bf16": False,
                                      "reward_names": ["correct", "my_attnrl_ext.lenght_reward"]}))
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "attnrl train: error: reward_names: 'my_attnrl_ext.lenght_reward' could not be imported")
    assert "has no attribute 'lenght_reward'" in err[0]
