"""Search spaces: shipped files load, bad files fail at load naming the key (the Optuna/Ray side is
tests/test_sampling.py, fuzzed spaces tests/test_space_fuzz.py)."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from egomodel.training.stages import stage_plan
from tuning.space import SPACES_DIR, SearchSpace, list_spaces, load_space
from tuning.space.errors import SpaceError
from tuning.space.rungs import resolve_rungs
from tuning.space.sampling import encode_point, optuna_name, trial_config

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
    assert resolve_rungs(space, cfg) == (5, 6)  # auto: after stage 2's first decay (alpha, tau act there), stage 3
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
    assert space.scheduler.type == "asha" and space.scheduler.rungs is None


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
    # model.hidden acts from stage 1 (30 epochs at 0.1, first decay after epoch 2): rungs 3, 6, 12, 24, 48
    assert resolve_rungs(space, cfg) == (3, 6, 12, 24, 48)


def test_defaults(tmp_path: Path):
    minimal = {"params": {"model.alpha": {"type": "float", "low": 0.5, "high": 2}}}
    space = load_space(write(tmp_path, minimal))
    got = (space.metric, space.mode, space.num_samples, space.max_concurrent, space.seed)
    assert got == ("val_top1", "max", 1, 1, 0)
    assert space.resources == {"cpu": 1.0, "gpu": 0.0} and space.scheduler.type == "asha"
    assert space.scheduler.rungs is None and space.scheduler.reduction_factor == 2.0


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
