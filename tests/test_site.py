"""SITE (docs/methods.md §3) on tiny random models: artifact, embedding, injection position, log-prob identity, best alphas."""

import contextlib

import pytest
import torch
from PIL import Image
from trl.trainer.utils import add_fused_lm_head

from attnrl.injection import (
    HeadSelectionResult,
    TaskEmbedding,
    attention_heads,
    make_artifact,
    task_embedding,
    train_head_selection,
)
from attnrl.injection.icl import few_shot_prompts
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer
from attnrl.utils.tiny_vl import tiny_vl_model, tiny_vl_processor
from tests.conftest import prompt_dataset


def _random_site(model, seed=0, scale=3.0):
    layout = attention_heads(model)
    g = torch.Generator().manual_seed(seed)
    L = len(layout.modules)
    return TaskEmbedding(torch.randn(L, layout.num_heads, layout.head_dim, generator=g) * scale,
                         torch.randn(L, layout.num_heads, generator=g) * 2, {"task": "random"})


def test_artifact_round_trip(tmp_path):
    site = _random_site(tiny_causal_lm("llama"))
    result = HeadSelectionResult(site.logits, best_step=50, history=[(50, 0.75, 1.2), (100, 0.5, 1.1)])
    artifact = make_artifact(site.embedding, result, task="capitalise", n_shots=10)
    path = tmp_path / "site.safetensors"
    artifact.save(path)
    loaded = TaskEmbedding.load(path)
    torch.testing.assert_close(loaded.embedding, artifact.embedding, rtol=0, atol=0)
    torch.testing.assert_close(loaded.logits, artifact.logits, rtol=0, atol=0)
    assert loaded.metadata == {"task": "capitalise", "n_shots": 10, "best_step": 50, "best_val_accuracy": 0.75}
    torch.testing.assert_close(loaded.alphas, torch.sigmoid(artifact.logits))
    assert path.stat().st_size < 64 * 1024  # a small artifact


def test_task_embedding_is_the_mean_head_output_at_each_prompts_last_token():
    model, tok = tiny_causal_lm("llama"), tiny_tokenizer()
    prompts = ["Q: ab\nA:", "Q: a longer one\nA:", "Q: x\nA:"]
    per_prompt = []
    attn = attention_heads(model).modules
    for p in prompts:  # unpadded, one at a time, read straight from o_proj's input
        seen = {}
        hooks = [attn[i].o_proj.register_forward_pre_hook(lambda m, a, i=i, seen=seen: seen.__setitem__(i, a[0][0, -1]))
                 for i in attn]
        with torch.no_grad():
            model(**tok(p, return_tensors="pt"))
        for h in hooks:
            h.remove()
        per_prompt.append(torch.stack([seen[i] for i in sorted(seen)]))
    expected = torch.stack(per_prompt).mean(0).view(len(attn), 4, 16)
    torch.testing.assert_close(task_embedding(model, tok, prompts, batch_size=2), expected, atol=1e-5, rtol=1e-5)


def test_injection_edits_only_the_last_prompt_token():
    model, tok = tiny_causal_lm("llama"), tiny_tokenizer()
    site = _random_site(model)
    batch = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    last = batch["input_ids"].shape[1] - 1
    with torch.no_grad():
        plain = model(**batch).logits
        with site.active(model, last):
            injected = model(**batch).logits
    valid = batch["attention_mask"].bool()
    before = valid.clone()
    before[:, last] = False  # every earlier real position: untouched (causal)
    torch.testing.assert_close(injected[before], plain[before])
    assert (injected[:, last] - plain[:, last]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="batch size"):
        with torch.no_grad(), site.active(model, torch.tensor([1, 2, 3])):
            model(**batch)


def _generation_vs_trainer_forward(model, site, batch, n_new=6, inject_in_forward=True, **forward_kwargs):
    """(log-probs of the generated tokens from generate's logits, the same from a TRL-style fused forward)."""
    Tp = batch["input_ids"].shape[1]
    with site.active(model, Tp - 1):
        out = model.generate(**batch, **forward_kwargs, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    completion = out.sequences[:, Tp:]
    from_generation = torch.stack(out.logits, 1).log_softmax(-1).gather(-1, completion[..., None])[..., 0]
    ids = out.sequences
    mask = torch.cat([batch["attention_mask"], torch.ones_like(completion)], 1)
    labels = ids.masked_fill(mask == 0, -100)  # exactly as GRPOTrainer._get_per_token_logps_and_entropies
    labels[:, :-n_new] = -100
    extra = {}
    if "mm_token_type_ids" in forward_kwargs:
        extra["mm_token_type_ids"] = torch.cat([forward_kwargs["mm_token_type_ids"], torch.zeros_like(completion)], 1)
    kwargs = {**forward_kwargs, **extra}
    with torch.no_grad(), (site.active(model, Tp - 1) if inject_in_forward else contextlib.nullcontext()):
        from_forward = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True,
                             **kwargs).log_probs[:, -n_new:]
    return from_generation, from_forward, out


def test_logprobs_identical_in_generation_and_in_the_trainer_forward():
    model, tok = tiny_causal_lm("llama"), tiny_tokenizer()
    add_fused_lm_head(model)  # the log-prob head GRPOTrainer adds
    site = _random_site(model)
    batch = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    gen, fwd, out = _generation_vs_trainer_forward(model, site, batch)
    torch.testing.assert_close(fwd, gen, atol=1e-5, rtol=1e-5)
    _, without, _ = _generation_vs_trainer_forward(model, site, batch, inject_in_forward=False)
    assert (without - gen).abs().max() > 1e-2  # the injection matters, so the equality above is not vacuous
    with torch.no_grad():  # and it acted during generation (prefill)
        plain = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=0)
    assert (torch.stack(plain.logits, 1) - torch.stack(out.logits, 1)).abs().max() > 1e-2


