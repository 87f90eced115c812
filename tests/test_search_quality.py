"""The search-quality replay: stage-epochs counted as the stage store spends them, and every strategy
replayed through Ray Tune on a tiny recorded-curve table, the same for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.replay import STRATEGIES, Ledger, Table, regret, replay
from benchmarks.search_quality import smoke_base


def tiny_table() -> Table:
    """2 x 2 configurations at smoke scale (3 / 2 / 2 epochs), two training seeds of made-up curves."""
    params = {"model.alpha": [0.5, 2.0], "train.stage3.lr": [1.0e-4, 1.0e-3]}
    table = Table(params, [3, 2, 2], {"model.alpha": 2, "train.stage3.lr": 3}, {}, smoke_base())
    rng = np.random.default_rng(0)
    for seed in ("0", "1"):
        table.curves[seed] = {table.key(c): np.cumsum(rng.uniform(0, 0.1, 7)).round(4).tolist()
                              for c in table.configs()}
    return table


def test_cost_counts_shared_stages_once():
    table = tiny_table()
    ledger = Ledger(table, budget=100)
    a, b = ({"model.alpha": 0.5, "train.stage3.lr": lr} for lr in (1e-4, 1e-3))
    for g in range(1, 8):
        ledger.epoch(a, g)
    assert ledger.spent == 7
    for g in range(1, 8):
        ledger.epoch(b, g)  # stages 1 and 2 as a's: taken from the store
    assert ledger.spent == 9
    c = {"model.alpha": 2.0, "train.stage3.lr": 1e-4}
    for g in range(1, 5):  # stopped inside stage 2: that stage is not stored
        ledger.epoch(c, g)
    ledger.epoch(c, 4)
    assert ledger.spent == 11 and table.full_budget() == 28


def test_every_strategy_replays_the_same_for_a_seed(tmp_path):
    import ray

    table = tiny_table()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        first = replay(table, 1, [0.25, 0.5], tmp_path / "a", progress=False)
        again = replay(table, 1, [0.25, 0.5], tmp_path / "b", progress=False, strategies=("ours",))
    finally:
        ray.shutdown()
    assert again["table"]["ours"] == first["table"]["ours"]
    assert set(first["table"]) == set(STRATEGIES) and first["full_budget_stage_epochs"] == 28
    worst = regret(table, None)
    for by in first["table"].values():
        for f in ("0.25", "0.5"):
            assert 0 <= by[f]["median"] <= worst
    assert first["budget_to_match_tpe_fifo"] in (None, 0.25, 0.5)
    assert isinstance(first["beats_default_asha_at_all_budgets"], bool)


def test_regret_is_measured_on_the_seed_not_tuned_on():
    table = tiny_table()
    best = max(table.configs(), key=lambda c: table.score("1", c))
    assert regret(table, best) == 0
    assert regret(table, None) == pytest.approx(max(table.score("1", c) for c in table.configs())
                                                - min(table.score("1", c) for c in table.configs()))
