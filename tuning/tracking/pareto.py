"""The Pareto front of a multi-objective search (accuracy up, GFLOPs down) on its MLflow parent run,
and the champion chosen from it.

At the end of a search with ``objectives``: the finished trials (early-stopped ones have truncated
scores and are drawn but never on the front) are sorted into fronts (``tuning.execution.moasha``);
the parent run gets ``pareto/front.png`` (every trial, the front joined, the paper's two models for
reference) and ``pareto/trials.csv``; each front member's child run is tagged ``egosearch.pareto=true``.
The champion is picked from the front (:func:`choose`) and the choice recorded on the parent run.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning.execution.moasha import fronts, to_minimise

PARETO_TAG = "egosearch.pareto"  # "true" on a front member's child run
RULE_TAG = "egosearch.champion_rule"  # on the parent run: the constraints the champion was picked under
CHOICE_TAG = "egosearch.champion_choice"  # on the parent run: which front member and why
ACCURACY, COST = "val_top1", "gflops"
# The paper's two models (its Table 3, test top-1 at 7 frames and 224 px) at the GFLOPs egomodel.cost counts
# for them (python -m egomodel.cost --set model.variant=two_stream | feedback): reference points on the plot
PAPER_POINTS = (("paper: two-stream (Ego-RNN)", 103.63, 0.6710), ("paper: single-stream feedback", 67.44, 0.6509))


class ParetoError(ValueError):
    """A champion rule that cannot apply (a space without the objectives it names, a value out of range)."""


def champion_rule(space: Any, max_gflops: float | None = None, min_top1: float | None = None) -> dict[str, float]:
    """The champion's constraints: ``--max-gflops`` / ``--min-top1`` over the space's ``champion``."""
    given = {k: v for k, v in (("max_gflops", max_gflops), ("min_top1", min_top1)) if v is not None}
    if given and not {ACCURACY, COST} <= {n for n, _ in space.objectives}:
        raise ParetoError(f"--{next(iter(given)).replace('_', '-')}: the space {space.name} has no objectives "
                          f"{ACCURACY} and {COST} (a Pareto front to pick from)")
    if given.get("max_gflops", 1) < 0 or not 0 <= given.get("min_top1", 0) <= 1:
        raise ParetoError(f"--max-gflops must be >= 0 and --min-top1 in [0, 1], got {given}")
    return {**dict(space.champion), **given}


@dataclass(frozen=True)
class Row:
    trial_id: str
    values: dict[str, float]  # the objectives (and params_m when reported)
    finished: bool  # ran its whole schedule (early-stopped and failed trials did not)
    config: dict[str, Any]


def rows_of(results: Any, objectives: tuple[tuple[str, str], ...]) -> list[Row]:
    """One row per trial that reported the objectives, from Ray's results."""
    out = []
    for r in results:
        m = r.metrics or {}
        if "trial_id" not in m or any(m.get(n) is None for n, _ in objectives):
            continue
        values = {n: float(m[n]) for n, _ in objectives}
        if m.get("params_m") is not None:
            values["params_m"] = float(m["params_m"])
        out.append(Row(str(m["trial_id"]), values, r.error is None and bool(m.get("final")), dict(r.config or {})))
    return out


def front(rows: list[Row], objectives: tuple[tuple[str, str], ...]) -> list[Row]:
    """The finished trials no other finished trial dominates, by increasing cost (the last objective)."""
    done = {r.trial_id: r for r in rows if r.finished}
    if not done:
        return []
    points = {i: to_minimise([r.values[n] for n, _ in objectives], [m for _, m in objectives]) for i, r in done.items()}
    members = [done[i] for i in fronts(points)[0]]
    return sorted(members, key=lambda r: tuple(points[r.trial_id][::-1]))