def test_logprobs_identical_for_a_vision_language_model():
    model, processor = tiny_vl_model("qwen2_5_vl"), tiny_vl_processor("qwen2_5_vl")
    add_fused_lm_head(model)
    site = _random_site(model, seed=1)
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in ("hi", "how many?")]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    images = [[Image.new("RGB", (56, 56), "blue")], [Image.new("RGB", (84, 56), "red")]]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    batch = {k: inputs.pop(k) for k in ("input_ids", "attention_mask")}
    gen, fwd, _ = _generation_vs_trainer_forward(model, site, batch, **inputs)
    torch.testing.assert_close(fwd, gen, atol=1e-5, rtol=1e-5)


def test_best_alphas_are_kept_not_the_last():
    model, tok = tiny_causal_lm("llama"), tiny_tokenizer()
    pool = [(w, w.upper()) for w in ["ab", "cd", "ef", "gh", "ij", "kl"]]
    prompts, targets = zip(*few_shot_prompts(tok, [], pool, n_shots=0))
    embedding = task_embedding(model, tok, [p for p, _ in few_shot_prompts(tok, pool, pool, n_shots=3)])
    scores, validated = iter([(0.2, 1.0), (0.9, 1.0), (0.1, 1.0)]), []

    def validate(alphas):
        validated.append(alphas.clone())
        return next(scores)

    params_before = [p.clone() for p in model.parameters()]
    result = train_head_selection(model, tok, embedding, prompts, targets, prompts, targets, steps=6, val_every=2,
                                  validate=validate)
    assert [h[0] for h in result.history] == [2, 4, 6] and result.best_step == 4
    torch.testing.assert_close(torch.sigmoid(result.logits), validated[1])
    assert not torch.allclose(validated[1], validated[2])  # the last alphas differ: they were not kept
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before))  # the model stays frozen
    assert all(p.requires_grad for p in model.parameters())  # and trainable again afterwards

    default = train_head_selection(model, tok, embedding, prompts, targets, prompts, targets, steps=4, val_every=2)
    assert len(default.history) == 2 and 0.0 <= default.history[0][1] <= 1.0
    assert default.logits.abs().max() > 0  # Adam moved the logits from their zero initialisation


def test_grpo_rollout_logprobs_match_the_trainer_forward_with_site(grpo_trainer):
    from attnrl.injection.trainer import SITEGRPOTrainer

    model = tiny_causal_lm("llama")
    site = _random_site(model, seed=2)
    prompts = prompt_dataset(4)
    trainer = grpo_trainer(model, trainer_cls=SITEGRPOTrainer, train_dataset=prompts, trainer_kwargs={"site": site},
                           max_completion_length=6, temperature=1.0, credit_fai_hi=4, credit_stats_pass="separate")
    policy = trainer.accelerator.unwrap_model(trainer.model)
    generate, sampled = policy.generate, []

    def recording_generate(*a, **kw):
        out = generate(*a, **kw, output_logits=True, return_dict_in_generate=True)
        sampled.append(torch.stack(out.logits, 1))
        return out.sequences

    policy.generate = recording_generate
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([prompts[1]] * 4)
    completion, mask = batch["completion_ids"], batch["completion_mask"].bool()
    at_generation = sampled[0][:, : completion.shape[1]].log_softmax(-1).gather(-1, completion[..., None])[..., 0]
    with torch.no_grad():
        in_trainer, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([batch["prompt_ids"], completion], 1),
            torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1), completion.shape[1])
    torch.testing.assert_close(in_trainer[mask], at_generation[mask], atol=1e-5, rtol=1e-5)
    assert trainer.last_credit is not None  # the credit pass ran with the injection active


def test_the_trained_target_token_is_never_a_bare_space():
    from attnrl.injection import first_target_tokens
    from attnrl.injection.icl import split_answer

    tok = tiny_tokenizer()  # character level: a space is always its own token, as SmolLM2's before digits
    prompt, target = split_answer(tok, "Q: ab\nA:", "AB")
    assert (prompt, target) == ("Q: ab\nA: ", "AB")
    assert tok.decode(first_target_tokens(tok, [prompt], [target])) == "A"
    with pytest.raises(ValueError, match="whitespace-only"):
        first_target_tokens(tok, ["Q: ab\nA:"], [" AB"])


@pytest.mark.parametrize("flag", ["use_transformers_continuous_batching", "use_vllm"])
def test_site_trainer_refuses_generation_it_cannot_inject_into_before_trl_sets_up(grpo_trainer, monkeypatch, flag):
    """Continuous batching packs the prompts (the last prompt token is not at Tp - 1 while the log-prob forwards
    inject there); vLLM runs no forward hooks. Both are refused before AttnGRPOTrainer/TRL construct anything."""
    from attnrl.injection.trainer import SITEGRPOTrainer
    from attnrl.trainers.grpo import AttnGRPOTrainer

    started = []
    monkeypatch.setattr(AttnGRPOTrainer, "__init__", lambda self, *a, **kw: started.append(a))
    model = tiny_causal_lm("llama")
    with pytest.raises(NotImplementedError, match=f"{flag}=False"):
        grpo_trainer(model, trainer_cls=SITEGRPOTrainer, trainer_kwargs={"site": _random_site(model)}, **{flag: True})
    assert started == []
