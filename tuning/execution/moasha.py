"""Multi-objective asynchronous successive halving (MOASHA, Schmucker et al. 2021) as a Ray Tune scheduler.

ASHA ranks the trials that reached a rung by one number. With several objectives (accuracy up, GFLOPs
down) there is no single order, so the trials recorded at a rung are ranked as NSGA-II ranks them:
non-dominated sorting into fronts (front 1: no other trial is at least as good in every objective and
better in one; front 2: the same once front 1 is set aside; ...), and inside a front by crowding
distance (trials at the ends of the front and in sparse parts of it first), earlier arrivals first on
equal distance. A trial arriving at a rung goes on when it is among the best ``ceil(n / reduction_factor)``
of the ``n`` trials recorded there, itself included; otherwise it is stopped. The first trial at a rung
always goes on, as in ASHA.

The rungs are those of the single-objective ASHA (``tuning.space.rungs``: global epochs where the trials
already differ). A trial whose variant has fewer stages finishes before the later rungs: its final
result (the best checkpoint's score at its own last epoch) is recorded at every rung after its last
epoch, so the trials still training are compared with it there.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

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


def rank(points: Mapping[str, Point]) -> list[str]:
    """All ids, best first: by front, then by crowding distance (larger first), then by arrival."""
    order = []
    for front in fronts(points):
        dist = crowding(points, front)
        order += sorted(front, key=lambda i: -dist[i])  # sorted is stable: arrival order on ties
    return order


def promoted(points: Mapping[str, Point], reduction_factor: float) -> set[str]:
    """The ids that go on from a rung holding ``points``: the best ``ceil(n / reduction_factor)``."""
    keep = max(1, math.ceil(len(points) / reduction_factor))
    return set(rank(points)[:keep])


def to_minimise(values: Sequence[float], modes: Sequence[str]) -> Point:
    """Objective values in their own directions -> all to be minimised."""
    return tuple(float(v) if m == "min" else -float(v) for v, m in zip(values, modes))


class MOASHAScheduler(FIFOScheduler):
    """Stops trials at ``rungs`` (global epochs) by multi-objective rank; ``objectives`` is a list of
    (result key, "max" | "min"). ``total_attr`` is the result key holding the trial's own last epoch."""

    def __init__(self, objectives: Sequence[tuple[str, str]], rungs: Sequence[int], reduction_factor: float = 2.0,
                 time_attr: str = "global_epoch", total_attr: str = "total_epochs") -> None:
        super().__init__()
        if len(objectives) < 2:
            raise ValueError(f"MOASHA needs two or more objectives, got {list(objectives)}")
        if not rungs or list(rungs) != sorted(set(rungs)) or rungs[0] < 1:
            raise ValueError(f"MOASHA rungs {list(rungs)}: expected increasing epochs >= 1")
        if reduction_factor <= 1:
            raise ValueError(f"MOASHA reduction_factor must be > 1, got {reduction_factor}")
        self._names = [n for n, _ in objectives]
        self._modes = [m for _, m in objectives]
        self._rf = float(reduction_factor)
        self._time_attr, self._total_attr = time_attr, total_attr
        self._rungs: dict[int, dict[str, Point]] = {int(r): {} for r in rungs}
        self._num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives are the scheduler's own; Tune's single metric only names the results

    def _point(self, result: Mapping[str, Any]) -> Point | None:
        if self._time_attr not in result or any(result.get(n) is None for n in self._names):
            return None
        return to_minimise([result[n] for n in self._names], self._modes)

    def _record(self, trial_id: str, result: Mapping[str, Any]) -> str:
        point = self._point(result)
        if point is None:
            return TrialScheduler.CONTINUE
        t = int(result[self._time_attr])
        total = int(result.get(self._total_attr, 0) or 0)
        if result.get("final") or (total and t >= total):
            # finished: compared at every rung it never reached, with its final score
            for r, table in self._rungs.items():
                if r >= t and trial_id not in table:
                    table[trial_id] = point
            return TrialScheduler.CONTINUE
        action = TrialScheduler.CONTINUE
        for r in sorted(self._rungs, reverse=True):  # the latest rung reached and not yet recorded
            table = self._rungs[r]
            if t < r or trial_id in table:
                continue
            table[trial_id] = point
            if trial_id not in promoted(table, self._rf):
                action = TrialScheduler.STOP
                self._num_stopped += 1
            break
        return action

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._record(trial.trial_id, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if result:
            self._record(trial.trial_id, result)

    def debug_string(self) -> str:
        rungs = " | ".join(f"epoch {r}: {len(t)} recorded" for r, t in sorted(self._rungs.items()))
        return f"Using MOASHA ({', '.join(f'{n} {m}' for n, m in zip(self._names, self._modes))}): " \
               f"num_stopped={self._num_stopped}\n{rungs}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
