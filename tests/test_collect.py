"""The one statistics collector: micro-batches (text rows, Qwen-VL images by row) give the statistics of one forward,
and credit assignment and AVAR share it."""

import pytest
import torch
from PIL import Image

from attnrl.attention.capture import capture_statistics
from attnrl.attention.collect import capture_each_forward, collect_statistics, images_per_row, micro_batches
from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.kernels.dispatch import AttentionStats, StatsSpec
from attnrl.utils.tiny import tiny_causal_lm
from attnrl.utils.tiny_vl import tiny_vl_model, tiny_vl_processor
from tests.conftest import TINY_CREDIT

SPEC = StatsSpec(window=3, fai_lo=1, fai_hi=6)
FIELDS = ("lse", "dist_sum", "waad", "fai_sum", "fai_count", "span_mass")


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for layer in a:
        for name in FIELDS:
            x, y = getattr(a[layer], name), getattr(b[layer], name)
            assert (x is None) == (y is None), name
            if x is not None:
                torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-5, msg=f"layer {layer} {name}")


def _counting_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_cat_joins_row_blocks_and_keeps_absent_fields():
    g = torch.Generator().manual_seed(0)

    def part(B, span=True):
        t = lambda: torch.rand(B, 2, 5, generator=g)  # noqa: E731
        return AttentionStats(t(), None, t(), t(), torch.randint(0, 4, (B, 5), generator=g),
                              torch.rand(B, 2, 5, 3, generator=g) if span else None)

    a, b = part(1), part(2)
    joined = AttentionStats.cat([a, b])
    assert joined.dist_sum is None and joined.waad.shape == (3, 2, 5) and joined.span_mass.shape == (3, 2, 5, 3)
    for name in ("lse", "waad", "fai_sum", "fai_count", "span_mass"):
        assert torch.equal(getattr(joined, name), torch.cat([getattr(a, name), getattr(b, name)]))
    assert AttentionStats.cat([a]) is a
    assert AttentionStats.cat([part(1, span=False), part(1, span=False)]).span_mass is None
    with pytest.raises(ValueError, match="at least one part"):
        AttentionStats.cat([])


def _text_batch():
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (3, 19))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, -3:] = 0  # right padding
    return ids, mask


def test_text_micro_batches_give_the_statistics_of_one_forward():
    model = tiny_causal_lm("llama").eval()
    ids, mask = _text_batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # a per-token input: split with its rows
    whole = collect_statistics(model, [1, 2], ids, mask, 9, SPEC, backend="torch", position_ids=positions)
    calls, handle = _counting_forwards(model)
    parts = collect_statistics(model, [2, 1], ids, mask, torch.full((3,), 9), SPEC, backend="torch", batch_size=2,
                               position_ids=positions)
    handle.remove()
    assert len(calls) == 2 and list(parts) == [1, 2] and parts[1].waad.shape == (3, 4, 19)
    _assert_same(parts, whole)
    with pytest.raises(ValueError, match=r"resp_start must be an int or a \(3,\) tensor"):
        collect_statistics(model, [1], ids, mask, torch.tensor([9, 9]), SPEC)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        collect_statistics(model, [1], ids, mask, 9, SPEC, batch_size=0)


def test_capture_each_forward_joins_a_callers_micro_batches_and_leaves_the_forward_whole():
    """Statistics recorded in someone else's micro-batched forwards (as TRL's old log-prob pass) equal the collector's;
    the forwards run to the end with unchanged logits; a failing forward leaves no capture active."""
    model = tiny_causal_lm("llama").eval()
    ids, mask = _text_batch()
    whole = collect_statistics(model, [1, 2], ids, mask, 9, SPEC, backend="torch")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with capture_each_forward(model, [1, 2], 9, SPEC, backend="torch") as caps:
            logits = torch.cat([model(input_ids=ids[r], attention_mask=mask[r]).logits
                                for r in (slice(0, 2), slice(2, 3))])
    assert len(caps.parts) == 2 and caps.rows == 3
    _assert_same(caps.stats(), whole)
    torch.testing.assert_close(logits, plain)
    with pytest.raises(RuntimeError, match="boom"), capture_each_forward(model, [1], 9, SPEC, backend="torch"):
        handle = model.model.layers[3].register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        try:
            model(input_ids=ids, attention_mask=mask)
        finally:
            handle.remove()
    with capture_statistics(model, [1], mask, torch.full((3,), 9), SPEC, backend="torch") as cap:  # none left open
        model(input_ids=ids, attention_mask=mask)
    assert 1 in cap.stats


