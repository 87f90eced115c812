"""The search's Optuna study in a storage: warm starts take the earlier trials that fit this space and
skip the others, under the same metric and mode; a new search never joins an existing study."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from tuning.execution.searcher import make_searcher, study_of
from tuning.execution.study import (
    METRIC_ATTR,
    StudyError,
    check_new_study,
    connect_uri,
    open_storage,
    redact,
    storage_uri,
    study_record,
    warm_trials,
)
from tuning.space import load_space

SMOKE = {"model.alpha": FloatDistribution(0.1, 10, log=True), "model.tau": FloatDistribution(0.0, 0.4),
         "train.stage3.lr": FloatDistribution(1e-5, 1e-2, log=True)}
RECORD = study_record(load_space("smoke"), [3, 2, 2], 1.0, "/data/gtea61", "fp1")  # what the searches ran on


def _earlier(storage, name="earlier", direction="maximize", metric="val_top1"):
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    study.set_user_attr(METRIC_ATTR, metric)
    for k, v in RECORD.items():
        study.set_user_attr(k, v)
    fits = {"model.alpha": 1.0, "model.tau": 0.2, "train.stage3.lr": 1e-3}
    study.add_trial(create_trial(params=fits, distributions=SMOKE, value=0.5))
    study.add_trial(create_trial(params={**fits, "model.alpha": 2.0}, distributions=SMOKE, value=0.3,
                                 state=TrialState.PRUNED, intermediate_values={4: 0.2, 5: 0.3}))
    wide = {**SMOKE, "model.alpha": FloatDistribution(0.01, 100, log=True)}
    study.add_trial(create_trial(params={**fits, "model.alpha": 50.0}, distributions=wide, value=0.9))  # out of range
    partial = {k: SMOKE[k] for k in ("model.alpha", "model.tau")}
    study.add_trial(create_trial(params={"model.alpha": 1.0, "model.tau": 0.1}, distributions=partial, value=0.4))
    extra = {**SMOKE, "model.hidden": CategoricalDistribution([16, 32])}  # a param this space does not search
    study.add_trial(create_trial(params={**fits, "model.hidden": 16}, distributions=extra, value=0.6))
    study.enqueue_trial(fits)  # waiting, not finished: never taken
    return study


def test_warm_start_adds_the_fitting_finished_trials_and_skips_the_rest(tmp_path):
    uri = storage_uri(f"sqlite:///{tmp_path / 'optuna.db'}")
    storage = open_storage(uri)
    _earlier(storage)
    space = load_space("smoke")
    warm, skipped, label = warm_trials(storage, "earlier", space, client=None, record=RECORD)
    assert (len(warm), skipped, label) == (3, 2, "study 'earlier'")
    study = study_of(make_searcher(space, 2, 0, storage, "now", warm))
    got = [(t.state, t.value, t.params.get("model.alpha")) for t in study.trials]
    assert got == [(TrialState.COMPLETE, 0.5, 1.0), (TrialState.PRUNED, 0.3, 2.0), (TrialState.COMPLETE, 0.6, 1.0)]
    assert "model.hidden" not in study.trials[2].params and study.user_attrs[METRIC_ATTR] == "val_top1"
    assert optuna.load_study(study_name="now", storage=uri).trials[1].intermediate_values == {4: 0.2, 5: 0.3}


def test_warm_start_refusals(tmp_path):
    storage = open_storage(storage_uri(f"sqlite:///{tmp_path / 'optuna.db'}"))
    space = load_space("smoke")
    _earlier(storage, "loss", direction="minimize", metric="val_loss")
    with pytest.raises(StudyError, match="minimizes val_loss; this search maximizes val_top1"):
        warm_trials(storage, "loss", space, client=None, record=RECORD)
    empty = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    for k, v in RECORD.items():
        empty.set_user_attr(k, v)
    with pytest.raises(StudyError, match="none of the 0 finished trials of study 'empty' fits"):
        warm_trials(storage, "empty", space, client=None, record=RECORD)
    with pytest.raises(StudyError, match="no Optuna study and no MLflow experiment"):
        warm_trials(storage, "nothing", space, client=None, record=RECORD)


def test_a_new_search_under_an_existing_study_name_is_refused(tmp_path):
    uri = storage_uri(f"sqlite:///{tmp_path / 'optuna.db'}")
    storage = open_storage(uri)
    check_new_study(storage, uri, "s", resume=False)  # nothing there yet
    optuna.create_study(study_name="s", storage=storage)
    with pytest.raises(StudyError, match="study named 's' already exists.*--resume"):
        check_new_study(storage, uri, "s", resume=False)
    check_new_study(storage, uri, "s", resume=True)


def test_storage_uri_and_unreachable_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_uri(None) == f"sqlite:///{tmp_path / 'optuna.db'}"  # beside the default mlflow.db
    assert storage_uri("sqlite:///sub/o.db") == f"sqlite:///{tmp_path / 'sub' / 'o.db'}"
    with pytest.raises(StudyError, match=r"--optuna-storage sqlite:////nonexistent/x\.db cannot be opened"):
        open_storage("sqlite:////nonexistent/x.db")


def test_the_study_defaults_to_the_tracking_stores_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage_uri(None, f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}") == f"sqlite:///{tmp_path / 'a' / 'optuna.db'}"
    assert storage_uri(None, "sqlite:///rel/track.db") == f"sqlite:///{tmp_path / 'rel' / 'optuna.db'}"
    assert storage_uri(None, "sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'optuna.db'}"
    # a tracking server: beside the database the cluster files give it (~/mlflow), made private when missing
    server = tmp_path / "home" / "mlflow"
    assert storage_uri(None, "http://10.0.0.5:5000") == f"sqlite:///{server / 'optuna.db'}"
    assert server.is_dir() and server.stat().st_mode & 0o777 == 0o700
    assert storage_uri(None, "postgresql://u@db/mlflow") == f"sqlite:///{tmp_path / 'optuna.db'}"  # not MLflow's DB
    assert storage_uri("postgresql://u@db/optuna", "http://10.0.0.5:5000") == "postgresql://u@db/optuna"


# SQLite with a user and password in its URL (SQLAlchemy's own SQLite refuses them): the path a database
# server's URI takes through the search, on a file
class _SQLiteWithLogin(SQLiteDialect_pysqlite):
    def create_connect_args(self, url):
        return super().create_connect_args(url._replace(username=None, password=None))


registry.register("sqlite.withlogin", __name__, "_SQLiteWithLogin")
SECRET = "s3cr3t-pw"


def _run_trial(config):  # a module-level trainable, as Ray pickles it by reference
    return {"val_top1": 0.0}


def test_a_password_in_the_storage_uri_is_never_pickled_nor_shown(tmp_path):
    from ray import tune

    from tuning.execution.searcher import PruneAwareOptunaSearch

    uri = f"sqlite+withlogin://user:{SECRET}@/{tmp_path / 'optuna.db'}"
    shown = f"sqlite+withlogin://user:***@/{tmp_path / 'optuna.db'}"
    assert redact(uri) == shown
    # not given to this process: no password (libpq would read ~/.pgpass or PGPASSWORD); given: the tag leads to it
    assert connect_uri(shown) == f"sqlite+withlogin://user@/{tmp_path / 'optuna.db'}"
    storage = open_storage(uri)
    assert connect_uri(shown) == uri
    searcher = make_searcher(load_space("smoke"), 2, 0, storage, "s")
    searcher.suggest("trial_1")
    (tmp_path / "saved").mkdir()
    searcher.save_to_dir(str(tmp_path / "saved"))
    tune.Tuner(_run_trial, tune_config=tune.TuneConfig(search_alg=searcher, metric="val_top1", mode="max"),
               run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "ray_results")))
    pickles = [*(tmp_path / "saved").glob("searcher-state-*.pkl"), tmp_path / "ray_results" / "exp" / "tuner.pkl"]
    assert len(pickles) == 2
    for f in pickles:
        data = f.read_bytes()
        assert SECRET.encode() not in data and b"user@" in data, f.name  # the URI is there, its password not

    restored = PruneAwareOptunaSearch()  # --resume: reconnects with the password this driver was given
    restored.restore_from_dir(str(tmp_path / "saved"))
    assert len(restored._ot_study.trials) == 1 and restored._storage.url == uri

    with pytest.raises(StudyError) as refused:
        check_new_study(storage, uri, "s", resume=False)
    assert shown in str(refused.value) and SECRET not in str(refused.value)
    with pytest.raises(StudyError) as unreachable:
        open_storage(f"sqlite+withlogin://user:{SECRET}@//nonexistent/x.db")
    assert "user:***@" in str(unreachable.value) and SECRET not in str(unreachable.value)
