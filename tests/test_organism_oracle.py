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
