"""Summary of the organism sweep (sweep.py): the pre-registered paired analysis against plain GRPO.

    python benchmarks/organism/summarize.py [--out benchmarks/results/organism]

Follows benchmarks/organism/PREREGISTRATION.md. Core strategies are analysed on the seeds where *every* core
strategy finished (so a partial sweep stays paired); the second-pass strategies on the seeds they share with
``uniform``. Per strategy: final held-out accuracy (primary) and area under the accuracy curve (secondary), each
as a mean with a percentile-bootstrap 95% CI over seeds; the paired difference to ``uniform`` (mean, bootstrap 95%
CI, exact sign test, Holm-adjusted p over the six core comparisons, wins/ties/losses, minimum detectable
difference at 80% power); the amplified-token fraction and where the amplified tokens sit. The scaled credit
settings are compared with the defaults the same way. Writes ``summary.json``, ``summary.md``,
``learning_curves.png`` (held-out accuracy and training reward, means over seeds) and ``credit_positions.png``
(amplification by position and character class) next to the cells.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Must match sweep.CORE / sweep.EXTRA (tests/test_organism.py checks it).
CORE = ("uniform", "entropy", "trl_top_entropy", "global_anchor", "global_anchor_scaled", "coupled", "coupled_scaled")
EXTRA = ("random", "local_chunk", "local_chunk_scaled")
ORDER = CORE + EXTRA
# (scaled, default): the pre-registered comparison of the two credit settings.
SCALED_PAIRS = (("global_anchor_scaled", "global_anchor"), ("coupled_scaled", "coupled"),
                ("local_chunk_scaled", "local_chunk"))
METRICS = ("final_accuracy", "auc")
CHAR_CLASSES = ("digit", "operator", "equals", "pool", "newline", "fail")  # sweep.CHAR_CLASSES' names


def load_cells(out: Path) -> dict[str, dict[int, dict]]:
    """strategy -> seed -> cell."""
    cells: dict[str, dict[int, dict]] = {}
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        cells.setdefault(cell["strategy"], {})[cell["seed"]] = cell
    return cells


def complete_seeds(cells: dict[str, dict[int, dict]], strategies=CORE) -> list[int]:
    """Seeds for which every strategy of ``strategies`` has a finished cell."""
    present = [set(cells.get(s, {})) for s in strategies]
    return sorted(set.intersection(*present)) if present else []


def analysed_seeds(strategy: str, cells: dict[str, dict[int, dict]]) -> list[int]:
    """The pre-registered seed set of ``strategy``: complete core seeds, or (second pass) seeds shared with uniform."""
    if strategy in CORE:
        return complete_seeds(cells)
    return sorted(set(cells[strategy]) & set(cells.get("uniform", {})))


def paired(metric: str, a_cells: dict[int, dict], b_cells: dict[int, dict], seeds: list[int]) -> dict | None:
    """Paired difference a - b of ``metric`` over ``seeds`` (None when fewer than 2 seeds)."""
    from attnrl.analysis.stats import minimum_detectable_difference, paired_bootstrap_ci, sign_test

    if len(seeds) < 2:
        return None
    a = [a_cells[s][metric] for s in seeds]
    b = [b_cells[s][metric] for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    mean, lo, hi = paired_bootstrap_ci(a, b)
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "ci95": [lo, hi], "sign_test_p": sign_test(diffs),
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
            "mdd80": minimum_detectable_difference(diffs) if len(set(diffs)) > 1 else 0.0}


def mean_ci(values: list[float]) -> dict:
    from attnrl.analysis.stats import bootstrap_ci

    if len(values) < 2:
        return {"mean": values[0], "ci95": [None, None]}
    mean, lo, hi = bootstrap_ci(values)
    return {"mean": mean, "ci95": [lo, hi]}


def rows(cells: dict[str, dict[int, dict]]) -> list[dict]:
    from attnrl.analysis.stats import holm_adjust

    uniform = cells.get("uniform", {})
    out = []
    for strategy in sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        seeds = analysed_seeds(strategy, cells)
        if not seeds:
            continue
        members = {s: cells[strategy][s] for s in seeds}
        positions = [c["credit_positions"] for c in members.values() if c.get("credit_positions")]
        row = {"strategy": strategy, "seeds": seeds, "pass": "core" if strategy in CORE else "second",
               "amplified_frac": _mean([p.get("amplified_frac") for p in positions]),
               "rate_first_line": _mean([p.get("rate_first_line") for p in positions]),
               "rate_by_decile": _mean_lists([p.get("rate_by_decile") for p in positions]),
               "rate_by_class": {name: _mean([p.get(f"rate_{name}") for p in positions]) for name in CHAR_CLASSES},
               "seconds_per_step": statistics.fmean(c["seconds_per_step"] for c in members.values()),
               "completion_tokens": _mean([_mean(c["completion_length_curve"]) for c in members.values()])}
        for metric in METRICS:
            row[metric] = mean_ci([c[metric] for c in members.values()])
            row[f"{metric}_vs_uniform"] = None if strategy == "uniform" else paired(metric, members, uniform, seeds)
        out.append(row)
    for metric in METRICS:  # Holm over the pre-registered family: the core strategies against uniform
        family = [r for r in out if r["pass"] == "core" and r[f"{metric}_vs_uniform"]]
        if family:
            for r, adj in zip(family, holm_adjust([r[f"{metric}_vs_uniform"]["sign_test_p"] for r in family])):
                r[f"{metric}_vs_uniform"]["holm_p"] = adj
    return out


def scaled_vs_default(cells: dict[str, dict[int, dict]]) -> list[dict]:
    """The scaled credit setting against the defaults, paired by seed."""
    out = []
    for scaled, default in SCALED_PAIRS:
        if scaled in cells and default in cells:
            seeds = sorted(set(analysed_seeds(scaled, cells)) & set(analysed_seeds(default, cells)))
            comparison = {m: paired(m, cells[scaled], cells[default], seeds) for m in METRICS}
            if comparison["final_accuracy"]:
                out.append({"scaled": scaled, "default": default, **comparison})
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _mean_lists(lists):
    lists = [x for x in lists if x]
    return [_mean(col) for col in zip(*lists)] if lists else None


def _pct(x, signed=False):
    return "—" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def _ci(ci, signed=False):
    return "" if ci[0] is None else f" [{_pct(ci[0], signed)}, {_pct(ci[1], signed)}]"


def _diff(d, counts: bool = True, holm: bool = True) -> str:
    """Table cells of a paired difference: mean [CI] | p (/ Holm) (| W/T/L | MDD when ``counts``)."""
    if not d:
        return " | ".join(["—"] * (4 if counts else 2))
    p = f"{d['sign_test_p']:.3f}" + (f" / {d['holm_p']:.3f}" if "holm_p" in d else " / —" if holm else "")
    cells = [f"{_pct(d['mean'], True)}{_ci(d['ci95'], True)}", p]
    if counts:
        cells += [f"{d['wins']}/{d['ties']}/{d['losses']}", _pct(d["mdd80"])]
    return " | ".join(cells)


def markdown(table: list[dict], versus: list[dict], base: float | None) -> str:
    lines = [f"Base (step 0, greedy): {_pct(base)}%. Accuracies in %, differences in points, paired by seed; "
             "[95% CI]: percentile bootstrap over seeds; p: exact two-sided sign test / Holm-adjusted over the core "
             "comparisons; W/T/L: seeds better / equal / worse than uniform; MDD: smallest difference detectable with "
             f"80% power. Core strategies on the {next((len(r['seeds']) for r in table if r['pass'] == 'core'), 0)} "
             "seeds where all of them "
             "finished; second-pass strategies on the seeds they share with uniform.", "",
             "| strategy | seeds | final % [95% CI] | Δ final vs uniform [95% CI] | p / Holm | W/T/L | MDD | "
             "AUC % | Δ AUC [95% CI] | p / Holm | amplified | amplified on line 1 | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        f, a = r["final_accuracy"], r["auc"]
        lines.append(f"| {r['strategy']} | {len(r['seeds'])} | {_pct(f['mean'])}{_ci(f['ci95'])} | "
                     f"{_diff(r['final_accuracy_vs_uniform'])} | {_pct(a['mean'])} | {_diff(r['auc_vs_uniform'], False)} | "
                     f"{_pct(r['amplified_frac'])}% | {_pct(r['rate_first_line'])}% | {r['seconds_per_step']:.2f} |")
    amplifying = [r for r in table if r["amplified_frac"]]
    if amplifying:
        lines += ["", "Where the amplified tokens (gamma > 1) sit, over all training rollouts: the share of tokens "
                  "amplified in each tenth of the answer and in each character class (`pool`: the brackets and "
                  "spaces of a pool line, `fail`: the dead-end mark).", "",
                  "| strategy | amplified | 1st tenth | 2nd | 5th | 9th | last tenth | line 1 | "
                  + " | ".join(CHAR_CLASSES) + " |", "|---" * (8 + len(CHAR_CLASSES)) + "|"]
        for r in amplifying:
            d = r["rate_by_decile"] or [None] * 10
            lines.append(f"| {r['strategy']} | {_pct(r['amplified_frac'])} | {_pct(d[0])} | {_pct(d[1])} | "
                         f"{_pct(d[4])} | {_pct(d[8])} | {_pct(d[9])} | {_pct(r['rate_first_line'])} | "
                         + " | ".join(_pct(r["rate_by_class"].get(c)) for c in CHAR_CLASSES) + " |")
    if versus:
        lines += ["", "Scaled credit setting (W = H_lo = 5, H_hi = 46) against the defaults, paired by seed:", "",
                  "| scaled − default | seeds | Δ final [95% CI] | p | W/T/L | MDD | Δ AUC [95% CI] | p |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in versus:
            lines.append(f"| {v['scaled']} − {v['default']} | {len(v['final_accuracy']['seeds'])} | "
                         f"{_diff(v['final_accuracy'], holm=False)} | {_diff(v['auc'], False, holm=False)} |")
    return "\n".join(lines)


def cell_matrix(cells: dict[str, dict[int, dict]]) -> str:
    """Every finished cell's final held-out accuracy (%), a row per seed and a column per strategy."""
    strategies = sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
    seeds = sorted({seed for members in cells.values() for seed in members})
    lines = ["| seed | " + " | ".join(strategies) + " |", "|---" * (len(strategies) + 1) + "|"]
    for seed in seeds:
        lines.append(f"| {seed} | " + " | ".join(_pct(cells[s][seed]["final_accuracy"]) if seed in cells[s] else ""
                                                 for s in strategies) + " |")
    return "\n".join(lines)


