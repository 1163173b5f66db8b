"""The organism study's positive control: oracle credit on hand-built traces whose decisive tokens are known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.organism import oracle, organism_tokenizer

REPO = Path(__file__).resolve().parent.parent

# 12 7 5 -> 95. Line 1 picks 12*5 (pool [7 60]: no way to 95, a decisive error); line 2 solves it.
NUMBERS, TARGET = [12, 7, 5], 95
LINE1 = "12*5=60 [7 60] 60+7=67 60-7=53 60*7=420 x"
LINE2 = "12+7=19 [5 19] 19+5=24 19-5=14 19*5=95"
RIGHT = f"{LINE1}\n{LINE2}"


def _marked(text: str, spans) -> set[str]:
    return {text[s:e] for s, e in spans}


def test_correct_trace_amplifies_the_steps_of_its_winning_line():
    spans = oracle.decisive_char_spans(RIGHT, NUMBERS, TARGET, advantage=1.0)
    assert _marked(RIGHT, spans) == {"12+7", "19*5"}
    assert all(s >= len(LINE1) + 1 for s, _ in spans)  # nothing of the failed first line


def test_wrong_trace_amplifies_the_step_that_turned_the_pool_unsolvable():
    wrong = f"{LINE1}\n12-5=7 [7 7] 7+7=14 7*7=49 x"  # 12-5 -> [7 7]: 95 out of reach
    spans = oracle.decisive_char_spans(wrong, NUMBERS, TARGET, advantage=-0.5)
    assert _marked(wrong, spans) == {"12*5", "12-5"}
    assert [s for s, _ in spans] == [0, len(LINE1) + 1]


def test_only_the_first_decisive_error_of_a_line_counts_and_viable_steps_are_left_alone():
    # 4 numbers: 6+2 keeps [3 4 8] solvable for 96 (8*4*3); then 8-4 -> [3 4] cannot reach it
    numbers, target = [6, 2, 3, 4], 96
    line = "6+2=8 [3 4 8] 8-4=4 [3 4] 4+3=7 4-3=1 4*3=12 x"
    spans = oracle.decisive_char_spans(line, numbers, target, advantage=-1.0)
    assert _marked(line, spans) == {"8-4"}
    # an illegal step (9 is not in the pool) is a decisive error too; nothing after it is marked
    bad = "9+2=11 [6 3 4 11] 11*4=44 [6 3 44] 44+6=50 x"
    assert _marked(bad, oracle.decisive_char_spans(bad, numbers, target, advantage=-1.0)) == {"9+2"}
    # inexact arithmetic
    wrong_sum = "6+2=9 [3 4 9] 9*4=36 [3 36] 36+3=39 x"
    assert _marked(wrong_sum, oracle.decisive_char_spans(wrong_sum, numbers, target, -1.0)) == {"6+2"}


def test_truncated_but_viable_search_and_zero_advantage_get_nothing():
    assert oracle.decisive_char_spans("12+7=19 [5 19] 19+5", NUMBERS, TARGET, advantage=-1.0) == []
    assert oracle.decisive_char_spans(RIGHT, NUMBERS, TARGET, advantage=0.0) == []
    # a positive advantage on a completion the verifier rejects (cannot happen with 0/1 rewards): nothing
    assert oracle.decisive_char_spans(LINE1, NUMBERS, TARGET, advantage=1.0) == []


def _batch(texts, tokenizer):
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, rows)) + 2
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def test_batch_mask_maps_characters_to_tokens_and_respects_the_cap():
    tok = organism_tokenizer()
    wrong = f"{LINE1}\n12-5=7 [7 7] 7+7=14 7*7=49 x"
    ids, mask = _batch([RIGHT, wrong, RIGHT], tok)
    adv = torch.tensor([1.0, -1.0, 0.0])
    marked = oracle.oracle_mask(ids, mask, adv, [(NUMBERS, TARGET)] * 3, tok)
    assert tok.decode(ids[0][marked[0]]) == "12+7" + "19*5"
    assert tok.decode(ids[1][marked[1]]) == "12*5" + "12-5"
    assert not marked[2].any() and not (marked & ~mask.bool()).any()
    # a tiny cap keeps the earliest decisive tokens: ceil(0.05 * n) of them
    capped = oracle.oracle_mask(ids, mask, adv, [(NUMBERS, TARGET)] * 3, tok, top_q=0.05)
    n0 = int(mask[0].sum())
    assert int(capped[0].sum()) == -(-n0 * 5 // 100) and tok.decode(ids[0][capped[0]]).startswith("12+7")
    gamma = oracle.oracle_gamma(marked, 3.0)
    assert gamma[0][marked[0]].eq(3.0).all() and gamma[0][~marked[0]].eq(1.0).all()
    with pytest.raises(ValueError, match="problems"):
        oracle.oracle_mask(ids, mask, adv, [(NUMBERS, TARGET)], tok)


def test_oracle_arm_trains_and_checks_its_row_alignment(tmp_path):
    """Two oracle steps on the committed organism: gamma comes from the oracle, and every row with a positive
    advantage is one the verifier accepts for the problem the oracle was given (rows and problems aligned)."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "benchmarks.organism.sweep", "--steps", "2", "--eval-every", "2", "--eval-size", "4",
           "--eval-batch-size", "4", "--prompts-per-step", "4", "--seeds", "0", "--strategies", "oracle_strong",
           "--jobs", "1", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cell = json.loads((out / "cells" / "organism__oracle_strong__s0.json").read_text())
    assert cell["oracle_gamma_amp"] == 3.0 and cell["credit_strategy"] == "uniform"
    checks = cell["oracle_checks"]
    assert checks["rows"] == 2 * 4 * 8 and checks["positive_rows"] > 0
    assert checks["positive_rows_verified"] == checks["positive_rows"] and checks["rows_amplified"] > 0
    assert 0 < cell["credit_positions"]["amplified_frac"] <= 0.4


