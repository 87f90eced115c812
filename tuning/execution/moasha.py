"""Asynchronous successive halving at stage-aware rungs, on one objective or several (MOASHA, Schmucker
et al. 2021), stopping the trials below a rung's cut or pausing them until they are promoted.

ASHA ranks the trials that reached a rung by one number. With several objectives (accuracy up, GFLOPs
down) there is no single order, so the trials recorded at a rung are ranked as NSGA-II ranks them:
non-dominated sorting into fronts (front 1: no other trial is at least as good in every objective and
better in one; front 2: the same once front 1 is set aside; ...), and inside a front by crowding
distance (trials at the ends of the front and in sparse parts of it first). Ties rank equally: a trial
goes on from a rung when fewer than ``ceil(n / reduction_factor)`` of the ``n`` trials it is compared
with there rank strictly ahead of it (itself included in ``n``), so an identical twin, or the second of two
trials that do not dominate each other, goes on with the first. With one objective this is ASHA's rule
with ties at the cut going on.

Who is compared with whom (like with like). A rung is a global epoch (``tuning.space.rungs``); a trial
reaching it is filed under where it stands there: the name of its stage (``stage1``, ``two_stream``, ...),
the stage's number and the epoch inside it, so a two-stream model's joint stage is never ranked against
an RGB model's stage 1. Inside that group, two trials whose results there come from the same stored stage
prefix (``egomodel.training.stage_keys.stage_key``: ``attention``, ``ms`` and ``feedback`` share stage 1)
are not compared with each other: their scores are the same numbers, and a difference in their costs
says nothing about what their later stages will learn. A trial whose variant has fewer stages finishes
before the later rungs: its final result (the best checkpoint's score) is recorded at every rung after
its last epoch, and every trial reaching such a rung is compared with it.

Stopping or promotion. ``promotion=False``: a trial below the cut is stopped. ``promotion=True`` (the
promotion form of asynchronous successive halving): it is paused with a checkpoint
(``TrialScheduler.PAUSE``) and resumed from it once later, worse arrivals at that rung put it above the
cut; ``choose_trial_to_run`` runs such trials before new ones. When nothing is left to arrive (the
searcher is done and no trial runs or waits to start) the paused trials that cannot go on are stopped,
told to the searcher as stopped at their rung, and their checkpoints deleted.

Ray does not save a scheduler with a search (``Tuner.restore`` rebuilds it empty):
``tuning.execution.schedulers.RungStateCallback`` carries :meth:`RungScheduler.state` across ``--resume``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

Point = tuple[float, ...]


def _dominates(a: Point, b: Point) -> bool:
    """Every objective of ``a`` at least as good as ``b``'s and one better (all to be minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def fronts(points: Mapping[str, Point]) -> list[list[str]]:
    """Non-dominated sorting of minimised objective vectors: the fronts, best first, each in the
    mapping's order."""
    left = list(points)
    out = []
    while left:
        front = [i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)]
        out.append(front)
        left = [i for i in left if i not in front]
    return out


def crowding(points: Mapping[str, Point], front: Sequence[str]) -> dict[str, float]:
    """NSGA-II's crowding distance of each member of ``front``: per objective, the gap between its two
    neighbours over the front's range (infinite at the ends), summed. An objective that is the same for
    every member adds nothing; identical points share one distance."""
    dist = dict.fromkeys(front, 0.0)
    if len(front) < 3:
        return dict.fromkeys(front, math.inf)
    for k in range(len(points[front[0]])):
        values = sorted({points[i][k] for i in front})
        span = values[-1] - values[0]
        if span == 0:
            continue
        for i in front:
            pos = values.index(points[i][k])
            if pos in (0, len(values) - 1):
                dist[i] = math.inf
            else:
                dist[i] += (values[pos + 1] - values[pos - 1]) / span
    return dist


def _keys(points: Mapping[str, Point]) -> dict[str, tuple[int, float]]:
    """Each id's rank key, smaller first: (its front, minus its crowding distance)."""
    out = {}
    for n, front in enumerate(fronts(points)):
        dist = crowding(points, front)
        out.update({i: (n, -dist[i]) for i in front})
    return out


def rank(points: Mapping[str, Point]) -> list[str]:
    """All ids, best first: by front, then by crowding distance (larger first); equal keys in arrival order."""
    keys = _keys(points)
    return sorted(points, key=keys.__getitem__)


def promoted(points: Mapping[str, Point], reduction_factor: float) -> set[str]:
    """The ids that go on from a rung holding ``points``: those with fewer than ``ceil(n / reduction_factor)``
    ids ranked strictly ahead of them (ties at the cut all go on)."""
    keep = max(1, math.ceil(len(points) / reduction_factor))
    keys = _keys(points)
    return {i for i in points if sum(k < keys[i] for k in keys.values()) < keep}


