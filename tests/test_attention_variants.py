"""Statistics of the attention each layer really computes (sliding windows, soft-capping, sinks), checked end to
end against the model's own eager attention weights; unsupported variants are refused at the first forward."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GptOssConfig, MistralConfig, Qwen2Config
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import attnrl.attention.capture as capture
from attnrl.attention.capture import CaptureError, capture_statistics
from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.kernels.dispatch import StatsSpec
from attnrl.utils.tiny import tiny_causal_lm
from tests.test_capture import _batch, assert_capture_matches_eager, eager_attention_weights

SPEC = StatsSpec(window=3, fai_lo=2, fai_hi=7)
WINDOW = 4  # sliding window of the tiny models: T = 19 rows, so most rows lose keys
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=2, bos_token_id=1)
ALTERNATING = ["sliding_attention", "full_attention"] * 2


def _config(family: str):
    if family == "qwen2":  # layers >= max_window_layers slide
        return Qwen2Config(**BASE, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2)
    if family == "mistral":  # every layer slides
        return MistralConfig(**BASE, sliding_window=WINDOW)
    if family == "gemma3":  # alternating local / global layers
        return Gemma3TextConfig(**BASE, head_dim=16, sliding_window=WINDOW, layer_types=ALTERNATING)
    if family == "gemma2":  # alternating layers and logit soft-capping
        return Gemma2Config(**BASE, head_dim=16, sliding_window=WINDOW, layer_types=ALTERNATING,
                            attn_logit_softcapping=2.0)
    if family == "gpt_oss":  # alternating layers and attention sinks
        return GptOssConfig(**BASE, head_dim=16, sliding_window=WINDOW, layer_types=ALTERNATING, num_local_experts=2,
                            num_experts_per_tok=1)
    raise ValueError(family)


def tiny_model(family: str, attn_implementation: str = "eager"):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family), attn_implementation=attn_implementation,
                                             dtype=torch.float32)
    if family == "gpt_oss":  # visible sinks (random init draws them near 0)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.copy_(torch.linspace(-1.0, 2.0, 4))
    return model.eval()


EXPECTED = {  # (sliding layers, soft-capped, sinks)
    "qwen2": ([2, 3], False, False),
    "mistral": ([0, 1, 2, 3], False, False),
    "gemma3": ([0, 2], False, False),
    "gemma2": ([0, 2], True, False),
    "gpt_oss": ([0, 2], False, True),
}


def captured_variants(model, layers, mask, resp):
    """{layer: variant kwargs} the capture hands to the statistics, recorded on a forward."""
    seen = {}
    real = capture._layer_variant

    def spy(cap, module, layer, query, key, kwargs):
        seen[layer] = variant = real(cap, module, layer, query, key, kwargs)
        return variant

    capture._layer_variant = spy
    try:
        ids = torch.randint(3, 128, mask.shape)
        with torch.no_grad(), capture_statistics(model, layers, mask, resp, SPEC):
            model(input_ids=ids, attention_mask=mask)
    finally:
        capture._layer_variant = real
    return seen


@pytest.mark.parametrize("family", list(EXPECTED))
def test_statistics_follow_the_layer_attention(family):
    """Captured WAAD / distances / FAI equal those of the model's own eager attention weights, layer by layer."""
    model = tiny_model(family)
    ids, mask, resp = _batch()
    sliding, softcapped, sinks = EXPECTED[family]
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), capture_statistics(model, [0, 1, 2, 3], mask, resp, SPEC, backend="torch") as cap:
        after = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "attnrl:eager"
    assert torch.equal(before, after)
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label=family)

    # the variants really are in play: windowed rows have no mass beyond the window, sink rows sum to < 1
    A = eager_attention_weights(model, ids, mask, sliding[0])
    t, s = torch.arange(19)[:, None], torch.arange(19)[None, :]
    assert A[..., (t - s) >= WINDOW].abs().max() == 0 and (A[1, :, 10, 10 - WINDOW + 1:11] > 0).all()
    row_mass = A[1].sum(-1)[:, :16]
    assert bool((row_mass < 0.99).all()) == sinks and bool(torch.allclose(row_mass, torch.ones_like(row_mass))) != sinks
    variants = captured_variants(model, [0, 1, 2, 3], mask, resp)
    assert [layer for layer, v in variants.items() if v["sliding_window"] is not None] == sliding
    assert all((v["softcap"] is not None) == softcapped and (v["sinks"] is not None) == sinks for v in variants.values())


