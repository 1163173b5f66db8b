"""The causal premise test: the intervention machinery on a hand-built model, the pipeline on a tiny random Llama."""

import json
import math

import numpy as np
import pytest
import torch
from attnrl.rewards.completions import last_number

from attnrl.analysis.causal import (
    CausalConfig,
    Intervention,
    ProblemRecord,
    answer_token_span,
    causal_premise,
    draw_positions,
    final_answer_span,
    intervene,
    last_line_span,
    last_step_span,
    load_causal_result,
    premise_task,
    run_causal_analysis,
    summarize,
    token_char_ends,
    write_causal_report,
)
from attnrl.credit.config import CreditConfig
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer


def bigram_llama(tok, table: dict[str, dict[str, float]]):
    """A real LlamaForCausalLM whose next-token logits depend on the current token only, as given by ``table``.

    Attention and MLP outputs are zeroed (o_proj, down_proj = 0), so the residual stream is the one-hot embedding
    of the current token; lm_head then reads the row of ``table`` (default row: EOS). Attention itself still
    runs (its probabilities come from random q/k), so the statistics capture works as on any model.
    """
    V = 128
    model = tiny_causal_lm("llama", vocab_size=V, hidden_size=V, intermediate_size=64, tie_word_embeddings=False)
    logits = torch.zeros(V, V)
    logits[:, tok.eos_token_id] = 10.0
    for cur, row in table.items():
        logits[tok.convert_tokens_to_ids(cur)] = 0.0
        for nxt, value in row.items():
            nid = tok.eos_token_id if nxt == "<eos>" else tok.convert_tokens_to_ids(nxt)
            logits[tok.convert_tokens_to_ids(cur), nid] = value
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(V))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(logits.T / math.sqrt(V))  # RMSNorm(one-hot) = sqrt(V) * one-hot
    return model.eval()


# The original response is "a=5": replacing 'a' (position 0) by the runner-up 'b' still leads to "b=5" (the answer
# is unchanged), replacing '=' (position 1) by the runner-up ':' leads to "a:7" (wrong).
CHAIN = {
    "\n": {"a": 10.0, "b": 5.0},
    "a": {"=": 10.0, ":": 5.0},
    "b": {"=": 10.0},
    "=": {"5": 10.0},
    ":": {"7": 10.0},
}


def test_bigram_model_generates_the_chain():
    tok = tiny_tokenizer()
    model = bigram_llama(tok, CHAIN)
    prompt = tok("Q\n", return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                         do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True) == "a=5"


