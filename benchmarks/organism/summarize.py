"""Summary of the organism sweep (sweep.py): the pre-registered paired analysis against plain GRPO.

    python -m benchmarks.organism.summarize [--out benchmarks/results/organism]     # from the repository root

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
# Amendment 3: the positive control (oracle credit at two doses) and the random arm; must match sweep.CONTROL.
CONTROL = ("oracle", "oracle_strong", "random")
ORACLES = ("oracle", "oracle_strong")
ORDER = CORE + ORACLES + EXTRA
# (scaled, default): the pre-registered comparison of the two credit settings.
SCALED_PAIRS = (("global_anchor_scaled", "global_anchor"), ("coupled_scaled", "coupled"),
                ("local_chunk_scaled", "local_chunk"))
# Cell metrics per evaluation kind: (primary, secondary) as pre-registered, then the other kind's, reported only.
GREEDY_METRICS = ("final_accuracy", "auc")
SAMPLED_METRICS = ("final_sampled_accuracy", "sampled_auc")
LABELS = {"final_accuracy": "final greedy", "auc": "AUC greedy", "final_sampled_accuracy": "final sampled",
          "sampled_auc": "AUC sampled"}


def metrics_of(budget: dict) -> tuple[str, ...]:
    """The metrics of a results folder: sampled ones first when its budget sampled its evaluations (budget B of
    PREREGISTRATION.md, ``eval_samples`` > 0), greedy ones only otherwise (budget A)."""
    return SAMPLED_METRICS + GREEDY_METRICS if budget.get("eval_samples") else GREEDY_METRICS


def curve_key(budget: dict) -> str:
    """The accuracy-curve entry of the primary metric."""
    return "sampled_accuracy" if budget.get("eval_samples") else "accuracy"


def _kind(key: str) -> str:
    """'sampled' or 'greedy': the evaluation an accuracy-curve entry comes from."""
    return "sampled" if key == "sampled_accuracy" else "greedy"


CHAR_CLASSES = ("digit", "operator", "equals", "pool", "newline", "fail")  # sweep.CHAR_CLASSES' names
# PREREGISTRATION.md, amendment 2: the smallest effect of interest (fraction of held-out problems) and the
# strategies the study's one-sentence answer rests on.
SMALLEST_EFFECT = 0.02
ATTENTION_STRATEGIES = ("global_anchor", "global_anchor_scaled", "coupled", "coupled_scaled")
PLANNED_SEEDS = 12
MIN_SEEDS_FOR_VERDICTS = 6  # below it a percentile-bootstrap CI is little more than the range of the differences


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


def pass_of(strategy: str) -> str:
    """``core`` (the six pre-registered comparisons), ``control`` (amendment 3) or ``second`` (the second pass)."""
    return "core" if strategy in CORE else "control" if strategy in CONTROL else "second"


def analysed_seeds(strategy: str, cells: dict[str, dict[int, dict]]) -> list[int]:
    """The pre-registered seed set of ``strategy``: complete core seeds, or (control arms, second pass) the seeds
    shared with uniform."""
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


def verdict(diff: dict | None, smallest_effect: float = SMALLEST_EFFECT) -> dict | None:
    """The pre-registered verdict (amendment 2) on one paired difference against uniform.

    ``diff``: a :func:`paired` result with ``holm_p``. Returns ``{"verdict", "holm", "gain_bound", "loss_bound"}``:
    ``verdict`` is ``better`` / ``worse`` (CI on one side of 0 and sign-test p < 0.05; ``holm`` says whether the
    Holm-adjusted p is below 0.05 too), ``no gain >= 2 points`` (CI upper bound below ``smallest_effect``) or
    ``inconclusive``; the bounds are the CI's ends (the largest gain and loss consistent with the data).
    """
    if not diff:
        return None
    lo, hi = diff["ci95"]
    p, holm_p = diff["sign_test_p"], diff.get("holm_p", 1.0)
    if lo > 0 and p < 0.05:
        label = "better"
    elif hi < 0 and p < 0.05:
        label = "worse"
    elif hi < smallest_effect:
        label = f"no gain >= {100 * smallest_effect:g} points"
    else:
        label = "inconclusive"
    return {"verdict": label, "holm": label in ("better", "worse") and holm_p < 0.05, "gain_bound": hi,
            "loss_bound": lo}


def detects(diff: dict | None, smallest_effect: float = SMALLEST_EFFECT) -> bool | None:
    """Amendment 3: an oracle arm detects a credit gain when the paired CI of its difference to uniform lies above 0
    and the mean difference is at least ``smallest_effect`` (None without a comparison)."""
    if not diff:
        return None
    return diff["ci95"][0] > 0 and diff["mean"] >= smallest_effect


def detection_label(diff: dict | None, smallest_effect: float = SMALLEST_EFFECT) -> str:
    """Amendment 3's wording for an oracle arm: it detects a credit gain, shows "a gain smaller than the effect of
    interest" (CI above 0, mean below ``smallest_effect``; not a detection), or does not detect a gain."""
    if detects(diff, smallest_effect):
        return "**detects a credit gain**"
    if diff and diff["ci95"][0] > 0:
        return "a gain smaller than the effect of interest (CI above 0, mean below +2 points: not a detection)"
    return "does not detect a gain"