def _moving_average(values: list[float], width: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1): i + 1]) for i in range(len(values))]


def plot(cells: dict[str, dict[int, dict]], base: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, reward_ax) = plt.subplots(1, 2, figsize=(12, 4.4))
    for strategy in sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        seeds = analysed_seeds(strategy, cells)
        if not seeds:
            continue
        members = [cells[strategy][s] for s in seeds]
        curves = [[(0, base)] * (base is not None) + [(p["step"], p["accuracy"]) for p in c["accuracy_curve"]]
                  for c in members]
        steps = sorted(set.intersection(*(set(s for s, _ in curve) for curve in curves)))
        means = [100 * statistics.fmean(dict(curve)[s] for curve in curves) for s in steps]
        width = 2.4 if strategy == "uniform" else 1.2
        acc_ax.plot(steps, means, marker="o", label=f"{strategy} ({len(curves)})", linewidth=width)
        rewards = [c["train_reward_curve"] for c in members]
        n = min(len(r) for r in rewards)
        mean_reward = [statistics.fmean(r[i] for r in rewards) for i in range(n)]
        reward_ax.plot(range(1, n + 1), _moving_average(mean_reward, 10), label=strategy, linewidth=width)
    acc_ax.set_xlabel("GRPO step")
    acc_ax.set_ylabel("held-out greedy accuracy (%), mean over seeds")
    reward_ax.set_xlabel("GRPO step")
    reward_ax.set_ylabel("training reward (10-step moving mean, mean over seeds)")
    for ax in (acc_ax, reward_ax):
        ax.grid(alpha=0.3)
    if acc_ax.lines:
        acc_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_positions(table: list[dict], path: Path) -> None:
    """Amplification rate by tenth of the answer and by character class, one line / bar group per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    amplifying = [r for r in table if r["amplified_frac"] and r["rate_by_decile"]]
    if not amplifying:
        return
    fig, (pos_ax, class_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(amplifying)
    for i, r in enumerate(amplifying):
        pos_ax.plot([10 * d + 5 for d in range(10)], [100 * (v or 0) for v in r["rate_by_decile"]], marker="o",
                    label=r["strategy"])
        class_ax.bar(np.arange(len(CHAR_CLASSES)) + i * width, [100 * (r["rate_by_class"].get(c) or 0)
                                                               for c in CHAR_CLASSES], width, label=r["strategy"])
    pos_ax.set_xlabel("position in the answer (% of its length)")
    pos_ax.set_ylabel("tokens amplified (%)")
    class_ax.set_xticks(np.arange(len(CHAR_CLASSES)) + 0.4 - width / 2, CHAR_CLASSES)
    class_ax.set_ylabel("tokens amplified (%)")
    for ax in (pos_ax, class_ax):
        ax.grid(alpha=0.3)
    pos_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(out: Path) -> list[dict]:
    cells = load_cells(out)
    if not cells:
        print(f"no finished cells in {out / 'cells'}")
        return []
    base_path = out / "base__organism.json"
    base = json.loads(base_path.read_text())["accuracy"] if base_path.exists() else None
    table, versus = rows(cells), scaled_vs_default(cells)
    budget = json.loads((out / "budget.json").read_text()) if (out / "budget.json").exists() else {}
    text = markdown(table, versus, base)
    finished = {s: sorted(c) for s, c in cells.items()}
    (out / "summary.json").write_text(json.dumps({"budget": budget, "base": base, "finished_cells": finished,
                                                  "complete_core_seeds": complete_seeds(cells), "rows": table,
                                                  "scaled_vs_default": versus}, indent=1))
    (out / "summary.md").write_text(f"# Organism credit sweep\n\nbudget: `{json.dumps(budget)}`\n\n"
                                    f"finished cells (strategy: seeds): `{json.dumps(finished)}`\n\n{text}\n\n"
                                    "Every finished cell, final held-out accuracy (%):\n\n"
                                    f"{cell_matrix(cells)}\n\n"
                                    "![held-out accuracy and training reward](learning_curves.png)\n\n"
                                    "![where the amplified tokens sit](credit_positions.png)\n")
    plot(cells, base, out / "learning_curves.png")
    plot_positions(table, out / "credit_positions.png")
    print(text)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "organism")
    summarize(parser.parse_args().out)
