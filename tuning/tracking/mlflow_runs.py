"""The search's side of MLflow outside the trial callback, used only by the driver.

- the connection: :func:`check_reachable` fails clearly before any trial runs when the store cannot be
  reached; :func:`quick_http` makes MLflow's HTTP client fail at once instead of retrying for minutes;
- the parent run, one per search: :func:`parent_run` creates it (and the experiment, its artifacts
  beside a SQLite store unless ``--artifact-root`` says where: :func:`artifact_root`), or finds it again
  on ``--resume`` (:func:`find_parent`, by its ``egosearch.ray_path`` tag);
- the end of a search: :func:`log_search_summary` logs Optuna's plots and the CSV of all trials under
  ``search/``, or raises :class:`TrackingError` while writes of :class:`tuning.tracking.callback.MlflowCallback`
  are still undelivered (:func:`undelivered`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from tuning.space.types import SearchSpace
from tuning.tracking.tags import PARENT_TAG
from tuning.tracking.write_retry import one_line

# parent run id -> number of writes the callback could not deliver by the end of the experiment
_UNDELIVERED: dict[str, int] = {}


class TrackingError(RuntimeError):
    pass


NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown)
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable, read by its client and its CLI
WORKDIR_ENV = "EGOSEARCH_WORKDIR"  # where the default stores live (mlflow.db, mlartifacts, optuna.db, ray_results)
TRACKING_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in $EGOSEARCH_WORKDIR "
                 "or this folder)")


def workdir(given: str | None = None) -> Path:
    """The folder of the default stores: ``--workdir`` when given, else ``$EGOSEARCH_WORKDIR``, else this one."""
    return Path(given or os.environ.get(WORKDIR_ENV) or ".").expanduser().resolve()


def tracking_uri(given: str | None, work: str | None = None) -> str:
    """The store a command talks to, chosen as MLflow's own tools choose it: ``--tracking-uri`` when
    given, else ``$MLFLOW_TRACKING_URI``, else a SQLite ``mlflow.db`` in :func:`workdir` (``--workdir``
    ``work``, ``$EGOSEARCH_WORKDIR`` or the working folder)."""
    return given or os.environ.get(TRACKING_ENV) or f"sqlite:///{workdir(work) / 'mlflow.db'}"


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then put back what was there (or nothing)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quick_http(timeout: int = 10) -> Iterator[None]:
    """MLflow's HTTP client fails at once instead of retrying with back-off for minutes."""
    with environ({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}):
        yield


def check_reachable(uri: str) -> MlflowClient:
    """Fail before any trial starts if the tracking store cannot be reached. A refused connection fails at once;
    an answer may take up to 30 s (a tracking server that has just started on a busy head, its basic-auth app's
    first request, took over 10 s in the cluster rehearsal, tests/test_rehearsal.py)."""
    with quick_http(30):
        try:
            client = MlflowClient(uri)  # an unsupported scheme or a retired file store fails here
            client.search_experiments(max_results=1)
        except Exception as e:  # connection refused, DNS, bad scheme, unwritable sqlite
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            raise TrackingError(f"MLflow tracking URI {uri} is not reachable: {type(e).__name__}: {msg}") from None
    return client


ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store (the name mlflow server gives its artifacts folder)


def artifact_root(tracking_uri: str, given: str | None) -> str | None:
    """Where a new experiment keeps its artifacts: ``given`` (a folder, made absolute, or a URI such as
    ``s3://BUCKET/PREFIX``), else ``mlartifacts/`` beside a SQLite store, never the ``./mlruns`` of
    the folder the search was started from (MLflow's default). None: the tracking server decides."""
    if given:
        return given if "://" in given else str(Path(given).expanduser().resolve())
    if tracking_uri.startswith("sqlite:///"):
        db = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
        return str(Path(db).expanduser().resolve().parent / ARTIFACTS_DIR)
    return None


def check_artifact_root(artifacts: str) -> None:
    """An ``--artifact-root`` MLflow cannot write fails before any trial starts: a local folder is made,
    a URI's artifact repository is opened and listed (its client library installed, the bucket there)."""
    try:
        if "://" not in artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            if not os.access(artifacts, os.W_OK):
                raise PermissionError("not writable")
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with quick_http():
            get_artifact_repository(artifacts).list_artifacts()
    except Exception as e:  # a missing boto3, a bucket that does not exist, an unwritable folder
        raise TrackingError(f"--artifact-root {artifacts}: MLflow cannot store artifacts there: "
                            f"{one_line(e)}") from None


def experiment_id(client: MlflowClient, name: str, artifacts: str | None, explicit: bool = False) -> str:
    """The experiment ``name``, created with its artifacts at ``artifacts`` when new. An existing one keeps
    where it stores them; an explicit ``--artifact-root`` elsewhere is refused."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifacts)
    have = exp.artifact_location.removeprefix("file://")
    if explicit and artifacts and have.rstrip("/") != artifacts.rstrip("/"):
        raise TrackingError(f"--artifact-root {artifacts}: the MLflow experiment {name!r} already keeps its artifacts "
                            f"at {exp.artifact_location}; pass another --experiment name for a new location")
    return exp.experiment_id


def find_parent(client: MlflowClient, experiment: str, ray_path: str) -> Any | None:
    """The newest parent run of the search saved at ``ray_path``, or None."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{ray_path}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0] if found else None


