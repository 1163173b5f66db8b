"""Table and plots of a learning sweep (see sweep.py): mean and spread over seeds per (task, strategy).

    python -m benchmarks.learning.summarize [--out benchmarks/results/learning]     # from the repository root

Writes ``summary.json``, ``summary.md``, ``learning_curves.png`` (held-out accuracy vs step, mean line and
min-max band over seeds, one panel per task) and ``reward_curves.png`` (training reward, same layout).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

STRATEGY_ORDER = ("uniform", "random", "entropy", "local_chunk", "global_anchor", "coupled", "coupled_short")


def load_cells(out: Path) -> list[dict]:
    """Every finished cell's results (``out/cells/*.json``)."""
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def load_base(out: Path, task: str) -> float | None:
    path = out / f"base__{task}.json"
    return json.loads(path.read_text())["accuracy"] if path.exists() else None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group(cells: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Cells by (task, strategy), each list sorted by seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["task"], cell["strategy"]), []).append(cell)
    return {key: sorted(value, key=lambda c: c["seed"]) for key, value in groups.items()}


def curve_points(cell: dict, base: float | None) -> list[tuple[int, float]]:
    """(step, accuracy) of one cell, with the shared step-0 base accuracy in front when known."""
    points = [(p["step"], p["accuracy"]) for p in cell["accuracy_curve"]]
    return ([(0, base)] if base is not None else []) + points


def mean_reward(cell: dict, last: int = 5) -> float:
    """Mean training reward over the last ``last`` logged steps."""
    rewards = [e["reward"] for e in cell["log_history"] if "reward" in e][-last:]
    return statistics.fmean(rewards) if rewards else math.nan


def summary_rows(cells: list[dict], out: Path) -> list[dict]:
    """One row per (task, strategy): final accuracy mean/std/min/max over seeds, vs uniform, costs, credit stats."""
    groups = group(cells)
    rows = []
    for (task, strategy), members in sorted(groups.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        finals = [c["final_accuracy"] for c in members]
        mean, std = mean_std(finals)
        uniform = groups.get((task, "uniform"))
        gamma = [e["credit/gamma_mean"] for c in members for e in c["log_history"] if "credit/gamma_mean" in e]
        amplified = [e["credit/amplified_frac"] for c in members for e in c["log_history"]
                     if "credit/amplified_frac" in e]
        lengths = [e["completions/mean_length"] for c in members for e in c["log_history"]
                   if "completions/mean_length" in e]
        rows.append({
            "task": task, "strategy": strategy, "seeds": [c["seed"] for c in members], "final": finals,
            "mean": mean, "std": std, "min": min(finals), "max": max(finals),
            "delta_vs_uniform": mean - mean_std([c["final_accuracy"] for c in uniform])[0] if uniform else None,
            "paired_deltas": paired_deltas(members, uniform or []),
            "base": load_base(out, task),
            "reward_last5": statistics.fmean(mean_reward(c) for c in members),
            "seconds_per_step": statistics.fmean(c["seconds_per_step"] for c in members),
            "credit_seconds_per_step": statistics.fmean(
                e.get("credit/seconds", 0.0) for c in members for e in c["log_history"] if "reward" in e),
            "gamma_mean": statistics.fmean(gamma) if gamma else 1.0,
            "amplified_frac": statistics.fmean(amplified) if amplified else 0.0,
            "completion_tokens": statistics.fmean(lengths) if lengths else math.nan,
        })
    return rows


def paired_deltas(members: list[dict], uniform: list[dict]) -> list[float]:
    """Final accuracy minus uniform's for the same seed (same prompts, LoRA init and sampling seed), by seed."""
    by_seed = {c["seed"]: c["final_accuracy"] for c in uniform}
    return [c["final_accuracy"] - by_seed[c["seed"]] for c in members if c["seed"] in by_seed]


def _order(strategy: str) -> int:
    return STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)


