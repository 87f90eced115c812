"""A search space's Optuna / Ray side: the define-by-run function, decoding a trial's config, encoding
points, trial configs, and define-by-run functions pickled before module moves."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest

from egomodel.config import BLOCKS
from tests.test_space import valid_space
from tuning.space import SearchSpace, list_spaces, load_space
from tuning.space.errors import SpaceError
from tuning.space.sampling import DefineByRun, decode, encode_point, optuna_name, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- define-by-run, decode, encode ---------------------------------------------------------------------------


def sample(space: SearchSpace, n: int, seed: int = 0) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
    fn = DefineByRun(space)
    out = []
    for i in range(n):
        trial = study.ask()
        assert fn(trial) is None
        out.append(dict(trial.params))
        study.tell(trial, float(i % 7))  # let TPE leave its random start-up phase
    return out


def test_define_by_run_respects_bounds_and_conditions(tmp_path: Path):
    space = valid_space(tmp_path)
    seen_tau = seen_no_tau = False
    for params in sample(space, 30):
        assert 0.1 <= params["model.alpha"] <= 10
        assert params["model.hidden"] in (16, 32, 48, 64)
        assert params["model.insertion"] in ("conv1", "layer1", "layer2", "layer3", "layer4")
        if params["model.ms_task"] == "classification":
            assert 0.0 <= params["model.tau"] <= 0.4
            seen_tau = True
        else:
            assert "model.tau" not in params
            seen_no_tau = True
        flags = {b: params[f"train.stage3.trainable[{b}]"] for b in ("conv1", "layer1", "layer2", "layer3", "layer4")}
        assert all(isinstance(v, bool) for v in flags.values())
        overrides = decode(space, params)
        trainable = overrides["train.stage3.trainable"]
        assert trainable[:4] == ["feedback", "convlstm", "classifier", "fc"]
        assert trainable[4:] == [b for b, on in flags.items() if on]
        assert set(trainable) <= set(BLOCKS)
        assert ("model.tau" in overrides) == (params["model.ms_task"] == "classification")
        cfg = trial_config(space, params)
        assert cfg.train.stage3.trainable == trainable and cfg.model.alpha == params["model.alpha"]
        assert cfg.model.variant == "feedback"  # base applies
    assert seen_tau and seen_no_tau


@pytest.mark.parametrize("name", list_spaces())
def test_define_by_run_on_shipped_spaces(name: str):
    space = load_space(name)
    for params in sample(space, 12):
        trial_config(space, params)


def test_define_by_run_pickles(tmp_path: Path):
    space = valid_space(tmp_path)
    fn = pickle.loads(pickle.dumps(DefineByRun(space)))
    assert sample_with(fn, 8) == sample_with(DefineByRun(space), 8)


def sample_with(fn: DefineByRun, n: int) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    out = []
    for _ in range(n):
        trial = study.ask()
        fn(trial)
        out.append(dict(trial.params))
        study.tell(trial, 0.5)
    return out


def nest(flat: dict[str, Any], sep: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(sep)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def test_decode_flat_and_nested(tmp_path: Path):
    space = valid_space(tmp_path)
    for params in sample(space, 10):
        expected = decode(space, params)
        assert decode(space, nest(params, ".")) == expected
        slashed = {k.replace(".", "/"): v for k, v in params.items()}
        assert decode(space, nest(slashed, "/")) == expected  # as Ray's unflatten_dict would nest it
        assert decode(space, {**params, "unrelated": 1}) == expected


def test_decode_missing_name(tmp_path: Path):
    space = valid_space(tmp_path)
    params = sample(space, 1)[0]
    del params["model.alpha"]
    with pytest.raises(SpaceError, match="model.alpha"):
        decode(space, params)


def test_optuna_names():
    space = load_space("ablation")
    sub = next(p for p in space.params if p.type == "subset")
    assert optuna_name(sub, "conv1") == "train.stage3.trainable[conv1]"
    with pytest.raises(ValueError):
        optuna_name(sub)
    alpha = next(p for p in space.params if p.key == "model.alpha")
    assert optuna_name(alpha) == "model.alpha"


@pytest.mark.parametrize("name", ["paper", "ablation"])
def test_encode_point_round_trips(name: str):
    space = load_space(name)
    for point in space.points:
        encoded = encode_point(space, point)
        assert decode(space, encoded) == {**space.base, **point}
        # Optuna's enqueue_trial + the define-by-run function give back exactly this point
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        study.enqueue_trial(encoded)
        trial = study.ask()
        DefineByRun(space)(trial)
        assert trial.params == encoded


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model.alpha": 11.0}, "model.alpha"),
        ({"model.alpha": "one"}, "model.alpha"),
        ({"model.insertion": "layer9"}, "model.insertion"),
        ({"train.stage3.trainable": ["conv1", "ms_head"]}, "train.stage3.trainable"),
        ({"model.ms_task": "regression_mse"}, "model.tau"),  # tau given but its condition fails
        ({"model.dropout": 0.5}, "model.dropout"),
    ],
)
def test_encode_point_rejects_out_of_domain(change: dict[str, Any], key: str):
    space = load_space("ablation")
    with pytest.raises(SpaceError, match=key.replace(".", r"\.")):
        encode_point(space, {**space.points[0], **change})


def test_encode_point_subset_accepts_always_blocks():
    space = load_space("ablation")
    point = {**space.points[0], "train.stage3.trainable": ["fc", "layer4", "conv1"]}
    encoded = encode_point(space, point)
    assert encoded["train.stage3.trainable[conv1]"] and encoded["train.stage3.trainable[layer4]"]
    assert not encoded["train.stage3.trainable[layer2]"]
    assert decode(space, encoded)["train.stage3.trainable"] == [
        "feedback",
        "convlstm",
        "classifier",
        "fc",
        "conv1",
        "layer4",
    ]


def test_trial_config_extra_and_errors():
    space = load_space("smoke")
    sampled = {"model.alpha": 1.0, "model.tau": 0.2, "train.stage3.lr": 1e-4}
    cfg = trial_config(space, sampled, {"data.root": "/data/GTEA61", "train.device": "cpu"})
    assert cfg.data.root == "/data/GTEA61" and cfg.train.device == "cpu"
    with pytest.raises(SpaceError, match="model.tau"):
        trial_config(space, {**sampled, "model.tau": 2.0})
    with pytest.raises(SpaceError, match="model.alhpa"):
        trial_config(space, sampled, {"model.alhpa": 1})


def test_ray_optuna_search_uses_it():
    """Ray's OptunaSearch (no cluster needed) with our define-by-run function and enqueued points."""
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("paper")
    searcher = OptunaSearch(
        space=DefineByRun(space),
        metric=space.metric,
        mode=space.mode,
        seed=space.seed,
        points_to_evaluate=[encode_point(space, p) for p in space.points],
    )
    for i, point in enumerate(space.points):
        config = searcher.suggest(f"t{i}")
        assert decode(space, config) == {**space.base, **point}
        searcher.on_trial_complete(f"t{i}", {space.metric: 0.5})


@pytest.mark.parametrize("old_home", ["tuning.space", "tuning.sampling"])
def test_searcher_state_saved_before_the_module_split_still_loads(old_home):
    """Ray pickles the define-by-run function into a search's state; searches saved when it lived in
    ``tuning.space`` (before the first split) or ``tuning.sampling`` (before the package move) must still
    ``--resume``."""
    from tuning.space.sampling import DefineByRun

    fn = DefineByRun(load_space("smoke"))
    now = pickle.dumps(fn, protocol=0)
    before = now.replace(b"tuning.space.sampling\nDefineByRun", old_home.encode() + b"\nDefineByRun")
    assert before != now
    again = pickle.loads(before)
    assert isinstance(again, DefineByRun) and pickle.dumps(again, protocol=0) == now
