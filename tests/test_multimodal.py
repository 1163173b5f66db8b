"""AVAR (docs/methods.md §2) on tiny random Qwen2-VL / Qwen2.5-VL models with the offline processor."""

import math

import pytest
import torch
from attnrl.rewards import accuracy_reward, format_reward
from attnrl.rewards.visual import AVAR_RATIO_COLUMN, visual_anchor_reward
from datasets import Dataset
from PIL import Image

from attnrl.attention.collect import collect_statistics
from attnrl.multimodal.evaluation import evaluate_visual
from attnrl.multimodal.intervention import attention_intervention, intervention_key_bias
from attnrl.multimodal.scores import resolve_avar_layers, visual_anchor_ratio, visual_attention_score
from attnrl.multimodal.sft import attention_guided_sft_loss
from attnrl.multimodal.tasks import make_visual_examples
from attnrl.multimodal.tokens import token_sets
from attnrl.utils.tiny_vl import FAMILIES, QWEN2_VL_CHAT_TEMPLATE, tiny_vl_model, tiny_vl_processor

LAYERS = 3


def _batch(processor, completions=("12 x", "7")):
    """Two chat rows (default and explicit system prompt, different image sizes) + completions; left-padded."""
    images = [[Image.new("RGB", (56, 56), "white")], [Image.new("RGB", (84, 56), "red")]]
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}],
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count the red squares"}]}],
    ]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) + c
             for m, c in zip(messages, completions)]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    T = inputs["input_ids"].shape[1]
    resp_start = torch.tensor([T - len(c) for c in completions])  # one token per character
    return inputs, resp_start


@pytest.fixture(scope="module", params=FAMILIES)
def family_setup(request):
    family = request.param
    processor = tiny_vl_processor(family)
    inputs, resp_start = _batch(processor)
    sets = token_sets(inputs["input_ids"], inputs["attention_mask"], processor, resp_start=resp_start)
    return family, tiny_vl_model(family, num_layers=LAYERS), processor, inputs, resp_start, sets


def _eager_attentions(model, inputs):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return [a.double() for a in model(**inputs, output_attentions=True).attentions]
    finally:
        model.set_attn_implementation("sdpa")


def test_token_sets_follow_each_family_chat_template(family_setup):
    _, _, processor, inputs, _, sets = family_setup
    decode = processor.tokenizer.decode
    ids = inputs["input_ids"]
    tokens_per_image = (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    expected = [
        ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "How many?", "12 x"),
        ("<|im_start|>system\nBe brief.<|im_end|>\n", "Count the red squares", "7"),
    ]
    for b, (system, user, response) in enumerate(expected):
        assert decode(ids[b][sets.system[b]]) == system
        assert decode(ids[b][sets.user[b]]) == user
        assert decode(ids[b][sets.response[b]]) == response
        assert int(sets.image[b].sum()) == tokens_per_image[b]
        assert set(ids[b][sets.image[b]].tolist()) == {processor.image_token_id}
    masks = torch.stack([sets.image, sets.system, sets.user, sets.response])
    assert int(masks.sum(0).max()) == 1  # disjoint
    assert not masks[:, ~inputs["attention_mask"].bool()].any()  # padding belongs to no set


def test_token_sets_need_a_user_turn():
    processor = tiny_vl_processor()
    ids = processor.tokenizer("<|im_start|>system\nhi<|im_end|>\n", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="no user turn"):
        token_sets(ids, torch.ones_like(ids), processor)


