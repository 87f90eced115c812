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


def test_ties_rank_equally_not_by_arrival() -> None:
    # identical twins all go on with the best one; the later arrival is not cut for arriving later
    t = table({"first": (0.5, 10.0), "second": (0.5, 10.0), "third": (0.5, 10.0), "worse": (0.4, 10.0)})
    assert fronts(t)[0] == ["first", "second", "third"]
    assert promoted(t, 2) == {"first", "second", "third"}
    # two trials on one front (more accurate, more expensive): both infinitely crowded, both go on
    assert promoted(table({"cheap": (0.5, 10.0), "accurate": (0.7, 60.0)}), 2) == {"cheap", "accurate"}
    # one objective: ties at the cut go on, as in Ray's ASHA
    one = {k: to_minimise((v,), ("max",)) for k, v in {"a": 0.9, "b": 0.5, "c": 0.5, "d": 0.1}.items()}
    assert promoted(one, 2) == {"a", "b", "c"}


def test_second_of_two_non_dominated_trials_goes_on() -> None:
    s = MOASHAScheduler([("val_top1", "max"), ("gflops", "min")], rungs=[4], reduction_factor=2)
    assert s.on_trial_result(None, trial("cheap"), result(4, 0.5, 10)) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, trial("accurate"), result(4, 0.7, 60)) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, trial("twin"), result(4, 0.7, 60)) == TrialScheduler.CONTINUE


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


# --- stage-aware comparison on the wearable space's own choices -----------------------------------------

def wearable_trial(tid: str, **point: object) -> SimpleNamespace:
    from tuning.space.load import load_space
    from tuning.space.sampling import encode_point

    return SimpleNamespace(trial_id=tid, config=encode_point(load_space("wearable"), point))


PAPER = {"model.backbone": "resnet34", "data.frames": 7, "data.image_size": 224}
FEEDBACK = {**PAPER, "model.variant": "feedback", "model.ms_task": "classification", "model.alpha": 1.0,
            "model.tau": 0.2, "train.stage2.lr": 1e-4, "train.stage3.lr": 1e-4, "model.insertion": "conv1",
            "train.stage3.trainable": ["feedback", "convlstm", "classifier", "fc", "conv1", "layer4"]}


def staged(epoch: int, stage: int, stage_epoch: int, acc: float, gflops: float) -> dict:
    return {**result(epoch, acc, gflops, total=700), "stage": stage, "stage_epoch": stage_epoch}


def test_wearable_feedback_is_not_culled_by_its_attention_twin_in_stage_1() -> None:
    from egomodel.config import from_dict
    from tuning.execution.searcher import make_scheduler
    from tuning.execution.trainable import total_epochs
    from tuning.space.load import load_space
    from tuning.space.rungs import resolve_rungs

    space = load_space("wearable")
    cfg = from_dict({}, space.base)
    rungs = resolve_rungs(space, cfg)
    s = make_scheduler(space, total_epochs(cfg), rungs)
    r = rungs[0]  # 26: inside stage 1, where attention, ms and feedback share the stored stage-1 prefix
    attention = wearable_trial("attention", **PAPER, **{"model.variant": "attention", "train.stage2.lr": 1e-4})
    feedback = wearable_trial("feedback", **FEEDBACK)
    ms = wearable_trial("ms", **{**{k: v for k, v in FEEDBACK.items() if not k.startswith(("model.insertion",
                                 "train.stage3"))}, "model.variant": "ms"})
    # the same stage-1 numbers (one stored prefix), the twins cost more: no evidence between them
    assert s.on_trial_result(None, attention, staged(r, 1, r, 0.40, 30.0)) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, feedback, staged(r, 1, r, 0.40, 67.0)) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, ms, staged(r, 1, r, 0.40, 40.0)) == TrialScheduler.CONTINUE
    # a stage-1 model of its own (fewer frames: another prefix) that is better and cheaper is evidence
    small = wearable_trial("small", **{**FEEDBACK, "data.frames": 5})
    assert s.on_trial_result(None, small, staged(r, 1, r, 0.60, 20.0)) == TrialScheduler.CONTINUE
    worse = wearable_trial("worse", **{**FEEDBACK, "data.frames": 3})
    assert s.on_trial_result(None, worse, staged(r, 1, r, 0.10, 80.0)) == TrialScheduler.STOP


def test_two_stream_joint_stage_is_not_ranked_with_rgb_stage_1() -> None:
    from tuning.execution.schedulers import StagePrefix
    from tuning.space.load import load_space

    s = MOASHAScheduler([("val_top1", "max"), ("gflops", "min")], rungs=[26], reduction_factor=2,
                        prefix=StagePrefix(load_space("wearable")))
    rgb = wearable_trial("rgb", **PAPER, **{"model.variant": "attention", "train.stage2.lr": 1e-4})
    joint = wearable_trial("joint", **PAPER, **{"model.variant": "two_stream"})
    assert s.on_trial_result(None, rgb, staged(26, 1, 26, 0.50, 30.0)) == TrialScheduler.CONTINUE
    # worse and dearer than the RGB model at global epoch 26, but in another kind of stage: its own group
    assert s.on_trial_result(None, joint, staged(26, 1, 26, 0.20, 90.0)) == TrialScheduler.CONTINUE
    assert {rec.group[0] for rec in s._rungs[26].values()} == {"stage1", "two_stream"}
