"""What Optuna learns from a search driven by Ray: every epoch at its global epoch, the rung value a
scheduler stopped a trial on, then PRUNED; finished trials COMPLETE; TPE's conditional and parallel
settings."""

from __future__ import annotations

import dataclasses
import sys
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from tuning.execution.searcher import make_sampler, make_scheduler, make_searcher, study_of
from tuning.space import load_space

TOTAL = 7  # the smoke schedule: 3 + 2 + 2 epochs


def fake_trial(config: dict) -> None:
    """Reports like tuning.execution.trainable: one result per global epoch, the last epoch held back for
    the closing summary, whose score is the best epoch's."""
    from ray import tune

    a, b = config["model.alpha"], config["train.stage3.lr"] * 100  # alpha acts from stage 2, the lr in stage 3
    values = [a * e / 10 if e <= 5 else a / 2 + b * (e - 5) for e in range(1, TOTAL + 1)]
    for e in range(1, TOTAL):
        tune.report({"val_top1": values[e - 1], "global_epoch": e, "total_epochs": TOTAL, "final": False})
    tune.report({"val_top1": max(values), "epoch_val_top1": values[-1], "global_epoch": TOTAL,
                 "total_epochs": TOTAL, "final": True})


def test_a_trial_asha_stops_reaches_optuna_with_its_rung_value_then_pruned(tmp_path, monkeypatch):
    import ray
    from ray import tune

    from benchmarks.replay import QUIET_TUNE

    for k, v in QUIET_TUNE.items():  # no per-trial result files: the test reads the study, not them
        monkeypatch.setenv(k, v)
    # three enqueued trials run one after another: the first sets the rungs at epochs 5 and 6, the second
    # (worse at 5) is stopped at 5, the third (better at 5, worse at 6) is stopped at the stage-3 rung 6
    space = dataclasses.replace(load_space("smoke"), num_samples=3, points=(
        {"model.alpha": 1.0, "model.tau": 0.1, "train.stage3.lr": 1e-3},
        {"model.alpha": 0.2, "model.tau": 0.1, "train.stage3.lr": 1e-3},
        {"model.alpha": 1.1, "model.tau": 0.1, "train.stage3.lr": 1e-5}))
    searcher = make_searcher(space, max_concurrent=1, seed=0)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers do not see tests/
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(fake_trial, tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=make_scheduler(space, TOTAL, (5, 6)), num_samples=3,
            metric="val_top1", mode="max", reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="t"))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    first, stopped, late = study_of(searcher).trials
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(0.7)
    assert first.intermediate_values == pytest.approx({e: e / 10 for e in range(1, 8)})  # steps are global epochs
    assert stopped.state == TrialState.PRUNED
    assert stopped.intermediate_values == pytest.approx({e: 0.02 * e for e in range(1, 6)})  # the rung value included
    assert stopped.value == pytest.approx(0.1)  # Optuna's value of a pruned trial: its last (the rung) value
    assert late.state == TrialState.PRUNED and late.intermediate_values[6] == pytest.approx(0.551)
    assert sorted(late.intermediate_values) == [1, 2, 3, 4, 5, 6]


def flaky_trial(config: dict, attempts_dir: str, fail_first: dict) -> None:
    """``fake_trial`` that raises on its first ``fail_first[alpha]`` attempts (counted in a file)."""
    from pathlib import Path

    count = Path(attempts_dir) / f"alpha{config['model.alpha']}"
    n = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(n))
    if n <= fail_first[config["model.alpha"]]:
        raise RuntimeError(f"injected failure, attempt {n}")
    fake_trial(config)


def test_a_trial_ray_runs_again_after_it_failed_ends_complete_in_optuna(tmp_path, monkeypatch):
    """Issue 13, defect 6. A trial fails and Ray gives up on it (no retry left): Optuna is told FAIL. A
    resume with ``resume_errored`` (what ``--resume`` does) runs it again and it finishes: the study then
    holds its failed attempt FAIL and its rerun COMPLETE with Ray's value, both naming the Ray trial.
    (A trial that finishes on one of Ray's own retries is never told FAIL: tests/test_faults.py.)"""
    import ray
    from ray import tune

    from benchmarks.replay import QUIET_TUNE
    from tuning.execution.study import open_storage

    for k, v in QUIET_TUNE.items():
        monkeypatch.setenv(k, v)
    space = dataclasses.replace(load_space("smoke"), num_samples=1, points=(
        {"model.alpha": 1.0, "model.tau": 0.1, "train.stage3.lr": 1e-3},))
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = make_searcher(space, max_concurrent=1, seed=0, storage=storage, study_name="t")
    (tmp_path / "attempts").mkdir()
    trainable = tune.with_parameters(flaky_trial, attempts_dir=str(tmp_path / "attempts"), fail_first={1.0: 1})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        first = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=1, metric="val_top1", mode="max"),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="t")).fit()
        assert len(first.errors) == 1 and [t.state.name for t in study_of(searcher).trials] == ["FAIL"]
        resumed = tune.Tuner.restore(str(tmp_path / "t"), trainable, resume_errored=True).fit()
    finally:
        ray.shutdown()
    assert not resumed.errors
    (ray_trial,) = resumed
    failed, again = optuna.load_study(study_name="t", storage=storage).trials
    assert (failed.state.name, again.state.name) == ("FAIL", "COMPLETE")
    assert failed.user_attrs["ray_trial_id"] == again.user_attrs["ray_trial_id"] == ray_trial.metrics["trial_id"]
    assert again.user_attrs["egosearch.rerun_of"] == failed.number and again.params == failed.params
    assert again.value == pytest.approx(ray_trial.metrics["val_top1"]) == pytest.approx(0.7)
    assert sorted(again.intermediate_values) == list(range(1, TOTAL + 1))


def test_tpe_is_grouped_with_constant_liar_and_quiet():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = make_sampler(3)
    assert not caught, [str(w.message) for w in caught]
    assert (sampler._multivariate, sampler._group, sampler._constant_liar) == (True, True, True)
    limiter = make_searcher(load_space("smoke"), max_concurrent=2, seed=3)
    assert study_of(limiter).sampler._group is True and study_of(limiter).sampler._constant_liar is True


def test_asha_compares_exactly_at_the_rungs():
    sched = make_scheduler(load_space("smoke"), TOTAL, (5, 6))
    assert sched._time_attr == "global_epoch" and sched._max_t == TOTAL
    assert [r for r, _ in sched._brackets[0]._rungs] == [6, 5]
    with pytest.raises(ValueError, match="increasing epochs in 1..6"):
        make_scheduler(load_space("smoke"), TOTAL, (5, 7))