SORT_METRIC = "best_val_top1"  # on each finished trial's run: the validation top-1 of the weights it kept


def run_link(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, relative to the UI's address (as a run's description renders it)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def parent_note(space: SearchSpace, experiment_id: str, best_run_id: str | None = None) -> str:
    """The parent run's description (Markdown, ``mlflow.note.content``): the space's first line, which column
    ranks the trials, and a link to the best trial's run once the search has one."""
    note = [space.text.split("\n", 1)[0].lstrip("# ").strip() or f"search of the space {space.name}", "",
            f"Sort the child runs (the trials) by **`{SORT_METRIC}`**, highest first: a finished trial's "
            "validation top-1 of the weights it kept, the ones a champion is made of (its last epoch's `val_top1` "
            "can be lower; a trial the scheduler stopped has none)."]
    if space.objectives:
        note[-1] += (" This search has objectives (" + ", ".join(f"`{n}` {m}" for n, m in space.objectives)
                     + "): its champion is picked from their Pareto front.")
    if best_run_id:
        note += ["", f"Best trial: [{best_run_id}]({run_link(experiment_id, best_run_id)})"]
    return "\n".join(note)


def parent_run(
    client: MlflowClient, experiment: str, ray_path: str, space: SearchSpace, fingerprint: str, resume: bool,
    data_root: str = "", artifacts: str | None = None, params: dict[str, Any] | None = None,
) -> str:
    """The search's parent run: found again on ``--resume``, created otherwise (with the experiment, its
    artifacts at ``artifacts``, by default beside a SQLite store; ``params``: the search's own settings).
    (That the data did not change since the search started is checked before, by
    :func:`tuning.search.check_same_data`.)"""
    found = find_parent(client, experiment, ray_path) if resume else None
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    exp_id = experiment_id(client, experiment, artifacts or artifact_root(client.tracking_uri, None))
    run = client.create_run(exp_id, run_name=f"search-{space.name}", tags={
        PARENT_TAG: ray_path, "git_revision": git_revision(), "data_fingerprint": fingerprint,
        **({"data_root": data_root} if data_root else {}),
        "space": space.name, NOTE_TAG: parent_note(space, exp_id),
    })
    rid = run.info.run_id
    client.log_text(rid, space.text, f"space/{space.path.name}")
    settings = {"metric": space.metric, "mode": space.mode, "num_samples": space.num_samples, **(params or {})}
    for k, v in settings.items():
        client.log_param(rid, k, v)
    return rid


# -------------------------------------------------------------------------- the end of a search
def undelivered(parent_id: str) -> int:
    """Writes of this search that the callback could not deliver by the end of the experiment."""
    return _UNDELIVERED.get(parent_id, 0)


def note_undelivered(parent_id: str, writes: int) -> None:
    """The callback says, at the end of the experiment, how many writes it still holds (0: none)."""
    if writes:
        _UNDELIVERED[parent_id] = writes
    else:
        _UNDELIVERED.pop(parent_id, None)


def log_search_summary(client: MlflowClient, parent_id: str, results: Any, space: SearchSpace) -> list[str]:
    """At the end of a search: make sure MLflow has every trial, then log Optuna's plots and the
    CSV of all trials to the parent run under ``search/``.

    Raises TrackingError (a clean, resumable stop) when trial writes are still undelivered or the
    store is unreachable; a plot that cannot be drawn is a note in ``search/notes.txt``, never an error.
    Returns the artifact paths logged.
    """
    hint = ("; the search's results are kept in its Ray state: once the server is back, run the same command "
            "with --resume to deliver them, register the champion and log the search's plots")
    n = undelivered(parent_id)
    if n:
        raise TrackingError(f"MLflow {client.tracking_uri} is unreachable: {n} writes of this search were not "
                            f"delivered{hint}")
    try:
        check_reachable(client.tracking_uri)
    except TrackingError as e:
        raise TrackingError(f"{e}{hint}") from None
    from tuning.tracking import study_plots

    exp_path = getattr(results, "experiment_path", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "search"
        notes = study_plots.search_artifacts(client, parent_id, space, exp_path, out)
        if notes:
            (out / "notes.txt").write_text("\n".join(notes) + "\n")
            for note in notes:
                print(f"note: {note}")
        logged = sorted(f"search/{f.name}" for f in out.iterdir())
        with quick_http(timeout=60):
            try:
                client.log_artifacts(parent_id, str(out), "search")
            except Exception as e:  # noqa: BLE001
                raise TrackingError(f"could not log the search's plots to MLflow: {one_line(e)}{hint}") from None
    return logged
