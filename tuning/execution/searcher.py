"""Optuna inside Ray Tune, telling TPE what each trial really measured, and ASHA on stage-aware rungs.

Ray 2.60's ``OptunaSearch`` reports intermediate values at ``training_iteration`` and, for a trial the
scheduler stops, skips ``on_trial_result`` for the result it stopped on and then calls
``on_trial_complete(result=that result)``, which it tells Optuna as COMPLETE with a truncated score
(seen with ray 2.60 / optuna 5.0). Here every epoch is reported at its global epoch
(``trial.report(value, global_epoch)``), the stopping result included, and a trial stopped before its
final epoch is then told PRUNED (Optuna keeps the last intermediate value as its value).

A multi-objective study takes no intermediate values, so there a stopped trial is told COMPLETE with
the objective values of the result it was stopped on, marked with the user attr
``egosearch.stopped_at_epoch`` (see :meth:`PruneAwareOptunaSearch.on_trial_complete` for why). A tell
that fails (the study's database unavailable) never stops the search: it is printed and tried again
at the searcher's next event.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuning.execution.study import METRIC_ATTR, RAY_TRIAL_ATTR, RERUN_ATTR, STOPPED_ATTR, name_objectives, orphans
from tuning.space.sampling import DefineByRun, encode_point
from tuning.space.types import SearchSpace


class PruneAwareOptunaSearch(OptunaSearch):
    def suggest(self, trial_id: str) -> dict | None:
        """Ray's suggestion; the Optuna trial records which Ray trial it is (user attr ``ray_trial_id``)."""
        params = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None and RAY_TRIAL_ATTR not in trial._cached_frozen_trial.user_attrs:
            trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return params

    def _live(self, trial_id: str) -> bool:
        """Whether Optuna can still hear about this Ray trial; its state in the study (the database) is
        looked at once per trial and driver, and again for a trial already told.

        Optuna cannot change a finished trial, and Ray does not always give up on a trial it told us
        failed: ``--resume`` runs errored trials again, and a driver killed after telling Optuna but
        before Ray saved the trial runs it again from its checkpoint. A trial told FAIL that Ray runs
        again gets a new Optuna trial with the same params and intermediate values (user attr
        ``egosearch.rerun_of``: the failed one's number), so that it ends COMPLETE if it finishes; one
        told COMPLETE or PRUNED keeps what it was told."""
        if trial_id not in self._ot_trials:
            return False
        checked = self.__dict__.setdefault("_checked", set())
        if trial_id in checked and trial_id not in self._completed_trials:
            return True
        trial = self._ot_trials[trial_id]
        try:
            state = self._ot_study._storage.get_trial(trial._trial_id).state
        except Exception:  # noqa: BLE001 - the database away: looked at again at the next event
            return trial_id not in self._completed_trials
        checked.add(trial_id)
        if state == TrialState.FAIL:
            self._ot_trials[trial_id] = rerun(self._ot_study, trial._trial_id, trial_id)
            self._completed_trials.discard(trial_id)
            return True
        if state.is_finished():
            self._completed_trials.add(trial_id)
            return False
        return trial_id not in self._completed_trials

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
            try:
                trial.report(float(value), int(step))
            except Exception as e:  # noqa: BLE001 - the study's database away: the search goes on without it
                print(f"warning: Optuna could not record epoch {step} of Ray trial {trial_id}: "
                      f"{type(e).__name__}: {e}", flush=True)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Ray calls this once it has given up on a failed trial (after its ``max_failures`` retries:
        Ray does not tell the searcher about the attempts it retries), so a trial that finishes after a
        retry is told COMPLETE, and FAIL only when no attempt is left.

        A trial the scheduler stopped early is told PRUNED in a single-objective study: TPE ranks pruned
        trials by how far they got, then by their last intermediate value, which is sound. A
        multi-objective study cannot hold intermediate values (``Trial.report`` refuses), and Optuna 5's
        TPE ranks pruned trials by those alone (``_get_pruned_trial_score``: every valueless one ties,
        so the earliest numbers fill its "good" set, whatever they measured). There a stopped trial is
        told COMPLETE with the objective values of the result it was stopped on, user attr
        ``egosearch.stopped_at_epoch`` = that epoch: TPE then ranks it by non-domination with the
        others, as MOASHA did when it stopped it. Its accuracy is a truncated, pessimistic one, so a
        stopped trial ranks below the finished trials that match its cost, while a stopped trial that
        measured better ranks above one that measured worse. The champion is never one of them: it is
        taken from the trials Ray saw finish (:func:`tuning.tracking.pareto.pick_from_front`)."""
        self._retry_untold()
        if not self._live(trial_id):
            return
        stopped_early = (
            not error and result is not None and not result.get("final", False)
            and result.get("global_epoch", 0) < result.get("total_epochs", 0)
        )
        if not stopped_early:
            if result and not error:
                self._report(trial_id, result)  # the last epoch, held back for the closing summary
            return super().on_trial_complete(trial_id, result, error)
        self._report(trial_id, result)  # the rung result Ray did not pass to on_trial_result
        attrs = {STOPPED_ATTR: int(result["global_epoch"])}
        values = [result.get(m) for m in self.metric] if isinstance(self.metric, list) else None
        if values is not None and None not in values:
            self._tell(trial_id, TrialState.COMPLETE, [float(v) for v in values], attrs)
        else:
            self._tell(trial_id, TrialState.PRUNED, None, attrs)

    def _tell(self, trial_id: str, state: TrialState, values: list[float] | None, attrs: dict[str, Any]) -> None:
        """Tell Optuna how a trial ended; when its database is away, printed and kept (with the searcher's
        saved state) to be told at the next event, as Ray's own tell of a finished trial only warns."""
        self._completed_trials.add(trial_id)
        self.__dict__.setdefault("_untold", {})[trial_id] = (state, values, attrs)
        self._retry_untold()

    def _retry_untold(self) -> None:
        untold = self.__dict__.get("_untold") or {}
        for trial_id, (state, values, attrs) in list(untold.items()):
            trial = self._ot_trials[trial_id]
            try:
                if not self._ot_study._storage.get_trial(trial._trial_id).state.is_finished():
                    for k, v in attrs.items():
                        trial.set_user_attr(k, v)
                    self._ot_study.tell(trial, values, state=state)
            except Exception as e:  # noqa: BLE001 - never stop the search for the study's database
                print(f"warning: Optuna could not be told that Ray trial {trial_id} ended {state.name}: "
                      f"{type(e).__name__}: {e}; it will be told at the next trial event", flush=True)
                return
            del untold[trial_id]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._retry_untold()
        if result.get("final") or not self._live(trial_id):  # the summary repeats the last epoch
            return
        self._report(trial_id, result)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved searcher (``--resume``). With a study in a database, a trial asked for after Ray last
        saved the search was lost with the driver before it ran: it is told FAIL, never run twice."""
        super().restore(checkpoint_path)
        self._checked = set()  # this driver looks at the study again
        self._retry_untold()
        lost = orphans(self._ot_study, {t.number for t in self._ot_trials.values()})
        for number in lost:
            self._ot_study.tell(number, state=TrialState.FAIL)
        if lost:
            print(f"Optuna trials {lost} were asked for but never ran before the search stopped: told FAIL")


def rerun(study: optuna.Study, failed_id: int, ray_trial_id: str) -> optuna.Trial:
    """A new RUNNING trial in ``study`` with the params and intermediate values of the FAIL trial
    ``failed_id`` (a storage trial id), for a Ray trial that runs again."""
    failed = study._storage.get_trial(failed_id)
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING, params=failed.params, distributions=failed.distributions,
        intermediate_values=failed.intermediate_values,
        user_attrs={**failed.user_attrs, RAY_TRIAL_ATTR: ray_trial_id, RERUN_ATTR: failed.number})
    new_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    print(f"Optuna trial {failed.number} (Ray trial {ray_trial_id}) was told FAIL and runs again: "
          f"continued as Optuna trial {study._storage.get_trial(new_id).number}", flush=True)
    return optuna.trial.Trial(study, new_id)


class RerunAwareLimiter(ConcurrencyLimiter):
    """Ray's ``ConcurrencyLimiter``, which drops the completion of a trial it no longer counts as running:
    a trial that Ray runs again after its error (``resume_errored``) reaches the searcher's completion
    anyway, so Optuna hears how it ended (the searcher ignores trials it was already told about)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._limit_concurrency and trial_id not in self.live_trials:
            return self.searcher.on_trial_complete(trial_id, result=result, error=error)
        return super().on_trial_complete(trial_id, result=result, error=error)


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE that splits the space by which params a trial has (``group``: tau exists only
    for classification) and imputes the running trials' values (``constant_liar``, Optuna 5's default,
    set so that it stays so). Only ``group``'s "experimental" warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Argument ``group`` is an experimental feature",
                                category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_searcher(space: SearchSpace, max_concurrent: int, seed: int, storage: Any = None,
                  study_name: str | None = None, warm: list[optuna.trial.FrozenTrial] | None = None,
                  record: dict[str, Any] | None = None) -> RerunAwareLimiter:
    """TPE inside Ray; the study in ``storage`` (an Optuna storage; None: in memory, saved only with Ray's
    searcher state) under ``study_name``, with the ``warm`` trials added before the first trial and
    ``record`` (``tuning.execution.study.study_record``: data set, schedule, objectives) as user attrs."""
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
    name_objectives(study, space)
    for key, value in (record or {}).items():
        study.set_user_attr(key, value)
    if warm:
        study.add_trials(warm)
    return RerunAwareLimiter(searcher, max_concurrent=max_concurrent)


