"""The credit strategy registry refuses a second function under an existing name."""

import pytest

from attnrl.credit import strategies
from attnrl.credit.strategies import STRATEGIES, register_strategy


def test_registering_another_function_under_an_existing_name_fails():
    before = STRATEGIES["coupled"]
    with pytest.raises(ValueError, match="'coupled' is already registered"):

        @register_strategy("coupled")
        def coupled(x, p):  # noqa: ARG001 - a different function under the same name
            return x.response_mask.float()

    assert STRATEGIES["coupled"] is before


def test_a_new_name_registers_and_reregistering_the_same_definition_is_allowed():
    def mine(x, p):
        return x.response_mask.float()

    try:
        register_strategy("test_mine")(mine)
        register_strategy("test_mine")(mine)  # same definition again (module reload)
        assert strategies.get_strategy("test_mine") is mine
    finally:
        STRATEGIES.pop("test_mine", None)
        strategies.STRATEGY_NEEDS.pop("test_mine", None)
