"""Searches replayed over a table of recorded learning curves: Ray Tune drives a trainable that reports a
recorded curve instead of training, so search strategies are compared without training noise, many times.

A table holds, for every configuration of a grid (one categorical choice per param), the validation
top-1 after every global epoch, once per training seed, and its inference GFLOPs. A search tunes on one seed's
curves and its chosen configuration is scored by its mean over the other seeds (its truth), so no strategy is
scored on the noise it chased.

Cost is counted in stage-epochs as the stage store makes it: a reported epoch costs one, unless its stage
was completed before by a trial whose configuration agrees on every param acting up to that stage
(those stages are taken from the store). Trials run one at a time, so a search stopped at a budget is
exactly the beginning of the same search given more: one search per (strategy, seed) at the largest
budget gives its result at every smaller one.
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SMOKE_BASE_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
STRATEGIES = ("random_fifo", "tpe_fifo", "tpe_asha_default", "first_rung_top_k", "ours", "ours_promotion")
FIRST_RUNG = "first_rung_top_k"
OURS = {"ours": "asha", "ours_promotion": "asha_promotion", "moasha": "moasha"}  # strategy -> its space's scheduler
# a search's trial cap, per grid configuration: a configuration proposed again costs nothing (the store has all
# its stages), so with one trial per configuration every search ended by its trial count before its budget
# (random sampling needs about 4.7 draws per configuration of a 64-configuration grid to see them all)
TRIALS_PER_CONFIG = 3
METRIC = "val_top1"
# a replayed trial takes milliseconds: without Ray Tune's per-trial result files and its frequent experiment
# snapshots a replayed search runs about 5x faster (measured here: 14 s -> 3 s for a 5-trial search)
QUIET_TUNE = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
# and a trial's reports come back to the driver in one call instead of one call each. The driver still
# decides on every report in order (scheduler, searcher, callbacks) and drops those after a stop, so the
# search is the same. (Ray 2.60 passes these two as the buffer's time and length the other way round:
# equal values make the order moot.) The classic reporter at verbose 0 prints nothing (the new one still
# prints each experiment's table).
REPLAY_TUNE = {**QUIET_TUNE, "TUNE_RESULT_BUFFER_LENGTH": "16", "TUNE_RESULT_BUFFER_MIN_TIME_S": "16",
               "RAY_AIR_NEW_OUTPUT": "0"}


@dataclass(frozen=True)
class Table:
    params: dict[str, list[Any]]  # Optuna name -> the grid's values (the replayed space's choices)
    stage_epochs: list[int]
    acting: dict[str, int]  # param -> first stage whose result depends on it
    curves: dict[str, dict[str, list[float]]]  # training seed -> config key -> value after each global epoch
    base: dict[str, Any]  # the egomodel settings every configuration shares
    gflops: dict[str, float] = field(default_factory=dict)  # config key -> inference GFLOPs per clip (egomodel.cost)

    @property
    def total(self) -> int:
        return sum(self.stage_epochs)

    def configs(self) -> list[dict[str, Any]]:
        names = list(self.params)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*self.params.values())]

    def key(self, config: dict[str, Any]) -> str:
        return json.dumps([config[n] for n in self.params])

    def score(self, seed: str, config: dict[str, Any]) -> float:
        """What a finished trial's search score is: the best validation value of the last stage (the
        checkpoint a user takes)."""
        curve = self.curves[seed][self.key(config)]
        return max(curve[self.total - self.stage_epochs[-1]:])

    def seeds(self) -> list[str]:
        return sorted(self.curves, key=int)

    def stage_at(self) -> dict[int, dict[str, int]]:
        """Global epoch -> its ``stage`` (1-based) and ``stage_epoch``, as the real trainable reports them."""
        out, g = {}, 0
        for stage, n in enumerate(self.stage_epochs, start=1):
            for e in range(1, n + 1):
                g += 1
                out[g] = {"stage": stage, "stage_epoch": e}
        return out

    def tuned_on(self, search: int) -> str:
        """The training seed whose curves search number ``search`` tunes on (they take turns)."""
        seeds = self.seeds()
        return seeds[search % len(seeds)]

    def truth(self, config: dict[str, Any], tuned_on: str) -> float:
        """A configuration's true score for a search tuned on seed ``tuned_on``: its mean score over the
        other seeds (the noise the search chased is not in it)."""
        return statistics.fmean(self.score(s, config) for s in self.seeds() if s != tuned_on)

    def regret(self, config: dict[str, Any] | None, tuned_on: str) -> float:
        """Simple regret against the truth for seed ``tuned_on``; with no configuration, the worst one's."""
        truths = [self.truth(c, tuned_on) for c in self.configs()]
        return max(truths) - (self.truth(config, tuned_on) if config is not None else min(truths))

    def seed_spearman(self) -> float:
        """Spearman's correlation between the configurations' mean scores over the first and the second
        half of the seeds: whether the table can rank configurations at all."""
        from benchmarks.replay_stats import spearman

        seeds = self.seeds()
        halves = seeds[:len(seeds) // 2], seeds[len(seeds) // 2:]
        means = [[statistics.fmean(self.score(s, c) for s in half) for c in self.configs()] for half in halves]
        return spearman(*means)

    def full_budget(self) -> int:
        """B: every configuration trained fully, nothing shared."""
        return len(self.configs()) * self.total

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "stage_epochs": self.stage_epochs, "acting": self.acting,
                "curves": self.curves, "base": self.base, "gflops": self.gflops}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Table:
        return cls(d["params"], d["stage_epochs"], d["acting"], d["curves"], d["base"], d.get("gflops", {}))


