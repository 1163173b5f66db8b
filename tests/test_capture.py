"""Capturing statistics through transformers' AttentionInterface: outputs unchanged, statistics exact."""

import pytest
import torch
from attnrl.kernels import StatsSpec

from attnrl.attention.capture import CaptureError, capture_statistics, enable_capture, sequence_spans
from attnrl.utils.tiny import tiny_causal_lm

SPEC = StatsSpec(window=3, fai_lo=2, fai_hi=7)


def stats_from_eager_attentions(model, ids, mask, layer, resp_start, spec):
    """dist_sum / waad / fai_sum (B, H, T) from the model's own materialised eager attention probabilities."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            A = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[layer].double()
    finally:
        model.set_attn_implementation(previous)
    B, H, T, _ = A.shape
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    d = (t - s).clamp(min=0).double()
    valid_row = mask.bool()[:, None, :, None]
    A = A * valid_row * mask.bool()[:, None, None, :] * (s <= t)
    horizon = ((t - s) >= spec.fai_lo) & ((t - s) <= spec.fai_hi)
    rows_in_r = (torch.arange(T)[None] >= resp_start[:, None]) & mask.bool()  # (B, T)
    fai_w = horizon[None] & rows_in_r[:, :, None]  # (B, t, s)
    return {
        "dist_sum": (A * d).sum(-1),
        "waad": (A * d.clamp(max=spec.window)).sum(-1),
        "fai_sum": (A * fai_w[:, None]).sum(-2),
    }


def assert_capture_matches_eager(model, ids, mask, resp, spec, cap, atol, rtol, label=""):
    """Every captured layer's dist_sum / waad / fai_sum equals the eager-attention computation on valid rows."""
    for layer, stats in cap.stats.items():
        want = stats_from_eager_attentions(model, ids, mask, layer, resp, spec)
        valid = mask.bool()[:, None].expand_as(want["waad"])
        for name, ref in want.items():
            got = getattr(stats, name).double()
            torch.testing.assert_close(got[valid], ref[valid], atol=atol, rtol=rtol, msg=f"{label} {layer} {name}")


def _batch(vocab=128):
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (3, 19))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, -3:] = 0  # right padding
    return ids, mask, torch.tensor([9, 8, 12])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_forward_outputs_unchanged_and_statistics_exact(family):
    model = tiny_causal_lm(family).eval()
    ids, mask, resp = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    enable_capture(model)
    assert model.config._attn_implementation == "attnrl_sdpa"
    with torch.no_grad(), capture_statistics(model, [1, 3], mask, resp, SPEC) as cap:
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert sorted(cap.stats) == [1, 3]
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label=family)


def test_generation_unchanged_by_capture_function():
    model = tiny_causal_lm("llama").eval()
    ids, mask, _ = _batch()
    out1 = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    enable_capture(model)
    out2 = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out1, out2)


def test_stop_after_last_layer_skips_the_rest():
    model = tiny_causal_lm("llama").eval()
    ids, mask, resp = _batch()
    calls = []
    hook = model.model.layers[3].register_forward_hook(lambda *a: calls.append(3))
    with torch.no_grad(), capture_statistics(model, [1], mask, resp, SPEC, stop_after_last_layer=True) as cap:
        model(input_ids=ids, attention_mask=mask)
    hook.remove()
    assert list(cap.stats) == [1] and calls == []


def test_errors_are_clear():
    model = tiny_causal_lm("llama").eval()
    ids, mask, resp = _batch()
    with pytest.raises(CaptureError, match="out of range"):
        with capture_statistics(model, [7], mask, resp):
            pass
    with pytest.raises(CaptureError, match="no attention statistics were recorded"):
        with capture_statistics(model, [1], mask, resp):
            pass  # no forward
    with pytest.raises(ValueError, match="holes"):
        sequence_spans(torch.tensor([[1, 0, 1]]))

    class NotAttentionInterface(torch.nn.Module):
        config = model.config

    with pytest.raises(CaptureError, match="AttentionInterface"):
        enable_capture(NotAttentionInterface())


def test_sequence_spans():
    mask = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    s, e = sequence_spans(mask)
    assert s.tolist() == [2, 0, 0] and e.tolist() == [4, 5, 0]
