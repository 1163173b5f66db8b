"""Capturing statistics through transformers' AttentionInterface: the model's own implementation is kept,
outputs unchanged, statistics exact."""

import pytest
import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from attnrl.attention.capture import (
    CaptureError,
    attention_layers,
    capture_statistics,
    disable_capture,
    enable_capture,
    original_implementation,
    sequence_spans,
)
from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.kernels.dispatch import StatsSpec
from attnrl.utils.tiny import tiny_causal_lm

SPEC = StatsSpec(window=3, fai_lo=2, fai_hi=7)


def _text_config(model):
    return model.config.get_text_config()


def eager_attention_weights(model, ids, mask, layer, **forward_kwargs):
    """A (B, H, T, T) float64 of decoder layer ``layer``, from the model's own eager attention.

    The model runs un-captured with attn_implementation="eager" and output_attentions=True; the weights are
    taken from the attention module whose layer_idx is ``layer`` (hybrid models count decoder layers, not only
    attention layers). The previous implementation names are put back verbatim afterwards.
    """
    configs = {id(c): c for c in [model.config, _text_config(model)]}
    previous = [(c, c._attn_implementation_internal) for c in configs.values()]
    model.set_attn_implementation("eager")
    found = []

    def keep(module, args, output):
        if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]) and output[1].dim() == 4:
            found.append(output[1])

    hooks = [m.register_forward_hook(keep) for m in model.modules() if getattr(m, "layer_idx", None) == layer]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, output_attentions=True, **forward_kwargs)
    finally:
        for h in hooks:
            h.remove()
        for config, name in previous:
            config._attn_implementation_internal = name
    assert len(found) == 1, f"layer {layer}: expected one attention module output, got {len(found)}"
    return found[0].double()


def stats_from_eager_attentions(model, ids, mask, layer, resp_start, spec):
    """dist_sum / waad / fai_sum (B, H, T) from the model's own materialised eager attention probabilities."""
    A = eager_attention_weights(model, ids, mask, layer)
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
    assert model.config._attn_implementation == "attnrl:sdpa"
    assert original_implementation("attnrl:sdpa") == "sdpa"
    with torch.no_grad(), capture_statistics(model, [1, 3], mask, resp, SPEC) as cap:
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert sorted(cap.stats) == [1, 3]
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label=family)


def test_eager_model_keeps_its_eager_attention():
    """A model loaded with attn_implementation="eager" runs its own eager function under capture (not SDPA)."""
    eager = tiny_causal_lm("llama").eval()
    eager.set_attn_implementation("eager")
    ids, mask, resp = _batch()
    with torch.no_grad():
        before = eager(input_ids=ids, attention_mask=mask).logits
    enable_capture(eager)
    assert eager.config._attn_implementation == "attnrl:eager"
    with torch.no_grad(), capture_statistics(eager, [0, 1, 3], mask, resp, SPEC) as cap:
        after = eager(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)  # bit-identical: the same eager function ran
    assert_capture_matches_eager(eager, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label="eager")

    sdpa = tiny_causal_lm("llama").eval()  # same seed: same weights
    with torch.no_grad(), capture_statistics(sdpa, [0, 1, 3], mask, resp, SPEC) as cap_sdpa:
        sdpa(input_ids=ids, attention_mask=mask)
    valid = mask.bool()[:, None].expand(3, 4, 19)
    for layer in (0, 1, 3):
        for name in ("lse", "dist_sum", "waad", "fai_sum"):
            got, want = getattr(cap.stats[layer], name), getattr(cap_sdpa.stats[layer], name)
            torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5, msg=f"{layer} {name}")

    disable_capture(eager)
    assert eager.config._attn_implementation == "eager"


def test_generation_unchanged_by_capture_function():
    model = tiny_causal_lm("llama").eval()
    ids, mask, _ = _batch()
    out1 = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    enable_capture(model)
    out2 = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out1, out2)


FAKE = "fake_varlen_kernel"  # stands in for flash_attention_2/3 and hub kernels, which are not installed here
fake_calls: list[str] = []


