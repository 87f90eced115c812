"""ASHA's rungs sit where the compared trials already differ: the exact epochs of each shipped space, the
space file's own rung lists, and rungs that cannot work rejected when the space loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuning.search import base_config
from tuning.space import SPACES_DIR, SpaceError, load_space
from tuning.space.rungs import acting_stage, resolve_rungs


@pytest.mark.parametrize(("name", "rungs", "first"), [
    # ablation: stage 1 has 300 epochs; alpha, tau, ms_task and the stage-2 lr act from stage 2 (301..450),
    # whose first decay is after 25 epochs: 326; 652 is past the run (650), so one more after stage 3's
    # first decay (stage 3 starts after 450, milestone 50): 501
    ("ablation", (326, 501), 2),
    # smoke at epochs_scale 0.01: 3 / 2 / 2 epochs, milestones 1 in stages 2 and 3: 5, then 6 in stage 3
    ("smoke", (5, 6), 2),
    # wearable: the variant and the frames act from stage 1 (milestone 25): 26 and its doublings below 650,
    # and, since 416 is still in stage 2 (301..450), one after stage 3's first decay: 501
    ("wearable", (26, 52, 104, 208, 416, 501), 1),
])
def test_auto_rungs_of_the_shipped_spaces(name, rungs, first):
    space = load_space(name)
    cfg = base_config(space, {})
    assert resolve_rungs(space, cfg) == rungs
    assert acting_stage(space, cfg)[0] == first


def test_every_shipped_space_is_either_staged_asha_or_fifo():
    kinds = {name: load_space(name).scheduler.type for name in ("ablation", "smoke", "paper", "table3", "wearable")}
    assert kinds == {"ablation": "asha", "smoke": "asha", "paper": "fifo", "table3": "fifo", "wearable": "moasha"}


def smoke_with(tmp_path: Path, **scheduler: object) -> Path:
    spec = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    spec["scheduler"] = {"type": "asha", "reduction_factor": 2, **scheduler}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_listed_rungs_global_or_stage_relative(tmp_path):
    space = load_space(smoke_with(tmp_path, rungs=[4, {"stage": 3, "epoch": 1}]))
    assert resolve_rungs(space, base_config(space, {})) == (4, 6)


@pytest.mark.parametrize(("scheduler", "message"), [
    ({"rungs": [{"stage": 2, "epoch": 3}]}, r"rungs\[0\]: epoch 3 is outside stage 2's epochs 1..2"),
    ({"rungs": [{"stage": 4, "epoch": 1}]}, r"stage 4 is not a stage of the feedback variant"),
    ({"rungs": [7]}, r"global epoch 7 is not below the run's last epoch 7"),
    ({"rungs": [{"stage": 1, "epoch": 2}]}, r"epoch 2 is in stage 1, before stage 2, the first stage in which a "
                                            r"searched param acts \(model.alpha, model.tau\)"),
    ({"grace_period": 2}, r"grace_period: global epoch 2 is in stage 1, before stage 2"),
    ({"rungs": [6, 5]}, r"rungs\[1\]: global epoch 5 does not come after the previous rung 6"),
    ({"rungs": [{"stage": 2}]}, r"rungs\[0\]: a stage-relative rung has exactly the keys stage and epoch"),
    ({"rungs": [0]}, r"rungs\[0\]: epoch must be an integer >= 1"),
    ({"rungs": "soon"}, r"scheduler.rungs: expected a list"),
    ({"rungs": [5], "grace_period": 5}, "give rungs or grace_period, not both"),
])
def test_bad_rungs_fail_when_the_space_loads(tmp_path, scheduler, message):
    with pytest.raises(SpaceError, match=message):
        load_space(smoke_with(tmp_path, **scheduler))


def test_auto_needs_room_for_a_rung(tmp_path):
    spec = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    spec["base"]["train.epochs_scale"] = 0.005  # 2 / 1 / 1 epochs: stage 2 has no decay, stage 3 ends the run
    spec["params"] = {"train.stage3.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpaceError, match=r"auto finds no rung: stage 3, where train.stage3.lr first act"):
        load_space(path)
