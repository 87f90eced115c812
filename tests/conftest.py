"""Shared fixtures: a tiny synthetic GTEA61-layout data set and a tiny CPU config."""

from __future__ import annotations

from pathlib import Path

import pytest

from egomodel.config import Config, from_dict
from egomodel.data.synthetic import generate

TINY = {
    "model.pretrained": "none",
    "model.hidden": 32,
    "data.image_size": 64,
    "data.frames": 3,
    "data.num_workers": 0,
    "train.epochs_scale": 0.005,
    "train.eval_batch_size": 16,
}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 3 clips x 4 users, 6 frames of 48x40 (one class missing for S1)."""
    return generate(tmp_path_factory.mktemp("gtea"), classes=4, clips_per_class=3, frames=6, size=(48, 40), seed=0)


def tiny_config(root: Path, **overrides: object) -> Config:
    values = {**TINY, "data.root": str(root), **{k.replace("__", "."): v for k, v in overrides.items()}}
    return from_dict({}, values)
