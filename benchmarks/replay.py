"""Searches replayed over a table of recorded learning curves: Ray Tune drives a trainable that reports a
recorded curve instead of training, so search strategies are compared without training noise, many times.

A table holds, for every configuration of a grid (one categorical choice per param), the validation
top-1 after every global epoch, once per training seed. A search tunes on one seed's curves and its
chosen configuration is scored on another seed's, so no strategy is scored on the noise it chased.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuning.tracking.mlflow_runs import environ

SMOKE_BASE_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
STRATEGIES = ("random_fifo", "tpe_fifo", "tpe_asha_default", "ours")
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

    def full_budget(self) -> int:
        """B: every configuration trained fully, nothing shared."""
        return len(self.configs()) * self.total

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "stage_epochs": self.stage_epochs, "acting": self.acting,
                "curves": self.curves, "base": self.base}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Table:
        return cls(d["params"], d["stage_epochs"], d["acting"], d["curves"], d["base"])


def write_space(table: Table, path: Path) -> Path:
    """The replayed space: the smoke space's settings with exactly the grid's values as choices."""
    spec = yaml.safe_load(SMOKE_BASE_SPACE.read_text())
    spec.update(name="replay", base=table.base, num_samples=TRIALS_PER_CONFIG * len(table.configs()),
                max_concurrent=1, params={k: {"type": "categorical", "choices": v} for k, v in table.params.items()})
    spec["scheduler"] = {"type": "asha", "rungs": "auto", "reduction_factor": 2}
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
        offsets = [sum(table.stage_epochs[:i]) for i in range(len(table.stage_epochs))]
        self.stage_of = {g: max(i for i, o in enumerate(offsets) if o < g) + 1 for g in range(1, table.total + 1)}
        self.last_of_stage = {o + n for o, n in zip(offsets, table.stage_epochs, strict=True)}

    def prefix(self, config: dict[str, Any], stage: int) -> str:
        return json.dumps([config[k] for k in self.table.params if self.table.acting[k] <= stage])

    def epoch(self, config: dict[str, Any], g: int) -> None:
        stage = self.stage_of[g]
        key = (stage, self.prefix(config, stage))
        if key in self.stored:
            return
        self.spent += 1
        if g in self.last_of_stage:
            self.stored.add(key)

    def finish(self, config: dict[str, Any], score: float) -> None:
        self.finished.append((self.spent, score, config))

    def exhausted(self) -> bool:
        """Every configuration has finished: what the search returns can no longer change."""
        return len({self.table.key(c) for _, _, c in self.finished}) == len(self.table.configs())

    def incumbent(self, budget: float) -> dict[str, Any] | None:
        done = [(s, c) for spent, s, c in self.finished if spent <= budget]
        return max(done, key=lambda sc: sc[0])[1] if done else None


def replay_trial(config: dict[str, Any], table: Table, seed: str) -> None:
    """The replay trainable: reports like ``tuning.execution.trainable`` (the last epoch held back for
    the closing summary, whose score is the last stage's best)."""
    from ray import tune

    config = {k: config[k] for k in table.params}
    curve = table.curves[seed][table.key(config)]
    n = table.total
    for g in range(1, n):
        tune.report({METRIC: curve[g - 1], "global_epoch": g, "total_epochs": n, "final": False})
    tune.report({METRIC: table.score(seed, config), f"epoch_{METRIC}": curve[-1], "global_epoch": n,
                 "total_epochs": n, "final": True})


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


def strategy(name: str, space: Any, table: Table, seed: int) -> tuple[Any, Any]:
    """(search algorithm, scheduler) of a strategy, one trial at a time."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tuning.execution.searcher import make_scheduler, make_searcher
    from tuning.space.rungs import resolve_rungs
    from tuning.space.sampling import DefineByRun

    if name == "ours":
        from egomodel.config import from_dict

        rungs = resolve_rungs(space, from_dict({}, space.base))
        return make_searcher(space, 1, seed), make_scheduler(space, table.total, rungs)
    sampler = optuna.samplers.RandomSampler(seed=seed) if name == "random_fifo" else \
        optuna.samplers.TPESampler(seed=seed)  # what OptunaSearch builds when given only a seed
    searcher = ConcurrencyLimiter(OptunaSearch(space=DefineByRun(space), metric=METRIC, mode="max", sampler=sampler),
                                  max_concurrent=1)
    if name == "tpe_asha_default":  # Ray's ASHA defaults: rungs from the first iteration, reduction factor 4
        return searcher, ASHAScheduler(max_t=table.total, grace_period=1)
    return searcher, FIFOScheduler()


def run_search(name: str, space: Any, table: Table, seed: int, budget: float, storage: Path) -> Ledger:
    """One search of strategy ``name`` (Ray must be up): at most ``TRIALS_PER_CONFIG`` trials per grid
    configuration (the replayed space's ``num_samples``), stopped once it has spent ``budget`` or every
    configuration has finished. A configuration proposed again costs nothing (the store has all its stages),
    so a search that keeps proposing what it has seen ends by its trial count, not by its budget."""
    import optuna
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the result grid Tuner.fit returns reads per-trial files that were never written; the ledger holds the results
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    ledger = Ledger(table, budget)
    count, stop = _callbacks(ledger)
    search_alg, scheduler = strategy(name, space, table, seed)
    tune_seed = sorted(table.curves)[0]

    def trial(config: dict[str, Any]) -> None:  # the table travels inside the function (kilobytes), not as
        replay_trial(config, table, tune_seed)  # an object-store reference that each trial fetches again

    tuner = tune.Tuner(
        trial,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, metric=METRIC, mode="max",
                                    num_samples=space.num_samples, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{name}-{seed}", storage_path=str(storage), stop=stop, callbacks=[count],
                                  verbose=0),
    )
    with environ(REPLAY_TUNE):  # read when fit() builds its controller; put back after, for other Tuners
        tuner.fit()
    return ledger


def regret(table: Table, config: dict[str, Any] | None) -> float:
    """Simple regret on the report seed's curves; with no finished trial, the worst configuration's."""
    report = sorted(table.curves)[-1]
    scores = [table.score(report, c) for c in table.configs()]
    return max(scores) - (table.score(report, config) if config is not None else min(scores))


def summarise(regrets: dict[str, dict[float, list[float]]]) -> dict[str, Any]:
    """Median and IQR per strategy and budget, and the two verdicts."""
    def stats(xs: list[float]) -> dict[str, Any]:
        q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
        return {"median": statistics.median(xs), "iqr": [q[0], q[2]], "regrets": xs}

    table = {s: {str(f): stats(r) for f, r in by.items()} for s, by in regrets.items()}
    if set(regrets) != set(STRATEGIES):
        return {"table": table}
    fractions = sorted(next(iter(regrets.values())))
    med = {s: {f: statistics.median(r) for f, r in by.items()} for s, by in regrets.items()}
    target = med["tpe_fifo"][max(fractions)]
    match = [f for f in fractions if med["ours"][f] <= target]
    ours, asha = med["ours"], med["tpe_asha_default"]
    beats = all(ours[f] <= asha[f] for f in fractions) and sum(ours[f] < asha[f] for f in fractions) >= 2
    return {"budget_to_match_tpe_fifo": min(match) if match else None, "beats_default_asha_at_all_budgets": beats,
            "table": table}


def replay(table: Table, seeds: int, fractions: list[float], work: Path, progress: bool = True,
           strategies: tuple[str, ...] = STRATEGIES) -> dict[str, Any]:
    """Each strategy, ``seeds`` searches each, at every budget fraction of B (Ray must be up). The
    verdicts need all four strategies."""
    from tqdm import tqdm

    from tuning.space.load import load_space

    work.mkdir(parents=True, exist_ok=True)
    space = load_space(write_space(table, work / "replay.yaml"))
    full = table.full_budget()
    regrets: dict[str, dict[float, list[float]]] = {s: {f: [] for f in fractions} for s in strategies}
    with tqdm(total=len(strategies) * seeds, desc="replayed searches", disable=not progress) as bar:
        for name in strategies:
            for seed in range(seeds):
                ledger = run_search(name, space, table, seed, max(fractions) * full, work / "ray")
                for f in fractions:
                    regrets[name][f].append(regret(table, ledger.incumbent(f * full)))
                bar.update(1)
    return {"full_budget_stage_epochs": full, "budgets": fractions, "seeds": seeds, **summarise(regrets)}

