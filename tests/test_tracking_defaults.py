"""Where the commands keep their records when no flag says: each of search, retrain, export and report
talks to ``$MLFLOW_TRACKING_URI`` when ``--tracking-uri`` is not given (as MLflow's own tools do), and
the search's Optuna study goes beside that store. No Ray starts: the search is stopped where it would
connect to Ray, after every store was chosen."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import optuna
import pytest

from egomodel.cli import run_cli
from tests.conftest import write_space
from tuning import export, report, retrain, search
from tuning.execution.study import STORAGE_TAG, STUDY_TAG, record_study


class Stopped(Exception):
    pass


def _stop_at_ray(address: str | None) -> None:
    raise Stopped


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An MLflow store with one run (made once: a new SQLite store costs seconds of migrations)."""
    folder = tmp_path_factory.mktemp("template")
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e", artifact_location=str(folder / "artifacts")))
    return folder / "mlflow.db", run.info.run_id


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template) -> tuple[Path, Path, str]:
    """The store the environment names (``env/mlflow.db``, holding one run), the working folder the command
    runs in, and the run's id."""
    store, work = tmp_path / "env", tmp_path / "work"
    store.mkdir(), work.mkdir()
    shutil.copy2(template[0], store / "mlflow.db")
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    return store, work, template[1]


COMMANDS = {  # each finds the run (so it read the store the environment names), then refuses it
    "retrain": (lambda run: retrain.main(["--run-id", run, "--seeds", "1"]), "the run has no egomodel parameters"),
    "export": (lambda run: run_cli(export.main, ["--run-id", run], (retrain.RetrainError,)),
               "has no checkpoint/*_best.pt artifact"),
    "report": (lambda run: report.main(["--parent", run]), "no finished child run of"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_run_commands_read_the_store_the_environment_names(command, places, capsys):
    store, work, run = places
    call, refusal = COMMANDS[command]
    assert call(run) == 2
    err = capsys.readouterr().err
    assert refusal in err and "not found" not in err and "no such" not in err, err
    assert not (work / "mlflow.db").exists(), f"{command} opened the working folder's store"


def test_the_search_logs_to_the_store_the_environment_names_and_keeps_its_study_beside_it(
        places, tiny_root, monkeypatch, capsys):
    store, work, _ = places
    monkeypatch.setattr(search, "connect_ray", _stop_at_ray)
    space = write_space(work)
    with pytest.raises(Stopped):
        search.main(["--space", str(space), "--data", str(tiny_root)])
    assert (store / "mlflow.db").is_file() and not (work / "mlflow.db").exists()
    assert f"Optuna study 'test_space' in sqlite:///{store / 'optuna.db'}" in capsys.readouterr().out
    assert (store / "optuna.db").is_file() and not (work / "optuna.db").exists()


def test_the_flag_wins_over_the_environment(places, monkeypatch, capsys):
    store, _, run = places
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/mlflow.db")
    assert report.main(["--parent", run, "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]) == 2
    assert f"no finished child run of {run}" in capsys.readouterr().err


def test_a_search_with_another_tracking_store_has_its_own_study(places, template, tiny_root, tmp_path, monkeypatch,
                                                                 capsys):
    """A study of the same name beside one store does not refuse a search logging to another store."""
    _, work, _ = places
    monkeypatch.setattr(search, "connect_ray", _stop_at_ray)
    space = write_space(work)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy2(template[0], tmp_path / name / "mlflow.db")
    optuna.create_study(study_name="test_space", storage=f"sqlite:///{tmp_path / 'a' / 'optuna.db'}")
    argv = ["--space", str(space), "--data", str(tiny_root), "--tracking-uri"]
    assert search.main([*argv, f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"]) == 2
    assert f"study named 'test_space' already exists in sqlite:///{tmp_path / 'a' / 'optuna.db'}" \
        in capsys.readouterr().err
    with pytest.raises(Stopped):  # past every check of the stores, where Ray would start
        search.main([*argv, f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}", "--storage", str(tmp_path / "b" / "rr")])
    assert (tmp_path / "b" / "optuna.db").is_file()


def test_the_parent_run_records_the_study_without_its_password(places):
    store, _, run = places
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    record_study(client, run, "postgresql://search:s3cr3t-pw@db.internal:5432/optuna", "ablation")
    tags = client.get_run(run).data.tags
    assert tags[STORAGE_TAG] == "postgresql://search:***@db.internal:5432/optuna" and tags[STUDY_TAG] == "ablation"
