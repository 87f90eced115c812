"""The search-quality replay: stage-epochs counted as the stage store spends them, each strategy wired as
the README says, a search replayed through Ray Tune on a tiny recorded-curve table the same for the same
seed (every strategy replayed: slow), and the two verdicts as defined."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.replay import STRATEGIES, Ledger, Table, regret, replay, strategy, summarise
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


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A one-CPU local Ray for the replays, its session folder removed afterwards."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    session = ray._private.worker._global_node.get_session_dir_path()
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(session, ignore_errors=True)


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


def test_each_strategy_is_wired_as_it_says(tmp_path):
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from benchmarks.replay import write_space
    from tuning.execution.searcher import study_of
    from tuning.space.load import load_space

    table = tiny_table()
    space = load_space(write_space(table, tmp_path / "replay.yaml"))
    assert space.num_samples == 3 * 4 and {p.key: list(p.choices) for p in space.params} == table.params
    wiring = {name: strategy(name, space, table, seed=3) for name in STRATEGIES}
    samplers = {name: type(study_of(s).sampler) for name, (s, _) in wiring.items()}
    assert samplers == {"random_fifo": optuna.samplers.RandomSampler, "tpe_fifo": optuna.samplers.TPESampler,
                        "tpe_asha_default": optuna.samplers.TPESampler, "ours": optuna.samplers.TPESampler}
    assert all(s.max_concurrent == 1 for s, _ in wiring.values())
    assert isinstance(wiring["random_fifo"][1], FIFOScheduler) and isinstance(wiring["tpe_fifo"][1], FIFOScheduler)
    default, ours = wiring["tpe_asha_default"][1], wiring["ours"][1]
    assert isinstance(default, ASHAScheduler) and isinstance(ours, ASHAScheduler)
    assert [r for r, _ in default._brackets[0]._rungs] == [4, 1]  # Ray's: from iteration 1, factor 4
    assert [r for r, _ in ours._brackets[0]._rungs] == [6, 5]  # stage-aware: inside stages 2 and 3


def test_a_replayed_search_is_the_same_for_a_seed(tmp_path):
    table = tiny_table()
    with local_ray():
        first, again = (replay(table, 1, [0.25, 0.5], tmp_path / d, progress=False, strategies=("ours",))
                        for d in "ab")
    assert again["table"] == first["table"] and first["full_budget_stage_epochs"] == 28
    for f in ("0.25", "0.5"):
        assert 0 <= first["table"]["ours"][f]["median"] <= regret(table, None)


@pytest.mark.slow
def test_every_strategy_replays_through_ray_tune(tmp_path):
    table = tiny_table()
    with local_ray():
        out = replay(table, 2, [0.25, 0.5], tmp_path, progress=False)
    assert set(out["table"]) == set(STRATEGIES) and out["seeds"] == 2
    for by in out["table"].values():
        for f in ("0.25", "0.5"):
            assert len(by[f]["regrets"]) == 2 and 0 <= by[f]["median"] <= regret(table, None)
    assert out["budget_to_match_tpe_fifo"] in (None, 0.25, 0.5)
    assert isinstance(out["beats_default_asha_at_all_budgets"], bool)


def test_the_verdicts_follow_their_definitions():
    def regrets(**medians):  # strategy -> one median regret per budget, as 3 searches each
        return {s: {f: [m - 0.1, m, m + 0.2] for f, m in zip((0.1, 0.25, 0.5), ms, strict=True)}
                for s, ms in medians.items()}

    out = summarise(regrets(random_fifo=[0.3, 0.3, 0.3], tpe_fifo=[0.3, 0.2, 0.1], tpe_asha_default=[0.2, 0.2, 0.2],
                            ours=[0.2, 0.1, 0.0]))
    assert out["budget_to_match_tpe_fifo"] == 0.25 and out["beats_default_asha_at_all_budgets"] is True
    assert out["table"]["ours"]["0.25"]["median"] == pytest.approx(0.1)
    out = summarise(regrets(random_fifo=[0.3, 0.3, 0.3], tpe_fifo=[0.3, 0.2, 0.05], tpe_asha_default=[0.2, 0.1, 0.0],
                            ours=[0.2, 0.1, 0.1]))
    assert out["budget_to_match_tpe_fifo"] is None  # ours never reaches TPE + FIFO's 0.05 at 50 %
    assert out["beats_default_asha_at_all_budgets"] is False  # equal twice, worse once
    out = summarise(regrets(random_fifo=[0.3] * 3, tpe_fifo=[0.3] * 3, tpe_asha_default=[0.2, 0.1, 0.1],
                            ours=[0.1, 0.1, 0.1]))
    assert out["beats_default_asha_at_all_budgets"] is False  # never worse, but better at one budget only


def test_regret_is_measured_on_the_seed_not_tuned_on():
    table = tiny_table()
    best = max(table.configs(), key=lambda c: table.score("1", c))
    assert regret(table, best) == 0
    assert regret(table, None) == pytest.approx(max(table.score("1", c) for c in table.configs())
                                                - min(table.score("1", c) for c in table.configs()))
