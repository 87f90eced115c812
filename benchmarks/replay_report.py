"""The search-quality benchmark's figures from its replayed searches (``benchmarks/replay.py``): regret per
strategy and budget (median and IQM with bootstrap intervals), ours against each baseline search by search,
the anytime curves, the two-objective hypervolumes, the verdicts, and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.replay_stats import anytime_grid, hypervolume, paired, quartiles, summary

BASELINES = ("random_fifo", "tpe_fifo", "tpe_asha_default", "first_rung_top_k")
OURS_NAMES = ("ours", "ours_promotion")
HV_MARGIN = 0.1  # the reference point lies this share of each objective's range beyond the table's worst


def _ledger(entry: Any, fraction: float) -> Any:
    """A search's ledger read at ``fraction``: a fixed plan (first_rung_top_k) has one per budget read."""
    return entry[fraction] if isinstance(entry, dict) else entry


def regrets_at(table: Any, runs: list[tuple[str, Any]], fraction: float) -> list[float]:
    full = table.full_budget()
    return [table.regret(_ledger(led, fraction).incumbent(fraction * full), seed) for seed, led in runs]


def hypervolumes_at(table: Any, runs: list[tuple[str, Any]], fraction: float) -> list[float]:
    """Each search's front at ``fraction`` of B, scored by the truth (top-1 for the seeds it did not see, and
    GFLOPs): its hypervolume as a share of the hypervolume of the table's true front."""
    out = []
    for seed, led in runs:
        truth = {table.key(c): table.truth(c, seed) for c in table.configs()}
        ref = _reference(list(truth.values()), list(table.gflops.values()))
        whole = hypervolume([(-truth[k], table.gflops[k]) for k in truth], ref)
        front = _ledger(led, fraction).front(fraction * table.full_budget())
        found = hypervolume([(-truth[table.key(c)], table.gflops[table.key(c)]) for c in front], ref)
        out.append(found / whole if whole > 0 else 0.0)
    return out


def _reference(top1: list[float], gflops: list[float]) -> tuple[float, float]:
    t_lo, t_hi, g_lo, g_hi = min(top1), max(top1), min(gflops), max(gflops)
    return -(t_lo - HV_MARGIN * (t_hi - t_lo)), g_hi + HV_MARGIN * (g_hi - g_lo)


def report(table: Any, ledgers: dict[str, list[tuple[str, Any]]], fractions: list[float],
           strategies: list[str]) -> dict[str, Any]:
    """Every figure of the benchmark's JSON but the run's own (machine, times)."""

    regrets = {s: {f: regrets_at(table, ledgers[s], f) for f in fractions} for s in strategies}
    out: dict[str, Any] = {"regret": {s: {str(f): {**summary(r), "regrets": r} for f, r in by.items()}
                                      for s, by in regrets.items()}}
    ours = [o for o in OURS_NAMES if o in strategies]
    out["paired"] = {o: {b: {str(f): paired(regrets[o][f], regrets[b][f]) for f in fractions}
                         for b in BASELINES if b in strategies} for o in ours}
    grid = anytime_grid(fractions)
    full = table.full_budget()
    curves: dict[str, Any] = {"fractions": grid, "stage_epochs": [f * full for f in grid]}
    for s in strategies:
        rs = [regrets_at(table, ledgers[s], f) for f in grid]
        curves[s] = {"median": [statistics.median(r) for r in rs], "q1": [quartiles(r)[0] for r in rs],
                     "q3": [quartiles(r)[1] for r in rs]}
    out["anytime"] = curves
    out.update(verdicts(regrets, out["paired"], fractions))
    if "moasha" in ledgers:
        hv = {s: {f: hypervolumes_at(table, ledgers[s], f) for f in fractions} for s in ("moasha", "random_fifo")}
        out["multi_objective"] = {
            "hypervolume": {s: {str(f): {"mean": statistics.fmean(v), **summary(v), "values": v} for f, v in by.items()}
                            for s, by in hv.items()},
            "paired": {str(f): paired(hv["moasha"][f], hv["random_fifo"][f]) for f in fractions},
            "reference": f"top-1 and GFLOPs {HV_MARGIN:.0%} of their range beyond the table's worst; "
                         "hypervolume as a share of the table's true front's"}
        at = min(fractions, key=lambda f: abs(f - 0.25))
        rand = statistics.fmean(hv["random_fifo"][at])
        out["moasha_hypervolume_ratio_at_25"] = statistics.fmean(hv["moasha"][at]) / rand if rand > 0 else None
    return out


def verdicts(regrets: dict[str, dict[float, list[float]]], pairs: dict[str, Any],
             fractions: list[float]) -> dict[str, Any]:
    """``budget_to_match_tpe_fifo``: the smallest budget fraction at which ours' median regret is at most TPE +
    FIFO's at the largest budget (None: never). ``beats_default_asha_at_all_budgets``: ours' median regret at
    most Ray's default TPE + ASHA's at every budget, and the paired 95 % interval of ours minus it below 0 at
    two budgets or more. Each for ``ours``, and with the suffix ``_promotion`` for ours with promotion."""
    out: dict[str, Any] = {}
    med = {s: {f: statistics.median(r) for f, r in by.items()} for s, by in regrets.items()}
    for o in (o for o in OURS_NAMES if o in regrets):
        suffix = o.removeprefix("ours")
        if "tpe_fifo" in regrets:
            target = med["tpe_fifo"][max(fractions)]
            match = [f for f in fractions if med[o][f] <= target]
            out["budget_to_match_tpe_fifo" + suffix] = min(match) if match else None
        if "tpe_asha_default" in regrets:
            asha = med["tpe_asha_default"]
            below = sum(pairs[o]["tpe_asha_default"][str(f)]["ci95"][1] < 0 for f in fractions)
            out["beats_default_asha_at_all_budgets" + suffix] = \
                all(med[o][f] <= asha[f] for f in fractions) and below >= 2
    return out


def plot(out: dict[str, Any], path: Path) -> Path:
    """The anytime curves (median regret, shaded between the quartiles) and, with a two-objective replay,
    the hypervolume against budget, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = out["anytime"]
    mo = out.get("multi_objective")
    fig, axes = plt.subplots(1, 2 if mo else 1, figsize=(12 if mo else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for s in out["strategies"]:
        ax.plot(curves["stage_epochs"], curves[s]["median"], label=s, drawstyle="steps-post")
        ax.fill_between(curves["stage_epochs"], curves[s]["q1"], curves[s]["q3"], alpha=0.12, step="post")
    ax.set(xlabel="stage-epochs spent", ylabel="regret (median, quartiles shaded)",
           title=f"anytime regret, {out['searches']} searches per strategy")
    ax.legend(fontsize=8)
    if mo:
        ax = axes[0][1]
        xs = [float(f) * out["full_budget_stage_epochs"] for f in out["budgets"]]
        for s, by in mo["hypervolume"].items():
            ys = [by[str(f)]["mean"] for f in out["budgets"]]
            ax.plot(xs, ys, marker="o", label=s)
        ax.set(xlabel="stage-epochs spent", ylabel="hypervolume / true front's (mean)",
               title="top-1 up, GFLOPs down")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