@pytest.mark.parametrize("family", list(EXPECTED))
def test_full_causal_statistics_would_be_wrong(family):
    """What the capture recorded before layers' variants were honoured (a plain causal softmax) is off."""
    model = tiny_model(family)
    ids, mask, resp = _batch()
    real = capture._layer_variant
    capture._layer_variant = lambda *a: {**real(*a), "sliding_window": None, "softcap": None, "sinks": None}
    try:
        with torch.no_grad(), capture_statistics(model, [0, 1, 2, 3], mask, resp, SPEC, backend="torch") as cap:
            model(input_ids=ids, attention_mask=mask)
    finally:
        capture._layer_variant = real
    with pytest.raises(AssertionError):
        assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label=family)


@pytest.mark.parametrize("family", ["gpt_oss", "gemma2", "qwen2"])
def test_triton_backend_follows_the_layer_attention(family):
    model = tiny_model(family)
    ids, mask, resp = _batch()
    with torch.no_grad(), capture_statistics(model, [1, 2], mask, resp, SPEC, backend="triton") as cap:
        model(input_ids=ids, attention_mask=mask)
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label=family)


def test_sliding_window_with_sdpa_is_captured_too():
    model = tiny_model("mistral", attn_implementation="sdpa")
    ids, mask, resp = _batch()
    with torch.no_grad(), capture_statistics(model, [1], mask, resp, SPEC) as cap:
        model(input_ids=ids, attention_mask=mask)
    assert model.config._attn_implementation == "attnrl:sdpa"
    assert_capture_matches_eager(model, ids, mask, resp, SPEC, cap, atol=2e-5, rtol=1e-4, label="mistral sdpa")


def test_bidirectional_attention_is_refused_at_assigner_construction():
    torch.manual_seed(0)
    config = Gemma3TextConfig(**BASE, head_dim=16, sliding_window=WINDOW, use_bidirectional_attention=True)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with pytest.raises(CaptureError, match=r"credit_strategy='coupled'.*layer 1 \(Gemma3Attention\).*bidirectional"):
        CreditAssigner(CreditConfig(credit_layers=[1, 2]), model)


def test_unmodelled_attention_arguments_are_refused():
    model = tiny_causal_lm("llama").eval()
    ids, mask, resp = _batch()
    attn = model.model.layers[1].self_attn
    q = k = v = torch.randn(3, 2, 19, 16)
    with capture_statistics(model, [1], mask, resp, SPEC):
        wrapped = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]
        for name in ("position_bias", "indices"):
            with pytest.raises(CaptureError, match=f"layer 1 \\(LlamaAttention\\) uses .*'{name}'"):
                wrapped(attn, torch.randn(3, 4, 19, 16), k, v, None, **{name: torch.zeros(1)})
        with pytest.raises(CaptureError, match="one logit per query head"):
            wrapped(attn, torch.randn(3, 4, 19, 16), k, v, None, s_aux=torch.zeros(3))
        with pytest.raises(CaptureError, match="without a KV cache"):
            wrapped(attn, torch.randn(3, 4, 1, 16), k, v, None)
        wrapped(attn, torch.randn(3, 4, 19, 16), q, v, None)  # plain call: recorded, completing the context


def test_unmodelled_layer_types_are_refused():
    model = tiny_causal_lm("qwen2").eval()
    model.config.layer_types = ["full_attention", "chunked_attention", "full_attention", "full_attention"]
    ids, mask, resp = _batch()
    with pytest.raises(CaptureError, match=r"layer 1 of Qwen2ForCausalLM uses 'chunked_attention'.*\[0, 2, 3\]"):
        with capture_statistics(model, [1], mask, resp):
            pass