# ------------------------------------------------------------------------------------------------ gradient share
from benchmarks.organism import gradient_share as share  # noqa: E402


def test_token_gradient_norm_matches_autograd():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 5))
    norms = share.token_gradient_norms(logits, tokens)
    for b in range(2):
        for t in range(5):
            (grad,) = torch.autograd.grad(torch.log_softmax(logits[b, t], -1)[tokens[b, t]], logits)
            assert torch.allclose(norms[b, t], grad[b, t].norm(), atol=1e-6)
    # a near-certain correct token carries almost no gradient; a surprised one carries up to sqrt(2)
    sure = torch.tensor([[[10.0, -10.0, -10.0]]])
    assert share.token_gradient_norms(sure, torch.tensor([[0]])) < 1e-4
    assert share.token_gradient_norms(sure, torch.tensor([[1]])) > 1.41


def test_gradient_share_and_weighted_gamma():
    weights = torch.tensor([[3.0, 1.0, 0.0, 5.0], [2.0, 2.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # padding weights never count
    selected = torch.tensor([[True, False, True, True], [False, True, True, False]])
    assert share.gradient_share(weights, selected, mask) == pytest.approx((3 + 0 + 2) / (3 + 1 + 0 + 2 + 2))
    gamma = 1.0 + 0.5 * selected.float()
    assert share.weighted_mean_gamma(weights, gamma, mask) == pytest.approx((1.5 * 3 + 1 + 1.5 * 0 + 2 + 1.5 * 2) / 8)
    # selecting everything is a common rescale: share 1, weighted gamma = gamma_amp
    assert share.gradient_share(weights, torch.ones_like(selected), mask) == 1.0
    assert share.weighted_mean_gamma(weights, torch.full_like(weights, 1.5), mask) == pytest.approx(1.5)
    assert share.gradient_share(torch.zeros_like(weights), selected, mask) != share.gradient_share(
        torch.zeros_like(weights), selected, mask)  # NaN when there is no gradient at all


def test_group_advantages_and_trl_entropy_mask():
    adv = share.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), group=4)
    assert adv[0] > 0 > adv[1] and adv[4:].abs().max() == 0
    entropy = torch.tensor([[0.1, 0.5, 0.9, 2.0], [0.3, 0.7, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    keep = share.top_entropy_keep(entropy, mask, 0.5)
    assert keep.tolist() == [[False, False, True, True], [False, True, False, False]]


# ------------------------------------------------------------------------------------------------ amendment 3 summary
from benchmarks.organism import summarize  # noqa: E402


def _sampled_cell(strategy: str, seed: int, final: float) -> dict:
    curve = [{"step": 50, "accuracy": final, "sampled_accuracy": final - 0.01},
             {"step": 100, "accuracy": final, "sampled_accuracy": final}]
    return {"task": "organism", "strategy": strategy, "seed": seed, "final_accuracy": final, "auc": final,
            "final_sampled_accuracy": final, "sampled_auc": final - 0.01, "accuracy_curve": curve,
            "train_reward_curve": [0.1, 0.2], "completion_length_curve": [90.0], "seconds_per_step": 1.0,
            "credit_positions": {"amplified_frac": 0.05, "rate_first_line": 0.1, "rate_by_decile": [0.05] * 10}}


def _write_sweep(tmp_path, gains: dict[str, list[float]], seeds: int = 12):
    (tmp_path / "cells").mkdir()
    for seed in range(seeds):
        for strategy in summarize.CORE + summarize.CONTROL:
            final = 0.27 + 0.003 * (seed % 3) + gains.get(strategy, [0.0] * seeds)[seed]
            (tmp_path / "cells" / f"organism__{strategy}__s{seed}.json").write_text(
                json.dumps(_sampled_cell(strategy, seed, final)))
    (tmp_path / "base__organism.json").write_text(json.dumps({"accuracy": 0.31, "sampled_accuracy": 0.22}))
    (tmp_path / "budget.json").write_text(json.dumps({"eval_samples": 4}))


def test_control_outcomes_follow_amendment_3(tmp_path):
    # oracle_strong gains 3 points on every seed (a clear detection), oracle 1 point (CI above 0, below +2), random -1
    gains = {"oracle": [0.01 + 0.001 * (s % 2) for s in range(12)], "oracle_strong": [0.03] * 12,
             "random": [-0.01] * 12, "coupled": [-0.02 + 0.001 * (s % 2) for s in range(12)]}
    _write_sweep(tmp_path, gains)
    (tmp_path / "gradient_share.json").write_text(json.dumps({"arms": {
        "oracle": {"token_share": 0.05, "gradient_share": 0.46, "weighted_gamma": 1.23}}}))
    table = {r["strategy"]: r for r in summarize.summarize(tmp_path)}
    metric = "final_sampled_accuracy"
    assert table["oracle_strong"][f"{metric}_detects"] is True
    assert table["oracle"][f"{metric}_detects"] is False  # CI above 0 but a mean below the effect of interest
    assert table["oracle"][f"{metric}_verdict"]["verdict"] == "better"
    assert table["random"][f"{metric}_verdict"]["verdict"] == "worse" and "detects" not in str(table["random"].keys())
    # three comparisons in amendment 3's Holm family, each with sign-test p = 2 / 2^12
    assert table["oracle"][f"{metric}_vs_uniform"]["holm_p"] == pytest.approx(3 * 2 / 2**12)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["control_outcome"].startswith("only the strong oracle (3) detects")
    coupled_vs_random = next(v for v in summary["versus_random"] if v["strategy"] == "coupled")
    assert coupled_vs_random[metric]["mean"] == pytest.approx(-0.0095)
    text = (tmp_path / "summary.md").read_text()
    assert "| oracle | 12 |" in text and "46% (γ̄ 1.23)" in text and "What the positive control says (final)" in text
    assert "- oracle: **better** (also after Holm); a gain smaller than the effect of interest" in text
    assert "- oracle_strong: **better** (also after Holm); **detects a credit gain**" in text


def test_detection_label_follows_amendment_3():
    def diff(mean, lo, hi):
        return {"mean": mean, "ci95": [lo, hi]}

    assert summarize.detection_label(diff(0.025, 0.001, 0.04)) == "**detects a credit gain**"
    assert summarize.detection_label(diff(0.009, 0.002, 0.017)).startswith("a gain smaller than the effect of interest")
    assert summarize.detection_label(diff(0.013, -0.001, 0.028)) == "does not detect a gain"
    assert summarize.detection_label(diff(0.03, -0.001, 0.06)) == "does not detect a gain"  # mean >= 2, CI not above 0
    assert summarize.detection_label(None) == "does not detect a gain"


def test_control_outcome_when_neither_or_the_paper_dose_detects(tmp_path):
    table = [{"strategy": "oracle", "final_sampled_accuracy_detects": False},
             {"strategy": "oracle_strong", "final_sampled_accuracy_detects": False}]
    assert summarize.control_outcome(table, "final_sampled_accuracy").startswith("neither oracle detects")
    table[0]["final_sampled_accuracy_detects"] = True
    assert summarize.control_outcome(table, "final_sampled_accuracy").startswith("the oracle at the paper's dose")
    assert summarize.control_outcome(table[:1], "final_sampled_accuracy") is None
    assert summarize.detects({"ci95": [0.001, 0.05], "mean": 0.02}) is True
    assert summarize.detects({"ci95": [-0.001, 0.05], "mean": 0.03}) is False


def test_environment_check_pairs_the_rerun_with_both_sides(tmp_path):
    # amendment 4: the re-run uniform is 1 point above the committed one on seeds 0-5 only; the arms are compared
    # with the re-run on the seeds both have
    _write_sweep(tmp_path, {"oracle": [0.02] * 12, "random": [0.01] * 12})
    rerun = tmp_path / summarize.ENVIRONMENT_CHECK / "cells"
    rerun.mkdir(parents=True)
    for seed in range(6):
        final = 0.27 + 0.003 * (seed % 3) + 0.01
        (rerun / f"organism__uniform__s{seed}.json").write_text(json.dumps(_sampled_cell("uniform", seed, final)))
    summarize.summarize(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["comparison"]: r["final_sampled_accuracy"] for r in summary["environment_check"]}
    assert list(rows) == ["uniform (re-run) − uniform (committed)", "oracle − uniform (re-run)",
                          "oracle_strong − uniform (re-run)", "random − uniform (re-run)"]
    assert rows["uniform (re-run) − uniform (committed)"]["seeds"] == list(range(6))
    assert rows["uniform (re-run) − uniform (committed)"]["mean"] == pytest.approx(0.01)
    assert rows["oracle − uniform (re-run)"]["mean"] == pytest.approx(0.01)
    assert rows["oracle_strong − uniform (re-run)"]["mean"] == pytest.approx(-0.01)
    assert rows["random − uniform (re-run)"]["wins"] == 0 and rows["random − uniform (re-run)"]["ties"] == 6
    text = (tmp_path / "summary.md").read_text()
    assert "| uniform (re-run) − uniform (committed) | 6 | +1.0" in text
    # without the folder there is no such section
    _ = [p.unlink() for p in rerun.glob("*.json")]
    summarize.summarize(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["environment_check"] == []
    assert "Environment check" not in (tmp_path / "summary.md").read_text()
