"""The search-quality replay: stage-epochs counted as the stage store spends them, each strategy wired as
it says, a search replayed through Ray Tune on a tiny recorded-curve table the same for the same seed (every
strategy replayed: slow), the first-rung baseline's plan, regret against the seeds a search did not see, the
statistics (IQM, bootstrap intervals, paired comparison, hypervolume) on hand-computed numbers, and the
verdicts as defined."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.replay import (
    OURS,
    STRATEGIES,
    Ledger,
    Table,
    first_rung_epoch,
    first_rung_top_k,
    replay_trial,
    strategy,
    write_space,
)
from benchmarks.replay_report import report, verdicts
from benchmarks.replay_run import replay
from benchmarks.replay_stats import bootstrap_ci, hypervolume, iqm, paired, spearman, summary
from benchmarks.search_quality import smoke_base


def tiny_table(seeds: int = 4) -> Table:
    """2 x 2 configurations at smoke scale (3 / 2 / 2 epochs), ``seeds`` training seeds of made-up curves, GFLOPs
    by alpha."""
    params = {"model.alpha": [0.5, 2.0], "train.stage3.lr": [1.0e-4, 1.0e-3]}
    table = Table(params, [3, 2, 2], {"model.alpha": 2, "train.stage3.lr": 3}, {}, smoke_base())
    rng = np.random.default_rng(0)
    for seed in range(seeds):
        table.curves[str(seed)] = {table.key(c): np.cumsum(rng.uniform(0, 0.1, 7)).round(4).tolist()
                                   for c in table.configs()}
    table.gflops.update({table.key(c): 1.0 + c["model.alpha"] for c in table.configs()})
    return table


@contextlib.contextmanager
def local_ray(cpus: int = 1) -> Iterator[None]:
    """A local Ray with ``cpus`` CPUs for the replays, its session folder removed afterwards."""
    import ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
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


def test_a_replayed_trial_stands_where_a_real_trial_stands(monkeypatch, tmp_path):
    """A replayed trial reports its stage and the epoch inside it, as the real trainable does, so the stage-aware
    schedulers see which stored prefix a replayed result comes from: two configurations that share stage 2 are
    not compared at a stage-2 rung, and are at a stage-3 one. (Without these keys every replayed trial was its
    own prefix, and the replayed ``ours_promotion`` and ``moasha`` were not stage-aware.)"""
    from types import SimpleNamespace

    from ray import tune

    from tuning.execution.moasha import RungScheduler
    from tuning.execution.schedulers import StagePrefix
    from tuning.space.load import load_space

    table = tiny_table()
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    a, b, c = ({"model.alpha": alpha, "train.stage3.lr": lr} for alpha, lr in ((0.5, 1e-4), (0.5, 1e-3), (2.0, 1e-4)))
    replay_trial(a, table, "0")
    assert [(r["global_epoch"], r["stage"], r["stage_epoch"]) for r in reports] == [
        (1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 1), (5, 2, 2), (6, 3, 1), (7, 3, 2)]
    space = load_space(write_space(table, tmp_path / "p.yaml", "asha_promotion"))
    sched = RungScheduler([("val_top1", "max")], [5, 6], prefix=StagePrefix(space))

    def where(config: dict, rung: int) -> tuple:
        return sched._where(SimpleNamespace(trial_id=table.key(config), config=config), reports[rung - 1], rung)

    assert where(a, 5) == where(b, 5) != where(c, 5)  # a and b share stage 2 (alpha acts there)
    assert where(a, 5)[0] == ("stage2", 2, 2) and where(a, 5)[1] != table.key(a)
    assert where(a, 6)[0] == where(b, 6)[0] == ("stage3", 3, 1) and where(a, 6)[1] != where(b, 6)[1]


def test_each_strategy_is_wired_as_it_says(tmp_path):
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuning.execution.searcher import study_of
    from tuning.space.load import load_space

    table = tiny_table()
    spaces = {k: load_space(write_space(table, tmp_path / f"{k}.yaml", k)) for k in ("asha",)}
    assert spaces["asha"].num_samples == 3 * 4
    assert {p.key: list(p.choices) for p in spaces["asha"].params} == table.params
    ray_replayed = ("random_fifo", "tpe_fifo", "tpe_asha_default", "ours")
    wiring = {name: strategy(name, spaces, table, seed=3) for name in ray_replayed}
    samplers = {name: type(study_of(s).sampler) for name, (s, _) in wiring.items()}
    assert samplers == {"random_fifo": optuna.samplers.RandomSampler, "tpe_fifo": optuna.samplers.TPESampler,
                        "tpe_asha_default": optuna.samplers.TPESampler, "ours": optuna.samplers.TPESampler}
    assert all(s.max_concurrent == 1 for s, _ in wiring.values())
    assert isinstance(wiring["random_fifo"][1], FIFOScheduler) and isinstance(wiring["tpe_fifo"][1], FIFOScheduler)
    default, ours = wiring["tpe_asha_default"][1], wiring["ours"][1]
    assert isinstance(default, ASHAScheduler) and isinstance(ours, ASHAScheduler)
    assert [r for r, _ in default._brackets[0]._rungs] == [4, 1]  # Ray's: from iteration 1, factor 4
    assert [r for r, _ in ours._brackets[0]._rungs] == [6, 5]  # stage-aware: inside stages 2 and 3
    assert set(STRATEGIES) == {*ray_replayed, "first_rung_top_k", "ours_promotion"} and OURS["moasha"] == "moasha"
    with pytest.raises(ValueError, match="unknown strategy 'grid'"):
        strategy("grid", spaces, table, seed=0)


def test_a_replayed_search_is_the_same_for_a_seed_whoever_drives_it(tmp_path):
    """The same searches, in this process and then by two driver processes connected to the same Ray at once
    (``jobs=2``, what ``--jobs`` does): the same regrets, search by search; a search that fails in a driver
    fails the replay with its own error."""
    table = tiny_table()
    with local_ray(cpus=2):
        first, again = (replay(table, 2, [0.25, 0.5], tmp_path / f"jobs{jobs}", progress=False, strategies=("ours",),
                               multi_objective=False, jobs=jobs) for jobs in (1, 2))
        with pytest.raises(ValueError, match="unknown strategy 'grid'"):  # a driver's error reaches the caller
            replay(table, 4, [0.5], tmp_path / "bad", progress=False, strategies=("grid",), multi_objective=False,
                   jobs=2)
    assert again["regret"] == first["regret"] and first["full_budget_stage_epochs"] == 28
    assert again["jobs"] == 2 and len(first["regret"]["ours"]["0.5"]["regrets"]) == 2
    worst = table.regret(None, "0")
    for f in ("0.25", "0.5"):
        assert 0 <= first["regret"]["ours"][f]["median"] <= worst


@pytest.mark.slow
def test_every_strategy_replays_through_ray_tune(tmp_path):
    table = tiny_table()
    with local_ray():
        out = replay(table, 2, [0.25, 0.5], tmp_path, progress=False)
    assert set(out["regret"]) == set(out["strategies"]) and out["searches"] == 2
    for by in out["regret"].values():
        for f in ("0.25", "0.5"):
            assert len(by[f]["regrets"]) == 2
    assert out["budget_to_match_tpe_fifo"] in (None, 0.25, 0.5)
    assert isinstance(out["beats_default_asha_at_all_budgets"], bool)
    assert out["multi_objective"]["hypervolume"]["moasha"]["0.5"]["mean"] >= 0


def test_the_first_rung_baseline_trains_all_to_the_rung_then_the_best_the_budget_affords():
    table = tiny_table()
    assert first_rung_epoch(table) == 4  # the first epoch of stage 2, where alpha first acts
    everything = first_rung_top_k(table, None, 0, "0", budget=1000)
    # stage 1 once; epoch 4 for each configuration (a stage is stored only once complete); epoch 5 once per
    # alpha (the stage completed: the other alpha-twin takes it from the store); stage 3 per configuration
    assert everything.spent == 3 + 4 + 2 + 4 * 2
    assert len(everything.finished) == 4
    at_rung = {table.key(c): table.curves["0"][table.key(c)][3] for c in table.configs()}
    order = [table.key(c) for _, _, c in everything.finished]
    assert [at_rung[k] for k in order] == sorted(at_rung.values(), reverse=True)  # best at the rung first
    # every configuration to epoch 4 costs 3 + 4; the first continuation (3 epochs) finishes at 10
    two = first_rung_top_k(table, None, 0, "0", budget=10)
    assert len(two.finished) == 1 and two.spent == 10
    assert first_rung_top_k(table, None, 0, "0", budget=2).finished == []  # not even the rung reached
    assert [c for _, _, c in first_rung_top_k(table, None, 5, "1", 12).finished] == \
        [c for _, _, c in first_rung_top_k(table, None, 5, "1", 12).finished]


def test_the_verdicts_follow_their_definitions():
    def regrets(**medians):  # strategy -> one median regret per budget, as 3 searches each
        return {s: {f: [m - 0.1, m, m + 0.2] for f, m in zip((0.1, 0.25, 0.5), ms, strict=True)}
                for s, ms in medians.items()}

    def pairs(r, below):  # ours - asha's paired interval below 0 at the budgets ``below``
        return {"ours": {"tpe_asha_default": {str(f): {"ci95": [-0.2, -0.1] if f in below else [-0.1, 0.1]}
                                              for f in (0.1, 0.25, 0.5)}}}

    fr = [0.1, 0.25, 0.5]
    r = regrets(random_fifo=[0.3, 0.3, 0.3], tpe_fifo=[0.3, 0.2, 0.1], tpe_asha_default=[0.2, 0.2, 0.2],
                ours=[0.2, 0.1, 0.0])
    out = verdicts(r, pairs(r, (0.25, 0.5)), fr)
    assert out["budget_to_match_tpe_fifo"] == 0.25 and out["beats_default_asha_at_all_budgets"] is True
    assert verdicts(r, pairs(r, (0.5,)), fr)["beats_default_asha_at_all_budgets"] is False  # one budget only
    r = regrets(random_fifo=[0.3, 0.3, 0.3], tpe_fifo=[0.3, 0.2, 0.05], tpe_asha_default=[0.2, 0.1, 0.0],
                ours=[0.2, 0.1, 0.1])
    out = verdicts(r, pairs(r, (0.1, 0.25)), fr)
    assert out["budget_to_match_tpe_fifo"] is None  # ours never reaches TPE + FIFO's 0.05 at 50 %
    assert out["beats_default_asha_at_all_budgets"] is False  # a worse median at 50 %


def test_regret_is_measured_against_the_seeds_not_tuned_on():
    table = tiny_table()
    truth = {table.key(c): np.mean([table.score(s, c) for s in "123"]) for c in table.configs()}
    best = max(table.configs(), key=lambda c: truth[table.key(c)])
    assert table.truth(best, "0") == pytest.approx(truth[table.key(best)])
    assert table.regret(best, "0") == 0
    assert table.regret(None, "0") == pytest.approx(max(truth.values()) - min(truth.values()))
    seeds = table.seeds()
    halves = [[np.mean([table.score(s, c) for s in half]) for c in table.configs()] for half in (seeds[:2], seeds[2:])]
    assert table.seed_spearman() == pytest.approx(spearman(*halves))


def test_the_statistics_on_hand_computed_numbers():
    assert iqm([1, 2, 3, 4]) == 2.5  # the middle two
    assert iqm([0, 1, 2, 3, 100]) == pytest.approx((0.75 * 1 + 2 + 0.75 * 3) / 2.5)  # a quarter of 5 cut each end
    assert iqm([4, 100, 1, 2, 3, 5, 6, -50]) == 3.5  # sorted -50 1 2 | 3 4 | 5 6 100 -> 3, 4... and 2, 5 halves
    assert bootstrap_ci([2.0] * 7, np.mean) == [2.0, 2.0]
    ci = bootstrap_ci([0.0, 1.0] * 20, np.mean, seed=1)
    assert ci == bootstrap_ci([0.0, 1.0] * 20, np.mean, seed=1) and ci[0] < 0.5 < ci[1]
    out = paired([0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.5])  # a is lower by 0.1 every time
    assert out["mean_difference"] == pytest.approx(-0.1) and out["ci95"] == pytest.approx([-0.1, -0.1])
    assert out["excludes_zero"] and (out["lower"], out["equal"], out["higher"]) == (4, 0, 0)
    mixed = paired([0.0, 0.2, 0.0, 0.2], [0.1, 0.1, 0.1, 0.1])
    assert mixed["mean_difference"] == pytest.approx(0) and not mixed["excludes_zero"]
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired([1.0], [1.0, 2.0])
    s = summary([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3 and s["iqr"] == [2, 4] and s["median_ci95"][0] <= 3 <= s["median_ci95"][1]
    assert summary([0.3])["iqr"] == [0.3, 0.3] and summary([0.3])["iqm_ci95"] == [0.3, 0.3]  # one search
    # both minimised, reference (4, 4): (1, 3) alone covers 3 x 1; with (2, 1) the union is 3 + 2 x 2 = 7
    assert hypervolume([(1, 3)], (4, 4)) == 3
    assert hypervolume([(1, 3), (2, 1)], (4, 4)) == 7
    assert hypervolume([(1, 3), (2, 1), (3, 3.5), (5, 0)], (4, 4)) == 7  # dominated, and beyond the reference
    assert hypervolume([], (4, 4)) == 0


def test_a_two_objective_search_answers_with_its_front():
    table = tiny_table()
    ledger = Ledger(table, budget=100)
    a, b, c = ({"model.alpha": al, "train.stage3.lr": lr} for al, lr in ((0.5, 1e-4), (2.0, 1e-4), (0.5, 1e-3)))
    ledger.finish(a, 0.5)  # 1.5 GFLOPs
    ledger.finish(b, 0.7)  # 3.0: more accurate, dearer: both on the front
    ledger.finish(c, 0.4)  # 1.5 and less accurate than a: dominated
    assert ledger.front(100) == [a, b]
    assert ledger.front(-1) == []


def test_the_report_pairs_searches_and_reads_hypervolumes():
    table = tiny_table()
    full = table.full_budget()
    runs = [(table.seeds()[i % 4], first_rung_top_k(table, None, i, table.seeds()[i % 4], 0.5 * full))
            for i in range(4)]
    ledgers = {"tpe_fifo": runs, "ours": runs, "moasha": runs, "random_fifo": runs}
    out = report(table, {**ledgers, "first_rung_top_k": [(s, {f: led for f in (0.25, 0.5, *np.arange(1, 21) / 40)})
                                                         for s, led in runs]},
                 [0.25, 0.5], ["tpe_fifo", "ours", "first_rung_top_k"])
    assert out["paired"]["ours"]["tpe_fifo"]["0.5"]["equal"] == 4  # the same searches: no difference
    assert len(out["anytime"]["ours"]["median"]) == len(out["anytime"]["stage_epochs"])
    assert out["moasha_hypervolume_ratio_at_25"] in (None, 1.0)
    hv = out["multi_objective"]["hypervolume"]["moasha"]["0.5"]["values"]
    assert all(0 <= v <= 1 for v in hv)
