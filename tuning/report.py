"""``python -m tuning.report --parent RUN_ID [--tracking-uri URI]``: a search's results as the paper's
Table 3: one row per configuration, mean +- std of test top-1 over seeds, n, the paper's figure.

Rows come from the search's child runs (params ``model.variant``, ``model.ms_task``, ``train.seed``;
metric ``test_top1``, logged when the space sets ``evaluate_test: true``, as ``table3.yaml`` does).
The table is printed and logged on the parent run as ``report/table3.csv`` and ``report/table3.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from egomodel.cli import run_cli
from tuning.tracking.mlflow_runs import TRACKING_HELP, TrackingError, check_reachable, tracking_uri

# Table 3 of the paper: (variant, ms_task or None) -> (row name, top-1 %), in the paper's order
PAPER = {
    ("flow", None): ("Temporal-warp Flow", 42.24),
    ("convlstm", None): ("ConvLSTM", 52.56),
    ("attention", None): ("ConvLSTM with Attention", 57.75),
    ("two_stream", None): ("Two-joint Stream", 67.10),
    ("ms", "regression_mse"): ("MS Regression task with MSE", 48.27),
    ("ms", "regression_l1"): ("MS Regression task with L1", 50.86),
    ("ms", "classification"): ("MS Classification task", 60.77),
    ("feedback", "classification"): ("Our Variation", 65.09),
}
COLUMNS = ("configuration", "test_top1_mean", "test_top1_std", "n", "paper_top1")


class ReportError(ValueError):
    """The parent run is missing or its trials carry no test scores."""


def row_key(params: dict[str, str]) -> tuple[str, str | None]:
    variant = params.get("model.variant", "?")
    return variant, params.get("model.ms_task") if variant in ("ms", "feedback") else None


def table(runs: list[Any]) -> list[dict[str, Any]]:
    """Child runs -> rows (paper order first, then any other configuration), finished runs with test_top1 only."""
    scores: dict[tuple[str, str | None], list[float]] = {}
    for r in runs:
        if r.info.status == "FINISHED" and "test_top1" in r.data.metrics:
            scores.setdefault(row_key(r.data.params), []).append(100 * r.data.metrics["test_top1"])
    order = [k for k in PAPER if k in scores] + sorted(k for k in scores if k not in PAPER)
    rows = []
    for k in order:
        v = np.asarray(scores[k])
        name, paper = PAPER.get(k, (" / ".join(x for x in k if x), float("nan")))
        rows.append({"configuration": name, "test_top1_mean": float(v.mean()),
                     "test_top1_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v), "paper_top1": paper})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'configuration':<30} {'test top-1 %':>16} {'n':>3} {'paper %':>8}"]
    for r in rows:
        ours = f"{r['test_top1_mean']:.2f} ± {r['test_top1_std']:.2f}"
        paper = "" if np.isnan(r["paper_top1"]) else f"{r['paper_top1']:.2f}"
        lines.append(f"{r['configuration']:<30} {ours:>16} {r['n']:>3} {paper:>8}")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars: ours (mean, std as error bar) beside the paper's figure."""
    from egomodel.reporting.mosaic import pyplot

    plt = pyplot()

    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    ax.barh(y - 0.2, [r["test_top1_mean"] for r in rows], 0.4, xerr=[r["test_top1_std"] for r in rows],
            label="this search (mean ± std over seeds)")
    ax.barh(y + 0.2, [r["paper_top1"] for r in rows], 0.4, label="paper", alpha=0.6)
    ax.set_yticks(y, [f"{r['configuration']} (n={r['n']})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("test top-1 %")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(client: Any, parent_id: str) -> list[dict[str, Any]]:
    """Build, print and log the table on the parent run; returns its rows."""
    try:
        parent = client.get_run(parent_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own exception types for a missing run
        raise ReportError(f"--parent {parent_id}: no such MLflow run ({e.__class__.__name__})") from None
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=10000)
    rows = table(runs)
    if not rows:
        raise ReportError(f"no finished child run of {parent_id} has a test_top1 metric: run a space with "
                          "`evaluate_test: true` (such as table3)")
    print(format_table(rows))
    with tempfile.TemporaryDirectory() as d:
        write_csv(rows, Path(d) / "table3.csv")
        plot(rows, Path(d) / "table3.png")
        client.log_artifacts(parent_id, d, "report")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parent", required=True, help="the search's parent MLflow run id")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)

    def run(a: list[str] | None) -> int:
        args = p.parse_args(a)
        report(check_reachable(tracking_uri(args.tracking_uri)), args.parent)
        return 0

    return run_cli(run, argv, (ReportError, TrackingError))


if __name__ == "__main__":
    sys.exit(main())
