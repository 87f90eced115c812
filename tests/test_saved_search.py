"""A search saved by the code before the module move (``tests/fixtures/saved_search_v1``) restores and
resumes: the searcher state, the tuner with its MLflow callback, and the callback's queued writes."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tuning.execution.searcher import PruneAwareOptunaSearch
from tuning.space.load import load_space
from tuning.space.sampling import DefineByRun
from tuning.space.types import Param, Scheduler, SearchSpace
from tuning.tracking.callback import MlflowCallback, Op
from tuning.tracking.champion import EgoRNNModel

FIXTURE = Path(__file__).parent / "fixtures" / "saved_search_v1"
EXPERIMENT = "searcher_state_v1"


SAVED_STORE = Path("/tmp/egofix")  # the tracking store the saved callback names: restoring it opens the database


@pytest.fixture
def saved(tmp_path: Path) -> Any:
    """A copy of the saved experiment folder (Ray writes into the folder it restores). The MLflow store
    that its restored callback creates at the path it was saved with is removed after the test, unless it
    was there before."""
    existed = SAVED_STORE.exists()
    yield Path(shutil.copytree(FIXTURE / EXPERIMENT, tmp_path / EXPERIMENT))
    if not existed:
        shutil.rmtree(SAVED_STORE, ignore_errors=True)


def finished_trials(exp: Path) -> dict[str, float]:
    """Ray trial id -> the final val_top1 each trial reported, from its result.json."""
    out = {}
    for f in exp.glob("run_trial_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[rows[-1]["trial_id"]] = rows[-1]["val_top1"]
    return out


# the module paths Ray's saved state names, and the classes it must find there
PICKLED = {
    "tuning.sampling.DefineByRun": DefineByRun,
    "tuning.space.DefineByRun": DefineByRun,
    "tuning.space.Param": Param,
    "tuning.space.SearchSpace": SearchSpace,
    "tuning.space.Scheduler": Scheduler,
    "tuning.searcher.PruneAwareOptunaSearch": PruneAwareOptunaSearch,
    "tuning.tracking.MlflowCallback": MlflowCallback,
    "tuning.tracking.Op": Op,
    "tuning.champion.EgoRNNModel": EgoRNNModel,
}


def saved_names() -> set[str]:
    """Every module.name of ours that the fixture's pickles name."""
    names: set[str] = set()

    class Names(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if module.split(".")[0] in ("tuning", "egomodel"):
                names.add(f"{module}.{name}")
            return super().find_class(module, name)

    for f in FIXTURE.rglob("*.pkl"):
        with f.open("rb") as fh:
            Names(fh).load()
    return names


def test_the_old_module_paths_give_todays_classes():
    """Pickle looks a class up by module and name: at the old paths it must find the same class objects
    (re-exported, not copies), or isinstance checks and the pickles Ray writes next would differ."""
    import importlib

    assert saved_names() <= set(PICKLED)
    for path, cls in PICKLED.items():
        module, name = path.rsplit(".", 1)
        assert getattr(importlib.import_module(module), name) is cls, path


def test_the_saved_searcher_state_restores_with_its_study_and_space(saved):
    searcher = PruneAwareOptunaSearch()
    searcher.restore_from_dir(str(saved))
    smoke = load_space("smoke")
    fn = searcher._space
    assert type(fn) is DefineByRun  # the class at its old path is today's class, not a copy
    assert fn.params == smoke.params and all(type(p) is Param for p in fn.params)

    study = searcher._ot_study
    trials = finished_trials(saved)
    assert len(trials) == 3 and set(searcher._ot_trials) == set(trials)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert sorted(t.value for t in study.trials) == sorted(trials.values())
    names = {p.key for p in smoke.params}
    assert all(set(t.params) == names for t in study.trials)

    # the define-by-run function from the pickle still suggests every param, in its range
    fresh = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = fresh.ask()
    fn(trial)
    assert set(trial.params) == names
    # and TPE goes on from the saved history: the next suggestion is a fourth trial of the same study
    config = searcher.suggest("next_trial")
    assert set(config) == names and len(study.trials) == 4
    for p in smoke.params:
        assert p.low <= config[p.key] <= p.high


def test_the_saved_tuner_restores_with_its_searcher_and_mlflow_callback(saved):
    from ray import tune

    from tuning.execution.trainable import run_trial

    tuner = tune.Tuner.restore(str(saved), run_trial)
    results = tuner.get_results()
    assert len(results) == 3 and not results.errors
    best = results.get_best_result()
    assert best.metrics["val_top1"] == max(finished_trials(saved).values())

    inner = tuner._local_tuner
    assert type(inner._tune_config.search_alg.searcher) is PruneAwareOptunaSearch
    (callback,) = inner._run_config.callbacks
    assert type(callback) is MlflowCallback
    space = callback.space
    assert type(space) is SearchSpace and space.name == "smoke" and space.params == load_space("smoke").params


def test_the_callbacks_queued_writes_restore():
    state = pickle.loads((FIXTURE / "callback-states-pending.pkl").read_bytes())
    callback = MlflowCallback("sqlite:///unused.db", "parent0", load_space("smoke"), {})
    callback.set_state(state[0])
    assert callback.pending == 2 and all(type(op) is Op for op in callback._pending)
    assert [op.kind for op in callback._pending] == ["batch", "terminate"]


def test_the_champion_model_registered_before_the_move_unpickles():
    """MLflow keeps the champion's pyfunc wrapper as ``python_model.pkl`` (cloudpickle, by reference)."""
    model = pickle.loads((FIXTURE / "champion" / "python_model.pkl").read_bytes())
    assert type(model) is EgoRNNModel


def test_a_search_saved_before_the_move_resumes(saved):
    """Ray's own resume path: tuner.pkl, the searcher state and the callback state are read back and the
    (finished) search ends again; Ray saves the searcher anew with today's code."""
    import ray
    from ray import tune

    from tuning.execution.trainable import run_trial

    before = set(saved.glob("searcher-state-*.pkl"))
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner.restore(str(saved), tune.with_parameters(run_trial, setup=None))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 3 and not results.errors
    searcher = tuner._local_tuner._tune_config.search_alg.searcher
    assert len(searcher._ot_study.trials) == 3
    (again,) = set(saved.glob("searcher-state-*.pkl")) - before
    assert type(pickle.loads(again.read_bytes())["_space"]) is DefineByRun