def _vl_batch(processor):
    images = [[Image.new("RGB", (56, 56), "white")], [Image.new("RGB", (84, 56), "red")]]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
                for q in ("How many?", "Count the red squares")]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) + "12" for m in messages]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    return inputs.pop("input_ids"), inputs.pop("attention_mask"), dict(inputs)


def test_qwen_vl_images_are_split_with_their_rows():
    processor, model = tiny_vl_processor("qwen2_vl"), tiny_vl_model("qwen2_vl", num_layers=2)
    ids, mask, images = _vl_batch(processor)
    assert images["image_grid_thw"].shape[0] == 2
    patches = images["image_grid_thw"].prod(-1).tolist()
    assert patches[0] != patches[1] and images["pixel_values"].shape[0] == sum(patches)
    split = micro_batches(model, ids, images, batch_size=1)
    assert [rows for rows, _ in split] == [slice(0, 1), slice(1, 2)]
    assert [kw["pixel_values"].shape[0] for _, kw in split] == patches
    assert [kw["image_grid_thw"].tolist() for _, kw in split] == [[g] for g in images["image_grid_thw"].tolist()]

    whole = collect_statistics(model, [0, 1], ids, mask, ids.shape[1] - 2, SPEC, backend="torch", **images)
    calls, handle = _counting_forwards(model)
    per_row = collect_statistics(model, [0, 1], ids, mask, ids.shape[1] - 2, SPEC, backend="torch", batch_size=1,
                                 num_images=[1, 1], **images)
    handle.remove()
    assert len(calls) == 2
    _assert_same(per_row, whole)


def test_credit_assignment_micro_batches_vision_language_batches_like_avar():
    """One behaviour for both callers: the assigner's pass splits Qwen-VL inputs by row too (it used to run any
    batch with pixel_values as one forward) and gives the collector's statistics."""
    processor, model = tiny_vl_processor("qwen2_vl"), tiny_vl_model("qwen2_vl", num_layers=2)
    ids, mask, images = _vl_batch(processor)
    assigner = CreditAssigner(CreditConfig(credit_layers=[0, 1], credit_backend="torch", **TINY_CREDIT), model)
    calls, handle = _counting_forwards(model)
    stats = assigner.collect_statistics(model, ids, mask, ids.shape[1] - 2, batch_size=1, **images)
    handle.remove()
    assert len(calls) == 2
    _assert_same(stats, collect_statistics(model, [0, 1], ids, mask, ids.shape[1] - 2, assigner.spec,
                                           backend="torch", **images))


def test_inputs_of_a_model_specific_layout_run_as_one_forward():
    ids = torch.zeros(3, 5, dtype=torch.long)
    per_token = torch.arange(15).view(3, 5)
    split = micro_batches(None, ids, {"token_type_ids": per_token, "flag": True}, batch_size=2)
    assert [rows for rows, _ in split] == [slice(0, 2), slice(2, 3)]
    assert torch.equal(split[1][1]["token_type_ids"], per_token[2:]) and split[1][1]["flag"] is True
    for kwargs in ({"image_sizes": torch.zeros(3, 2)},  # per image: which rows own which is the model's business
                   {"pixel_values": torch.zeros(7, 8)},  # no image_grid_thw to split the patches by
                   {"pixel_values": torch.zeros(7, 8), "image_grid_thw": torch.ones(7, 3, dtype=torch.long)},
                   {"position_ids": torch.zeros(3, 3, 5)}):  # multimodal RoPE positions (3, B, T)
        (rows, got), = micro_batches(None, ids, {**kwargs, "token_type_ids": per_token}, batch_size=1)
        assert rows == slice(0, 3) and got.keys() == {*kwargs, "token_type_ids"}


def test_images_per_row_checks_the_image_tokens_against_the_grid():
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])  # 16 and 8 patches: 4 and 2 tokens with merge size 2
    ids = torch.tensor([[9, 9, 9, 9, 0, 9, 9], [1, 0, 0, 0, 0, 0, 0]])
    assert images_per_row(ids, grid, image_token_id=9, merge_size=2) == [2, 0]
    with pytest.raises(ValueError, match="do not add up to whole images"):
        images_per_row(torch.full((1, 5), 9), grid, 9, 2)  # 5 tokens: one image of 4, then 1 of the next 2
    with pytest.raises(ValueError, match="fewer images"):
        images_per_row(torch.full((1, 8), 9), grid, 9, 2)
    with pytest.raises(ValueError, match="holds 2 images but the rows' image tokens make 1"):
        images_per_row(ids[:, :4], grid, 9, 2)
