"""MOASHA's promotion rule on hand-made rung tables, and the scheduler's decisions on a sequence of
results (accuracy up, GFLOPs down)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from tuning.execution.moasha import MOASHAScheduler, crowding, fronts, promoted, rank, to_minimise

MODES = ("max", "min")


def table(rows: dict[str, tuple[float, float]]) -> dict[str, tuple[float, ...]]:
    """(accuracy, gflops) rows as minimised points."""
    return {k: to_minimise(v, MODES) for k, v in rows.items()}


def test_fronts_by_dominance() -> None:
    t = table({"a": (0.9, 60.0), "b": (0.7, 10.0), "c": (0.6, 30.0), "d": (0.8, 30.0), "e": (0.5, 70.0)})
    # a (most accurate) and b (cheapest) and d (between) are not dominated; c is dominated by d; e by all
    assert fronts(t) == [["a", "b", "d"], ["c"], ["e"]]


def test_trial_dominated_by_all_is_stopped() -> None:
    t = table({"a": (0.9, 20.0), "b": (0.8, 10.0), "worst": (0.1, 90.0), "c": (0.85, 15.0)})
    assert rank(t)[-1] == "worst"
    assert "worst" not in promoted(t, 2)
    assert promoted(t, 4 / 3) == {"a", "b", "c"}  # even when all but one go on


def test_one_objective_constant_is_single_objective_asha() -> None:
    # every trial costs the same: the rank is by accuracy alone, as ASHA's would be
    t = table({"a": (0.3, 50.0), "b": (0.9, 50.0), "c": (0.6, 50.0), "d": (0.1, 50.0)})
    assert rank(t) == ["b", "c", "a", "d"]
    assert promoted(t, 2) == {"b", "c"}
    assert crowding(t, ["b"]) == {"b": float("inf")}


def test_last_front_ties_broken_by_crowding() -> None:
    # one front of five: a cluster of three in the middle; keeping 3 takes the two ends and the cluster's
    # member with most room around it, never the one squeezed in the cluster's middle
    t = table({"a": (0.50, 40.0), "lo": (0.2, 10.0), "b": (0.52, 42.0), "hi": (0.9, 90.0), "c": (0.54, 44.0)})
    assert len(fronts(t)) == 1
    d = crowding(t, list(t))
    assert d["lo"] == d["hi"] == float("inf")
    assert d["b"] < d["a"] < d["c"]
    assert promoted(t, 5 / 3) == {"lo", "hi", "c"}


def test_identical_points_tie_by_arrival() -> None:
    t = table({"first": (0.5, 10.0), "second": (0.5, 10.0), "third": (0.5, 10.0), "worse": (0.4, 10.0)})
    assert fronts(t)[0] == ["first", "second", "third"]
    assert rank(t)[:3] == ["first", "second", "third"]
    assert promoted(t, 2) == {"first", "second"}


def trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid)


def result(epoch: int, acc: float, gflops: float, total: int = 10, final: bool = False) -> dict:
    return {"global_epoch": epoch, "total_epochs": total, "val_top1": acc, "gflops": gflops, "final": final}


def test_scheduler_stops_at_rungs_and_keeps_short_variants_at_their_last_epoch() -> None:
    s = MOASHAScheduler([("val_top1", "max"), ("gflops", "min")], rungs=[4, 8], reduction_factor=2)
    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP
    assert s.on_trial_result(None, trial("a"), result(3, 0.2, 50)) == go  # before the first rung
    assert s.on_trial_result(None, trial("a"), result(4, 0.5, 50)) == go  # first at the rung
    assert s.on_trial_result(None, trial("b"), result(4, 0.4, 60)) == stop  # dominated by a
    assert s.on_trial_result(None, trial("c"), result(4, 0.3, 20)) == go  # cheaper: on the front
    # a two-stage variant finishes at epoch 6: its final score is recorded at rung 8 too
    s.on_trial_result(None, trial("short"), result(6, 0.9, 10, total=6, final=True))
    assert s.on_trial_result(None, trial("a"), result(8, 0.6, 50)) == stop  # dominated by short
    assert s.on_trial_result(None, trial("a"), result(9, 0.6, 50)) == go  # never decided twice at a rung


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="two or more objectives"):
        MOASHAScheduler([("val_top1", "max")], rungs=[2])
    with pytest.raises(ValueError, match="increasing"):
        MOASHAScheduler([("val_top1", "max"), ("gflops", "min")], rungs=[4, 2])
