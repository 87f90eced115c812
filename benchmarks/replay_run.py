"""Replaying many searches (``benchmarks/replay.py`` runs one): every strategy's searches, in this process or
by several driver processes connected to one running Ray, and the report of their figures
(``benchmarks/replay_report.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from benchmarks.replay import (
    FIRST_RUNG,
    OURS,
    Ledger,
    Table,
    available_strategies,
    first_rung_top_k,
    run_search,
    write_space,
)
from benchmarks.replay_stats import anytime_grid


def replay(table: Table, searches: int, fractions: list[float], work: Path, progress: bool = True,
           strategies: tuple[str, ...] | None = None, multi_objective: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Each strategy, ``searches`` searches each (search ``i`` tuned on seed ``i`` mod the table's seeds, its
    sampler seeded with ``i``: every strategy's search ``i`` sees the same curves, so they pair), run to the
    largest budget fraction of B and read at every fraction and along the anytime grid (Ray must be up, with
    a CPU for each of the ``jobs`` searches run at once). ``multi_objective`` (the table needs GFLOPs): MOASHA
    (ours) searches too, its front's hypervolume against random + FIFO's (the same searches: random sampling
    ignores the objectives).

    ``jobs`` > 1: that many driver processes, each connected to the running Ray, take the searches from one
    queue. A search runs its trials one at a time whoever drives it, so its result is the same either way. The
    drivers are spawned: a script that calls this with ``jobs`` > 1 needs an ``if __name__ == "__main__"`` guard."""
    from tqdm import tqdm

    from benchmarks.replay_report import report

    strategies = strategies or available_strategies()
    work.mkdir(parents=True, exist_ok=True)
    kinds = {"asha"} | {OURS[s] for s in strategies if s in OURS}
    paths = {k: write_space(table, work / f"replay-{k}.yaml", k) for k in kinds}
    runs = list(strategies)
    if multi_objective:
        paths["moasha"] = write_space(table, work / "replay-moasha.yaml", "moasha", objectives=True)
        runs += ["moasha"] + (["random_fifo"] if "random_fifo" not in runs else [])
    full = table.full_budget()
    budget = max(fractions) * full
    todo = [(name, i) for name in runs if name != FIRST_RUNG for i in range(searches)]
    ledgers: dict[tuple[str, int], Any] = {}
    with tqdm(total=len(runs) * searches, desc="replayed searches", disable=not progress) as bar:
        if FIRST_RUNG in runs:  # a fixed plan that knows its budget, without Ray: one plan per budget read
            for i in range(searches):
                ledgers[FIRST_RUNG, i] = {f: first_rung_top_k(table, None, i, table.tuned_on(i), f * full)
                                          for f in anytime_grid(fractions)}
                bar.update(1)
        for (name, i), ledger in _searches(todo, table, paths, budget, work / "ray", jobs):
            ledgers[name, i] = ledger
            bar.update(1)
    by_strategy = {name: [(table.tuned_on(i), ledgers[name, i]) for i in range(searches)] for name in runs}
    return {"full_budget_stage_epochs": full, "budgets": fractions, "searches": searches, "jobs": jobs,
            "strategies": list(strategies), **report(table, by_strategy, fractions, list(strategies))}


def _searches(todo: list[tuple[str, int]], table: Table, paths: dict[str, Path], budget: float, storage: Path,
              jobs: int) -> Any:
    """((strategy, search index), ledger) for every search in ``todo``, as they finish."""
    if jobs <= 1 or len(todo) <= 1:
        _keep(table, paths, budget, storage)
        yield from ((job, _one_search(job)) for job in todo)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import ray

    address = ray.get_runtime_context().gcs_address
    with ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), _connect,
                             (address, table, paths, budget, storage)) as pool:
        futures = {pool.submit(_one_search, job): job for job in todo}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:  # a search failed (or the user pressed Ctrl-C): the queued ones are not started
            pool.shutdown(wait=True, cancel_futures=True)
            raise


_DRIVER: dict[str, Any] = {}  # a replay driver's table, spaces, budget and storage


def _connect(address: str, table: Table, paths: dict[str, Path], budget: float, storage: Path) -> None:
    """A replay driver process: connected to the running Ray, quiet, its searches' settings kept."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    _keep(table, paths, budget, storage)


def _keep(table: Table, paths: dict[str, Path], budget: float, storage: Path) -> None:
    """What this process's searches share (their spaces are loaded from ``paths`` by the first one)."""
    _DRIVER.update(table=table, paths=paths, budget=budget, storage=storage, spaces=None)


def _one_search(job: tuple[str, int]) -> Ledger:
    from tuning.space.load import load_space

    name, i = job
    table = _DRIVER["table"]
    if _DRIVER["spaces"] is None:
        _DRIVER["spaces"] = {k: load_space(p) for k, p in _DRIVER["paths"].items()}
    return run_search(name, _DRIVER["spaces"], table, i, table.tuned_on(i), _DRIVER["budget"], _DRIVER["storage"])
