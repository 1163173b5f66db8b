"""benchmarks/learning: resumable sweep, summary statistics, plots (tiny model; the real sweep is not run here)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer
from benchmarks import harness
from benchmarks.learning import summarize, sweep

REPO = Path(__file__).resolve().parent.parent


def _cell(task, strategy, seed, final, rewards=(0.1, 0.2)):
    return {
        "task": task, "strategy": strategy, "seed": seed, "final_accuracy": final, "seconds_per_step": 2.0,
        "accuracy_curve": [{"step": 2, "accuracy": final / 2}, {"step": 4, "accuracy": final}],
        "log_history": [{"step": i + 1, "reward": r, "credit/gamma_mean": 1.1, "credit/seconds": 0.01}
                        for i, r in enumerate(rewards)],
    }


def _write_cells(out: Path, cells: list[dict]) -> None:
    (out / "cells").mkdir(parents=True)
    for c in cells:
        (out / "cells" / f"{harness.cell_name(c['task'], c['strategy'], c['seed'])}.json").write_text(json.dumps(c))
    (out / "base__arithmetic.json").write_text(json.dumps({"accuracy": 0.2}))


def test_summary_rows_mean_spread_and_delta(tmp_path):
    finals = {"uniform": [0.5, 0.6, 0.7], "coupled": [0.6, 0.8, 0.7]}
    _write_cells(tmp_path, [_cell("arithmetic", s, i, f) for s, fs in finals.items() for i, f in enumerate(fs)])
    rows = {r["strategy"]: r for r in summarize.summary_rows(summarize.load_cells(tmp_path), tmp_path)}
    assert list(rows) == ["uniform", "coupled"]  # the benchmark's strategy order, not alphabetical
    assert rows["coupled"]["mean"] == pytest.approx(0.7)
    assert rows["coupled"]["std"] == pytest.approx(statistics.stdev([0.6, 0.8, 0.7]))
    assert (rows["coupled"]["min"], rows["coupled"]["max"]) == (0.6, 0.8)
    assert rows["coupled"]["delta_vs_uniform"] == pytest.approx(0.1)
    assert rows["coupled"]["paired_deltas"] == pytest.approx([0.1, 0.2, 0.0])  # same seed minus uniform
    assert rows["uniform"]["base"] == 0.2 and rows["coupled"]["seeds"] == [0, 1, 2]
    assert rows["coupled"]["reward_last5"] == pytest.approx(0.15)
    table = summarize.markdown_table(list(rows.values()))
    assert "| arithmetic (base 20.0%) | coupled | 3 | 70.0 ± 10.0 (60.0–80.0) | +10.0 (+10.0, +20.0, +0.0) |" in table


def test_summarize_writes_table_and_plots(tmp_path):
    _write_cells(tmp_path, [_cell("arithmetic", s, i, 0.5 + 0.1 * i) for s in ("uniform", "entropy")
                            for i in range(3)])
    summarize.summarize(tmp_path)
    for name in ("summary.json", "summary.md", "learning_curves.png", "reward_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [r["strategy"] for r in saved["rows"]] == ["uniform", "entropy"]


def test_curve_points_put_the_shared_base_at_step_zero():
    assert summarize.curve_points(_cell("arithmetic", "uniform", 0, 0.6), 0.2) == [(0, 0.2), (2, 0.3), (4, 0.6)]
    assert summarize.curve_points(_cell("arithmetic", "uniform", 0, 0.6), None)[0] == (2, 0.3)


def test_pending_cells_skips_finished_ones_seed_major(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "arithmetic__uniform__s0.json").write_text("{}")
    todo = harness.pending_cells(["arithmetic", "countdown"], ["uniform", "coupled"], [0, 1], tmp_path)
    assert todo[:3] == [("arithmetic", "coupled", 0), ("countdown", "uniform", 0), ("countdown", "coupled", 0)]
    assert len(todo) == 7 and ("arithmetic", "uniform", 0) not in todo


def test_resuming_with_another_budget_is_refused(tmp_path):
    harness.check_budget_matches(tmp_path, sweep.SweepBudget(steps=4))
    harness.check_budget_matches(tmp_path, sweep.SweepBudget(steps=4))  # same settings: fine
    with pytest.raises(SystemExit, match="steps"):
        harness.check_budget_matches(tmp_path, sweep.SweepBudget(steps=5))


def test_budget_round_trips_through_the_command_line():
    budget = sweep.SweepBudget(steps=3, learning_rate=1e-3, model="/some/path")
    args = sweep.parse_args(harness.budget_args(budget))
    assert sweep.SweepBudget(**{k: getattr(args, k) for k in sweep.SweepBudget.__dataclass_fields__}) == budget


@pytest.mark.slow
def test_sweep_runs_resumes_and_reruns_only_missing_cells(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_causal_lm("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "benchmarks.learning.sweep", "--model", str(model_dir), "--steps", "2", "--eval-every", "1",
           "--eval-size", "8", "--train-size", "40", "--seeds", "0", "--tasks", "arithmetic",
           "--strategies", "uniform", "coupled", "--threads", "1", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    cells = {p.name: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert set(cells) == {"arithmetic__uniform__s0.json", "arithmetic__coupled__s0.json"}
    coupled = cells["arithmetic__coupled__s0.json"]
    assert [p["step"] for p in coupled["accuracy_curve"]] == [1, 2]
    assert any("credit/gamma_mean" in e for e in coupled["log_history"])  # the trainer's credit statistics
    assert (out / "learning_curves.png").stat().st_size > 0 and (out / "base__arithmetic.json").exists()

    # resume: nothing left to do, finished cells are untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and "2/2 cells already done; running 0" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == mtimes

    # an interrupted sweep (one cell missing) runs only that cell
    (out / "cells" / "arithmetic__uniform__s0.json").unlink()
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert third.returncode == 0 and "1/2 cells already done; running 1" in third.stdout
    assert (out / "cells" / "arithmetic__uniform__s0.json").exists()
    assert (out / "cells" / "arithmetic__coupled__s0.json").stat().st_mtime_ns == mtimes["arithmetic__coupled__s0.json"]