def control_outcome(table: list[dict], metric: str) -> str | None:
    """What the positive control says (amendment 3), from the two oracle arms' ``detects``; None until both have one.
    """
    found = {r["strategy"]: r.get(f"{metric}_detects") for r in table if r["strategy"] in ORACLES}
    if len(found) < len(ORACLES) or any(v is None for v in found.values()):
        return None
    if found["oracle"]:
        return ("the oracle at the paper's dose (1.5) detects a credit gain: the attention null is evidence that "
                "WAAD/FAI do not single out the decisive tokens on this organism")
    if found["oracle_strong"]:
        return ("only the strong oracle (3) detects a credit gain: the paper's dose is too weak for this organism, so "
                "the attention null at 1.5 does not show that attention picks the wrong tokens")
    return ("neither oracle detects a credit gain: this organism and budget cannot test credit assignment, and the "
            "attention null is uninformative about attention credit")


def versus_random(cells: dict[str, dict[int, dict]], metrics: tuple[str, ...]) -> list[dict]:
    """Amendment 3: every attention strategy against ``random``, paired by seed (reported, not a decision)."""
    out = []
    if "random" not in cells:
        return out
    for strategy in ATTENTION_STRATEGIES:
        if strategy in cells:
            seeds = sorted(set(cells[strategy]) & set(cells["random"]) & set(cells.get("uniform", {})))
            comparison = {m: paired(m, cells[strategy], cells["random"], seeds) for m in metrics}
            if comparison[metrics[0]]:
                out.append({"strategy": strategy, **comparison})
    return out


ENVIRONMENT_CHECK = "environment_check"  # amendment 4: uniform re-run in the amendment-3 environment (a subfolder)


def environment_check(cells: dict[str, dict[int, dict]], rerun: dict[str, dict[int, dict]],
                      metrics: tuple[str, ...]) -> list[dict]:
    """Amendment 4 (reported, not decided): the re-run ``uniform`` minus the committed one (the environment's effect,
    expected 0), then each amendment-3 arm minus the re-run ``uniform`` (inside one environment), paired by seed.

    ``rerun``: the cells of the ``environment_check`` folder (strategy -> seed -> cell). Rows without 2 shared seeds
    are left out. Returns ``[{"comparison", "a", "b", metric: paired(...)}]``."""
    if "uniform" not in rerun:
        return []
    pairs = [("uniform (re-run)", rerun["uniform"], "uniform (committed)", cells.get("uniform", {}))]
    pairs += [(arm, cells[arm], "uniform (re-run)", rerun["uniform"]) for arm in CONTROL if arm in cells]
    out = []
    for a, a_cells, b, b_cells in pairs:
        seeds = sorted(set(a_cells) & set(b_cells))
        comparison = {m: paired(m, a_cells, b_cells, seeds) for m in metrics}
        if comparison[metrics[0]]:
            out.append({"comparison": f"{a} − {b}", "a": a, "b": b, **comparison})
    return out


