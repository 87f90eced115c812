"""One YAML dialect: egomodel's ``--config`` file and a search space's ``base`` accept the same forms
(nested sections or dotted keys), and the ``config.yaml`` a run writes works as either."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from egomodel.config import Config, ConfigError, dump, load_config
from tuning.space.errors import SpaceError
from tuning.space.load import load_space

NESTED = {"model": {"alpha": 0.5, "variant": "ms"}, "train": {"stage1": {"epochs": 3}}}
DOTTED = {"model.alpha": 0.5, "model.variant": "ms", "train.stage1.epochs": 3}
MIXED = {"model": {"alpha": 0.5}, "model.variant": "ms", "train.stage1.epochs": 3}


@pytest.mark.parametrize("values", [NESTED, DOTTED, MIXED], ids=["nested", "dotted", "mixed"])
def test_config_file_accepts_nested_and_dotted(tmp_path: Path, values: dict) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(values))
    cfg = load_config(f)
    assert (cfg.model.alpha, cfg.model.variant, cfg.train.stage1.epochs) == (0.5, "ms", 3)


def test_config_file_unknown_key_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model.alpah: 1\n")
    with pytest.raises(ConfigError, match="alpah"):
        load_config(f)


def _space(tmp_path: Path, base: object) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"base": base, "params": {"model.tau": {"type": "float", "low": 0.1, "high": 0.5}}}))
    return p


@pytest.mark.parametrize("values", [NESTED, DOTTED, MIXED], ids=["nested", "dotted", "mixed"])
def test_space_base_accepts_nested_and_dotted(tmp_path: Path, values: dict) -> None:
    space = load_space(_space(tmp_path, values))
    assert space.base == DOTTED


def test_a_runs_config_yaml_is_a_config_file_and_a_space_base(tmp_path: Path) -> None:
    written = Config()
    written.model.alpha, written.model.tau, written.model.pretrained = 0.25, 0.3, "none"
    dump(written, tmp_path / "config.yaml")  # what egomodel.train writes beside a run
    assert load_config(tmp_path / "config.yaml") == written
    space = load_space(_space(tmp_path, "config.yaml"))  # base: FILE, relative to the space
    assert space.base["model.alpha"] == 0.25
    assert "model.tau" not in space.base  # searched: the param wins over the file's value


def test_space_base_file_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="nope.yaml"):
        load_space(_space(tmp_path, "nope.yaml"))
