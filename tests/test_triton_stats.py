"""Triton attention-statistics kernels against the chunked PyTorch reference (interpreter mode on CPU)."""
# ruff: noqa: E402  (TRITON_INTERPRET must be set before the first triton import)

import os

if os.environ.get("ATTNRL_TEST_GPU") != "1":  # ATTNRL_TEST_GPU=1: compiled kernels on the GPU instead
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated: before any triton import

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl.kernels import triton_stats
from attnrl.kernels.dispatch import attention_statistics
from attnrl.kernels.reference import StatsSpec, attention_statistics_torch
from attnrl.kernels.triton_stats import INTERPRETED, Tiles, attention_statistics_triton

DEVICE = "cpu" if INTERPRETED else "cuda"
pytestmark = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="triton_stats was imported without TRITON_INTERPRET=1 and there is no GPU",
)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3}  # atol = rtol


def make_inputs(spans, T, H=4, Hkv=2, D=16, dtype=torch.float32, sharpness=1.0, seed=0):
    """Random q (B, H, T, D), k (B, Hkv, T, D) and the (B,) span tensors of spans = [(start, end, resp), ...]."""
    gen = torch.Generator().manual_seed(seed)
    B = len(spans)
    q = (torch.randn(B, H, T, D, generator=gen) * sharpness).to(dtype)
    k = torch.randn(B, Hkv, T, D, generator=gen).to(dtype)
    seq_start, seq_end, resp_start = (torch.tensor(col) for col in zip(*spans))
    return q.to(DEVICE), k.to(DEVICE), seq_start, seq_end, resp_start


def assert_matches_reference(q, k, seq_start, seq_end, resp_start, spec, key_masks=None, scale=None, variant=None,
                             **band_args):
    """Run both backends and compare every field the Triton call returns; returns the Triton result.

    variant (sliding_window / softcap / sinks) goes to both; band_args (band, lse) to the Triton call only."""
    variant = variant or {}
    ref = attention_statistics_torch(q, k, seq_start, seq_end, resp_start, spec, key_masks=key_masks, scale=scale,
                                     **variant)
    out = attention_statistics_triton(
        q, k, seq_start, seq_end, resp_start, spec, key_masks=key_masks, scale=scale, **variant, **band_args
    )
    tol = TOLERANCE[q.dtype]
    for name in ("lse", "waad", "fai_sum") + (() if band_args.get("band") else ("dist_sum",)):
        got, want = getattr(out, name), getattr(ref, name)
        assert got.shape == want.shape and got.dtype == torch.float32, name
        torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(out.fai_count.cpu(), ref.fai_count.cpu())
    if key_masks is None:
        assert out.span_mass is None
    else:
        torch.testing.assert_close(out.span_mass, ref.span_mass, atol=tol, rtol=tol)
    return out


PADDINGS = {
    "length_1": ([(0, 1, 0)], 1),
    "full_row_resp_at_0": ([(0, 23, 0)], 23),
    "left_padded": ([(5, 17, 9)], 17),
    "right_padded": ([(0, 20, 4)], 33),
    "mixed_with_empty_row": ([(7, 40, 20), (0, 29, 10), (12, 12, 12)], 40),
    "empty_response": ([(3, 30, 30)], 31),
    "all_rows_empty": ([(0, 0, 0), (5, 5, 5)], 18),
}


@pytest.mark.parametrize("layout", PADDINGS, ids=list(PADDINGS))
def test_padding_layouts(layout):
    spans, T = PADDINGS[layout]
    assert_matches_reference(*make_inputs(spans, T), StatsSpec(window=4, fai_lo=2, fai_hi=12))


def test_padded_positions_are_zero():
    q, k, seq_start, seq_end, resp_start = make_inputs([(4, 20, 8), (9, 9, 9)], 26)
    out = attention_statistics_triton(q, k, seq_start, seq_end, resp_start, StatsSpec(3, 1, None))
    for field in (out.lse, out.dist_sum, out.waad, out.fai_sum):
        assert field[0, :, :4].abs().sum() == 0 and field[0, :, 20:].abs().sum() == 0
        assert field[1].abs().sum() == 0
    assert out.lse[0, :, 4:20].abs().min() > 0 and out.fai_count[1].sum() == 0


@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 2), (8, 2), (8, 1)], ids=["mha", "gqa3", "gqa4", "gqa8"])
def test_gqa_ratios(H, Hkv):
    inputs = make_inputs([(3, 37, 11), (0, 30, 5)], 37, H=H, Hkv=Hkv)
    assert_matches_reference(*inputs, StatsSpec(window=5, fai_lo=3, fai_hi=20))


@pytest.mark.parametrize("D", [16, 24, 64, 128])
def test_head_dims(D):
    inputs = make_inputs([(2, 35, 10)], 35, H=2, Hkv=1, D=D)
    assert_matches_reference(*inputs, StatsSpec(window=10, fai_lo=10, fai_hi=None))


