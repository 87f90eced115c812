"""Search spaces: shipped files load, bad files fail at load naming the key, Optuna/Ray glue round-trips."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egomodel.config import BLOCKS, known_keys
from egomodel.training.stages import stage_plan
from tuning.space import SPACES_DIR, SearchSpace, list_spaces, load_space
from tuning.space.errors import SpaceError
from tuning.space.sampling import DefineByRun, decode, encode_point, optuna_name, resolve_grace_period, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

# a valid space that uses every feature: each param type, a condition, a point, every top-level key
VALID: dict[str, Any] = {
    "name": "t",
    "description": "test space",
    "metric": "val_top1",
    "mode": "max",
    "num_samples": 4,
    "max_concurrent": 2,
    "seed": 0,
    "resources": {"cpu": 1, "gpu": 0.25},
    "scheduler": {"type": "asha", "grace_period": "auto", "reduction_factor": 2},
    "base": {"model.variant": "feedback", "model.pretrained": "none", "data.image_size": 64},
    "params": {
        "model.alpha": {"type": "float", "low": 0.1, "high": 10, "log": True},
        "model.ms_task": {"type": "categorical", "choices": ["classification", "regression_mse", "regression_l1"]},
        "model.tau": {"type": "float", "low": 0.0, "high": 0.4, "when": {"model.ms_task": ["classification"]}},
        "model.hidden": {"type": "int", "low": 16, "high": 64, "step": 16},
        "model.insertion": {"type": "categorical", "choices": ["conv1", "layer1", "layer2", "layer3", "layer4"]},
        "train.stage3.trainable": {
            "type": "subset",
            "choices": ["conv1", "layer1", "layer2", "layer3", "layer4"],
            "always": ["feedback", "convlstm", "classifier", "fc"],
        },
    },
    "points": [
        {
            "model.alpha": 1.0,
            "model.ms_task": "classification",
            "model.tau": 0.2,
            "model.hidden": 32,
            "model.insertion": "conv1",
            "train.stage3.trainable": ["conv1", "layer4"],
        },
    ],
}


def write(tmp_path: Path, data: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def valid_space(tmp_path: Path) -> SearchSpace:
    return load_space(write(tmp_path, VALID))


# --- shipped spaces -----------------------------------------------------------------------------------------


def test_shipped_spaces_are_listed():
    assert {"smoke", "ablation", "paper"} <= set(list_spaces())


@pytest.mark.parametrize("name", list_spaces())
def test_every_shipped_space_loads(name: str):
    space = load_space(name)
    assert space.name == name and space.path == SPACES_DIR / f"{name}.yaml"
    assert space.text == space.path.read_text()
    for p in space.params:
        names = [optuna_name(p, b) for b in p.choices] if p.type == "subset" else [optuna_name(p)]
        assert all("/" not in n for n in names)  # Ray un-flattens sampled configs on "/"
    for point in space.points:  # every point builds
        trial_config(space, encode_point(space, point))


def test_smoke_space_is_tiny():
    space = load_space("smoke")
    sampled = {"model.alpha": 1.0, "model.tau": 0.2, "train.stage3.lr": 1e-4}
    cfg = trial_config(space, sampled)
    assert [s.epochs for s in stage_plan(cfg.model.variant, cfg.train)] == [3, 2, 2]
    assert cfg.model.pretrained == "none" and cfg.data.image_size == 64 and cfg.data.num_workers == 0
    assert resolve_grace_period(space, cfg) == 4  # auto: the first epoch after stage 1
    assert (space.num_samples, space.max_concurrent, space.resources) == (4, 2, {"cpu": 1.0, "gpu": 0.0})


def test_ablation_leaves_stage1_and_data_alone():
    space = load_space("ablation")
    stage1 = ("train.stage1.", "data.", "train.seed", "model.variant")
    assert not [p.key for p in space.params if p.key.startswith(stage1)]
    assert {p.key for p in space.params} >= {
        "model.alpha",
        "model.tau",
        "model.ms_task",
        "model.insertion",
        "train.stage2.lr",
        "train.stage3.lr",
        "train.stage3.trainable",
    }
    tau = next(p for p in space.params if p.key == "model.tau")
    assert tau.when == (("model.ms_task", ("classification",)),)
    assert space.scheduler.type == "asha" and space.scheduler.grace_period is None


def test_paper_space_holds_table3_rows():
    space = load_space("paper")
    assert space.num_samples == len(space.points) == 6 and space.scheduler.type == "fifo"
    cfgs = [trial_config(space, encode_point(space, p)) for p in space.points]
    rows = [(c.model.variant, c.model.ms_task if c.model.variant in ("ms", "feedback") else None) for c in cfgs]
    assert rows == [
        ("convlstm", None),
        ("attention", None),
        ("ms", "regression_mse"),
        ("ms", "regression_l1"),
        ("ms", "classification"),
        ("feedback", "classification"),
    ]
    chosen = cfgs[-1]
    assert (chosen.model.alpha, chosen.model.tau, chosen.model.insertion) == (1.0, 0.2, "conv1")
    assert set(chosen.train.stage3.trainable) == {"conv1", "layer4", "feedback", "convlstm", "classifier", "fc"}


def test_load_by_path_and_unknown_name(tmp_path: Path):
    space = load_space(str(write(tmp_path, {k: v for k, v in VALID.items() if k != "name"}, "mine.yaml")))
    assert space.name == "mine"  # default: the file stem
    with pytest.raises(SpaceError, match="available: .*smoke"):
        load_space("no_such_space")
    with pytest.raises(SpaceError, match="no such"):
        load_space(tmp_path / "missing.yaml")
    assert load_space("smoke.yaml").path == SPACES_DIR / "smoke.yaml"
    assert pickle.loads(pickle.dumps(space)) == space


def test_documented_example_loads(tmp_path: Path):
    doc = (SPACES_DIR.parent / "docs" / "search_spaces.md").read_text()
    example = re.search(r"## A complete example\n\n```yaml\n(.*?)```", doc, re.S)
    assert example, "docs/search_spaces.md lost its example"
    space = load_space(write(tmp_path, example.group(1), "example.yaml"))
    assert space.name == "example" and len(space.points) == 1
    cfg = trial_config(space, encode_point(space, space.points[0]))
    assert resolve_grace_period(space, cfg) == 31  # stage 1: 300 * 0.1 epochs, then the first of stage 2


def test_defaults(tmp_path: Path):
    minimal = {"params": {"model.alpha": {"type": "float", "low": 0.5, "high": 2}}}
    space = load_space(write(tmp_path, minimal))
    got = (space.metric, space.mode, space.num_samples, space.max_concurrent, space.seed)
    assert got == ("val_top1", "max", 1, 1, 0)
    assert space.resources == {"cpu": 1.0, "gpu": 0.0} and space.scheduler.type == "asha"
    assert space.scheduler.grace_period is None and space.scheduler.reduction_factor == 2.0


def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path):
    text = "params:\n  train.stage3.lr: {type: float, low: 1e-5, high: 1e-2, log: true}\n"
    (p,) = load_space(write(tmp_path, text)).params
    assert (p.low, p.high) == (1e-5, 1e-2)


# --- validation errors ---------------------------------------------------------------------------------------


def mutate(path: str, value: Any = "__delete__") -> dict[str, Any]:
    """VALID with the value at a "/"-separated path replaced (or deleted)."""
    data = copy.deepcopy(VALID)
    *parents, last = path.split("/")
    node: Any = data
    for k in parents:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
        last = int(last)
    if value == "__delete__":
        del node[last]
    else:
        node[last] = value
    return data


P = "params"
BAD = [
    # (space, a key the message must name)
    (mutate("plots", "yes"), "plots"),
    (mutate("checkpoint_interval_s", -1), "checkpoint_interval_s"),
    (mutate("checkpoint_interval_s", "often"), "checkpoint_interval_s"),
    (mutate("paramz", {}), "paramz"),
    (mutate("params"), "params"),
    (mutate("params", {}), "params"),
    (mutate("params", None), "params"),
    (mutate("params", ["model.alpha"]), "params"),
    (mutate(f"{P}/model.alhpa", {"type": "float", "low": 1, "high": 2}), "params.model.alhpa"),
    (mutate("base/model.alhpa", 1), "base.model.alhpa"),
    (mutate("base/model", {"alpha": 1}), "base.model"),
    (mutate(f"{P}/model.alpha/type", "normal"), "params.model.alpha.type"),
    (mutate(f"{P}/model.alpha/type"), "params.model.alpha.type"),
    (mutate(f"{P}/model.alpha/hihg", 3), "params.model.alpha.hihg"),
    (mutate(f"{P}/model.alpha/low"), "params.model.alpha.low"),
    (mutate(f"{P}/model.alpha/high"), "params.model.alpha.high"),
    (mutate(f"{P}/model.alpha/low", 20), "params.model.alpha.low"),
    (mutate(f"{P}/model.alpha/low", 10), "params.model.alpha.low"),
    (mutate(f"{P}/model.alpha/low", 0), "params.model.alpha.low"),
    (mutate(f"{P}/model.alpha/low", "small"), "params.model.alpha.low"),
    (mutate(f"{P}/model.alpha/high", float("inf")), "params.model.alpha.high"),
    (mutate(f"{P}/model.alpha/log", "yes please"), "params.model.alpha.log"),
    (mutate(f"{P}/model.alpha/step", 0.1), "params.model.alpha.step"),  # log and step
    (mutate(f"{P}/model.alpha", "0.1..10"), "params.model.alpha"),
    (mutate(f"{P}/model.hidden/low", 1.5), "params.model.hidden.low"),
    (mutate(f"{P}/model.hidden/high", 64.5), "params.model.hidden.high"),
    (mutate(f"{P}/model.hidden/step", 0), "params.model.hidden.step"),
    (mutate(f"{P}/model.hidden/step", 7), "params.model.hidden.step"),  # 48 not a multiple of 7
    (mutate(f"{P}/model.insertion/choices", []), "params.model.insertion.choices"),
    (mutate(f"{P}/model.insertion/choices"), "params.model.insertion.choices"),
    (mutate(f"{P}/model.insertion/choices", ["conv1", "conv1"]), "params.model.insertion.choices"),
    (mutate(f"{P}/model.insertion/choices", ["conv1", "layer9"]), "params.model.insertion"),  # deep check
    (mutate(f"{P}/train.stage3.trainable/choices", ["conv1", "layer9"]), "params.train.stage3.trainable.choices"),
    (mutate(f"{P}/train.stage3.trainable/always", ["head"]), "params.train.stage3.trainable.always"),
    (mutate(f"{P}/train.stage3.trainable/always", ["conv1"]), "params.train.stage3.trainable.always"),
    (mutate(f"{P}/model.tau/when", {"model.task": ["classification"]}), "params.model.tau.when.model.task"),
    (mutate(f"{P}/model.tau/when", {"model.ms_task": ["classify"]}), "params.model.tau.when.model.ms_task"),
    (mutate(f"{P}/model.tau/when", {"model.alpha": [1.0]}), "params.model.tau.when.model.alpha"),
    (mutate(f"{P}/model.tau/when", {"model.tau": [0.1]}), "params.model.tau.when.model.tau"),
    (mutate(f"{P}/model.tau/when", {}), "params.model.tau.when"),
    (mutate(f"{P}/model.tau/high", 1.5), "params.model.tau (high)"),  # deep check: egomodel allows tau <= 1
    (mutate(f"{P}/model.tau/type", "int"), "params.model.tau"),  # bounds 0.0 and 0.4 are not integers
    (mutate(f"{P}/model.insertion/type", "float"), "params.model.insertion"),  # low/high missing
    (
        {**mutate(f"{P}/train.precision", {"type": "float", "low": 0, "high": 1}), "points": []},
        "params.train.precision (low)",
    ),  # deep check: a float for a string key
    (mutate("base/model.alpha", 1.0), "params.model.alpha"),  # also in base
    (mutate("base/model.dropout", 1.5), "base: egomodel rejects it: model.dropout"),  # deep check of base
    (mutate("metric", 3), "metric"),
    (mutate("metric", ""), "metric"),
    (mutate("mode", "maximize"), "mode"),
    (mutate("num_samples", 0), "num_samples"),
    (mutate("num_samples", 2.5), "num_samples"),
    (mutate("max_concurrent", 0), "max_concurrent"),
    (mutate("max_concurrent", True), "max_concurrent"),
    (mutate("seed", -1), "seed"),
    (mutate("resources/gpu", -0.5), "resources.gpu"),
    (mutate("resources/gpu", 1.5), "resources.gpu"),
    (mutate("resources/cpu", "two"), "resources.cpu"),
    (mutate("resources/tpu", 1), "resources.tpu"),
    (mutate("resources", [1, 0]), "resources"),
    (mutate("scheduler/type", "pbt"), "scheduler.type"),
    (mutate("scheduler/grace_period", 0), "scheduler.grace_period"),
    (mutate("scheduler/grace_period", "soon"), "scheduler.grace_period"),
    (mutate("scheduler/grace_period", 2.5), "scheduler.grace_period"),
    (mutate("scheduler/reduction_factor", 1), "scheduler.reduction_factor"),
    (mutate("scheduler/reduction_factor", 0.5), "scheduler.reduction_factor"),
    (mutate("scheduler/max_t", 10), "scheduler.max_t"),
    (mutate("scheduler", {"type": "fifo", "grace_period": 3}), "scheduler.grace_period"),
    (mutate("points", {"model.alpha": 1.0}), "points"),
    (mutate("points/0/model.dropout", 0.5), "points[0].model.dropout"),
    (mutate("points/0/model.variant", "ms"), "points[0].model.variant"),  # a base key
    (mutate("points/0/model.alpha", 100.0), "points[0].model.alpha"),
    (mutate("points/0/model.hidden", 40), "points[0].model.hidden"),  # off the step grid
    (mutate("points/0/model.insertion", "layer9"), "points[0].model.insertion"),
    (mutate("points/0/train.stage3.trainable", ["ms_head"]), "points[0].train.stage3.trainable"),
    (mutate("points/0/train.stage3.trainable", "conv1"), "points[0].train.stage3.trainable"),
    (mutate("points/0/model.alpha"), "points[0].model.alpha"),  # missing an active param
    (mutate("points/0/model.ms_task", "regression_l1"), "points[0].model.tau"),  # tau given, inactive
    (mutate("points/0", 3), "points[0]"),
    (mutate("name", ""), "name"),
    (mutate("description", ["x"]), "description"),
]


@pytest.mark.parametrize(("data", "key"), BAD, ids=[f"{i}-{k}" for i, (_, k) in enumerate(BAD)])
def test_bad_space_names_the_key(tmp_path: Path, data: dict[str, Any], key: str):
    path = write(tmp_path, data)
    with pytest.raises(SpaceError) as e:
        load_space(path)
    msg = str(e.value)
    assert key in msg, msg
    assert str(path) in msg


def test_unknown_param_key_says_so(tmp_path: Path):
    msg = r"params\.model\.alhpa: not an egomodel config key; did you mean 'model.alpha'"
    with pytest.raises(SpaceError, match=msg):
        load_space(write(tmp_path, mutate(f"{P}/model.alhpa", {"type": "float", "low": 1, "high": 2})))


def test_condition_cycle(tmp_path: Path):
    data = mutate(f"{P}/model.ms_task/when", {"model.insertion": ["conv1"]})
    data["params"]["model.insertion"]["when"] = {"model.ms_task": ["classification"]}
    with pytest.raises(SpaceError, match="cycle"):
        load_space(write(tmp_path, data))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("params: [unclosed\n", "space.yaml:2: YAML syntax error"),
        ("metric: val_top1\nparams:\n  model.alpha: {type: float, low: 1\n", "space.yaml:4: YAML syntax error"),
        ("- a\n- b\n", "space: expected a mapping"),
        ("", "space: expected a mapping"),
        (
            "params:\n  model.alpha: {type: float, low: 1, high: 2}\n  model.alpha: {type: float, low: 1, high: 3}\n",
            "duplicate key 'model.alpha'",
        ),
        ("params: !!python/object:os.system {}\n", "YAML syntax error"),
    ],
)
def test_bad_yaml_names_file_and_line(tmp_path: Path, text: str, needle: str):
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, text))
    assert needle in str(e.value), str(e.value)


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


# --- fuzz: any malformed space is a SpaceError -----------------------------------------------------------------

WORDS = (
    [
        "float",
        "int",
        "categorical",
        "subset",
        "auto",
        "asha",
        "fifo",
        "max",
        "min",
        "conv1",
        "layer4",
        "feedback",
        "classification",
        "regression_mse",
        "model.alpha",
        "model.tau",
        "model.ms_task",
        "model.variant",
        "train.stage3.trainable",
        "train.stage1.epochs",
        "data.frames",
        "low",
        "high",
        "log",
        "step",
        "choices",
        "always",
        "when",
        "type",
        "cpu",
        "gpu",
        "1e-3",
        "",
        "params",
        "base",
        "points",
    ]
    + sorted(known_keys())[:12]
    + list(BLOCKS)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 300)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(WORDS)
    | st.text(max_size=6)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(WORDS) | scalars, children, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def malformed_spaces(draw: st.DrawFn) -> Any:
    data: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(data, dict):
            break
        node = data
        while True:  # walk down to a random container
            children = [
                k
                for k, v in (node.items() if isinstance(node, dict) else enumerate(node))
                if isinstance(v, (dict, list))
            ]
            if not children or draw(st.booleans()):
                break
            child = draw(st.sampled_from(children))
            node = node[child]
        keys = list(node.keys() if isinstance(node, dict) else range(len(node)))
        op = draw(st.sampled_from(["replace", "delete", "add"] if keys else ["add"]))
        if op == "add" and isinstance(node, dict):
            node[draw(st.sampled_from(WORDS) | scalars)] = draw(values)
        elif op == "add":
            node.append(draw(values))
        elif op == "delete":
            del node[draw(st.sampled_from(keys))]
        else:
            node[draw(st.sampled_from(keys))] = draw(values)
        if draw(st.sampled_from([False] * 19 + [True])):
            data = draw(values)  # sometimes not even a mapping
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=malformed_spaces(), garble=st.none() | st.tuples(st.integers(0, 2000), st.text(max_size=3)))
def test_malformed_spaces_fail_cleanly(tmp_path_factory: pytest.TempPathFactory, data: Any, garble: Any):
    text = yaml.safe_dump(data, sort_keys=False)
    if garble is not None:  # sometimes break the YAML text itself
        at, junk = garble
        at %= len(text) + 1
        text = text[:at] + junk + text[at:]
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text)
    try:
        space = load_space(path)
    except SpaceError:
        return
    assert space.params  # a space that loads is usable
    for params in sample(space, 2):
        trial_config(space, params)


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
