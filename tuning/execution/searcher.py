"""Optuna inside Ray Tune, telling TPE what each trial really measured, and ASHA on stage-aware rungs.

Ray 2.60's ``OptunaSearch`` reports intermediate values at ``training_iteration`` and, for a trial the
scheduler stops, skips ``on_trial_result`` for the result it stopped on and then calls
``on_trial_complete(result=that result)``, which it tells Optuna as COMPLETE with a truncated score
(seen with ray 2.60 / optuna 5.0). Here every epoch is reported at its global epoch
(``trial.report(value, global_epoch)``), the stopping result included, and a trial stopped before its
final epoch is then told PRUNED (Optuna keeps the last intermediate value as its value).
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuning.execution.study import METRIC_ATTR, orphans
from tuning.space.sampling import DefineByRun, encode_point
from tuning.space.types import SearchSpace


class PruneAwareOptunaSearch(OptunaSearch):
    def _report(self, trial_id: str, result: dict) -> None:
        """The epoch's value at step ``global_epoch``; an epoch told twice (a retried trial) once. The
        closing summary carries the search's score (the best checkpoint's) as the metric and its last
        epoch's own value as ``epoch_<metric>``."""
        if isinstance(self.metric, list):
            return  # Optuna takes no intermediate values in a multi-objective study (a stopped trial: PRUNED)
        value = result.get(f"epoch_{self.metric}", result.get(self.metric)) if result.get("final") \
            else result.get(self.metric)
        step = result.get("global_epoch")
        if value is None or step is None or trial_id not in self._ot_trials:
            return
        trial = self._ot_trials[trial_id]
        if int(step) not in trial._cached_frozen_trial.intermediate_values:
            trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = (
            not error and result is not None and not result.get("final", False)
            and result.get("global_epoch", 0) < result.get("total_epochs", 0)
        )
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        if not stopped_early:
            if result and not error:
                self._report(trial_id, result)  # the last epoch, held back for the closing summary
            return super().on_trial_complete(trial_id, result, error)
        self._report(trial_id, result)  # the rung result Ray did not pass to on_trial_result
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or result.get("final"):  # the summary repeats the last epoch
            return
        self._report(trial_id, result)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved searcher (``--resume``). With a study in a database, a trial asked for after Ray last
        saved the search was lost with the driver before it ran: it is told FAIL, never run twice."""
        super().restore(checkpoint_path)
        lost = orphans(self._ot_study, {t.number for t in self._ot_trials.values()})
        for number in lost:
            self._ot_study.tell(number, state=TrialState.FAIL)
        if lost:
            print(f"Optuna trials {lost} were asked for but never ran before the search stopped: told FAIL")


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE that splits the space by which params a trial has (``group``: tau exists only
    for classification) and imputes the running trials' values (``constant_liar``, Optuna 5's default,
    set so that it stays so). Only ``group``'s "experimental" warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Argument ``group`` is an experimental feature",
                                category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_searcher(space: SearchSpace, max_concurrent: int, seed: int, storage: Any = None,
                  study_name: str | None = None, warm: list[optuna.trial.FrozenTrial] | None = None
                  ) -> ConcurrencyLimiter:
    """TPE inside Ray; the study in ``storage`` (an Optuna storage; None: in memory, saved only with Ray's
    searcher state) under ``study_name``, with the ``warm`` trials added before the first trial."""
    multi = bool(space.objectives)  # a study with one direction per objective
    searcher = PruneAwareOptunaSearch(
        space=DefineByRun(space),
        metric=[n for n, _ in space.objectives] if multi else space.metric,
        mode=[m for _, m in space.objectives] if multi else space.mode,
        points_to_evaluate=[encode_point(space, p) for p in space.points] or None,
        sampler=make_sampler(seed),
        storage=storage,
        study_name=study_name,
    )
    study = searcher._ot_study
    study.set_user_attr(METRIC_ATTR, space.metric)
    if warm:
        study.add_trials(warm)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def make_scheduler(space: SearchSpace, total_epochs: int, rungs: tuple[int, ...]) -> TrialScheduler:
    """ASHA on the global epoch, comparing trials exactly at ``rungs`` (``tuning.space.rungs``)."""
    if space.scheduler.type == "fifo":
        return FIFOScheduler()
    if space.scheduler.type == "moasha":
        from tuning.execution.moasha import MOASHAScheduler

        return MOASHAScheduler(space.objectives, rungs, space.scheduler.reduction_factor)
    if not rungs or list(rungs) != sorted(set(rungs)) or rungs[0] < 1 or rungs[-1] >= total_epochs:
        raise ValueError(f"ASHA rungs {rungs}: expected increasing epochs in 1..{total_epochs - 1}")
    sched = ASHAScheduler(time_attr="global_epoch", max_t=total_epochs, grace_period=rungs[0],
                          reduction_factor=space.scheduler.reduction_factor)
    (bracket,) = sched._brackets
    bracket._rungs = [(r, {}) for r in reversed(rungs)]  # Ray keeps them latest first
    return sched


def study_of(searcher: Any) -> optuna.Study:
    """The Optuna study behind a (possibly wrapped) searcher."""
    inner = getattr(searcher, "searcher", searcher)
    return inner._ot_study
