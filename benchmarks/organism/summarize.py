"""Summary of the organism sweep (sweep.py): the pre-registered paired analysis against plain GRPO.

    python benchmarks/organism/summarize.py [--out benchmarks/results/organism]

Per strategy, over the seeds it shares with ``uniform``: final accuracy and area under the accuracy curve (mean,
std), the paired difference to ``uniform`` (mean, percentile-bootstrap 95% CI over seeds, exact sign test,
wins/ties/losses, minimum detectable difference at 80% power), the amplified-token fraction and where the
amplified tokens sit. Writes ``summary.json``, ``summary.md`` and ``learning_curves.png`` next to the cells.
Primary metric: final held-out greedy accuracy; secondary: the area under the curve (PREREGISTRATION.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("uniform", "entropy", "trl_top_entropy", "global_anchor", "global_anchor_scaled", "coupled",
         "coupled_scaled", "random", "local_chunk", "local_chunk_scaled")


def load_cells(out: Path) -> dict[str, dict[int, dict]]:
    """strategy -> seed -> cell."""
    cells: dict[str, dict[int, dict]] = {}
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        cells.setdefault(cell["strategy"], {})[cell["seed"]] = cell
    return cells


def paired(metric: str, cells: dict[int, dict], uniform: dict[int, dict]) -> dict | None:
    """Paired difference cells - uniform of ``metric`` over the shared seeds (None when fewer than 2)."""
    from attnrl.analysis.stats import minimum_detectable_difference, paired_bootstrap_ci, sign_test

    seeds = sorted(set(cells) & set(uniform))
    if len(seeds) < 2:
        return None
    a = [cells[s][metric] for s in seeds]
    b = [uniform[s][metric] for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    mean, lo, hi = paired_bootstrap_ci(a, b)
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "ci95": [lo, hi], "sign_test_p": sign_test(diffs),
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
            "mdd80": minimum_detectable_difference(diffs) if len(set(diffs)) > 1 else 0.0}


def rows(cells: dict[str, dict[int, dict]]) -> list[dict]:
    uniform = cells.get("uniform", {})
    out = []
    for strategy in sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        members = cells[strategy]
        finals = [c["final_accuracy"] for c in members.values()]
        aucs = [c["auc"] for c in members.values() if c.get("auc") is not None]
        positions = [c["credit_positions"] for c in members.values() if c.get("credit_positions")]
        out.append({
            "strategy": strategy, "seeds": sorted(members), "final_mean": statistics.fmean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "auc_mean": statistics.fmean(aucs) if aucs else None,
            "final_vs_uniform": None if strategy == "uniform" else paired("final_accuracy", members, uniform),
            "auc_vs_uniform": None if strategy == "uniform" else paired("auc", members, uniform),
            "amplified_frac": statistics.fmean(p["amplified_frac"] for p in positions) if positions else None,
            "share_first_line": _mean([p.get("share_first_line") for p in positions]),
            "seconds_per_step": statistics.fmean(c["seconds_per_step"] for c in members.values()),
            "completion_tokens": _mean([_mean(c["completion_length_curve"]) for c in members.values()]),
        })
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _pct(x, signed=False):
    return "—" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def markdown(table: list[dict], base: float | None) -> str:
    lines = [f"Base (step 0, greedy): {_pct(base)}%. Differences are paired by seed, in accuracy points; CI: "
             "percentile bootstrap 95% over seeds; p: exact two-sided sign test.", "",
             "| strategy | seeds | final % (mean ± sd) | Δ final vs uniform [95% CI] | p | W/T/L | AUC % | "
             "Δ AUC [95% CI] | p | amplified | s/step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        f, a = r["final_vs_uniform"], r["auc_vs_uniform"]
        lines.append(
            f"| {r['strategy']} | {len(r['seeds'])} | {_pct(r['final_mean'])} ± {_pct(r['final_std'])} | "
            + (f"{_pct(f['mean'], True)} [{_pct(f['ci95'][0], True)}, {_pct(f['ci95'][1], True)}] | "
               f"{f['sign_test_p']:.3f} | {f['wins']}/{f['ties']}/{f['losses']} | " if f else "— | — | — | ")
            + f"{_pct(r['auc_mean'])} | "
            + (f"{_pct(a['mean'], True)} [{_pct(a['ci95'][0], True)}, {_pct(a['ci95'][1], True)}] | "
               f"{a['sign_test_p']:.3f} | " if a else "— | — | ")
            + f"{_pct(r['amplified_frac'])}% | {r['seconds_per_step']:.2f} |")
    return "\n".join(lines)


def plot(cells: dict[str, dict[int, dict]], base: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for strategy in sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        curves = [[(0, base)] * (base is not None) + [(p["step"], p["accuracy"]) for p in c["accuracy_curve"]]
                  for c in cells[strategy].values()]
        steps = sorted(set.intersection(*(set(s for s, _ in curve) for curve in curves)))
        means = [100 * statistics.fmean(dict(curve)[s] for curve in curves) for s in steps]
        ax.plot(steps, means, marker="o", label=f"{strategy} ({len(curves)})",
                linewidth=2.2 if strategy == "uniform" else 1.2)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("held-out greedy accuracy (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
    table = rows(cells)
    budget = json.loads((out / "budget.json").read_text()) if (out / "budget.json").exists() else {}
    text = markdown(table, base)
    (out / "summary.json").write_text(json.dumps({"budget": budget, "base": base, "rows": table}, indent=1))
    (out / "summary.md").write_text(f"# Organism credit sweep\n\nbudget: `{json.dumps(budget)}`\n\n{text}\n\n"
                                    "![held-out accuracy](learning_curves.png)\n")
    plot(cells, base, out / "learning_curves.png")
    print(text)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "organism")
    summarize(parser.parse_args().out)
