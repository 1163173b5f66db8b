"""The chunked PyTorch statistics path against brute-force materialised attention (docs/methods.md §1.2)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl.kernels.dispatch import StatsSpec, attention_statistics, attention_statistics_torch
from tests.brute_force import brute_force_statistics


def _check(q, k, seq_start, seq_end, resp_start, spec, chunk=7, key_masks=None, atol=1e-5, **variant):
    got = attention_statistics_torch(q, k, seq_start, seq_end, resp_start, spec, chunk=chunk, key_masks=key_masks,
                                     **variant)
    want = brute_force_statistics(q, k, seq_start, seq_end, resp_start, spec.window, spec.fai_lo, spec.fai_hi,
                                  key_masks=key_masks, **variant)
    for name in ("dist_sum", "waad", "fai_sum"):
        torch.testing.assert_close(getattr(got, name).double(), want[name], atol=atol, rtol=1e-4, msg=name)
    assert torch.equal(got.fai_count, want["fai_count"])
    if key_masks is not None:
        torch.testing.assert_close(got.span_mass.double(), want["span_mass"], atol=atol, rtol=1e-4)
    return got


@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 2), (8, 2), (8, 1)])
@pytest.mark.parametrize("spans", [[(0, 23, 5)], [(4, 23, 10), (0, 17, 3), (0, 0, 0), (22, 23, 22)]])
def test_matches_brute_force_with_padding_and_gqa(H, Hkv, spans):
    torch.manual_seed(H * 10 + Hkv)
    B, T, D = len(spans), 23, 8
    q, k = torch.randn(B, H, T, D) * 2, torch.randn(B, Hkv, T, D) * 2
    s, e, r = (torch.tensor(x) for x in zip(*spans))
    _check(q, k, s, e, r, StatsSpec(window=3, fai_lo=2, fai_hi=6))


@pytest.mark.parametrize("spec", [StatsSpec(1, 0, 0), StatsSpec(10, 10, 100), StatsSpec(4, 1, None), StatsSpec(30, 0, None)])
def test_windows_and_horizons_at_their_edges(spec):
    torch.manual_seed(1)
    q, k = torch.randn(2, 4, 30, 16), torch.randn(2, 2, 30, 16)
    _check(q, k, torch.tensor([0, 5]), torch.tensor([30, 28]), torch.tensor([12, 20]), spec)


def test_length_one_and_empty_responses():
    torch.manual_seed(2)
    q, k = torch.randn(3, 2, 9, 8), torch.randn(3, 2, 9, 8)
    # row 0: a single token; row 1: response of length 1; row 2: response of length 0
    got = _check(q, k, torch.tensor([8, 0, 2]), torch.tensor([9, 9, 6]), torch.tensor([8, 8, 6]), StatsSpec(2, 0, 3))
    assert torch.all(got.waad[0, :, 8] == 0) and torch.all(got.dist_sum[0, :, 8] == 0)
    assert got.fai_count[0, 8] == 1 and got.fai_count[2].sum() == 0
    torch.testing.assert_close(got.fai_sum[0, :, 8], torch.ones(2))  # a token attends to itself with mass 1


def test_span_mass_and_row_mass_is_one():
    torch.manual_seed(3)
    B, H, T = 2, 4, 15
    q, k = torch.randn(B, H, T, 8), torch.randn(B, 2, T, 8)
    s, e, r = torch.tensor([0, 3]), torch.tensor([15, 15]), torch.tensor([6, 9])
    masks = torch.stack([torch.rand(B, T) > 0.5, torch.ones(B, T, dtype=torch.bool)], 1)
    got = _check(q, k, s, e, r, StatsSpec(), key_masks=masks)
    valid = torch.arange(T)[None] >= s[:, None]
    torch.testing.assert_close(got.span_mass[..., 1][valid[:, None].expand(B, H, T)], torch.ones(B * H * T - H * 3))


def test_bf16_inputs_accumulate_in_fp32():
    torch.manual_seed(4)
    q, k = torch.randn(1, 4, 40, 16), torch.randn(1, 2, 40, 16)
    spec = StatsSpec(5, 2, 10)
    args = (torch.tensor([0]), torch.tensor([40]), torch.tensor([10]))
    low = attention_statistics(q.bfloat16(), k.bfloat16(), *args, spec)
    ref = attention_statistics(q.bfloat16().float(), k.bfloat16().float(), *args, spec)
    assert low.waad.dtype == torch.float32
    torch.testing.assert_close(low.waad, ref.waad, atol=1e-4, rtol=1e-4)


def test_long_sequence_chunked_memory_path():
    torch.manual_seed(5)
    q, k = torch.randn(1, 2, 300, 8), torch.randn(1, 1, 300, 8)
    _check(q, k, torch.tensor([0]), torch.tensor([300]), torch.tensor([100]), StatsSpec(10, 10, 100), chunk=64)


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 20), H_kv=st.sampled_from([1, 2]), group=st.sampled_from([1, 3]), data=st.data(),
    window=st.integers(1, 6), lo=st.integers(0, 4), width=st.one_of(st.none(), st.integers(0, 6)),
)
def test_property_random_shapes(T, H_kv, group, data, window, lo, width):
    B = 2
    starts, ends, resps = [], [], []
    for _ in range(B):
        s0 = data.draw(st.integers(0, T))
        e0 = data.draw(st.integers(s0, T))
        starts.append(s0), ends.append(e0), resps.append(data.draw(st.integers(s0, e0)))
    q = torch.randn(B, H_kv * group, T, 4)
    k = torch.randn(B, H_kv, T, 4)
    spec = StatsSpec(window, lo, None if width is None else lo + width)
    _check(q, k, torch.tensor(starts), torch.tensor(ends), torch.tensor(resps), spec, chunk=data.draw(st.integers(1, 8)))


VARIANTS = {
    "window_1": dict(sliding_window=1),
    "window_below_waad_window": dict(sliding_window=2),
    "window_inside_horizon": dict(sliding_window=5),
    "window_beyond_sequence": dict(sliding_window=40),
    "softcap": dict(softcap=1.5),
    "sinks": dict(sinks=torch.tensor([-2.0, 0.0, 1.0, 4.0, 0.5, -1.0])),
    "all_three": dict(sliding_window=4, softcap=3.0, sinks=torch.tensor([1.0, -1.0, 0.0, 2.0, 0.3, 0.1])),
}


@pytest.mark.parametrize("name", VARIANTS, ids=list(VARIANTS))
def test_attention_variants_match_brute_force(name):
    """Sliding window, soft-capping and sinks: statistics of the layer's own softmax (padding, GQA, length 1)."""
    torch.manual_seed(6)
    q, k = torch.randn(4, 6, 23, 8) * 2, torch.randn(4, 2, 23, 8) * 2
    s, e, r = torch.tensor([4, 0, 22, 0]), torch.tensor([23, 17, 23, 0]), torch.tensor([10, 3, 22, 0])
    masks = torch.rand(4, 2, 23) > 0.5
    got = _check(q, k, s, e, r, StatsSpec(window=3, fai_lo=2, fai_hi=6), key_masks=masks, **VARIANTS[name])
    plain = attention_statistics_torch(q, k, s, e, r, StatsSpec(window=3, fai_lo=2, fai_hi=6))
    assert not torch.allclose(got.waad, plain.waad, atol=1e-3) or name == "window_beyond_sequence"
    if "sinks" in VARIANTS[name]:  # each row loses exactly exp(sink_h - lse) of its mass to the sink
        everything = torch.ones(4, 1, 23)
        whole = attention_statistics_torch(q, k, s, e, r, key_masks=everything, **VARIANTS[name]).span_mass[..., 0]
        lost = torch.exp(VARIANTS[name]["sinks"][None, :, None] - got.lse)
        valid = ((torch.arange(23)[None] >= s[:, None]) & (torch.arange(23)[None] < e[:, None]))[:, None].expand(4, 6, 23)
        torch.testing.assert_close(whole[valid], 1 - lost[valid], atol=1e-5, rtol=1e-5)
        assert whole[valid].max() < 1


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 20), group=st.sampled_from([1, 3]), data=st.data(), window=st.integers(1, 6),
    lo=st.integers(0, 4), width=st.one_of(st.none(), st.integers(0, 6)),
    sliding=st.one_of(st.none(), st.integers(1, 24)), softcap=st.one_of(st.none(), st.floats(0.5, 8.0)),
    with_sinks=st.booleans(),
)
def test_property_variants(T, group, data, window, lo, width, sliding, softcap, with_sinks):
    B, Hkv = 2, 2
    starts, ends, resps = [], [], []
    for _ in range(B):
        s0 = data.draw(st.integers(0, T))
        e0 = data.draw(st.integers(s0, T))
        starts.append(s0), ends.append(e0), resps.append(data.draw(st.integers(s0, e0)))
    q, k = torch.randn(B, Hkv * group, T, 4) * 2, torch.randn(B, Hkv, T, 4)
    sinks = torch.randn(Hkv * group) * 2 if with_sinks else None
    spec = StatsSpec(window, lo, None if width is None else lo + width)
    _check(q, k, torch.tensor(starts), torch.tensor(ends), torch.tensor(resps), spec, chunk=data.draw(st.integers(1, 8)),
           sliding_window=sliding, softcap=softcap, sinks=sinks)


def test_bad_variants_are_named():
    args = (torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), *[torch.zeros(1, dtype=torch.long)] * 3)
    with pytest.raises(ValueError, match="sliding_window must be a positive integer"):
        attention_statistics(*args, sliding_window=0)
    with pytest.raises(ValueError, match="softcap must be a positive number"):
        attention_statistics(*args, softcap=-1.0)
    with pytest.raises(ValueError, match=r"sinks must be a \(2,\) tensor"):
        attention_statistics(*args, sinks=torch.zeros(3))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="multiple of kv heads"):
        attention_statistics(torch.zeros(1, 3, 4, 8), torch.zeros(1, 2, 4, 8), *[torch.zeros(1, dtype=torch.long)] * 3)
    with pytest.raises(ValueError, match="unknown statistics backend"):
        attention_statistics(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), *[torch.zeros(1, dtype=torch.long)] * 3,
                             backend="cuda")
    with pytest.raises(ValueError, match="fai_hi"):
        StatsSpec(window=3, fai_lo=5, fai_hi=2)