def fake_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention from a 2D padding mask (or None), dispatching on config._attn_implementation like flash
    attention does: it records the name it sees."""
    fake_calls.append(module.config._attn_implementation)
    B, H, T, D = query.shape
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    if attention_mask is not None:  # (B, T) 0/1, as flash_attention_mask hands it over
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    scores = (query @ key.transpose(-1, -2)) * (D**-0.5 if scaling is None else scaling)
    probs = torch.softmax(scores.masked_fill(~allowed, -1e9), -1)
    return (probs @ value).transpose(1, 2).contiguous(), None


AttentionInterface.register(FAKE, fake_varlen_attention)
AttentionMaskInterface.register(FAKE, flash_attention_mask)


def test_any_registered_implementation_is_wrapped_and_sees_its_own_name():
    model = tiny_causal_lm("llama").eval()
    model.set_attn_implementation(FAKE)
    ids, mask, resp = _batch()
    fake_calls.clear()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    enable_capture(model)
    assert model.config._attn_implementation == f"attnrl:{FAKE}"
    with torch.no_grad(), capture_statistics(model, [1, 2], mask, resp, SPEC) as cap:
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert fake_calls == [FAKE] * 8  # 4 layers x 2 forwards, always under its own name
    assert model.config._attn_implementation == f"attnrl:{FAKE}"  # and shown the capturing name again after
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label=FAKE)


def test_padding_free_packed_batches_are_refused():
    model = tiny_causal_lm("llama").eval()
    model.set_attn_implementation(FAKE)
    ids = torch.randint(3, 128, (1, 12))
    ones = torch.ones_like(ids)
    packed_positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])  # two sequences in one row, no mask
    with pytest.raises(CaptureError, match="position_ids restart inside a row.*padding_free=False"):
        with torch.no_grad(), capture_statistics(model, [1], ones, torch.tensor([3])):
            model(input_ids=ids, position_ids=packed_positions)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    with pytest.raises(CaptureError, match="padding-free packed batch.*cu_seq_lens_q"):
        with torch.no_grad(), capture_statistics(model, [1], ones, torch.tensor([3])):
            model(input_ids=ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=7, max_length_k=7)
    # left padding with generate-style position ids is one sequence per row: accepted
    ids, mask, resp = _batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), capture_statistics(model, [1], mask, resp, SPEC) as cap:
        model(input_ids=ids, attention_mask=mask, position_ids=positions)
    assert list(cap.stats) == [1]


@pytest.mark.slow
def test_flex_attention_is_kept():
    model = tiny_causal_lm("llama").eval()
    model.set_attn_implementation("flex_attention")
    ids, mask, resp = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), capture_statistics(model, [2], mask, resp, SPEC) as cap:
        after = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "attnrl:flex_attention"
    assert torch.equal(before, after)
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label="flex")


def test_legacy_alias_still_captures():
    model = tiny_causal_lm("llama").eval()
    model.set_attn_implementation("attnrl_sdpa")
    ids, mask, resp = _batch()
    with torch.no_grad(), capture_statistics(model, [1], mask, resp, SPEC) as cap:
        model(input_ids=ids, attention_mask=mask)
    assert model.config._attn_implementation == "attnrl_sdpa" and list(cap.stats) == [1]
    disable_capture(model)
    assert model.config._attn_implementation == "sdpa"


def _tiny_hybrid(family):
    """Attention at decoder layers 1 and 3, state-space (Bamba) or convolution (LFM2) layers at 0 and 2."""
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, pad_token_id=0)
    extra = {"bamba": dict(attn_layer_indices=[1, 3]),
             "lfm2": dict(layer_types=["conv", "full_attention", "conv", "full_attention"])}[family]
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **base, **extra)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()


@pytest.mark.parametrize("family", ["bamba", "lfm2"])
def test_hybrid_models_capture_their_attention_layers(family):
    model = _tiny_hybrid(family)
    ids, mask, resp = _batch()
    assert attention_layers(model) == [1, 3]
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), capture_statistics(model, [1, 3], mask, resp, SPEC) as cap:
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label=family)
    with pytest.raises(CaptureError, match=r"layer 2 .* without softmax attention.*\[1, 3\]"):
        with capture_statistics(model, [1, 2], mask, resp):
            pass
    # the credit assigner's default middle layers are chosen among the attention layers
    assert CreditAssigner(CreditConfig(), model).layers == [1, 3]


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