def overall_answer(table: list[dict], metric: str) -> str | None:
    """The study's answer (amendment 2) from the attention strategies' verdicts on ``metric``: ``yes``,
    ``no effect as large as the papers'``, ``mixed``, or ``inconclusive`` (None before every one has a verdict)."""
    verdicts = [r.get(f"{metric}_verdict") for r in table if r["strategy"] in ATTENTION_STRATEGIES]
    if len(verdicts) < len(ATTENTION_STRATEGIES) or not all(verdicts):
        return None
    if any(v["verdict"] == "better" and v["holm"] for v in verdicts):
        return "yes"
    if all(v["verdict"].startswith("no gain") for v in verdicts):
        return "no effect as large as the papers'"
    if any(v["verdict"] == "worse" and v["holm"] for v in verdicts):
        return "mixed"
    return "inconclusive"


def conclusion(table: list[dict], metric: str) -> str:
    """Plain-language lines of the verdicts, marked provisional until every core strategy has all planned seeds."""
    core = [r for r in table if r["pass"] == "core" and r.get(f"{metric}_verdict")]
    if not core:
        return ""
    seeds = len(core[0]["seeds"])
    if seeds < MIN_SEEDS_FOR_VERDICTS:
        return (f"Pre-registered verdicts (PREREGISTRATION.md, amendment 2): not shown before {MIN_SEEDS_FOR_VERDICTS} "
                f"complete seeds ({seeds} of {PLANNED_SEEDS} now); with fewer, a bootstrap CI over seeds is about "
                "the range of the seeds' differences and understates the uncertainty.")
    status = "final" if seeds >= PLANNED_SEEDS else f"provisional: {seeds} of {PLANNED_SEEDS} seeds complete"
    lines = [f"Pre-registered verdicts on the {LABELS[metric]} accuracy against uniform ({status}; PREREGISTRATION.md, "
             f"amendment 2, smallest effect of interest {100 * SMALLEST_EFFECT:g} points):", ""]
    for r in core:
        v = r[f"{metric}_verdict"]
        holm = " (also after Holm)" if v["holm"] else " (uncorrected p only)" if v["verdict"] in ("better", "worse") \
            else ""
        lines.append(f"- {r['strategy']}: **{v['verdict']}**{holm}; consistent with the data: from "
                     f"{_pct(v['loss_bound'], True)} to {_pct(v['gain_bound'], True)} points.")
    answer = overall_answer(table, metric)
    if answer:
        lines += ["", f"Does attention credit help (the four attention strategies together)? **{answer}** ({status})."]
    return "\n".join(lines + control_conclusion(table, metric))


def control_conclusion(table: list[dict], metric: str) -> list[str]:
    """Lines for the arms of amendment 3 (their own Holm family), shown from MIN_SEEDS_FOR_VERDICTS seeds on."""
    arms = [r for r in table if r["pass"] == "control" and r.get(f"{metric}_verdict")]
    if not arms:
        return []
    seeds = min(len(r["seeds"]) for r in arms)
    if seeds < MIN_SEEDS_FOR_VERDICTS:
        return ["", f"Positive control and random arm (amendment 3): {seeds} of {PLANNED_SEEDS} seeds; verdicts are "
                f"shown from {MIN_SEEDS_FOR_VERDICTS} seeds on."]
    complete = seeds >= PLANNED_SEEDS and len(arms) == len(CONTROL)
    status = "final" if complete else f"provisional: {seeds} of {PLANNED_SEEDS} seeds"
    lines = ["", f"Positive control and random arm against uniform ({status}; PREREGISTRATION.md, amendment 3; Holm "
             "over these three comparisons):", ""]
    for r in arms:
        v = r[f"{metric}_verdict"]
        holm = " (also after Holm)" if v["holm"] else " (uncorrected p only)" if v["verdict"] in ("better", "worse") \
            else ""
        detect = f"; {detection_label(r.get(f'{metric}_vs_uniform'))}" if r["strategy"] in ORACLES else ""
        lines.append(f"- {r['strategy']}: **{v['verdict']}**{holm}{detect}; consistent with the data: from "
                     f"{_pct(v['loss_bound'], True)} to {_pct(v['gain_bound'], True)} points.")
    outcome = control_outcome(table, metric)
    if outcome:
        lines += ["", f"What the positive control says ({status}): {outcome}."]
    return lines


