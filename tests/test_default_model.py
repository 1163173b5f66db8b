"""End-to-end checks on the embedded default model, SmolLM2-135M-Instruct (downloaded once from the registry)."""

import pytest
import torch

from attnrl.attention.capture import capture_statistics
from attnrl.credit import default_layers
from attnrl.kernels.dispatch import StatsSpec
from tests.test_capture import assert_capture_matches_eager

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from attnrl.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer()
    return model.eval(), tok


def test_default_model_loads_and_answers(smollm2):
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    assert default_layers(30) == [10, 12, 15, 18, 20]
    enc = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Reply with just the number."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "5" in tok.decode(out[0, enc["input_ids"].shape[1]:])


def test_statistics_on_real_inputs_match_materialised_attention(smollm2):
    model, tok = smollm2
    texts = [
        tok.apply_chat_template([{"role": "user", "content": "What is 47 + 38?"},
                                 {"role": "assistant", "content": "47 + 38 = 85. The answer is 85."}], tokenize=False),
        tok.apply_chat_template([{"role": "user", "content": "Name a colour."},
                                 {"role": "assistant", "content": "Blue."}], tokenize=False),
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # left padding
    ids, mask = enc["input_ids"], enc["attention_mask"]
    resp = torch.tensor([ids.shape[1] - 20, ids.shape[1] - 6])
    spec = StatsSpec(window=10, fai_lo=2, fai_hi=12)
    with torch.no_grad(), capture_statistics(model, [10, 20], mask, resp, spec) as cap:
        model(input_ids=ids, attention_mask=mask)
    assert sorted(cap.stats) == [10, 20]
    assert_capture_matches_eager(model, ids, mask, resp, spec, cap, atol=2e-4, rtol=1e-3, label="SmolLM2 layer")


def test_two_grpo_steps_with_lora_on_the_default_model(smollm2, tmp_path):
    from attnrl.rewards import TASKS, make_dataset
    from peft import LoraConfig, PeftModel

    from attnrl import AttnGRPOConfig, AttnGRPOTrainer

    model, tok = smollm2
    args = AttnGRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, num_generations=4,
                          max_completion_length=12, learning_rate=2e-4, use_cpu=True, bf16=False, report_to=[],
                          save_strategy="no", logging_steps=1)
    trainer = AttnGRPOTrainer(model=model, reward_funcs=TASKS["arithmetic"].reward_funcs[0], args=args,
                              train_dataset=make_dataset("arithmetic", "train", 16), processing_class=tok,
                              peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                     task_type="CAUSAL_LM"))
    trainer.train()
    assert trainer.last_credit.gamma.shape[0] == 8
    assert any("credit/amplified_frac" in e for e in trainer.state.log_history)
    trainer.save_model(str(tmp_path / "adapter"))
    from attnrl.models import load_model_and_tokenizer

    fresh, _ = load_model_and_tokenizer()
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    ids = tok("What is 12 + 30?", return_tensors="pt")["input_ids"]
    trained = trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
