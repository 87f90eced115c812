"""The search's Optuna study in a storage: warm starts take the earlier trials that fit this space and
skip the others, under the same metric and mode; a new search never joins an existing study."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tuning.execution.searcher import make_searcher, study_of
from tuning.execution.study import (
    METRIC_ATTR,
    StudyError,
    check_new_study,
    open_storage,
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
