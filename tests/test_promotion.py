"""Promotion (pause below a rung's cut, resume when later arrivals put the trial above it), the rung tables
kept across --resume, and ASHA's max_t over the schedules a space can produce."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from tuning.execution.moasha import RungScheduler
from tuning.execution.schedulers import RungStateCallback

GO, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


class Controller:
    """The parts of Ray's controller a scheduler uses: the trials, their status, the searcher."""

    def __init__(self) -> None:
        self.trials: list[SimpleNamespace] = []
        self.told: list[tuple[str, dict | None]] = []
        self.stopped: list[str] = []
        self.search_alg = SimpleNamespace(is_finished=lambda: self.finished,
                                          on_trial_complete=lambda tid, result=None: self.told.append((tid, result)))
        self.finished = False

    def add(self, tid: str) -> SimpleNamespace:
        t = SimpleNamespace(trial_id=tid, status=Trial.RUNNING, last_result={}, checkpoint=None)
        self.trials.append(t)
        return t

    def get_trials(self) -> list:
        return self.trials

    def _set_trial_status(self, trial: SimpleNamespace, status: str) -> None:
        trial.status = status

    def stop_trial(self, trial: SimpleNamespace) -> None:
        trial.status = Trial.TERMINATED
        self.stopped.append(trial.trial_id)


def at(epoch: int, acc: float) -> dict:
    return {"global_epoch": epoch, "total_epochs": 10, "val_top1": acc}


def report(s: RungScheduler, c: Controller, trial: SimpleNamespace, epoch: int, acc: float) -> str:
    trial.last_result = at(epoch, acc)
    decision = s.on_trial_result(c, trial, trial.last_result)
    if decision == PAUSE:
        trial.status = Trial.PAUSED
    return decision


def test_who_pauses_who_is_promoted_and_in_which_order() -> None:
    s = RungScheduler([("val_top1", "max")], rungs=[2, 4], reduction_factor=2, promotion=True)
    c = Controller()
    a, b, d = c.add("a"), c.add("b"), c.add("d")
    assert report(s, c, a, 2, 0.5) == GO  # first at the rung
    assert report(s, c, b, 2, 0.3) == PAUSE  # keep 1 of 2: a
    assert report(s, c, d, 2, 0.1) == PAUSE  # keep 2 of 3: a, b -> b now promotable, d not
    assert s.promotable() == ["b"]
    new = c.add("new")
    new.status = Trial.PENDING
    assert c.search_alg.is_finished() is False
    assert s.choose_trial_to_run(c) is b  # a promotable paused trial before a new one
    b.status = Trial.RUNNING  # Ray restores it from its checkpoint
    assert s.choose_trial_to_run(c) is new
    # at rung 4: a goes on, b (resumed) is below; at rung 2 nothing more arrives
    assert report(s, c, a, 4, 0.6) == GO
    assert report(s, c, b, 4, 0.4) == PAUSE
    assert report(s, c, new, 2, 0.05) == PAUSE  # keep 2 of 4 at rung 2: a, b
    a.status = Trial.TERMINATED
    new_higher = c.add("late")
    assert report(s, c, new_higher, 4, 0.2) == PAUSE  # keep 2 of 3 at rung 4: a, b -> b promoted
    assert s.promotable() == ["b"]  # the highest rung first
    assert s.choose_trial_to_run(c) is b
    b.status = Trial.TERMINATED
    # the searcher is done and nothing runs: the paused trials can never go on and are stopped, the
    # searcher hears their rung result
    assert s.choose_trial_to_run(c) is None  # the searcher may still send trials: they wait
    assert c.stopped == []
    c.finished = True
    assert s.choose_trial_to_run(c) is None
    assert sorted(c.stopped) == ["d", "late", "new"]
    assert dict(c.told)["d"] == at(2, 0.1)