def _no_system_processor():
    """The Qwen2-VL processor with a template that inserts no default system turn (as Qwen3-VL's)."""
    processor = tiny_vl_processor()
    template = QWEN2_VL_CHAT_TEMPLATE.replace("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "")
    assert template != QWEN2_VL_CHAT_TEMPLATE
    processor.chat_template = processor.tokenizer.chat_template = template
    return processor


def test_an_empty_system_span_is_refused_instead_of_dividing_by_eps():
    processor = _no_system_processor()
    model = tiny_vl_model(num_layers=2)
    inputs, resp_start = _batch(processor)  # row 0 has no system message, row 1 has one
    sets = token_sets(inputs["input_ids"], inputs["attention_mask"], processor, resp_start=resp_start)
    assert sets.system.sum(1).tolist()[0] == 0 and sets.system.sum(1).tolist()[1] > 0
    forward = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    stats = collect_statistics(model, [0, 1], inputs["input_ids"], inputs["attention_mask"], resp_start,
                               key_masks=sets.key_masks(), backend="torch", **forward)
    span = {layer: s.span_mass for layer, s in stats.items()}
    with pytest.raises(ValueError, match=r"r_visual: rows \[0\] have no system tokens.*'role': 'system'"):
        visual_anchor_ratio(span, sets.response)  # was mass_V / 1e-6, about 1e5
    with pytest.raises(ValueError, match=r"VAS: rows \[0\] have no system tokens"):
        visual_attention_score(span, sets.user)  # was mass_V / 0 = inf
    row1 = {layer: m[1:] for layer, m in span.items()}  # the row with a system message still scores
    assert torch.isfinite(visual_anchor_ratio(row1, sets.response[1:])).all()

    batch = dict(inputs, labels=inputs["input_ids"].masked_fill(~sets.response, -100))
    with pytest.raises(ValueError, match=r"L_sup.*rows \[0\] have no system tokens"):
        attention_guided_sft_loss(model, batch, sets, [1])

    generated = []
    model.generate = lambda *a, **kw: generated.append(1)
    rows = make_visual_examples("count", 3, image_size=56)
    for row in rows[:2]:
        row["prompt"] = [{"role": "system", "content": "Be brief."}, *row["prompt"]]
    with pytest.raises(ValueError, match=r"VAS of the evaluation rows: rows \[2\] have no system tokens"):
        evaluate_visual(model, processor, rows, [0, 1], batch_size=2)
    assert generated == []  # refused before any generation


def _avar_trainer(grpo_trainer, model, processor, rows, reward_funcs, **overrides):
    from attnrl.multimodal.trainer import AVARGRPOConfig, AVARGRPOTrainer

    return grpo_trainer(model, trainer_cls=AVARGRPOTrainer, config_cls=AVARGRPOConfig, reward_funcs=reward_funcs,
                        train_dataset=Dataset.from_list(rows), processing_class=processor, **overrides)


def test_avar_trainer_refuses_prompts_without_system_tokens_at_construction(grpo_trainer):
    rows = make_visual_examples("count", 4, image_size=56)

    def build(dataset_rows):
        return _avar_trainer(grpo_trainer, tiny_vl_model(num_layers=2), _no_system_processor(), dataset_rows,
                             [accuracy_reward, visual_anchor_reward], max_completion_length=4,
                             credit_strategy="uniform", reward_weights=[1.0, 0.3])

    with pytest.raises(ValueError, match=r"r_visual \(first training prompt\): rows \[0\] have no system tokens"):
        build(rows)
    with_system = [{**r, "prompt": [{"role": "system", "content": "Be brief."}, *r["prompt"]]} for r in rows]
    assert build(with_system).avar_layers == [0, 1]


def test_vas_and_visual_ratio_match_eager_attention_brute_force(family_setup):
    _, model, _, inputs, resp_start, sets = family_setup
    forward = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    layers = resolve_avar_layers(None, LAYERS)
    assert layers == [0, 1, 2]  # 0..7 clipped to the model
    stats = collect_statistics(model, layers, inputs["input_ids"], inputs["attention_mask"], resp_start,
                               key_masks=sets.key_masks(), backend="torch", batch_size=1, **forward)
    span = {layer: s.span_mass for layer, s in stats.items()}
    vas, ratio = visual_attention_score(span, sets.user), visual_anchor_ratio(span, sets.response)

    A = _eager_attentions(model, inputs)  # LAYERS x (B, H, T, T)
    H = A[0].shape[1]
    for b in range(2):
        V, S = sets.image[b], sets.system[b]
        U, R = sets.user[b].nonzero().flatten().tolist(), sets.response[b].nonzero().flatten().tolist()
        vas_ref = sum(float(A[k][b, h, i][V].sum() / A[k][b, h, i][S].sum())
                      for k in layers for h in range(H) for i in U) / (len(layers) * H * len(U))
        ratio_ref = sum(
            sum(float(A[k][b, :, t][:, V].sum(-1).mean() / (A[k][b, :, t][:, S].sum(-1).mean() + 1e-6))
                for k in layers) / len(layers)
            for t in R) / len(R)
        assert vas[b].item() == pytest.approx(vas_ref, rel=1e-4)
        assert ratio[b].item() == pytest.approx(ratio_ref, rel=1e-4)
    # the ratio of head-mean masses is not the mean of per-head ratios: the formula's order matters
    per_head = torch.stack([(s[..., 0] / (s[..., 1] + 1e-6)).mean(1) for s in span.values()]).mean(0)
    per_head_mean = (per_head * sets.response).sum(1) / sets.response.sum(1)
    assert not torch.allclose(per_head_mean, ratio, rtol=1e-6)


def test_correctness_gate_of_the_visual_reward():
    completions = [[{"role": "assistant", "content": "The answer is 3."}]] * 2 + [[{"role": "assistant", "content": "I see"}]]
    rewards = visual_anchor_reward(completions, answer=["3", "4", "3"], avar_visual_ratio=[0.8, 0.9, 0.7])
    assert rewards == [0.8, 0.0, 0.0]  # correct -> the attention term; wrong or no answer -> 0
    with pytest.raises(ValueError, match=AVAR_RATIO_COLUMN):
        visual_anchor_reward(completions, answer=["3", "4", "3"])


def test_sft_objective_matches_eager_attention_and_routes_gradients(family_setup):
    _, model, _, inputs, _, sets = family_setup
    chosen = [1]
    batch = dict(inputs, labels=inputs["input_ids"].masked_fill(~sets.response, -100))
    model.zero_grad()
    loss = attention_guided_sft_loss(model, batch, sets, chosen)

    A = _eager_attentions(model, inputs)[1]
    enh_ref, sup_ref = [], []
    for b in range(2):
        block = A[b][:, sets.user[b]]  # (H, |U|, T)
        enh_ref.append(-torch.log(block[:, :, sets.image[b]].mean((1, 2))).mean())
        sup_ref.append(torch.log(block[:, :, sets.system[b]].mean((1, 2)) + 1e-6).mean())
    assert loss.enh.item() == pytest.approx(torch.stack(enh_ref).mean().item(), rel=1e-4)
    assert loss.sup.item() == pytest.approx(torch.stack(sup_ref).mean().item(), rel=1e-4)
    with torch.no_grad():
        plain = model(**batch).loss
    assert loss.lm.item() == pytest.approx(plain.item(), abs=1e-6)  # the forward itself is unchanged
    assert loss.total.item() == pytest.approx((loss.lm + 0.15 * loss.enh + 0.15 * loss.sup).item(), rel=1e-6)

    (loss.enh + loss.sup).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "language_model.layers." in n or "lm_head" in n}
    for proj in ("q_proj", "k_proj"):
        g = grads[f"model.language_model.layers.1.self_attn.{proj}.weight"]
        assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0
    untouched = [n for n in grads if ".layers.2." in n or "lm_head" in n or
                 any(f"layers.1.{part}" in n for part in ("self_attn.v_proj", "self_attn.o_proj", "mlp"))]
    assert untouched and all(grads[n] is None or not grads[n].any() for n in untouched)
    model.zero_grad()