def mean_ci(values: list[float]) -> dict:
    from attnrl.analysis.stats import bootstrap_ci

    if len(values) < 2:
        return {"mean": values[0], "ci95": [None, None]}
    mean, lo, hi = bootstrap_ci(values)
    return {"mean": mean, "ci95": [lo, hi]}


def rows(cells: dict[str, dict[int, dict]], metrics: tuple[str, ...] = GREEDY_METRICS) -> list[dict]:
    from attnrl.analysis.stats import holm_adjust

    uniform = cells.get("uniform", {})
    out = []
    for strategy in sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        seeds = analysed_seeds(strategy, cells)
        if not seeds:
            continue
        members = {s: cells[strategy][s] for s in seeds}
        positions = [c["credit_positions"] for c in members.values() if c.get("credit_positions")]
        row = {"strategy": strategy, "seeds": seeds, "pass": pass_of(strategy),
               "amplified_frac": _mean([p.get("amplified_frac") for p in positions]),
               "rate_first_line": _mean([p.get("rate_first_line") for p in positions]),
               "rate_by_decile": _mean_lists([p.get("rate_by_decile") for p in positions]),
               "rate_by_class": {name: _mean([p.get(f"rate_{name}") for p in positions]) for name in CHAR_CLASSES},
               "seconds_per_step": statistics.fmean(c["seconds_per_step"] for c in members.values()),
               "completion_tokens": _mean([_mean(c["completion_length_curve"]) for c in members.values()])}
        for metric in metrics:
            row[metric] = mean_ci([c[metric] for c in members.values()])
            row[f"{metric}_vs_uniform"] = None if strategy == "uniform" else paired(metric, members, uniform, seeds)
        out.append(row)
    # Holm over each pre-registered family against uniform: the six core strategies; the three arms of amendment 3
    for metric in metrics:
        for family_pass in ("core", "control"):
            family = [r for r in out if r["pass"] == family_pass and r[f"{metric}_vs_uniform"]]
            if family:
                for r, adj in zip(family, holm_adjust([r[f"{metric}_vs_uniform"]["sign_test_p"] for r in family])):
                    r[f"{metric}_vs_uniform"]["holm_p"] = adj
    primary = SAMPLED_METRICS[0]  # amendments 2 and 3 give verdicts on budget B's primary metric only
    if primary in metrics:
        for r in out:
            tested = r["pass"] in ("core", "control")
            r[f"{primary}_verdict"] = verdict(r[f"{primary}_vs_uniform"]) if tested else None
            if r["strategy"] in ORACLES:
                r[f"{primary}_detects"] = detects(r[f"{primary}_vs_uniform"])
    return out


def scaled_vs_default(cells: dict[str, dict[int, dict]], metrics: tuple[str, ...] = GREEDY_METRICS) -> list[dict]:
    """The scaled credit setting against the defaults, paired by seed."""
    out = []
    for scaled, default in SCALED_PAIRS:
        if scaled in cells and default in cells:
            seeds = sorted(set(analysed_seeds(scaled, cells)) & set(analysed_seeds(default, cells)))
            comparison = {m: paired(m, cells[scaled], cells[default], seeds) for m in metrics}
            if comparison[metrics[0]]:
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