def test_intervention_attributes_the_flip_to_the_steering_token():
    tok = tiny_tokenizer()
    model = bigram_llama(tok, CHAIN)
    prompt_ids = tok("Q\n", return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    completion_ids = torch.tensor([tok.convert_tokens_to_ids(c) for c in "a=5"] + [tok.eos_token_id])
    text = tok.decode(completion_ids.tolist(), skip_special_tokens=True)
    assert text == "a=5"
    answer = answer_token_span(token_char_ends(tok, completion_ids.tolist()), final_answer_span(text))
    assert answer == (2, 2)

    res = intervene(model, tok, prompt_ids, completion_ids, [0, 1], verify=lambda t: last_number(t) == "5",
                    answer_tokens=answer, max_new_tokens=8)
    i, j = res[0], res[1]
    assert (i.original_text, i.replacement_text) == ("a", "b")
    assert (j.original_text, j.replacement_text) == ("=", ":")
    # token i: the regenerated answer and its correctness are unchanged, the answer's teacher-forced log-prob too
    assert i.correct_control and i.correct_replaced and i.answer_replaced == i.answer_control == "5"
    assert i.measure("flip") == 0.0 and i.measure("answer_change") == 0.0
    assert i.measure("logp_drop") == pytest.approx(0.0, abs=1e-4)
    # token j: the answer becomes 7 (wrong) and p('5' | ..., ':') collapses from ~1 to ~e^-10
    assert j.correct_control and not j.correct_replaced and j.answer_replaced == "7"
    assert j.measure("flip") == 1.0 and j.measure("answer_change") == 1.0
    assert j.logp_answer == pytest.approx(-math.log1p(127 * math.exp(-10.0)), abs=1e-4)  # logit 10 vs 127 zeros
    assert j.logp_answer_replaced == pytest.approx(-10.0 - math.log1p(127 * math.exp(-10.0)), abs=1e-3)

    # the summary credits the selector that picked j with the flip, the one that picked i with none
    rec = ProblemRecord(index=0, completion=text, num_tokens=4, correct=True, answer="5", answer_tokens=answer,
                        eligible=2, selector_sizes={"anchor": 1, "random": 2},
                        selected={"anchor": [1], "random": [0]}, interventions=res)
    s = summarize([rec, rec], ("anchor", "random"), ("flip", "logp_drop"), n_boot=200)
    assert s["measures"]["flip"]["anchor"]["mean"] == 1.0 and s["measures"]["flip"]["random"]["mean"] == 0.0
    assert s["measures"]["flip"]["anchor"]["diff_to_random"][0] == 1.0
    assert s["measures"]["flip"]["anchor"]["broke"] == 2 and s["measures"]["flip"]["random"]["broke"] == 0
    assert s["measures"]["logp_drop"]["anchor"]["mean"] > 8.0


def test_intervene_refuses_positions_in_the_answer():
    tok = tiny_tokenizer()
    model = bigram_llama(tok, CHAIN)
    ids = torch.tensor([tok.convert_tokens_to_ids(c) for c in "a=5"])
    with pytest.raises(ValueError, match="before the final answer"):
        intervene(model, tok, ids[:1], ids, [2], verify=None, answer_tokens=(2, 2), max_new_tokens=4)


def test_final_answer_span_and_tokens():
    assert final_answer_span("so 12 + 3 = 15.") == (12, 14)
    t = r"first 3, then \boxed{4 + 5}"
    s = final_answer_span(t)
    assert t[s[0]:s[1]] == "4 + 5"
    assert final_answer_span("no number here") is None
    assert answer_token_span([1, 3, 5, 6], (2, 4)) == (1, 2)  # tokens [0,1) [1,3) [3,5) [5,6)
    assert answer_token_span([1, 3], None) is None


def test_draw_positions_equal_counts():
    T = 12
    eligible = torch.ones(T, dtype=torch.bool)
    eligible[10:] = False
    sets = {"anchor": torch.zeros(T, dtype=torch.bool), "random": torch.ones(T, dtype=torch.bool)}
    sets["anchor"][[1, 4, 7, 11]] = True  # 11 is not eligible: only 3 candidates
    drawn = draw_positions(sets, eligible, 4, np.random.default_rng(0), ("anchor", "random"))
    assert drawn["anchor"] == [1, 4, 7] and len(drawn["random"]) == 3
    assert all(eligible[p] for p in drawn["random"]) and len(set(drawn["random"])) == 3


def test_config_validation():
    with pytest.raises(ValueError, match="random"):
        CausalConfig(selectors=("anchor",)).validate()
    with pytest.raises(ValueError, match="subset"):
        CausalConfig(selectors=("anchor", "bogus", "random")).validate()
    with pytest.raises(ValueError, match="interventions_per_selector"):
        CausalConfig(interventions_per_selector=0).validate()


def test_pipeline_smoke_tiny_llama(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_causal_lm("llama", vocab_size=len(tok))
    examples = [{"prompt": [{"role": "user", "content": f"What is {a} + 1?"}], "answer": str(a + 1)}
                for a in range(5)]

    def has_seven(text, example):  # toy verifier: about a third of random responses are "correct"
        return "7" in text

    cfg = CausalConfig(interventions_per_selector=2, max_new_tokens=24, temperature=1.0, n_boot=300,
                       stats_batch_size=3, require_eos=False, answer_gap=3)
    credit = CreditConfig(credit_window=3, credit_fai_lo=1, credit_fai_hi=8)
    res = causal_premise(model, tok, examples, has_seven, cfg, credit, progress=False)
    assert len(res.records) == 5 and res.summary["num_problems"] == 5
    done = [r for r in res.records if r.skipped is None]
    assert done, "every problem was skipped"
    for r in done:
        counts = {len(v) for v in r.selected.values()}
        assert len(counts) == 1 and counts.pop() == min([2] + list(r.selector_sizes.values()))
        assert set(r.selected) == set(cfg.selectors)
        assert set(r.interventions) == {p for v in r.selected.values() for p in v}
        for p, iv in r.interventions.items():
            assert 0 <= p < r.num_tokens and iv.replacement_token != iv.original_token
            assert iv.correct_control is not None and iv.correct_replaced is not None
            if r.answer_tokens is not None:
                assert p <= r.answer_tokens[0] - cfg.answer_gap and iv.logp_answer is not None
    for m in cfg.measures():
        for s, e in res.summary["measures"][m].items():
            if e["problems"]:
                assert e["lo"] <= e["mean"] + 1e-12 and e["mean"] <= e["hi"] + 1e-12, (m, s, e)
                assert e["interventions"] == sum(len(r.selected[s]) for r in done if r.selector_value(s, m) is not None)
    interventions = {e["interventions"] for e in res.summary["measures"]["flip"].values()}
    assert len(interventions) == 1  # equal counts per selector
    paths = write_causal_report(res, tmp_path, "tiny")
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["measures"]["flip"]["random"]["problems"] == res.summary["measures"]["flip"]["random"][
        "problems"]
    assert paths["png"].stat().st_size > 5000 and "| flip | anchor |" in paths["md"].read_text()
    assert isinstance(res.records[0].interventions, dict) and all(isinstance(v, Intervention)
                                                                  for v in res.records[0].interventions.values())
    back = load_causal_result(paths["json"])  # the JSON holds everything needed to summarise again
    again = summarize(back.records, cfg.selectors, cfg.measures(), n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed)
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(res.summary, sort_keys=True, default=str)
    for e in res.summary["measures"]["logp_drop"].values():
        if "sign_test_p" in e:
            assert e["problems_above_random"] + e["problems_below_random"] <= e["problems"]


def test_teacher_forced_logprob_matches_a_full_forward():
    """The cached teacher-forced log-prob equals log p(answer) from a plain forward over the replaced sequence."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm("llama", vocab_size=len(tok)).eval()
    prompt_ids = torch.tensor(tok("Q: 1+2?\n", add_special_tokens=False)["input_ids"])
    completion_ids = torch.tensor(tok("so it is 3", add_special_tokens=False)["input_ids"])
    a0 = a1 = len(completion_ids) - 1
    res = intervene(model, tok, prompt_ids, completion_ids, [1, 4], verify=None, answer_tokens=(a0, a1),
                    max_new_tokens=16)
    def full_forward_logp(tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.cat([prompt_ids, tokens])[None], use_cache=False).logits[0, -2]
        return float(torch.log_softmax(logits, -1)[tokens[a1]])

    for p, iv in res.items():
        replaced = completion_ids.clone()
        replaced[p] = iv.replacement_token
        assert iv.logp_answer == pytest.approx(full_forward_logp(completion_ids), abs=1e-4)
        assert iv.logp_answer_replaced == pytest.approx(full_forward_logp(replaced), abs=1e-4)
        assert iv.logp_answer != pytest.approx(iv.logp_answer_replaced, abs=1e-6)


def test_unfinished_responses_are_skipped_before_any_intervention():
    tok = tiny_tokenizer()
    model = bigram_llama(tok, CHAIN)
    examples = [{"prompt": "Q\n"}]
    cfg = CausalConfig(max_new_tokens=2, temperature=0.0, n_boot=50)  # greedy "a=" is cut before "5" and EOS
    credit = CreditConfig(credit_window=2, credit_fai_lo=1, credit_fai_hi=None)
    res = causal_premise(model, tok, examples, lambda t, e: True, cfg, credit, progress=False)
    (rec,) = res.records
    assert rec.completion == "a=" and not rec.finished and "max_new_tokens" in rec.skipped
    assert rec.interventions == {} and res.summary["num_skipped"] == 1
    assert res.summary["measures"]["flip"]["random"]["problems"] == 0


def test_premise_tasks():
    ex2, verify, span = premise_task("arithmetic", 4)
    assert span == "final" and len(ex2) == 4 and all(e["split"] == "test" for e in ex2)
    assert ex2[0]["prompt"][0]["content"].endswith("Let's think step by step.")
    ex3, verify3, _ = premise_task("arithmetic", 3, terms=3)
    for e in ex3:
        terms = e["prompt"][0]["content"].removeprefix("What is ").split("?")[0].split(" + ")
        assert len(terms) == 3 and sum(map(int, terms)) == int(e["answer"])
        assert verify3(f"so the answer is {e['answer']}.", e) and not verify3("so 0", e)
    exc, _, _ = premise_task("countdown", 2)
    assert "numbers" in exc[0] and exc[0]["prompt"][0]["content"].endswith("step by step.")
    with pytest.raises(ValueError, match="use one of"):
        premise_task("gsm8k", 2)
    text = "12*5=60 [7 60] 60+7=67 x\n12+7=19 [5 19] 19*5=95\n"
    s, e = last_line_span(text)
    assert text[s:e] == "12+7=19 [5 19] 19*5=95" and last_line_span("  \n") is None
    s, e = last_step_span(text)
    assert text[s:e] == "19*5=95" and last_step_span("no steps") is None


def test_any_registered_task_has_premise_problems_and_a_task_can_bring_its_own(monkeypatch):
    """A task without its own premise problems uses its registry's held-out split; register_premise_task gives a task
    its own (e.g. problems saved with a model, as the organism study does), with ``model_name`` passed on."""
    from attnrl.rewards import TASKS, make_examples

    from attnrl.analysis import causal

    monkeypatch.setattr(causal, "PREMISE_TASKS", dict(causal.PREMISE_TASKS))  # registrations end with the test
    del causal.PREMISE_TASKS["countdown"]  # countdown as a plain registered task
    examples, verify, span = premise_task("countdown", 3)
    assert examples == make_examples("countdown", "test", 3, seed=1) and span == "final"
    assert verify is TASKS["countdown"].is_correct
    seen = {}

    def own(n, *, model_name=None, **options):
        seen.update(n=n, model_name=model_name)
        return [{"prompt": "p", "answer": "1"}] * n, verify, "last_line"

    causal.register_premise_task("mine", own)
    causal.register_premise_task("mine", own)  # the same function again: fine
    with pytest.raises(ValueError, match="already registered"):
        causal.register_premise_task("mine", lambda n, **kw: None)
    assert premise_task("mine", 2, model_name="/models/m")[2] == "last_line" and seen == {"n": 2,
                                                                                          "model_name": "/models/m"}


def test_run_causal_analysis_teacher_forced_only(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_causal_lm("llama", vocab_size=len(tok))
    cfg = CausalConfig(interventions_per_selector=1, max_new_tokens=20, regenerate=False, require_eos=False,
                       answer_gap=2, n_boot=100)
    credit = CreditConfig(credit_window=3, credit_fai_lo=1, credit_fai_hi=8)
    res, paths = run_causal_analysis(model, tok, tmp_path, problems=3, name="t", config=cfg, credit=credit,
                                     progress=False)
    assert set(res.summary["measures"]) == {"logp_drop", "logp_abs", "logp_abs_gt1"}  # no regeneration measures
    assert res.meta["task"] == "arithmetic" and len(res.records) == 3
    for r in res.records:
        for iv in r.interventions.values():
            assert iv.correct_control is None and iv.answer_replaced is None
    assert json.loads(paths["json"].read_text())["meta"]["answer_span"] == "final"
