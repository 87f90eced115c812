"""Where a search's results go, said once at its start; what to type when its name is taken; and how to
find its best model afterwards, the MLflow way."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

from tuning.execution.study import redact
from tuning.tracking.mlflow_runs import SORT_METRIC

COMMAND = "python -m tuning.search"


def shown(place: str) -> str:
    """A store as a user finds it: ``./mlflow.db`` under this folder, an absolute path elsewhere, a URI as is
    (a password hidden)."""
    path = place[len("sqlite:///"):] if place.startswith("sqlite:///") else place
    if "://" in path:
        return redact(path)
    p, here = Path(path).expanduser().resolve(), Path.cwd().resolve()
    return f"./{p.relative_to(here)}" if p.is_relative_to(here) and p != here else str(p)


def results_line(tracking_uri: str, artifacts: str | None, study_uri: str, storage: str) -> str:
    """``Results: ./mlflow.db, ./mlartifacts, ./optuna.db, ./ray_results``: the places of this search."""
    art = shown(artifacts) if artifacts else "artifacts where the tracking server keeps them"
    return f"Results: {shown(tracking_uri)}, {art}, {shown(study_uri)}, {shown(storage)}"


def next_free(name: str, taken: Callable[[str], bool]) -> str:
    """``smoke`` -> ``smoke-2`` (``smoke-2`` -> ``smoke-3``), the first name ``taken`` says is free."""
    m = re.fullmatch(r"(.*)-(\d+)", name)
    stem, n = (m.group(1), int(m.group(2)) + 1) if m else (name, 2)
    while taken(f"{stem}-{n}"):
        n += 1
    return f"{stem}-{n}"


def _without_experiment(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--experiment":
            skip = True
        elif not a.startswith("--experiment="):
            out.append(a)
    return out


def rerun_refusal(argv: list[str], found: str, fresh: str) -> str:
    """The message when a new search is started under a name that has one (``found`` says where): the two
    commands to type next."""
    rest = _without_experiment(argv)
    resume = shlex.join([*argv, "--resume"])
    new = shlex.join([*rest, "--experiment", fresh])
    return (f"{found}; nothing was started.\n"
            f"  continue it:        {COMMAND} {resume}\n"
            f"  start a fresh one:  {COMMAND} {new}")


def search_runs_line(experiment: str) -> str:
    """One line of Python that lists the search's trials (its parent run left out), best first."""
    return (f"mlflow.search_runs(experiment_names=[{experiment!r}], filter_string=\"tags.mlflow.parentRunId != ''\", "
            f"order_by=[\"metrics.{SORT_METRIC} DESC\"])")


def best_model_lines(experiment: str, tracking_uri: str) -> list[str]:
    """Where to find the best trial after a search: the UI's column, and the same in Python."""
    return [f"  in the MLflow UI: experiment {experiment}, sort by {SORT_METRIC}; in Python, the trials best first:",
            f"    mlflow.set_tracking_uri({tracking_uri!r})", f"    {search_runs_line(experiment)}"]
