"""Fuzzed search spaces: any malformed space fails at load with a SpaceError, and any space that loads
samples into valid trial configs."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egomodel.config import BLOCKS, known_keys
from tests.test_sampling import sample
from tests.test_space import VALID
from tuning.space import load_space
from tuning.space.errors import SpaceError
from tuning.space.sampling import trial_config

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
