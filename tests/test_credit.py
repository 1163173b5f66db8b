"""Every strategy's formula on hand-made cases (docs/methods.md §1.3), head split and layer choice (§1.1)."""

import math

import pytest
import torch

from attnrl.credit import (
    STRATEGIES,
    CreditInputs,
    CreditParams,
    HeadProfile,
    coupled_roles,
    default_layers,
    get_strategy,
    head_mean_distances,
    shape_advantages,
    token_fai,
    token_waad,
    top_q_mask,
    waad_jumps,
)
from attnrl.kernels.dispatch import AttentionStats

NAN = float("nan")
P = CreditParams()  # gamma_amp 1.5, q 0.4, k 3, alpha 0.5


def test_default_layers_follow_the_paper():
    assert default_layers(30) == [10, 12, 15, 18, 20]  # SmolLM2-135M
    assert default_layers(36) == [12, 15, 18, 21, 24]  # Qwen3-4B
    assert default_layers(4) == [1, 2]  # tiny models: duplicates removed
    assert default_layers(30, count=1) == [15]


def test_top_q_selects_ceil_q_n_largest_ignoring_nan_and_padding():
    scores = torch.tensor([[0.1, 0.9, 0.5, NAN, 0.7], [5.0, 1.0, 2.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    sel = top_q_mask(scores, mask, 0.4)  # row 0: ceil(2.0) = 2; row 1: ceil(1.2) = 2
    assert sel.tolist() == [[False, True, False, False, True], [True, False, True, False, False]]
    assert top_q_mask(scores, mask, 1.0).sum().item() == 4 + 3  # NaN never selected
    assert top_q_mask(torch.tensor([[3.0]]), torch.tensor([[True]]), 0.4).tolist() == [[True]]  # length 1


def test_waad_jumps():
    waad = torch.tensor([[1.0, 4.0, 2.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    d = waad_jumps(waad, mask)
    assert d[0, :3].tolist() == [3.0, 2.0, 0.0] and math.isnan(d[0, 3]) and math.isnan(d[0, 4])


def test_uniform_random_entropy():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    x = CreditInputs(mask, entropy=torch.tensor([[0.1, 2.0, 0.3, 1.5, 0.2, 9.0]]), generator=torch.Generator().manual_seed(0))
    uniform = get_strategy("uniform")(x, P)
    assert torch.all(uniform.gamma == 1) and uniform.roles == {}
    high = get_strategy("entropy")(x, P)
    assert high.gamma.tolist() == [[1, 1.5, 1, 1.5, 1, 1]]
    assert high.roles["high_entropy"].tolist() == [[False, True, False, True, False, False]]
    r = get_strategy("random")(x, P)
    assert (r.gamma[0, :5] == 1.5).sum() == 2 and r.gamma[0, 5] == 1
    assert torch.equal(r.roles["selected"], r.gamma > 1)
    with pytest.raises(ValueError, match="entropies"):
        get_strategy("entropy")(CreditInputs(mask), P)


def test_local_chunk_amplifies_largest_waad_jumps():
    waad = torch.tensor([[1.0, 1.0, 6.0, 6.0, 2.0, 2.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    # Δ = [0, 5, 0, 4, 0, NaN]; ceil(0.4*6) = 3 -> positions 1, 3 and the earliest 0-jump (0)
    out = get_strategy("local_chunk")(CreditInputs(mask, waad=waad), P)
    assert out.gamma.tolist() == [[1.5, 1.5, 1.0, 1.5, 1.0, 1.0]]
    assert out.roles["preplan"].tolist() == [[True, True, False, True, False, False]]


def test_global_anchor_amplifies_highest_fai_never_undefined():
    fai = torch.tensor([[0.2, 0.9, 0.1, 0.8, NAN, NAN]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    out = get_strategy("global_anchor")(CreditInputs(mask, fai=fai), P)
    assert out.gamma.tolist() == [[1.5, 1.5, 1.0, 1.5, 1.0, 1.0]]
    assert out.roles["anchors"].tolist() == [[True, True, False, True, False, False]]


def test_coupled_moves_alpha_of_a_dominated_anchor_to_its_introducer():
    # 10 tokens, q = 0.4 -> 4 anchors by FAI: positions 2, 5, 7, 8
    fai = torch.tensor([[0.0, 0.1, 0.9, 0.2, 0.1, 0.8, 0.0, 0.7, 0.6, NAN]])
    waad = torch.tensor([[1.0, 1.0, 6.0, 6.0, 1.0, 2.0, 8.0, 8.0, 8.0, 8.0]])
    mask = torch.ones(1, 10, dtype=torch.bool)
    x = CreditInputs(mask, waad=waad, fai=fai)
    # Δ = [0, 5, 0, 5, 1, 6, 0, 0, 0, NaN]; tau_waad = lower median of waad = 6; tau_Δ = median(Δ) = 0
    roles = coupled_roles(x, P)
    assert roles["anchors"][0].nonzero().flatten().tolist() == [2, 5, 7, 8]
    # anchor 2: waad 6 <= 6, max Δ over [-1..1] = 5 >= 0 -> dominated, introducer argmax = 1
    # anchor 5: waad 2 <= 6, Δ over [2..4] = (0, 5, 1) -> dominated, introducer 3
    # anchors 7, 8: waad 8 > 6 -> not dominated
    assert roles["dominated"][0].nonzero().flatten().tolist() == [2, 5]
    assert roles["introducers"][0].nonzero().flatten().tolist() == [1, 3]
    out = get_strategy("coupled")(x, P)
    want = [1, 1.25, 1.25, 1.25, 1, 1.25, 1, 1.5, 1.5, 1]
    torch.testing.assert_close(out.gamma[0], torch.tensor(want))
    assert out.roles.keys() == roles.keys()  # the strategy returns the roles its gamma came from
    assert all(torch.equal(out.roles[k], roles[k]) for k in roles)


def test_coupled_with_alpha_zero_is_global_anchor():
    torch.manual_seed(0)
    mask = torch.ones(2, 12, dtype=torch.bool)
    x = CreditInputs(mask, waad=torch.rand(2, 12) * 5, fai=torch.rand(2, 12))
    g = get_strategy("coupled")(x, CreditParams(coupled_alpha=0.0)).gamma
    torch.testing.assert_close(g, get_strategy("global_anchor")(x, P).gamma)


def test_every_strategy_keeps_padding_at_one_and_bounds():
    torch.manual_seed(1)
    mask = torch.tensor([[1] * 8 + [0] * 4, [1] * 1 + [0] * 11], dtype=torch.bool)
    x = CreditInputs(mask, waad=torch.rand(2, 12), fai=torch.rand(2, 12), entropy=torch.rand(2, 12),
                     generator=torch.Generator().manual_seed(0))
    for name in STRATEGIES:
        out = get_strategy(name)(x, P)
        g = out.gamma
        assert g.shape == (2, 12), name
        assert all(r.dtype == torch.bool and r.shape == (2, 12) and not r[~mask].any() for r in out.roles.values())
        assert torch.all(g[~mask] == 1), name
        assert torch.all((g >= 1) & (g <= 1 + 2 * (P.gamma_amp - 1))), name


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"credit strategy 'cupled' is unknown \(did you mean 'coupled'\?\); choose "
                                         r"one of 'uniform', .*'coupled'"):
        get_strategy("cupled")


def test_shape_advantages_sign_modes():
    adv = torch.tensor([1.0, -2.0])
    gamma = torch.tensor([[1.5, 1.0, 1.5], [1.5, 1.5, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert shape_advantages(adv, gamma, mask).tolist() == [[1.5, 1.0, 1.0], [-3.0, -3.0, -2.0]]
    assert shape_advantages(adv, gamma, mask, "nonnegative").tolist() == [[1.5, 1.0, 1.0], [-2.0, -2.0, -2.0]]
    with pytest.raises(ValueError, match="sign_mode"):
        shape_advantages(adv, gamma, mask, "positive")


def _stats(dist, waad, fai_sum, fai_count):
    z = torch.zeros_like(dist)
    return AttentionStats(z, dist, waad, fai_sum, fai_count)


def test_head_split_and_token_metrics_average_the_right_heads():
    # 2 layers x 5 heads, B=1, T=4 (response = last 3 tokens)
    dist = torch.arange(10, dtype=torch.float32).view(2, 5)  # head mean distance = its index
    response = torch.tensor([[False, True, True, True]])
    stats = {}
    for li, layer in enumerate((3, 6)):
        d = dist[li][None, :, None].expand(1, 5, 4).clone()
        waad = torch.full((1, 5, 4), 100.0)
        waad[0, :, :] = dist[li][:, None]  # per-head WAAD = head index
        fai_sum = (dist[li][None, :, None] * 2).expand(1, 5, 4).clone()
        stats[layer] = _stats(d, waad, fai_sum, torch.tensor([[2, 2, 1, 0]]))
    torch.testing.assert_close(head_mean_distances(stats, response), dist)
    profile = HeadProfile.from_distances([3, 6], head_mean_distances(stats, response), fraction=0.3)
    assert profile.local.flatten().nonzero().flatten().tolist() == [0, 1, 2]
    assert profile.global_.flatten().nonzero().flatten().tolist() == [7, 8, 9]
    torch.testing.assert_close(token_waad(stats, profile), torch.full((1, 4), 1.0))  # mean of 0, 1, 2
    fai = token_fai(stats, profile)  # mean of 2*(7, 8, 9) = 16, divided by the count
    assert fai[0, :3].tolist() == [8.0, 8.0, 16.0] and math.isnan(fai[0, 3])


def test_head_profile_round_trip(tmp_path):
    p = HeadProfile.from_distances([1, 2], torch.rand(2, 4))
    p.save(tmp_path / "p.json")
    q = HeadProfile.load(tmp_path / "p.json")
    assert q.layers == [1, 2] and torch.equal(q.local, p.local) and torch.equal(q.global_, p.global_)


def test_credit_layer_checks_that_need_no_model_run_in_validate_credit():
    from attnrl.credit.config import CreditConfig

    with pytest.raises(ValueError, match=r"credit_layers=\[2, 2, 3\] lists layers \[2\] more than once.*"
                                         r"credit_layers=\[2, 3\]"):
        CreditConfig(credit_layers=[2, 2, 3]).validate_credit()
    with pytest.raises(ValueError, match=r"negative layers \[-1\]"):
        CreditConfig(credit_layers=[-1, 2]).validate_credit()
    with pytest.raises(ValueError, match="credit_num_layers=0 must be >= 1"):
        CreditConfig(credit_num_layers=0).validate_credit()
    CreditConfig(credit_layers=[3, 1]).validate_credit()  # order is free


def test_credit_layers_are_checked_against_the_model_layer_count_without_a_model(tmp_path):
    from attnrl.credit.config import CreditConfig

    with pytest.raises(ValueError, match=r"credit_layers=\[1, 4\] includes \[4\], out of range for a model with 4 "
                                         r"layers \(valid: 0\.\.3\)"):
        CreditConfig(credit_layers=[1, 4]).validate_credit_layers(4)
    with pytest.raises(ValueError, match="more than once"):  # the model-free checks run too
        CreditConfig(credit_layers=[1, 1]).validate_credit_layers(4)
    CreditConfig(credit_layers=[0, 3]).validate_credit_layers(4)
    CreditConfig().validate_credit_layers(4)  # default middle layers
    CreditConfig(credit_strategy="uniform", credit_layers=[9]).validate_credit_layers(4)  # never read: accepted

    profile = tmp_path / "heads.json"
    HeadProfile.from_distances([1, 2], torch.rand(2, 4)).save(profile)
    CreditConfig(credit_layers=[2, 1], credit_head_profile="cached",
                 credit_head_profile_path=str(profile)).validate_credit_layers(4)
    with pytest.raises(ValueError, match=r"holds layers \[1, 2\] but credit_layers resolve to \[0, 1\]"):
        CreditConfig(credit_layers=[0, 1], credit_head_profile_path=str(profile)).validate_credit_layers(4)
    with pytest.raises(FileNotFoundError, match="credit_head_profile_path=.*missing.json does not exist"):
        CreditConfig(credit_head_profile_path=str(tmp_path / "missing.json")).validate_credit_layers(4)


def test_hybrid_models_get_their_default_layers_and_profile_check_among_the_attention_layers(tmp_path):
    from attnrl.credit.config import CreditConfig

    attention = [1, 3, 5, 7]  # e.g. attention every other layer of an 8-layer hybrid model
    assert CreditConfig().credit_layer_indices(8) == default_layers(8) == [2, 3, 4, 5]
    assert CreditConfig().credit_layer_indices(8, attention) == [3, 5]  # default_layers(4) = [1, 2] of the 4
    assert CreditConfig(credit_layers=[6, 2]).credit_layer_indices(8, attention) == [2, 6]  # explicit: as given
    profile = tmp_path / "heads.json"
    HeadProfile.from_distances([3, 5], torch.rand(2, 4)).save(profile)
    assert CreditConfig(credit_head_profile_path=str(profile)).validate_credit_layers(8, attention) == [3, 5]
    with pytest.raises(ValueError, match=r"holds layers \[3, 5\] but credit_layers resolve to \[2, 3, 4, 5\]"):
        CreditConfig(credit_head_profile_path=str(profile)).validate_credit_layers(8)
    assert CreditConfig(credit_strategy="entropy").validate_credit_layers(8) == []  # reads no attention


def test_every_default_is_written_once_and_read_by_the_config():
    """CreditConfig's numeric defaults are the strategies', the kernels' and the head split's own defaults, read
    from there (docs/methods.md §1.1-§1.3), never written again as literals."""
    import ast
    import inspect

    from attnrl.credit import DEFAULT_HEAD_FRACTION, DEFAULT_NUM_LAYERS
    from attnrl.credit import config as config_module
    from attnrl.credit.config import CreditConfig
    from attnrl.kernels.dispatch import StatsSpec

    cfg = CreditConfig()
    assert cfg.credit_params() == CreditParams() and cfg.stats_spec() == StatsSpec()
    assert (cfg.credit_num_layers, cfg.credit_head_fraction) == (DEFAULT_NUM_LAYERS, DEFAULT_HEAD_FRACTION) == (5, 0.3)
    assert inspect.signature(default_layers).parameters["count"].default == DEFAULT_NUM_LAYERS
    assert inspect.signature(HeadProfile.from_distances).parameters["fraction"].default == DEFAULT_HEAD_FRACTION
    assert (P.gamma_amp, P.top_q, P.coupled_k, P.coupled_alpha) == (1.5, 0.4, 3, 0.5)
    assert (StatsSpec().window, StatsSpec().fai_lo, StatsSpec().fai_hi) == (10, 10, 100)

    tree = ast.parse(inspect.getsource(config_module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CreditConfig")
    literal = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.value, ast.Call):
            for kw in stmt.value.keywords:
                value = kw.value
                if kw.arg == "default" and isinstance(value, ast.Constant) and type(value.value) in (int, float):
                    literal.append(stmt.target.id)
    assert literal == ["credit_seed"], f"CreditConfig fields with a literal numeric default: {literal}"  # no method's
