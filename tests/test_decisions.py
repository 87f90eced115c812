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


# ------------------------------------------------------------------ warm starts from comparable studies
def _source(storage, name, record, directions=("maximize",), pruned_at=None):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from tuning.execution.study import METRIC_ATTR

    study = optuna.create_study(study_name=name, storage=storage, directions=list(directions))
    study.set_user_attr(METRIC_ATTR, "val_top1")
    for k, v in (record or {}).items():
        study.set_user_attr(k, v)
    dists = {"model.alpha": FloatDistribution(0.1, 10, log=True), "model.tau": FloatDistribution(0.0, 0.4),
             "train.stage3.lr": FloatDistribution(1e-5, 1e-2, log=True)}
    params = {"model.alpha": 1.0, "model.tau": 0.2, "train.stage3.lr": 1e-3}
    values = [0.5] * len(directions)
    study.add_trial(create_trial(params=params, distributions=dists, values=values))
    if pruned_at:
        study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                                     intermediate_values={pruned_at: 0.9}))
    return study


def test_warm_start_refuses_another_data_set_schedule_or_objectives_naming_both(tmp_path):
    from tuning.execution.study import StudyError, open_storage, storage_uri, study_record, warm_trials

    storage = open_storage(storage_uri(f"sqlite:///{tmp_path / 'optuna.db'}"))
    space = load_space("smoke")
    ours = study_record(space, [30, 20, 20], 1.0, "/data/gtea61", "fp-gtea")
    smoke = study_record(space, [3, 2, 2], 0.1, "/data/gtea61", "fp-gtea")  # a shorter schedule, same data
    synthetic = study_record(space, [30, 20, 20], 1.0, "/cache/synthetic", "fp-synth")
    _source(storage, "short", smoke, pruned_at=6)
    _source(storage, "synth", synthetic)
    _source(storage, "legacy", None)
    _source(storage, "mo", synthetic, directions=("maximize", "minimize"))
    with pytest.raises(StudyError, match=r"study 'short' ran the schedule train.epochs_scale 0.1, epochs per stage "
                       r"\[3, 2, 2\]; this search runs train.epochs_scale 1.0, epochs per stage \[30, 20, 20\]"):
        warm_trials(storage, "short", space, None, ours)
    with pytest.raises(StudyError, match=r"ran on the data at /cache/synthetic \(fingerprint fp-synth\); this search "
                       r"uses /data/gtea61 \(fingerprint fp-gtea\)"):
        warm_trials(storage, "synth", space, None, ours)
    with pytest.raises(StudyError, match="does not record the data set and schedule"):
        warm_trials(storage, "legacy", space, None, ours)
    with pytest.raises(StudyError, match=r"study 'mo' is a multi-objective study"):
        warm_trials(storage, "mo", space, None, ours)


def test_warm_start_takes_pruned_trials_only_from_the_same_schedule(tmp_path):
    """Same data and schedule: the pruned trial comes with its epochs, which this search's epochs match."""
    from optuna.trial import TrialState

    from tuning.execution.searcher import make_searcher, study_of
    from tuning.execution.study import DATA_ATTR, SCHEDULE_ATTR, open_storage, storage_uri, study_record, warm_trials

    storage = open_storage(storage_uri(f"sqlite:///{tmp_path / 'optuna.db'}"))
    space = load_space("smoke")
    ours = study_record(space, [3, 2, 2], 1.0, "/data/gtea61", "fp-gtea")
    _source(storage, "same", ours, pruned_at=5)
    warm, _, _ = warm_trials(storage, "same", space, None, ours)
    assert [(t.state, t.intermediate_values) for t in warm] == [(TrialState.COMPLETE, {}),
                                                               (TrialState.PRUNED, {5: 0.9})]
    study = study_of(make_searcher(space, 1, 0, storage, "now", warm, ours))
    assert study.user_attrs[DATA_ATTR] == {"fingerprint": "fp-gtea", "root": "/data/gtea61"}
    assert study.user_attrs[SCHEDULE_ATTR] == {"epochs_scale": 1.0, "stage_epochs": [3, 2, 2]}


# ------------------------------------------------------------------- one champion version per search
def test_register_makes_one_version_per_trial_run(tmp_path, monkeypatch):
    """A --resume that reaches the end again (or a driver stopped between registering and the alias):
    the version already made from the champion's run gets the alias; nothing is logged or registered."""
    from tuning.tracking import champion

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run, other = (client.create_run(exp).info.run_id for _ in range(2))
    client.create_registered_model("egosearch-e")
    client.create_model_version("egosearch-e", f"runs:/{other}/model", other)  # an earlier search's champion
    made = client.create_model_version("egosearch-e", f"runs:/{run}/model", run).version  # this search's

    # a second registration would log the (missing) checkpoint and fail, or add a third version
    uri = champion.register(client, run, tmp_path / "stage3_best.pt", "egosearch-e")
    assert uri == "models:/egosearch-e@champion"
    assert str(client.get_model_version_by_alias("egosearch-e", "champion").version) == str(made) == "2"
    assert len(client.search_model_versions("name = 'egosearch-e'")) == 2


# ------------------------------------------------- the ranking agrees with the registered weights
def _finished(trial_id: str, rows: list[tuple[float, float]], best_epoch: int):
    """A finished one-stage trial: (val_top1, val_loss) per epoch; the engine kept ``best_epoch``."""
    from types import SimpleNamespace

    from tuning.execution.trainable import kept_score

    history = [{"stage": 1, "epoch": e, "global_epoch": e, "val_top1": t, "val_loss": loss}
               for e, (t, loss) in enumerate(rows, 1)]
    final = {"val_top1": rows[best_epoch - 1][0], "stages": {"1": {"best_epoch": best_epoch}}, "history": history}
    last = {**history[-1]}
    metrics = {**last, "epoch_val_top1": last["val_top1"], "val_top1": final["val_top1"], "final": True,
               "trial_id": trial_id, **kept_score("val_loss", final, last)}
    return SimpleNamespace(error=None, metrics=metrics)


def test_a_val_loss_search_ranks_trials_by_the_weights_it_registers(space):
    """Trial a's last epoch has the lowest val_loss, but its kept (best val_top1) weights have a high one:
    trial b, whose kept weights have the lower val_loss, is the best trial."""
    import dataclasses

    from tuning.search import pick_best

    a = _finished("a", [(0.2, 1.0), (0.6, 0.9), (0.5, 0.5)], best_epoch=2)
    b = _finished("b", [(0.3, 0.8), (0.5, 0.6), (0.4, 0.7)], best_epoch=2)
    assert (a.metrics["val_loss"], a.metrics["epoch_val_loss"]) == (0.9, 0.5)
    by_loss = dataclasses.replace(space, metric="val_loss", mode="min")
    assert pick_best([a, b], by_loss).metrics["trial_id"] == "b"
    assert pick_best([a, b], space).metrics["trial_id"] == "a"  # val_top1: the kept checkpoint's, as before