def write_space(table: Table, path: Path, scheduler: str = "asha", objectives: bool = False) -> Path:
    """The replayed space: the smoke space's settings with exactly the grid's values as choices, the stage-aware
    rungs (``rungs: auto``) of ``scheduler``; ``objectives``: top-1 up and GFLOPs down instead of top-1."""
    spec = yaml.safe_load(SMOKE_BASE_SPACE.read_text())
    spec.update(name="replay", base=table.base, num_samples=TRIALS_PER_CONFIG * len(table.configs()),
                max_concurrent=1, params={k: {"type": "categorical", "choices": v} for k, v in table.params.items()})
    spec["scheduler"] = {"type": scheduler, "rungs": "auto", "reduction_factor": 2}
    if objectives:
        del spec["metric"], spec["mode"]
        spec["objectives"] = [{"name": METRIC, "direction": "max"}, {"name": "gflops", "direction": "min"}]
    path.write_text(yaml.safe_dump(spec))
    return path


class Ledger:
    """Stage-epochs spent so far, the stages stored, and when each trial finished (Ray callback + stopper
    in the driver)."""

    def __init__(self, table: Table, budget: float) -> None:
        self.table, self.budget = table, budget
        self.spent = 0
        self.stored: set[tuple[int, str]] = set()
        self.finished: list[tuple[int, float, dict[str, Any]]] = []  # (spent when it finished, score, config)
        self.where = table.stage_at()  # global epoch -> its stage and the epoch inside it

    def prefix(self, config: dict[str, Any], stage: int) -> str:
        return json.dumps([config[k] for k in self.table.params if self.table.acting[k] <= stage])

    def epoch(self, config: dict[str, Any], g: int) -> None:
        stage = self.where[g]["stage"]
        key = (stage, self.prefix(config, stage))
        if key in self.stored:
            return
        self.spent += 1
        if self.where[g]["stage_epoch"] == self.table.stage_epochs[stage - 1]:  # the stage is complete: stored
            self.stored.add(key)

    def finish(self, config: dict[str, Any], score: float) -> None:
        self.finished.append((self.spent, score, config))

    def exhausted(self) -> bool:
        """Every configuration has finished: what the search returns can no longer change."""
        return len({self.table.key(c) for _, _, c in self.finished}) == len(self.table.configs())

    def incumbent(self, budget: float) -> dict[str, Any] | None:
        """The search's answer at ``budget``: the best finished configuration by its tuned score."""
        done = [(s, c) for spent, s, c in self.finished if spent <= budget]
        return max(done, key=lambda sc: sc[0])[1] if done else None

    def front(self, budget: float) -> list[dict[str, Any]]:
        """A two-objective search's answer at ``budget``: its finished configurations that no other finished
        one beats on both tuned score (up) and GFLOPs (down)."""
        done = {self.table.key(c): (s, self.table.gflops[self.table.key(c)], c)
                for spent, s, c in self.finished if spent <= budget}
        return [c for s, g, c in done.values()
                if not any(s2 >= s and g2 <= g and (s2, g2) != (s, g) for s2, g2, _ in done.values())]


