"""Trials that ASHA stops are PRUNED in Optuna, not COMPLETE with a truncated score."""

import pytest
from optuna.trial import TrialState

from tuning.execution.searcher import make_scheduler, make_searcher, study_of
from tuning.space import load_space


def _epoch(value: float, epoch: int, total: int = 7, final: bool = False) -> dict:
    return {"val_top1": value, "global_epoch": epoch, "training_iteration": epoch, "total_epochs": total,
            "final": final}


def test_stopped_early_is_pruned_finished_is_complete_error_is_fail():
    space = load_space("smoke")
    limiter = make_searcher(space, max_concurrent=3, seed=0)
    searcher = limiter.searcher
    for tid in ("a", "b", "c"):
        assert searcher.suggest(tid) is not None
    for e in range(1, 5):
        searcher.on_trial_result("a", _epoch(0.1 * e, e))
        searcher.on_trial_result("b", _epoch(0.1 * e, e))
    searcher.on_trial_complete("a", _epoch(0.4, 4))  # ASHA stopped it at epoch 4 of 7
    searcher.on_trial_result("b", _epoch(0.5, 5))
    searcher.on_trial_complete("b", _epoch(0.6, 7, final=True))
    searcher.on_trial_complete("c", None, error=True)
    trials = {t.number: t for t in study_of(limiter).trials}
    assert trials[0].state == TrialState.PRUNED
    assert trials[0].intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert trials[1].state == TrialState.COMPLETE and trials[1].value == 0.6
    assert trials[2].state == TrialState.FAIL


def test_asha_rungs_start_after_stage_one():
    from tuning.search import base_config
    from tuning.space.sampling import resolve_grace_period

    space = load_space("smoke")
    cfg = base_config(space, {})
    grace = resolve_grace_period(space, cfg)
    assert grace == 4  # stage 1 has 3 epochs at epochs_scale 0.01: the first rung is stage 2's first epoch
    sched = make_scheduler(space, 7, grace)
    assert sched._time_attr == "global_epoch" and sched._max_t == 7