def test_resumed_search_keeps_its_rungs() -> None:
    """Ray unpickles the scheduler and the callbacks together from the Tuner's saved state, then hands the
    callbacks their saved state: a trial past the rungs is not recorded again at the lower ones."""
    s = RungScheduler([("val_top1", "max")], rungs=[2, 4], reduction_factor=2)
    cb = RungStateCallback(s)
    saved_before_fit = pickle.dumps((s, cb))  # what tuner.pkl holds: empty rungs
    good, t = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="t")
    assert s.on_trial_result(None, good, at(2, 0.9)) == GO
    assert s.on_trial_result(None, t, at(2, 0.5)) == STOP
    assert s.on_trial_result(None, good, at(4, 0.9)) == GO
    state = pickle.loads(pickle.dumps(cb.get_state()))  # saved with the experiment state
    s2, cb2 = pickle.loads(saved_before_fit)
    cb2.set_state(state)
    assert s2._rungs[2].keys() == {"good", "t"} and s2._rungs[4].keys() == {"good"}
    # the resumed trial's next epochs are past its rungs: no new record, no decision
    assert s2.on_trial_result(None, good, at(5, 0.95)) == GO
    assert s2._rungs[2]["good"].point == (-0.9,)
    # a new arrival is ranked against the records from before the interruption
    assert s2.on_trial_result(None, SimpleNamespace(trial_id="new"), at(2, 0.4)) == STOP


def test_asha_max_t_is_the_longest_schedule_the_space_can_produce(tmp_path: Path) -> None:
    import yaml

    from egomodel.config import from_dict
    from tests.conftest import write_space
    from tuning.execution.searcher import make_scheduler
    from tuning.execution.trainable import total_epochs
    from tuning.space.load import SPACES_DIR, load_space
    from tuning.space.rungs import resolve_rungs

    params = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())["params"]
    params["train.stage3.epochs"] = {"type": "int", "low": 100, "high": 400}  # 2..8 epochs at scale 0.01
    space = load_space(write_space(tmp_path, params=params))
    cfg = from_dict({}, space.base)
    longest = from_dict({}, {**space.base, "train.stage3.epochs": 400})
    sched = make_scheduler(space, total_epochs(cfg), resolve_rungs(space, cfg))
    assert total_epochs(cfg) == 7 and total_epochs(longest) == 9
    assert sched._max_t == 9  # the base's 7 would stop a trial with a longer stage 3 at epoch 7


def test_scheduler_types_a_space_cannot_use(tmp_path: Path) -> None:
    from tests.conftest import write_space
    from tuning.space.errors import SpaceError
    from tuning.space.load import load_space

    with pytest.raises(SpaceError, match="moasha_promotion needs two or more objectives.*use type: asha_promotion"):
        load_space(write_space(tmp_path, scheduler={"type": "moasha_promotion"}))
    with pytest.raises(SpaceError, match="unknown scheduler 'fifo_promotion'.*asha_promotion"):
        load_space(write_space(tmp_path, scheduler={"type": "fifo_promotion"}))
    space = load_space(write_space(tmp_path, scheduler={"type": "asha_promotion", "rungs": "auto"}))
    assert space.scheduler.type == "asha_promotion"


def test_a_paused_trial_resumes_from_its_checkpoint_through_ray(tmp_path: Path) -> None:
    import ray
    from ray import tune

    def tiny(config: dict) -> None:
        """Four epochs of a made-up score, a checkpoint after each; writes which epochs it ran to a log."""
        from ray import tune

        start = 0
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
        log = Path(config["log"])
        for epoch in range(start + 1, 5):
            with log.open("a") as f:
                f.write(json.dumps({"score": config["score"], "epoch": epoch, "resumed_from": start}) + "\n")
            folder = Path(tune.get_context().get_trial_dir()) / f"ck{epoch}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"global_epoch": epoch, "total_epochs": 4, "val_top1": config["score"]},
                        checkpoint=tune.Checkpoint.from_directory(str(folder)))

    log = tmp_path / "epochs.jsonl"
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tiny, {"cpu": 1}),
            param_space={"score": tune.grid_search([0.9, 0.5, 0.1]), "log": str(log)},
            tune_config=tune.TuneConfig(scheduler=RungScheduler([("val_top1", "max")], rungs=[2], promotion=True),
                                        metric="val_top1", mode="max"),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "results"), name="promo", verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    by_score = {s: [(r["epoch"], r["resumed_from"]) for r in runs if r["score"] == s] for s in (0.9, 0.5, 0.1)}
    assert by_score[0.9] == [(1, 0), (2, 0), (3, 0), (4, 0)]  # first at the rung: on to the end
    # 0.5 paused at epoch 2 (keep 1 of 2), promoted when 0.1 arrived (keep 2 of 3): epochs 3, 4 from epoch 2
    assert by_score[0.5] == [(1, 0), (2, 0), (3, 2), (4, 2)]
    assert by_score[0.1] == [(1, 0), (2, 0)]  # paused, never promoted, stopped at the end
    finals = {r.config["score"]: r.metrics["global_epoch"] for r in grid}
    assert finals == {0.9: 4, 0.5: 4, 0.1: 2}
