"""Optuna inside Ray Tune, telling TPE the truth about early-stopped trials.

Ray's ``OptunaSearch`` reports a trial that ASHA stopped as COMPLETE with its truncated score
(seen with ray 2.60 / optuna 5.0), which makes TPE model half-trained trials as finished ones.
Here a trial whose last result is before its final epoch is told to Optuna as PRUNED, with its
intermediate values kept.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuning.space.sampling import DefineByRun, encode_point
from tuning.space.types import SearchSpace


class PruneAwareOptunaSearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = (
            not error and result is not None and not result.get("final", False)
            and result.get("global_epoch", 0) < result.get("total_epochs", 0)
        )
        if not stopped_early or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not result.get("final"):  # the closing summary repeats the last epoch's step
            super().on_trial_result(trial_id, result)


def make_searcher(space: SearchSpace, max_concurrent: int, seed: int) -> ConcurrencyLimiter:
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    searcher = PruneAwareOptunaSearch(
        space=DefineByRun(space),
        metric=space.metric,
        mode=space.mode,
        points_to_evaluate=[encode_point(space, p) for p in space.points] or None,
        sampler=sampler,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def make_scheduler(space: SearchSpace, total_epochs: int, grace_period: int) -> TrialScheduler:
    """ASHA on the global epoch; rungs start after the epochs every trial shares (stage 1)."""
    if space.scheduler.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="global_epoch",
        max_t=total_epochs,
        grace_period=min(grace_period, total_epochs),
        reduction_factor=space.scheduler.reduction_factor,
    )


def study_of(searcher: Any) -> optuna.Study:
    """The Optuna study behind a (possibly wrapped) searcher."""
    inner = getattr(searcher, "searcher", searcher)
    return inner._ot_study