SPECS = {
    "window1_lo0_hi0": StatsSpec(window=1, fai_lo=0, fai_hi=0),
    "window1_lo0_to_end": StatsSpec(window=1, fai_lo=0, fai_hi=None),
    "hi_equals_lo": StatsSpec(window=3, fai_lo=5, fai_hi=5),
    "paper_default": StatsSpec(window=10, fai_lo=10, fai_hi=100),
    "analysis_setting": StatsSpec(window=10, fai_lo=1, fai_hi=None),
    "window_beyond_two_tiles": StatsSpec(window=40, fai_lo=17, fai_hi=33),
    "window_beyond_sequence": StatsSpec(window=500, fai_lo=0, fai_hi=64),
}


@pytest.mark.parametrize("name", SPECS, ids=list(SPECS))
def test_window_and_horizon_edges(name):
    inputs = make_inputs([(6, 70, 20), (0, 53, 0)], 70, sharpness=2.0)
    assert_matches_reference(*inputs, SPECS[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtypes(dtype):
    inputs = make_inputs([(1, 45, 12), (0, 38, 3)], 45, D=64, dtype=dtype, sharpness=2.0)
    assert_matches_reference(*inputs, StatsSpec(window=6, fai_lo=4, fai_hi=25))


def test_long_sequence_many_tiles():
    inputs = make_inputs([(13, 200, 60)], 200, H=2, Hkv=1, D=32, sharpness=3.0)
    assert_matches_reference(*inputs, StatsSpec(window=10, fai_lo=10, fai_hi=100))


TILE_SHAPES = {
    "gpu_like": {"rows": Tiles(128, 64), "cols": Tiles(64, 128), "band": Tiles(64, 64)},
    "rows_narrower_than_keys": {"rows": Tiles(16, 32), "cols": Tiles(32, 16), "band": Tiles(32, 16)},
}


@pytest.mark.parametrize("name", TILE_SHAPES, ids=list(TILE_SHAPES))
@pytest.mark.parametrize("band", [False, True], ids=["full", "band"])
def test_tile_shapes(monkeypatch, name, band):
    """The loop bounds (masked / unmasked tile ranges) must not depend on square 16 x 16 tiles."""
    monkeypatch.setattr(triton_stats, "choose_tiles", lambda kernel, *_: TILE_SHAPES[name][kernel])
    inputs = make_inputs([(37, 150, 60), (0, 131, 100), (70, 70, 70)], 150, H=2, Hkv=1, sharpness=3.0)
    assert_matches_reference(*inputs, StatsSpec(window=10, fai_lo=10, fai_hi=40), band=band)


@pytest.mark.parametrize("masks", ["bool3", "float1"])
def test_span_masks(masks):
    q, k, seq_start, seq_end, resp_start = make_inputs([(2, 50, 30), (0, 41, 20)], 50)
    gen = torch.Generator().manual_seed(1)
    key_masks = torch.rand(2, 3, 50, generator=gen) > 0.6 if masks == "bool3" else torch.rand(2, 1, 50, generator=gen)
    out = assert_matches_reference(q, k, seq_start, seq_end, resp_start, StatsSpec(), key_masks=key_masks.to(DEVICE))
    assert out.span_mass.shape == (2, 4, 50, key_masks.shape[1])


def test_span_masks_partition_the_row():
    """Masks that split the keys in two carry the whole row mass between them."""
    q, k, seq_start, seq_end, resp_start = make_inputs([(3, 30, 10)], 30)
    first = torch.zeros(1, 1, 30, dtype=torch.bool)
    first[..., :12] = True
    key_masks = torch.cat([first, ~first], 1).to(DEVICE)
    out = attention_statistics_triton(q, k, seq_start, seq_end, resp_start, key_masks=key_masks)
    torch.testing.assert_close(out.span_mass[0, :, 3:30].sum(-1), torch.ones(4, 27, device=DEVICE))


@pytest.mark.parametrize(
    "spec", [StatsSpec(10, 10, 100), StatsSpec(1, 0, 0), StatsSpec(20, 3, 9), StatsSpec(4, 2, None)]
)
@pytest.mark.parametrize("given_lse", [False, True], ids=["own_lse", "given_lse"])
def test_band_mode(spec, given_lse):
    q, k, seq_start, seq_end, resp_start = make_inputs([(5, 64, 20), (0, 47, 8)], 64, sharpness=2.0)
    lse = None
    if given_lse:
        lse = attention_statistics_torch(q, k, seq_start, seq_end, resp_start, spec).lse
    out = assert_matches_reference(q, k, seq_start, seq_end, resp_start, spec, band=True, lse=lse)
    assert out.dist_sum is None and out.span_mass is None
    if given_lse:
        assert out.lse.data_ptr() == lse.data_ptr()


def test_band_mode_argument_errors():
    q, k, seq_start, seq_end, resp_start = make_inputs([(0, 10, 2)], 10)
    with pytest.raises(ValueError, match="band=True"):
        attention_statistics_triton(q, k, seq_start, seq_end, resp_start, lse=torch.zeros(1, 4, 10))
    with pytest.raises(ValueError, match="span_mass"):
        attention_statistics_triton(q, k, seq_start, seq_end, resp_start, band=True, key_masks=torch.ones(1, 1, 10))
    with pytest.raises(ValueError, match="lse must have shape"):
        attention_statistics_triton(q, k, seq_start, seq_end, resp_start, band=True, lse=torch.zeros(1, 4, 9))


def test_strided_inputs_from_a_model_layout():
    """q and k as transposed views of (B, T, heads, D) projections, the layout attention modules produce."""
    q, k, seq_start, seq_end, resp_start = make_inputs([(2, 30, 9), (0, 25, 4)], 30)
    q_view, k_view = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous()
    out = assert_matches_reference(q_view, k_view, seq_start, seq_end, resp_start, StatsSpec(5, 2, 15))
    torch.testing.assert_close(
        out.waad, attention_statistics_triton(q, k, seq_start, seq_end, resp_start, StatsSpec(5, 2, 15)).waad
    )


def test_explicit_scale_and_mixed_dtypes():
    q, k, seq_start, seq_end, resp_start = make_inputs([(0, 28, 6)], 28)
    assert_matches_reference(q.half(), k, seq_start, seq_end, resp_start, StatsSpec(4, 1, 8), scale=0.3)


def test_dispatcher_triton_backend():
    q, k, seq_start, seq_end, resp_start = make_inputs([(1, 33, 10)], 33)
    out = attention_statistics(q, k, seq_start, seq_end, resp_start, backend="triton")
    ref = attention_statistics_torch(q, k, seq_start, seq_end, resp_start)
    torch.testing.assert_close(out.fai_sum, ref.fai_sum, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.dist_sum, ref.dist_sum, atol=1e-4, rtol=1e-4)


def sinks(H, seed=0):
    """(H,) sink logits spanning "negligible" to "takes most of the row"."""
    return (torch.linspace(-3.0, 4.0, H)[torch.randperm(H, generator=torch.Generator().manual_seed(seed))]).to(DEVICE)


VARIANTS = {
    "window_1": dict(sliding_window=1),
    "window_below_waad_window": dict(sliding_window=3),
    "window_inside_horizon": dict(sliding_window=9),
    "window_beyond_sequence": dict(sliding_window=100),
    "softcap": dict(softcap=2.0),
    "sinks": dict(sinks=sinks(4)),
    "all_three": dict(sliding_window=6, softcap=5.0, sinks=sinks(4, seed=1)),
}


@pytest.mark.parametrize("name", VARIANTS, ids=list(VARIANTS))
def test_attention_variants(name):
    """Padding on both sides, an empty row, a one-token row, GQA; with span masks (full pass)."""
    q, k, seq_start, seq_end, resp_start = make_inputs([(7, 40, 20), (0, 29, 10), (12, 12, 12), (39, 40, 39)], 40,
                                                       sharpness=2.0)
    key_masks = (torch.rand(4, 2, 40, generator=torch.Generator().manual_seed(2)) > 0.5).to(DEVICE)
    assert_matches_reference(q, k, seq_start, seq_end, resp_start, StatsSpec(window=5, fai_lo=2, fai_hi=12),
                             key_masks=key_masks, variant=VARIANTS[name])


WINDOW_VS_HORIZON = {  # (sliding window, spec)
    "window_before_horizon": (4, StatsSpec(window=10, fai_lo=10, fai_hi=100)),
    "window_at_horizon_start": (11, StatsSpec(window=10, fai_lo=10, fai_hi=100)),
    "window_inside_horizon": (30, StatsSpec(window=10, fai_lo=10, fai_hi=100)),
    "window_beyond_horizon": (60, StatsSpec(window=4, fai_lo=3, fai_hi=20)),
    "horizon_to_end": (25, StatsSpec(window=10, fai_lo=5, fai_hi=None)),
    "window_larger_than_T": (500, StatsSpec(window=10, fai_lo=5, fai_hi=None)),
}


@pytest.mark.parametrize("name", WINDOW_VS_HORIZON, ids=list(WINDOW_VS_HORIZON))
@pytest.mark.parametrize("band", [False, True], ids=["full", "band"])
def test_sliding_window_against_waad_window_and_fai_horizon(name, band):
    window, spec = WINDOW_VS_HORIZON[name]
    inputs = make_inputs([(6, 70, 20), (0, 53, 0)], 70, sharpness=2.0)
    out = assert_matches_reference(*inputs, spec, variant=dict(sliding_window=window), band=band)
    if window <= spec.fai_lo:  # no row attends as far as the horizon starts
        assert out.fai_sum.abs().max() == 0


@pytest.mark.parametrize("H,Hkv", [(6, 2), (8, 1)], ids=["gqa3", "gqa8"])
def test_variants_with_gqa(H, Hkv):
    inputs = make_inputs([(3, 37, 11), (0, 30, 5)], 37, H=H, Hkv=Hkv)
    assert_matches_reference(*inputs, StatsSpec(window=5, fai_lo=3, fai_hi=20),
                             variant=dict(sliding_window=7, softcap=3.0, sinks=sinks(H)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_variants_in_dtypes(dtype):
    inputs = make_inputs([(1, 45, 12), (0, 38, 3)], 45, D=64, dtype=dtype, sharpness=2.0)
    assert_matches_reference(*inputs, StatsSpec(window=6, fai_lo=4, fai_hi=25),
                             variant=dict(sliding_window=10, softcap=4.0, sinks=sinks(4).to(dtype)))


@pytest.mark.parametrize("given_lse", [False, True], ids=["own_lse", "given_lse"])
def test_variants_in_band_mode(given_lse):
    q, k, seq_start, seq_end, resp_start = make_inputs([(5, 64, 20), (0, 47, 8)], 64, sharpness=2.0)
    spec, variant = StatsSpec(10, 10, 100), dict(sliding_window=24, softcap=3.0, sinks=sinks(4))
    lse = attention_statistics_torch(q, k, seq_start, seq_end, resp_start, spec, **variant).lse if given_lse else None
    out = assert_matches_reference(q, k, seq_start, seq_end, resp_start, spec, variant=variant, band=True, lse=lse)
    assert out.dist_sum is None


@pytest.mark.parametrize("name", TILE_SHAPES, ids=list(TILE_SHAPES))
@pytest.mark.parametrize("window", [100, 40, 7], ids=lambda w: f"window{w}")
def test_sliding_window_tile_ranges(monkeypatch, name, window):
    """Row blocks skip keys before the window and run unmasked only on blocks every row sees whole."""
    monkeypatch.setattr(triton_stats, "choose_tiles", lambda kernel, *_: TILE_SHAPES[name][kernel])
    inputs = make_inputs([(37, 150, 60), (0, 131, 100), (70, 70, 70)], 150, H=2, Hkv=1, sharpness=3.0)
    for band in (False, True):
        assert_matches_reference(*inputs, StatsSpec(window=10, fai_lo=10, fai_hi=40),
                                 variant=dict(sliding_window=window, sinks=sinks(2)), band=band)


@st.composite
def problems(draw):
    """A random batch of spans, a spec, GQA shape and mode."""
    T = draw(st.integers(1, 70))
    spans = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, T))
        end = draw(st.integers(start, T))
        spans.append((start, end, draw(st.integers(start, end))))
    fai_lo = draw(st.integers(0, 20))
    spec = StatsSpec(
        window=draw(st.integers(1, 24)),
        fai_lo=fai_lo,
        fai_hi=draw(st.one_of(st.none(), st.integers(fai_lo, fai_lo + 40))),
    )
    Hkv = draw(st.integers(1, 2))
    shape = dict(Hkv=Hkv, H=Hkv * draw(st.sampled_from([1, 2, 3, 4])), D=draw(st.sampled_from([16, 24, 32])))
    mode = draw(st.sampled_from(["full", "masks", "band", "band_given_lse"]))
    variant = dict(
        sliding_window=draw(st.one_of(st.none(), st.integers(1, 80))),
        softcap=draw(st.one_of(st.none(), st.floats(0.5, 10.0))),
        sinks=sinks(shape["H"], seed=draw(st.integers(0, 99))) if draw(st.booleans()) else None,
    )
    return spans, T, shape, spec, mode, draw(st.floats(0.5, 4.0)), draw(st.integers(0, 2**16)), variant


@settings(max_examples=25, deadline=None)
@given(problems())
def test_matches_reference_property(problem):
    spans, T, shape, spec, mode, sharpness, seed, variant = problem
    q, k, seq_start, seq_end, resp_start = make_inputs(spans, T, sharpness=sharpness, seed=seed, **shape)
    kwargs = {"variant": variant}
    if mode == "masks":
        kwargs["key_masks"] = (torch.rand(len(spans), 2, T) > 0.5).to(DEVICE)
    if mode.startswith("band"):
        kwargs["band"] = True
    if mode == "band_given_lse":
        kwargs["lse"] = attention_statistics_torch(q, k, seq_start, seq_end, resp_start, spec, **variant).lse
    assert_matches_reference(q, k, seq_start, seq_end, resp_start, spec, **kwargs)
