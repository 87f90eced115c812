"""The inference cost model (egomodel.cost): FLOPs per clip grow as they must, and are cached per
configuration."""

from __future__ import annotations

import json

import pytest

from egomodel.config import from_dict
from egomodel.cost import clip_cost, cost_key, count

SMALL = {"model.hidden": 16, "data.frames": 2, "data.image_size": 32, "data.flow_segments": 2}


def cfg(**changes: object):
    return from_dict({}, {**SMALL, **{k.replace("__", "."): v for k, v in changes.items()}})


def test_flops_grow_with_frames_and_size() -> None:
    base = count(cfg(model__variant="attention"))
    more_frames = count(cfg(model__variant="attention", data__frames=4))
    larger = count(cfg(model__variant="attention", data__image_size=64))
    # the backbone runs once per frame: twice the frames cost about twice (the ConvLSTM too)
    assert more_frames.gflops == pytest.approx(2 * base.gflops, rel=0.02)
    # convolutions scale with the pixels: 4x the pixels, about 4x the FLOPs (ConvLSTM over 2x2 vs 1x1 too)
    assert 3.5 * base.gflops < larger.gflops < 4.5 * base.gflops
    assert more_frames.params_m == base.params_m == larger.params_m  # parameters do not depend on the input


def test_variants_relations() -> None:
    attention = count(cfg(model__variant="attention"))
    ms = count(cfg(model__variant="ms"))
    feedback = count(cfg(model__variant="feedback"))
    flow = count(cfg(model__variant="flow"))
    two = count(cfg(model__variant="two_stream"))
    assert attention.gflops < ms.gflops < feedback.gflops  # each adds a head, then a branch, to the last
    assert attention.params_m < ms.params_m < feedback.params_m
    # two-stream runs the attention stream over the frames and the flow stream over its stacks
    assert two.gflops == pytest.approx(attention.gflops + flow.gflops, rel=0.01)
    assert two.gflops > ms.gflops
    assert count(cfg(model__variant="flow", data__flow_segments=4)).gflops == pytest.approx(2 * flow.gflops, rel=0.01)


def test_cached_per_configuration(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cost.json"
    c = cfg(model__variant="ms")
    first = clip_cost(c, cache=cache)
    entries = json.loads(cache.read_text())
    assert list(entries) == [cost_key(c)]
    # a hit never counts again; a field the cost does not read (alpha, the seed) hits the same entry
    monkeypatch.setattr("egomodel.cost.count", lambda *a, **k: pytest.fail("counted again"))
    assert clip_cost(cfg(model__variant="ms", model__alpha=3.0, train__seed=5), cache=cache) == first
    assert cost_key(cfg(model__variant="ms", data__frames=3)) != cost_key(c)
    assert cost_key(cfg(model__variant="ms", model__backbone="resnet18")) != cost_key(c)


def test_resnet18_backbone_costs_about_half() -> None:
    """ResNet-18 has half ResNet-34's convolutions at the same widths: about half the backbone's FLOPs."""
    r34 = count(cfg(model__variant="attention", data__image_size=64))
    r18 = count(cfg(model__variant="attention", data__image_size=64, model__backbone="resnet18"))
    assert 0.4 * r34.gflops < r18.gflops < 0.6 * r34.gflops
    assert 0.4 * r34.params_m < r18.params_m < 0.6 * r34.params_m