def test_intervention_bias_equals_scaling_then_renormalising():
    torch.manual_seed(0)
    scores = torch.randn(3, 10)
    image = torch.zeros(1, 10, dtype=torch.bool)
    image[0, 4:7] = True
    system = torch.zeros(1, 10, dtype=torch.bool)
    system[0, :3] = True
    bias = intervention_key_bias(image, system, alpha_img=0.15, alpha_sys=0.4)[0]
    A = torch.softmax(scores, -1)
    w = torch.ones(10)
    w[4:7], w[:3] = 1.15, 0.6
    torch.testing.assert_close(torch.softmax(scores + bias, -1), A * w / (A * w).sum(-1, keepdim=True))
    assert math.isinf(intervention_key_bias(image, system, alpha_sys=1.0)[0, 0].item())
    with pytest.raises(ValueError, match="overlap"):
        intervention_key_bias(image, image)


def test_intervention_changes_only_the_selected_layers_inside_the_context(family_setup):
    _, model, _, inputs, _, sets = family_setup
    valid = inputs["attention_mask"].bool()
    implementation = model.config._attn_implementation
    with torch.no_grad():
        base = model(**inputs).logits[valid]
        with attention_intervention(model, [0, 1], sets.image, sets.system, alpha_img=0.0, alpha_sys=0.0):
            identity = model(**inputs).logits[valid]
        with attention_intervention(model, [1], sets.image, sets.system, alpha_img=0.15, alpha_sys=0.4):
            changed = model(**inputs).logits[valid]
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)  # decode steps run too
        after = model(**inputs).logits[valid]
    torch.testing.assert_close(identity, base, atol=1e-5, rtol=1e-5)
    assert (changed - base).abs().max() > 1e-3
    torch.testing.assert_close(after, base)
    assert model.config._attn_implementation == implementation  # restored on exit
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family,stats_pass", [("qwen2_vl", "separate"), ("qwen2_5_vl", "auto")])
def test_two_grpo_steps_with_avar_rewards(grpo_trainer, family, stats_pass):
    seen = []

    def always_correct(completions, answer, **kwargs):
        return [1.0] * len(completions)

    def recording_visual_reward(completions, answer, avar_visual_ratio=None, **kwargs):
        seen.append(list(avar_visual_ratio))
        return visual_anchor_reward(completions, answer, avar_visual_ratio, accuracy=always_correct, **kwargs)

    trainer = _avar_trainer(
        grpo_trainer, tiny_vl_model(family, num_layers=LAYERS), tiny_vl_processor(family),
        make_visual_examples("mixed", 8, image_size=56), [accuracy_reward, recording_visual_reward, format_reward],
        max_completion_length=8, max_steps=2, credit_backend="torch", credit_stats_pass=stats_pass,
        reward_weights=[1.0, 0.3, 0.1], avar_layers=[0, 1],
    )
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.avar_layers == [0, 1]
    assert len(seen) == 2 and all(len(s) == 4 and all(0 < r < math.inf for r in s) for s in seen)
    logs = [e for e in trainer.state.log_history if "avar/visual_ratio" in e]
    assert len(logs) == 2
    for entry, ratios in zip(logs, seen):
        assert entry["rewards/recording_visual_reward/mean"] == pytest.approx(sum(ratios) / 4, rel=1e-5)
        assert entry["avar/vas"] > 0
    assert trainer.credit.last_reused == (stats_pass == "separate")  # one statistics forward served both
    assert trainer.last_credit is not None and trainer.last_credit.gamma.shape[0] == 4
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_visual_tasks_are_seeded_with_exact_answers():
    rows = make_visual_examples("mixed", 6, seed=1, image_size=56)
    again = make_visual_examples("mixed", 6, seed=1, image_size=56)
    assert [r["answer"] for r in rows] == [r["answer"] for r in again]
    assert all(r["image"].size == (56, 56) and r["answer"].isdigit() for r in rows)
    assert {r["task"] for r in make_visual_examples("mixed", 20)} == {"count", "bars"}
