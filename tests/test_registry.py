"""The credit strategy registry: one function per name, and the assigner takes gamma and roles from the strategy."""

import pytest
import torch

from attnrl.credit import strategies
from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.credit.strategies import STRATEGIES, StrategyOutput, register_strategy
from attnrl.utils.tiny import tiny_causal_lm
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
        STRATEGIES.pop(name, None)
        strategies.STRATEGY_NEEDS.pop(name, None)


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