def markdown_table(rows: list[dict]) -> str:
    """The README table: final held-out accuracy per task and strategy (mean ± std over seeds, min-max)."""
    lines = [
        "| task | strategy | seeds | final held-out accuracy, mean ± std (min–max) | vs uniform (per seed) | "
        "train reward (last 5 steps) | tokens amplified | completion tokens | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "—" if r["strategy"] == "uniform" or r["delta_vs_uniform"] is None else \
            f"{100 * r['delta_vs_uniform']:+.1f} ({', '.join(f'{100 * d:+.1f}' for d in r['paired_deltas'])})"
        lines.append(
            f"| {r['task']} (base {100 * r['base']:.1f}%) | {r['strategy']} | {len(r['seeds'])} | "
            f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} ({100 * r['min']:.1f}–{100 * r['max']:.1f}) | {delta} | "
            f"{r['reward_last5']:.3f} | {100 * r['amplified_frac']:.0f}% | {r['completion_tokens']:.1f} | "
            f"{r['seconds_per_step']:.1f} |"
            if r["base"] is not None else
            f"| {r['task']} | {r['strategy']} | {len(r['seeds'])} | {100 * r['mean']:.1f} ± {100 * r['std']:.1f} | "
            f"{delta} | {r['reward_last5']:.3f} | {100 * r['amplified_frac']:.0f}% | {r['completion_tokens']:.1f} | "
            f"{r['seconds_per_step']:.1f} |"
        )
    return "\n".join(lines)


def plot_curves(cells: list[dict], out: Path, tasks: list[str], path: Path, kind: str) -> None:
    """One panel per task; per strategy the mean over seeds (line) and min-max band. kind: 'accuracy'|'reward'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(cells)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for strategy in STRATEGY_ORDER:
            members = groups.get((task, strategy))
            if not members:
                continue
            if kind == "accuracy":
                series = [dict(curve_points(c, load_base(out, task))) for c in members]
            else:
                series = [{e["step"]: e["reward"] for e in c["log_history"] if "reward" in e} for c in members]
            steps = sorted(set.intersection(*(set(s) for s in series)))
            values = [[100 * s[x] if kind == "accuracy" else s[x] for s in series] for x in steps]
            means = [statistics.fmean(v) for v in values]
            line, = ax.plot(steps, means, marker="o" if kind == "accuracy" else None, label=strategy,
                            linewidth=2.2 if strategy in ("uniform", "coupled") else 1.3)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                            alpha=0.12)
        n_seeds = max((len(m) for (t, _), m in groups.items() if t == task), default=0)
        ax.set_title(f"{task} ({n_seeds} seeds: mean, min–max band)")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("held-out greedy accuracy (%)" if kind == "accuracy" else "mean training reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(out: Path, tasks: list[str] | None = None, strategies: list[str] | None = None) -> list[dict]:
    """Write summary.json / summary.md / learning_curves.png / reward_curves.png for the cells in ``out``."""
    cells = [c for c in load_cells(out)
             if (tasks is None or c["task"] in tasks) and (strategies is None or c["strategy"] in strategies)]
    if not cells:
        print(f"no finished cells in {out / 'cells'}")
        return []
    tasks = [t for t in (tasks or sorted({c["task"] for c in cells})) if any(c["task"] == t for c in cells)]
    rows = summary_rows(cells, out)
    table = markdown_table(rows)
    budget = json.loads((out / "budget.json").read_text()) if (out / "budget.json").exists() else {}
    (out / "summary.json").write_text(json.dumps({"budget": budget, "rows": rows}, indent=1))
    (out / "summary.md").write_text(f"# Learning sweep\n\nbudget: `{json.dumps(budget)}`\n\n{table}\n\n"
                                    "![held-out accuracy](learning_curves.png)\n\n![reward](reward_curves.png)\n")
    plot_curves(cells, out, tasks, out / "learning_curves.png", "accuracy")
    plot_curves(cells, out, tasks, out / "reward_curves.png", "reward")
    print(table)
    print(f"\nwrote {out}/summary.md, summary.json, learning_curves.png, reward_curves.png")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results" / "learning")
    summarize(parser.parse_args().out)