def markdown(table: list[dict], versus: list[dict], base: dict, metrics: tuple[str, ...] = GREEDY_METRICS,
             gradient: dict | None = None, random_rows: list[dict] | None = None,
             environment_rows: list[dict] | None = None) -> str:
    """The summary tables; ``base``: the checkpoint's step-0 scores (``accuracy``, ``sampled_accuracy``);
    ``gradient``: gradient_share.py's result (the gradient share of each arm's amplified tokens), when measured;
    ``random_rows``: :func:`versus_random`; ``environment_rows``: :func:`environment_check`."""
    shares = (gradient or {}).get("arms", {})
    primary, secondary, *reported = metrics
    step0 = ", ".join(f"{kind} {_pct(base.get(key))}%" for kind, key in (("greedy", "accuracy"),
                                                                           ("sampled", "sampled_accuracy"))
                      if base.get(key) is not None)
    seeds = next((len(r["seeds"]) for r in table if r["pass"] == "core"), 0)
    lines = [f"Base (step 0): {step0 or '—'}. Primary metric: {LABELS[primary]} held-out accuracy; secondary: "
             f"{LABELS[secondary]}" + (f"; reported, not tested: {', '.join(LABELS[m] for m in reported)}"
                                       if reported else "")
             + ". Accuracies in %, differences in points, paired by seed; [95% CI]: percentile bootstrap over seeds; "
             "p: exact two-sided sign test / Holm-adjusted over the core comparisons; W/T/L: seeds better / equal / "
             "worse than uniform; MDD: smallest difference detectable with 80% power. Core strategies on the "
             f"{seeds} seeds where all of them finished; second-pass strategies on the seeds they share with "
             "uniform.", "",
             f"| strategy | seeds | {LABELS[primary]} % [95% CI] | Δ vs uniform [95% CI] | p / Holm | W/T/L | MDD | "
             f"{LABELS[secondary]} % | Δ [95% CI] | p / Holm | "
             + "".join(f"{LABELS[m]} % | Δ [95% CI] | p | " for m in reported)
             + "amplified | their gradient share | amplified on line 1 | s/step |",
             "|---" * (14 + 3 * len(reported)) + "|"]
    for r in table:
        p, a = r[primary], r[secondary]
        lines.append(f"| {r['strategy']} | {len(r['seeds'])} | {_pct(p['mean'])}{_ci(p['ci95'])} | "
                     f"{_diff(r[f'{primary}_vs_uniform'])} | {_pct(a['mean'])} | "
                     f"{_diff(r[f'{secondary}_vs_uniform'], False)} | "
                     + "".join(f"{_pct(r[m]['mean'])} | {_diff(r[f'{m}_vs_uniform'], False, holm=False)} | "
                               for m in reported)
                     + f"{_pct(r['amplified_frac'])}% | {_share(shares.get(r['strategy']))} | "
                       f"{_pct(r['rate_first_line'])}% | {r['seconds_per_step']:.2f} |")
    verdicts = conclusion(table, primary)
    if verdicts:
        lines += ["", verdicts]
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
    if shares:
        lines += ["", "Gradient share (benchmarks/organism/gradient_share.py, measured once on rollouts of the "
                  "checkpoint): the share of the policy gradient (per token |A| x ||d log p / d logits||) that an arm's "
                  "amplified tokens carry, and the gradient-weighted mean gamma. An arm whose amplified tokens carry "
                  "nearly all of the gradient rescales plain GRPO's update (which Adam undoes); one well below 100% "
                  "tilts it. For trl_top_entropy: the share kept in the loss."]
    if random_rows:
        lines += ["", "Attention strategies against `random` (amendment 3; paired by seed, reported, not a decision):",
                  "", f"| strategy − random | seeds | Δ {LABELS[primary]} [95% CI] | p | W/T/L | MDD |",
                  "|---|---|---|---|---|---|"]
        for v in random_rows:
            lines.append(f"| {v['strategy']} − random | {len(v[primary]['seeds'])} | {_diff(v[primary], holm=False)} |")
    if environment_rows:
        lines += ["", "Environment check (amendment 4; `uniform` re-run in the amendment-3 environment, folder "
                  f"`{ENVIRONMENT_CHECK}/`; paired by seed, reported, not a decision):", "",
                  f"| comparison | seeds | Δ {LABELS[primary]} [95% CI] | p | W/T/L | MDD |", "|---|---|---|---|---|---|"]
        for v in environment_rows:
            lines.append(f"| {v['comparison']} | {len(v[primary]['seeds'])} | {_diff(v[primary], holm=False)} |")
    if versus:
        lines += ["", "Scaled credit setting (W = H_lo = 5, H_hi = 46) against the defaults, paired by seed:", "",
                  f"| scaled − default | seeds | Δ {LABELS[primary]} [95% CI] | p | W/T/L | MDD | "
                  f"Δ {LABELS[secondary]} [95% CI] | p |", "|---|---|---|---|---|---|---|---|"]
        for v in versus:
            lines.append(f"| {v['scaled']} − {v['default']} | {len(v[primary]['seeds'])} | "
                         f"{_diff(v[primary], holm=False)} | {_diff(v[secondary], False, holm=False)} |")
    return "\n".join(lines)