def to_minimise(values: Sequence[float], modes: Sequence[str]) -> Point:
    """Objective values in their own directions -> all to be minimised."""
    return tuple(float(v) if m == "min" else -float(v) for v, m in zip(values, modes))


class Record(NamedTuple):
    point: Point
    group: tuple | None  # (stage name, stage number, epoch in stage); None: finished before this rung
    prefix: str  # what the trial's result there is a function of; equal prefixes are not compared


# (trial config, stage number) -> (the stage's name, the stored prefix it computes); see schedulers.StagePrefix
PrefixFn = Callable[[dict, int], tuple[str, str]]


class RungScheduler(FIFOScheduler):
    """Successive halving at ``rungs`` (global epochs) on ``objectives``, a list of (result key,
    "max" | "min"): one or several. ``promotion``: pause below the cut instead of stopping. ``prefix``:
    how a trial's configuration maps to its stage's name and stored prefix (None: every trial its own).
    ``total_attr`` is the result key holding the trial's own last epoch."""

    def __init__(self, objectives: Sequence[tuple[str, str]], rungs: Sequence[int], reduction_factor: float = 2.0,
                 promotion: bool = False, prefix: PrefixFn | None = None, time_attr: str = "global_epoch",
                 total_attr: str = "total_epochs") -> None:
        super().__init__()
        if not objectives:
            raise ValueError("successive halving needs an objective")
        if not rungs or list(rungs) != sorted(set(rungs)) or rungs[0] < 1:
            raise ValueError(f"rungs {list(rungs)}: expected increasing epochs >= 1")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self._names = [n for n, _ in objectives]
        self._modes = [m for _, m in objectives]
        self._rf = float(reduction_factor)
        self._promotion = bool(promotion)
        self._prefix = prefix
        self._time_attr, self._total_attr = time_attr, total_attr
        self._rungs: dict[int, dict[str, Record]] = {int(r): {} for r in rungs}
        self._paused: dict[str, int] = {}  # trial id -> the rung it waits at
        self._num_stopped = 0
        self._num_promoted = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives are the scheduler's own; Tune's single metric only names the results

    # --- the rung tables ------------------------------------------------------------------------------

    def _point(self, result: Mapping[str, Any]) -> Point | None:
        if self._time_attr not in result or any(result.get(n) is None for n in self._names):
            return None
        return to_minimise([result[n] for n in self._names], self._modes)

    def _where(self, trial: Any, result: Mapping[str, Any], rung: int) -> tuple[tuple, str]:
        """(group, prefix) of a trial at ``rung``, from its result there and its configuration."""
        tid = trial.trial_id
        stage = result.get("stage")
        if stage is None:
            return (), tid
        epoch = int(result.get("stage_epoch", rung)) - (int(result[self._time_attr]) - rung)
        config = getattr(trial, "config", None)
        name, prefix = self._prefix(config, int(stage)) if self._prefix and config is not None else ("", tid)
        return (name, int(stage), epoch), prefix

    def compared(self, rung: int, trial_id: str) -> dict[str, Point]:
        """The points ``trial_id`` is ranked among at ``rung``: its own, the finished trials', and those of its
        group with another prefix."""
        table = self._rungs[rung]
        me = table[trial_id]
        return {j: r.point for j, r in table.items()
                if j == trial_id or r.group is None or (r.group == me.group and r.prefix != me.prefix)}

    def goes_on(self, rung: int, trial_id: str) -> bool:
        return trial_id in promoted(self.compared(rung, trial_id), self._rf)

    def _record(self, trial: Any, result: Mapping[str, Any]) -> str:
        point = self._point(result)
        if point is None:
            return TrialScheduler.CONTINUE
        tid = trial.trial_id
        t = int(result[self._time_attr])
        total = int(result.get(self._total_attr, 0) or 0)
        if result.get("final") or (total and t >= total):
            # finished: compared at every rung it never reached, with its final score
            for r, table in self._rungs.items():
                if r >= t and tid not in table:
                    table[tid] = Record(point, None, tid)
            return TrialScheduler.CONTINUE
        for r in sorted(self._rungs, reverse=True):  # the latest rung reached and not yet recorded
            table = self._rungs[r]
            if t < r or tid in table:
                continue
            table[tid] = Record(point, *self._where(trial, result, r))
            if self.goes_on(r, tid):
                return TrialScheduler.CONTINUE
            if self._promotion:
                self._paused[tid] = r
                return TrialScheduler.PAUSE
            self._num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._paused.pop(trial.trial_id, None)  # a result: it runs (again)
        return self._record(trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if result:
            self._record(trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._paused.pop(trial.trial_id, None)

    # --- promotion ------------------------------------------------------------------------------------

    def promotable(self) -> list[str]:
        """Paused trials now above their rung's cut, the highest rung first, then by arrival."""
        order = sorted(self._paused.items(), key=lambda kv: -kv[1])
        return [tid for tid, r in order if self.goes_on(r, tid)]

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trials = tune_controller.get_trials()
        by_id = {t.trial_id: t for t in trials}
        for tid in list(self._paused):
            t = by_id.get(tid)
            if t is None or t.status in (Trial.TERMINATED, Trial.ERROR):
                self._paused.pop(tid)
            elif t.status == Trial.PENDING and tid not in self.promotable():
                tune_controller._set_trial_status(t, Trial.PAUSED)  # a resumed search puts it back in the queue
        _allow_new_trials(tune_controller, len(self._paused))
        for tid in self.promotable():
            t = by_id[tid]
            if t.status in (Trial.PAUSED, Trial.PENDING):
                self._paused.pop(tid)
                self._num_promoted += 1
                return t
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        if self._paused and not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials) \
                and _searcher_done(tune_controller):
            for tid in list(self._paused):  # nothing left to arrive: they can never go on
                _stop_paused(tune_controller, by_id[tid])
                self._num_stopped += 1
        return None

    # --- reporting and state ---------------------------------------------------------------------------

    def debug_string(self) -> str:
        rungs = " | ".join(f"epoch {r}: {len(t)} recorded" for r, t in sorted(self._rungs.items()))
        kind = "MOASHA" if len(self._names) > 1 else "ASHA"
        objectives = ", ".join(f"{n} {m}" for n, m in zip(self._names, self._modes))
        extra = f", paused={len(self._paused)}, promoted={self._num_promoted}" if self._promotion else ""
        return f"Using {kind} ({objectives}): num_stopped={self._num_stopped}{extra}\n{rungs}"

    def state(self) -> dict[str, Any]:
        """What a resumed search needs: the rung tables, the paused trials, the counts."""
        return {"rungs": {r: dict(t) for r, t in self._rungs.items()}, "paused": dict(self._paused),
                "num_stopped": self._num_stopped, "num_promoted": self._num_promoted}

    def load_state(self, state: Mapping[str, Any]) -> None:
        for r, table in state["rungs"].items():
            if r in self._rungs:
                self._rungs[r] = {tid: Record(*rec) for tid, rec in table.items()}
        self._paused = dict(state["paused"])
        self._num_stopped, self._num_promoted = state["num_stopped"], state["num_promoted"]


class MOASHAScheduler(RungScheduler):
    """:class:`RungScheduler` on two or more objectives."""

    def __init__(self, objectives: Sequence[tuple[str, str]], rungs: Sequence[int], reduction_factor: float = 2.0,
                 **kw: Any) -> None:
        if len(objectives) < 2:
            raise ValueError(f"MOASHA needs two or more objectives, got {list(objectives)}")
        super().__init__(objectives, rungs, reduction_factor, **kw)


def _limiter(tune_controller: Any) -> ConcurrencyLimiter | None:
    searcher = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
    return searcher if isinstance(searcher, ConcurrencyLimiter) else None


def _allow_new_trials(tune_controller: Any, paused: int) -> None:
    """A paused trial holds no resources, but Ray's ``ConcurrencyLimiter`` counts it as running until it
    ends: its limit is raised by the number of paused trials, so new trials keep arriving to promote them."""
    lim = _limiter(tune_controller)
    if lim is not None:
        base = lim.__dict__.setdefault("_egosearch_running_limit", lim.max_concurrent)
        lim.max_concurrent = base + paused


def _searcher_done(tune_controller: Any) -> bool:
    alg = getattr(tune_controller, "search_alg", None)
    return alg is None or alg.is_finished()


def _stop_paused(tune_controller: Any, trial: Any) -> None:
    """Stop a paused trial for good: the searcher hears it stopped at its rung (Ray would tell it the trial
    ended without a result), and its checkpoints, which nothing will resume, are deleted."""
    alg = getattr(tune_controller, "search_alg", None)
    if alg is not None and trial.last_result:
        alg.on_trial_complete(trial.trial_id, result=dict(trial.last_result))
    checkpoint = trial.checkpoint
    tune_controller.stop_trial(trial)
    if checkpoint is not None:
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
        except OSError:
            pass  # already gone: nothing held