def make_scheduler(space: SearchSpace, total_epochs: int, rungs: tuple[int, ...]) -> TrialScheduler:
    """The space's scheduler on the global epoch, comparing trials exactly at ``rungs`` (``tuning.space.rungs``):
    ``asha`` is Ray's ASHA; ``asha_promotion``, ``moasha`` and ``moasha_promotion`` are
    ``tuning.execution.moasha.RungScheduler`` (stage-aware groups, ties go on; ``_promotion``: pause and promote
    instead of stopping). Add ``tuning.execution.schedulers.state_callbacks(scheduler)`` to the run's callbacks
    so that its rungs survive ``--resume``."""
    kind = space.scheduler.type
    if kind == "fifo":
        return FIFOScheduler()
    if not rungs or list(rungs) != sorted(set(rungs)) or rungs[0] < 1 or rungs[-1] >= total_epochs:
        raise ValueError(f"rungs {rungs}: expected increasing epochs in 1..{total_epochs - 1}")
    if kind != "asha":
        from tuning.execution.moasha import RungScheduler
        from tuning.execution.schedulers import StagePrefix

        objectives = space.objectives or ((space.metric, space.mode),)
        return RungScheduler(objectives, rungs, space.scheduler.reduction_factor,
                             promotion=kind.endswith("_promotion"), prefix=StagePrefix(space))
    from egomodel.config import from_dict
    from tuning.space.rungs import longest_schedule

    # a trial stops itself at its own last epoch; max_t only must not stop a longer searched schedule early
    max_t = max(total_epochs, longest_schedule(space, from_dict({}, space.base)))
    sched = ASHAScheduler(time_attr="global_epoch", max_t=max_t, grace_period=rungs[0],
                          reduction_factor=space.scheduler.reduction_factor)
    (bracket,) = sched._brackets
    bracket._rungs = [(r, {}) for r in reversed(rungs)]  # Ray keeps them latest first
    return sched


def study_of(searcher: Any) -> optuna.Study:
    """The Optuna study behind a (possibly wrapped) searcher."""
    inner = getattr(searcher, "searcher", searcher)
    return inner._ot_study
