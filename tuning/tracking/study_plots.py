"""What a search looks like as a whole: Optuna's plots and one CSV row per trial.

- :func:`load_study`: the Optuna study of a finished (or interrupted) search, from the searcher state
  Ray saved in the experiment folder (a local path or a URI such as ``s3://...``).
- :func:`study_plots`: optimisation history, parameter importances and parallel coordinates with
  ``optuna.visualization.matplotlib``; a plot that the study cannot give yet (too few complete
  trials, a single parameter value) is skipped with a note, never an error.
- :func:`trials_table`: every trial of a search from its MLflow child runs (trial id, run id, status,
  outcome, scores, error, the searched parameters) joined with the Optuna trial number and state.
- :func:`search_artifacts`: all of the above into one folder; :func:`tuning.tracking.mlflow_runs.log_search_summary`
  logs it to the parent run under ``search/``.
"""

from __future__ import annotations

import csv
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuning.space.types import SearchSpace
from tuning.tracking.tags import OUTCOME_TAG, TRIAL_TAG

SEARCHER_PATTERN = "searcher-state-"
TRIALS_CSV = "trials.csv"
PLOT_FILES = {
    "history": "optuna_history.png",
    "importances": "optuna_importances.png",
    "parallel": "optuna_parallel_coordinate.png",
}


def _searcher_dir(exp_path: str, tmp: Path) -> str:
    """A local folder holding the searcher state: the experiment folder, or a copy of its state file."""
    if "://" not in exp_path:
        return exp_path
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(exp_path)
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.base_name
        if name.startswith(SEARCHER_PATTERN) and name.endswith(".pkl"):
            with fs.open_input_stream(info.path) as src:
                (tmp / name).write_bytes(src.readall())
    return str(tmp)


def load_study(exp_path: str | Path) -> tuple[optuna.Study, dict[str, int]]:
    """The study and a map Ray trial id -> Optuna trial number."""
    from ray.tune.search.optuna import OptunaSearch

    with tempfile.TemporaryDirectory() as tmp:
        searcher = OptunaSearch()
        searcher.restore_from_dir(_searcher_dir(str(exp_path), Path(tmp)))
    numbers = {tid: t.number for tid, t in getattr(searcher, "_ot_trials", {}).items()}
    return searcher._ot_study, numbers


def _save(ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def study_plots(study: optuna.Study, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Optuna's three plots as PNGs; returns (files written, notes on the plots skipped)."""
    from egomodel.reporting.mosaic import pyplot

    pyplot()  # the Agg backend
    from optuna.visualization import matplotlib as ovm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    states = ", ".join(f"{n} {s.name.lower()}" for s, n in _count_states(study).items()) or "no trials"
    files: list[Path] = []
    notes: list[str] = []
    if not complete:
        return files, [f"no Optuna plots: the study has no complete trial ({states})"]
    varied = [k for k in sorted({k for t in complete for k in t.params})
              if len({json.dumps(t.params.get(k), default=str) for t in complete}) > 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib backend is "experimental"
        # a multi-objective study (tuning.space.objectives): the plots show the first objective, val_top1
        first = {"target": lambda t: t.values[0]} if len(study.directions) > 1 else {}
        jobs = [("history", lambda: ovm.plot_optimization_history(study, target_name="val_top1", **first))]
        if len(complete) < 2 or not varied:
            notes.append(f"no parameter importances: they need at least 2 complete trials with different "
                         f"parameter values (the study has {states})")
        else:
            jobs.append(("importances", lambda: ovm.plot_param_importances(study, **first)))
        jobs.append(("parallel", lambda: ovm.plot_parallel_coordinate(study, target_name="val_top1", **first)))
        for key, draw in jobs:
            try:
                files.append(_save(draw(), out / PLOT_FILES[key]))
            except Exception as e:  # noqa: BLE001 - a missing plot is a note, never a failed search
                import matplotlib.pyplot as plt

                plt.close("all")
                notes.append(f"no {key} plot: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return files, notes


def _count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts: dict[TrialState, int] = {}
    for t in study.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def trials_table(
    client: Any, parent_id: str, space: SearchSpace, path: str | Path, study: optuna.Study | None = None,
    numbers: dict[str, int] | None = None,
) -> Path:
    """One CSV row per trial (child run of ``parent_id``), oldest first."""
    exp_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=10000,
                              order_by=["attributes.start_time ASC"])
    keys = [p.key for p in space.params]
    by_number = {t.number: t for t in study.trials} if study is not None else {}
    numbers = numbers or {}
    head = ["trial_id", "run_id", "run_name", "status", "outcome", "val_top1", "last_epoch_val_top1",
            "stopped_at_epoch", "retries", "error", "optuna_number", "optuna_state", *keys]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in runs:
            tags, m, p = r.data.tags, r.data.metrics, r.data.params
            tid = tags.get(TRIAL_TAG, "")
            number = numbers.get(tid)
            ot = by_number.get(number) if number is not None else None
            w.writerow([
                tid, r.info.run_id, r.info.run_name, r.info.status, tags.get(OUTCOME_TAG, ""),
                m.get("best_val_top1", ""), m.get("val_top1", ""), tags.get("stopped_at_epoch", ""),
                tags.get("egosearch.retries", ""), tags.get("error", ""),
                "" if number is None else number, ot.state.name if ot is not None else "",
                *[p.get(k, "") for k in keys],
            ])
    return path


def search_artifacts(
    client: Any, parent_id: str, space: SearchSpace, exp_path: str | Path | None, out_dir: str | Path
) -> list[str]:
    """Plots and CSV of a search into ``out_dir``; returns notes on what was skipped and why."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    study = numbers = None
    if exp_path is None:
        notes.append("no Optuna plots: the search's experiment folder is unknown")
    else:
        try:
            study, numbers = load_study(exp_path)
        except Exception as e:  # noqa: BLE001
            notes.append(f"no Optuna plots: cannot read the searcher state in {exp_path}: {type(e).__name__}: {e}")
    if study is not None:
        _, more = study_plots(study, out)
        notes += more
    try:
        trials_table(client, parent_id, space, out / TRIALS_CSV, study, numbers)
    except Exception as e:  # noqa: BLE001
        notes.append(f"no {TRIALS_CSV}: {type(e).__name__}: {e}")
    return notes
