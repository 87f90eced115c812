"""Search decisions a user relies on: what Optuna learns from stopped trials, which earlier studies may
warm a search, MLflow's epochs after ``--resume``, the ranking against the registered weights, a
storage failure while telling Optuna, and one champion version per search."""

from __future__ import annotations

import mlflow
import pytest

from tests.test_reliability import FakeTrial, children, epoch_result, final_checkpoint, new_callback, steps
from tuning.space import load_space
from tuning.tracking.callback import MlflowCallback


@pytest.fixture
def space(tmp_path):
    from tests.conftest import write_space

    return load_space(write_space(tmp_path))


# ------------------------------------------------------------------------ MLflow after --resume
def test_resume_logs_each_epoch_and_the_final_batch_once(tmp_path, space):
    """Epochs 1-5 reached MLflow, but Ray saved the callback's state after epoch 3 and the driver was then
    killed; the resumed trial replays 4-6 from its checkpoint and finishes: every metric has each step
    once, the summary too, and a second resume that replays the final result adds nothing."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cb, parent = new_callback(uri, space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [t], t)
    for g in (1, 2, 3):
        cb.on_trial_result(0, [t], t, epoch_result(g))
    assert cb.flush()
    saved = cb.get_state()  # Ray saves the experiment here
    for g in (4, 5):
        cb.on_trial_result(0, [t], t, epoch_result(g))
    assert cb.flush()  # delivered, then the driver is killed before the next save

    resumed = MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0})
    resumed.set_state(saved)
    for g in (4, 5):  # replayed: what MLflow holds stays
        resumed.on_trial_result(0, [t], t, {**epoch_result(g), "train_loss": 9.0})
    resumed.on_trial_result(0, [t], t, epoch_result(6))
    t.last_result = epoch_result(7, final=True)
    resumed.on_trial_result(0, [t], t, t.last_result)
    assert resumed.flush()
    again = MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0})
    again.set_state(saved)  # killed once more before any save: the final result comes again
    again.on_trial_result(0, [t], t, {**t.last_result, "trial_wall_s": 99.0})
    t.checkpoint = final_checkpoint(tmp_path)
    again.on_trial_complete(0, [t], t)
    assert again.flush()

    client = mlflow.MlflowClient(uri)
    rid = children(client, parent)["t"].info.run_id
    for key in ("train_loss", "val_top1", "stage", "lr"):
        assert steps(client, rid, key) == list(range(1, 8)), key
    assert 9.0 not in {m.value for m in client.get_metric_history(rid, "train_loss")}
    assert [(m.step, m.value) for m in client.get_metric_history(rid, "best_val_top1")] == [(7, 0.3)]
    assert len(client.get_metric_history(rid, "trial_wall_s")) <= 1
    assert client.get_run(rid).info.status == "FINISHED"


# ------------------------------------------------------- what multi-objective TPE learns from stops
def _mo_searcher():
    from tuning.execution.searcher import make_searcher

    return make_searcher(load_space("wearable"), max_concurrent=8, seed=0).searcher


def _stopped(epoch: int, top1: float, gflops: float) -> dict:
    return {"final": False, "global_epoch": epoch, "total_epochs": 20, "val_top1": top1, "gflops": gflops}


def test_mo_tpe_ranks_stopped_trials_by_what_they_measured_at_their_rung():
    """One finished trial and three that MOASHA stopped: TPE's "good" set takes the stopped trial that
    dominates the others at its rung, never the first-numbered one by default."""
    from optuna.samplers._tpe.sampler import _split_trials
    from optuna.trial import TrialState

    from tuning.execution.study import STOPPED_ATTR

    s = _mo_searcher()
    results = {"done": {"final": True, "global_epoch": 20, "total_epochs": 20, "val_top1": 0.9, "gflops": 10.0},
               "worse": _stopped(4, 0.3, 5.0), "better": _stopped(4, 0.6, 5.0), "worst": _stopped(2, 0.2, 6.0)}
    for tid in results:
        s.suggest(tid)
    for tid, r in results.items():
        s.on_trial_complete(tid, r)
    study = s._ot_study
    trials = study.get_trials(deepcopy=False)
    by = {t.user_attrs["ray_trial_id"]: t for t in trials}
    assert by["better"].values == [0.6, 5.0] and by["better"].user_attrs[STOPPED_ATTR] == 4
    assert by["done"].state == TrialState.COMPLETE and STOPPED_ATTR not in by["done"].user_attrs
    below, above = _split_trials(study, trials, 2)
    assert {t.user_attrs["ray_trial_id"] for t in below} == {"done", "better"}


def test_a_failing_tell_never_stops_the_search_and_is_told_later(capsys):
    """The study's database goes away as a stopped trial is told: the driver goes on, says so, and the
    trial is told at the searcher's next event."""
    from optuna.trial import TrialState

    from tuning.execution.searcher import make_searcher

    s = make_searcher(load_space("smoke"), max_concurrent=2, seed=0).searcher
    s.suggest("a")
    s.suggest("b")
    real = s._ot_study.tell

    def down(*a, **k):
        raise ConnectionError("database unavailable")

    s._ot_study.tell = down
    s.on_trial_complete("a", {"final": False, "global_epoch": 2, "total_epochs": 7, "val_top1": 0.1})
    assert "could not be told that Ray trial a ended PRUNED" in capsys.readouterr().out
    s._ot_study.tell = real
    s.on_trial_result("b", {"final": False, "global_epoch": 1, "total_epochs": 7, "val_top1": 0.2})
    a = s._ot_study.trials[0]
    assert a.state == TrialState.PRUNED and a.intermediate_values == {2: 0.1}
    assert a.user_attrs["egosearch.stopped_at_epoch"] == 2