def replay_trial(config: dict[str, Any], table: Table, seed: str, pause_at: tuple[int, ...] = ()) -> None:
    """The replay trainable: reports like ``tuning.execution.trainable`` (the last epoch held back for
    the closing summary, whose score is the last stage's best), with the configuration's GFLOPs when the
    table has them. At the epochs ``pause_at`` (a pausing scheduler's rungs) it reports a checkpoint, and a
    trial resumed from one goes on from the epoch after it."""
    import tempfile

    from ray import tune

    config = {k: config[k] for k in table.params}
    key = table.key(config)
    curve = table.curves[seed][key]
    extra = {"gflops": table.gflops[key]} if table.gflops else {}
    n, start = table.total, 0
    where = table.stage_at()
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            start = int((Path(d) / "epoch").read_text())
    for g in range(start + 1, n):
        metrics = {METRIC: curve[g - 1], **where[g], "global_epoch": g, "total_epochs": n, "final": False, **extra}
        if g in pause_at:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "epoch").write_text(str(g))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
    tune.report({METRIC: table.score(seed, config), f"epoch_{METRIC}": curve[-1], **where[n], "global_epoch": n,
                 "total_epochs": n, "final": True, **extra})


def _callbacks(ledger: Ledger) -> tuple[Any, Any]:
    from ray.tune import Callback, Stopper

    class Count(Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            config = {k: trial.config[k] for k in ledger.table.params}
            ledger.epoch(config, int(result["global_epoch"]))
            if result.get("final"):
                ledger.finish(config, float(result[METRIC]))

    class OverBudget(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return ledger.spent >= ledger.budget or ledger.exhausted()

    return Count(), OverBudget()


def strategy(name: str, spaces: dict[str, Any], table: Table, seed: int) -> tuple[Any, Any]:
    """(search algorithm, scheduler) of a Ray-replayed strategy, one trial at a time. ``spaces``: the replayed
    space per scheduler type (``write_space``)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tuning.execution.searcher import make_scheduler, make_searcher
    from tuning.space.rungs import resolve_rungs
    from tuning.space.sampling import DefineByRun

    if name in OURS:
        from egomodel.config import from_dict

        space = spaces[OURS[name]]
        rungs = resolve_rungs(space, from_dict({}, space.base))
        return make_searcher(space, 1, seed), make_scheduler(space, table.total, rungs)
    space = spaces["asha"]
    sampler = optuna.samplers.RandomSampler(seed=seed) if name == "random_fifo" else \
        optuna.samplers.TPESampler(seed=seed)  # what OptunaSearch builds when given only a seed
    searcher = ConcurrencyLimiter(OptunaSearch(space=DefineByRun(space), metric=METRIC, mode="max", sampler=sampler),
                                  max_concurrent=1)
    if name == "tpe_asha_default":  # Ray's ASHA defaults: rungs from the first iteration, reduction factor 4
        return searcher, ASHAScheduler(max_t=table.total, grace_period=1)
    if name not in ("random_fifo", "tpe_fifo"):
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return searcher, FIFOScheduler()


def run_search(name: str, spaces: dict[str, Any], table: Table, seed: int, tuned_on: str, budget: float,
               storage: Path) -> Ledger:
    """One search of strategy ``name`` (Ray must be up) tuned on seed ``tuned_on``'s curves: at most
    ``TRIALS_PER_CONFIG`` trials per grid configuration (the replayed space's ``num_samples``), stopped once it
    has spent ``budget`` or every configuration has finished. A configuration proposed again costs nothing (the
    store has all its stages), so a search that keeps proposing what it has seen ends by its trial count."""
    import optuna
    from ray import tune

    from tuning.tracking.mlflow_runs import environ

    if name == FIRST_RUNG:
        return first_rung_top_k(table, spaces["asha"], seed, tuned_on, budget)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the result grid Tuner.fit returns reads per-trial files that were never written; the ledger holds the results
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    ledger = Ledger(table, budget)
    count, stop = _callbacks(ledger)
    search_alg, scheduler = strategy(name, spaces, table, seed)
    pausing = name.endswith("_promotion")
    pause_at = tuple(int(r) for r in scheduler.state()["rungs"]) if pausing and hasattr(scheduler, "state") else ()
    space = spaces[OURS.get(name, "asha")]

    def trial(config: dict[str, Any]) -> None:  # the table travels inside the function (kilobytes), not as
        replay_trial(config, table, tuned_on, pause_at)  # an object-store reference that each trial fetches

    callbacks: list[Any] = [count]
    if pausing:
        from tuning.execution.schedulers import state_callbacks

        callbacks += state_callbacks(scheduler)
    tuner = tune.Tuner(
        trial,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, metric=None if space.objectives
                                    else METRIC, mode=None if space.objectives else "max",
                                    num_samples=space.num_samples, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{name}-{seed}", storage_path=str(storage), stop=stop, callbacks=callbacks,
                                  verbose=0),
    )
    # a paused trial must stop at the result it paused on: no results run ahead of the driver in a buffer
    with environ({**REPLAY_TUNE, "TUNE_RESULT_BUFFER_LENGTH": "1"} if pausing else REPLAY_TUNE):
        tuner.fit()  # (the environment is read when fit() builds its controller; put back after, for other Tuners)
    return ledger


def first_rung_epoch(table: Table) -> int:
    """The first epoch at which two grid configurations can differ: the first of the earliest stage a param
    acts in (the "one epoch" of train-everything-one-epoch-then-continue-the-best)."""
    first = min(table.acting.values())
    return sum(table.stage_epochs[:first - 1]) + 1


def first_rung_top_k(table: Table, space: Any, seed: int, tuned_on: str, budget: float) -> Ledger:
    """The "train every configuration to the first rung, continue the best K" baseline, without Ray (it is a
    fixed plan): every configuration, in an order drawn from ``seed``, is trained to :func:`first_rung_epoch`
    (its checkpoint kept), then the configurations go on to the end best first by their value there (ties in
    that order), as many as ``budget`` pays for: K is what the budget affords."""
    import random

    ledger = Ledger(table, budget)
    configs = table.configs()
    random.Random(seed).shuffle(configs)
    rung = first_rung_epoch(table)
    at_rung: list[tuple[float, int, dict[str, Any]]] = []
    for i, config in enumerate(configs):
        for g in range(1, rung + 1):
            if ledger.spent >= budget:
                return ledger
            ledger.epoch(config, g)
        at_rung.append((table.curves[tuned_on][table.key(config)][rung - 1], -i, config))
    for _, _, config in sorted(at_rung, key=lambda t: (t[0], t[1]), reverse=True):
        for g in range(rung + 1, table.total + 1):
            if ledger.spent >= budget:
                return ledger
            ledger.epoch(config, g)
        ledger.finish(config, table.score(tuned_on, config))
    return ledger


def available_strategies() -> tuple[str, ...]:
    """The strategies this checkout can replay: ours with promotion needs a scheduler that can pause
    (``scheduler.type: asha_promotion``)."""
    from tuning.space.load import SCHEDULERS

    return STRATEGIES if "asha_promotion" in SCHEDULERS else tuple(s for s in STRATEGIES if s != "ours_promotion")