def _share(entry: dict | None) -> str:
    return "—" if not entry else f"{100 * entry['gradient_share']:.0f}% (γ̄ {entry['weighted_gamma']:.2f})"


def cell_matrix(cells: dict[str, dict[int, dict]], metric: str = "final_accuracy") -> str:
    """Every finished cell's ``metric`` (%), a row per seed and a column per strategy."""
    strategies = sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
    seeds = sorted({seed for members in cells.values() for seed in members})
    lines = ["| seed | " + " | ".join(strategies) + " |", "|---" * (len(strategies) + 1) + "|"]
    for seed in seeds:
        lines.append(f"| {seed} | " + " | ".join(_pct(cells[s][seed][metric]) if seed in cells[s] else ""
                                                 for s in strategies) + " |")
    return "\n".join(lines)


def curve_table(cells: dict[str, dict[int, dict]], base: float | None, key: str = "accuracy") -> str:
    """Held-out ``key`` (%) at every evaluated step, mean over each strategy's analysed seeds (step 0: ``base``)."""
    strategies = [s for s in sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
                  if analysed_seeds(s, cells)]
    if not strategies:
        return ""
    curves = {s: [{p["step"]: p[key] for p in cells[s][seed]["accuracy_curve"]} for seed in analysed_seeds(s, cells)]
              for s in strategies}
    steps = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    lines = ["| strategy | seeds | step 0 | " + " | ".join(f"step {t}" for t in steps) + " |",
             "|---" * (len(steps) + 3) + "|"]
    for s, runs in curves.items():
        lines.append(f"| {s} | {len(runs)} | {_pct(base)} | "
                     + " | ".join(_pct(statistics.fmean(run[t] for run in runs)) for t in steps) + " |")
    return "\n".join(lines)


def _moving_average(values: list[float], width: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1): i + 1]) for i in range(len(values))]