def choose(members: list[Row], max_gflops: float | None = None,
           min_top1: float | None = None) -> tuple[Row | None, str]:
    """The champion among front ``members``: with ``max_gflops`` the most accurate within it; with
    ``min_top1`` the cheapest at or above it; with both, the most accurate within the budget among those
    at or above the floor; with neither, the most accurate. Ties: the cheaper, then the earlier trial.
    Returns the member (None when none meets the constraints) and a sentence saying why."""
    ok = [r for r in members if (max_gflops is None or r.values[COST] <= max_gflops)
          and (min_top1 is None or r.values[ACCURACY] >= min_top1)]
    limits = " and ".join(s for s in (f"{COST} <= {max_gflops:g}" if max_gflops is not None else "",
                                      f"{ACCURACY} >= {min_top1:g}" if min_top1 is not None else "") if s)
    if not ok:
        return None, f"no trial of the front has {limits}" if limits else "the front is empty"
    if min_top1 is not None and max_gflops is None:
        best = min(ok, key=lambda r: (r.values[COST], -r.values[ACCURACY]))
        why = f"the cheapest front member with {limits}"
    else:
        best = max(ok, key=lambda r: (r.values[ACCURACY], -r.values[COST]))
        why = f"the most accurate front member with {limits}" if limits else "the most accurate front member"
    return best, f"{why}: trial {best.trial_id}, {ACCURACY} {best.values[ACCURACY]:.4f}, " \
                 f"{COST} {best.values[COST]:.3f}"


def _plot(rows: list[Row], members: list[Row], chosen: Row | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for finished, style in ((True, {"color": "tab:blue", "label": "finished trial"}),
                            (False, {"facecolors": "none", "edgecolors": "tab:gray", "label": "stopped early"})):
        pts = [(r.values[COST], r.values[ACCURACY]) for r in rows if r.finished == finished]
        if pts:
            ax.scatter(*zip(*pts), s=28, **style)
    if members:
        ax.plot([r.values[COST] for r in members], [r.values[ACCURACY] for r in members], "-o", color="tab:red",
                label="Pareto front", zorder=3)
    if chosen is not None:
        ax.scatter([chosen.values[COST]], [chosen.values[ACCURACY]], marker="*", s=220, color="gold",
                   edgecolors="black", zorder=4, label="champion")
    for label, g, acc in PAPER_POINTS:
        ax.scatter([g], [acc], marker="D", color="black", zorder=3)
        ax.annotate(label + " (test)", (g, acc), textcoords="offset points", xytext=(-6, 6), ha="right", fontsize=8)
    ax.set_xlabel("GFLOPs per clip (forward, egomodel.cost)")
    ax.set_ylabel("top-1 (trials: validation; paper: test)")
    ax.set_title("Accuracy against inference cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _csv(rows: list[Row], members: list[Row], path: Path) -> None:
    on = {r.trial_id for r in members}
    names = sorted({k for r in rows for k in r.values})
    params = sorted({k for r in rows for k in r.config})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "finished", "pareto", *names, *params])
        for r in sorted(rows, key=lambda r: r.trial_id):
            w.writerow([r.trial_id, r.finished, r.trial_id in on, *(r.values.get(n, "") for n in names),
                        *(r.config.get(p, "") for p in params)])


def log_front(client: Any, parent_id: str, rows: list[Row], members: list[Row], chosen: Row | None,
              rule: str, why: str, run_ids: dict[str, str]) -> None:
    """The plot and CSV on the parent run (``pareto/``), the front's child runs tagged, the choice recorded."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pareto"
        out.mkdir()
        _plot(rows, members, chosen, out / "front.png")
        _csv(rows, members, out / "trials.csv")
        client.log_artifacts(parent_id, str(out), "pareto")
    for r in members:
        if r.trial_id in run_ids:
            client.set_tag(run_ids[r.trial_id], PARETO_TAG, "true")
    client.set_tag(parent_id, RULE_TAG, rule)
    client.set_tag(parent_id, CHOICE_TAG, why)
    client.log_metric(parent_id, "pareto_size", len(members))


def pick_from_front(results: Any, space: Any, client: Any, parent_id: str, rule: dict[str, float],
                    run_ids: dict[str, str]) -> Any | None:
    """A multi-objective search's end: the front on the parent run, the champion's Ray result picked from it
    under ``rule`` (:func:`champion_rule`); None when no front member meets it."""
    rows = rows_of(results, space.objectives)
    members = front(rows, space.objectives)
    chosen, why = choose(members, rule.get("max_gflops"), rule.get("min_top1"))
    text = ", ".join(f"{k}={v:g}" for k, v in rule.items()) or "none (the most accurate)"
    log_front(client, parent_id, rows, members, chosen, text, why, run_ids)
    print(f"Pareto front: {len(members)} of {len(rows)} trials; champion rule {text}: {why}")
    if chosen is None:
        return None
    return next(r for r in results if r.metrics and str(r.metrics.get("trial_id")) == chosen.trial_id)