def plot(cells: dict[str, dict[int, dict]], base: float | None, path: Path, key: str = "accuracy") -> None:
    """Held-out ``key`` (``accuracy``: greedy, ``sampled_accuracy``) and training reward, means over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, reward_ax) = plt.subplots(1, 2, figsize=(12, 4.4))
    for strategy in sorted(cells, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        seeds = analysed_seeds(strategy, cells)
        if not seeds:
            continue
        members = [cells[strategy][s] for s in seeds]
        curves = [[(0, base)] * (base is not None) + [(p["step"], p[key]) for p in c["accuracy_curve"]]
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
    acc_ax.set_ylabel(f"held-out {_kind(key)} accuracy (%), mean over seeds")
    reward_ax.set_xlabel("GRPO step")
    reward_ax.set_ylabel("training reward (10-step moving mean, mean over seeds)")
    for ax in (acc_ax, reward_ax):
        ax.grid(alpha=0.3)
    if acc_ax.lines:
        acc_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_differences(table: list[dict], metric: str, path: Path) -> bool:
    """Forest plot of the paired differences to uniform on ``metric``: one row per strategy, each seed's difference
    as a dot, the mean with its bootstrap 95% CI as a bar, the smallest effect of interest as dashed lines.
    Returns whether there was anything to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [r for r in table if r.get(f"{metric}_vs_uniform")]
    if not compared:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(compared) + 1.4))
    for y, r in enumerate(reversed(compared)):
        d = r[f"{metric}_vs_uniform"]
        ax.scatter([100 * x for x in d["diffs"]], [y] * len(d["diffs"]), s=12, color="0.55", zorder=2)
        lo, hi = d["ci95"]
        ax.errorbar(100 * d["mean"], y, xerr=[[100 * (d["mean"] - lo)], [100 * (hi - d["mean"])]], fmt="o",
                    color="C0" if r["pass"] == "core" else "C1", capsize=4, zorder=3)
    ax.set_yticks(range(len(compared)), [r["strategy"] for r in reversed(compared)])
    ax.axvline(0, color="k", linewidth=0.8)
    for x in (-100 * SMALLEST_EFFECT, 100 * SMALLEST_EFFECT):
        ax.axvline(x, color="k", linewidth=0.8, linestyle="--")
    seeds = len(compared[0][f"{metric}_vs_uniform"]["seeds"])
    ax.set_xlabel(f"{LABELS[metric]} accuracy minus uniform's, same seed (points)")
    ax.set_title(f"paired differences over {seeds} seeds: dots: seeds; bar: mean, 95% CI; dashed: ±2 points",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
    base = json.loads(base_path.read_text()) if base_path.exists() else {}
    budget = json.loads((out / "budget.json").read_text()) if (out / "budget.json").exists() else {}
    metrics, key = metrics_of(budget), curve_key(budget)
    table, versus = rows(cells, metrics), scaled_vs_default(cells, metrics)
    gradient_path = out / "gradient_share.json"
    gradient = json.loads(gradient_path.read_text()) if gradient_path.exists() else None
    random_rows = versus_random(cells, metrics)
    environment_rows = environment_check(cells, load_cells(out / ENVIRONMENT_CHECK), metrics)
    text = markdown(table, versus, base, metrics, gradient, random_rows, environment_rows)
    finished = {s: sorted(c) for s, c in cells.items()}
    plot(cells, base.get(key), out / "learning_curves.png", key)
    plot_positions(table, out / "credit_positions.png")
    drew_differences = plot_differences(table, metrics[0], out / "paired_differences.png")
    (out / "summary.json").write_text(json.dumps({"budget": budget, "base": base.get("accuracy"),
                                                  "base_scores": {k: base[k] for k in ("accuracy", "sampled_accuracy")
                                                                  if k in base},
                                                  "metrics": list(metrics), "finished_cells": finished,
                                                  "complete_core_seeds": complete_seeds(cells), "rows": table,
                                                  "scaled_vs_default": versus, "versus_random": random_rows,
                                                  "environment_check": environment_rows,
                                                  "gradient_share": gradient,
                                                  "answer": overall_answer(table, metrics[0]),
                                                  "control_outcome": control_outcome(table, metrics[0])}, indent=1))
    (out / "summary.md").write_text(f"# Organism credit sweep\n\nbudget: `{json.dumps(budget)}`\n\n"
                                    f"finished cells (strategy: seeds): `{json.dumps(finished)}`\n\n{text}\n\n"
                                    f"Every finished cell, {LABELS[metrics[0]]} held-out accuracy (%):\n\n"
                                    f"{cell_matrix(cells, metrics[0])}\n\n"
                                    f"Held-out {_kind(key)} accuracy (%) by step, mean over the analysed seeds:\n\n"
                                    f"{curve_table(cells, base.get(key), key)}\n\n"
                                    "![held-out accuracy and training reward](learning_curves.png)\n\n"
                                    + ("![paired differences to uniform](paired_differences.png)\n\n"
                                       if drew_differences else "") +
                                    "![where the amplified tokens sit](credit_positions.png)\n")
    print(text)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "organism")
    summarize(parser.parse_args().out)
