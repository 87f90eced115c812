"""A whole three-stage ``feedback`` run from random weights learns the synthetic task.

The setting is the cheapest found that learns reliably: about 90 s on one CPU core (measured
85-100 s CPU with the other core busy; about 10 s of it is writing checkpoints):

- data: 8 classes x 6 clips x 4 users of 64x64 frames (square: the multi-scale corner crops of
  80x64 frames more often cut the object off), 6 frames per clip; split 108 train / 30 val / 48 test
  (user S2) clips. Validation needs ~30 clips: with 16 a chance-level model reaches 2x chance with
  p = 0.13 and the per-stage "best epoch" is picked by noise;
- model: 32 px input (layer-4 maps are 1x1), 2 frames, ConvLSTM hidden 64, no dropout. At 64 px
  (2x2 maps) the random ResNet-34 did not learn within 10 stage-2 epochs, and each epoch costs 2x;
- schedule: stage 1 one epoch (a frozen random backbone teaches it little), stage 2 ten epochs at
  lr 1e-3 (it trains layer 4: that is where the learning happens), decayed 10x after epoch 7,
  stage 3 two epochs at the paper's lr 1e-4; batch 8 everywhere.

In this budget the model learns mostly the object (colour and shape); classes that share an object
(shake_cup / stir_cup) stay largely confused, so top-1 stays near or below 0.5 (two classes per
object); chance is 0.125.

Measured on the 2-core AMD EPYC (AVX-512 BF16) with ``train.precise_bn``, seeds (t, (3t+1) mod 8) for
t = 0-7: validation 0.33-0.63; t = 0-3 again with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (another
CPU's kernels): 0.43-0.53; on a 2-core Intel Xeon with AMX (its own kernels), t = 0-7: 0.43-0.60 (test
user 0.15-0.42). The bound below (0.25, 8 of 30 clips) sits 0.08 under the worst of all 20 runs. Test user
S2, an unseen scene, does not hold a bound: 0.13-0.40 over the same 12 runs, 3 under 1.5x chance
(without precise BN: 0.15-0.44, 2 of 9 under), as the data seed decides how far apart the scenes
fall. So the test user is read and recorded here, not bounded. About 90-100 s on one core.
The control, this run's model at its initial weights, must stay under the validation bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egomodel.config import from_dict
from egomodel.data.synthetic import generate
from egomodel.training.engine import train
from tests.conftest import untrained_control

CLASSES = 8
CHANCE = 1 / CLASSES
# validation: the final (stage-3 best) checkpoint; >= 8 of 30 clips. A model at chance gets there
# with p = 0.03 for one evaluation (a little more after picking the best of stage 3's epochs).
VAL_MIN = 2 * CHANCE

DATA = {"classes": CLASSES, "clips_per_class": 6, "frames": 6, "size": (64, 64), "seed": 1, "users": 4}  # run t = 0
OVERRIDES = {
    "model.variant": "feedback",
    "model.backbone": "resnet34",  # the paper's (the sweep in the docstring ran on it)
    "model.pretrained": "none",
    "model.hidden": 64,
    "model.dropout": 0.0,
    "data.image_size": 32,
    "data.frames": 2,
    "data.num_workers": 0,
    "train.seed": 0,
    "train.device": "cpu",
    "train.precision": "fp32",  # the setting was measured in fp32; bf16-capable CPUs would differ
    "train.precise_bn": True,  # BN statistics recomputed after each epoch (see the module docstring)
    "train.stage1.epochs": 1,
    "train.stage1.batch_size": 8,
    "train.stage2.epochs": 10,
    "train.stage2.milestones": [7],
    "train.stage2.lr": 1e-3,
    "train.stage2.batch_size": 8,
    "train.stage3.epochs": 2,
    "train.stage3.lr": 1e-4,
    "train.stage3.batch_size": 8,
}
EPOCHS = {"1": 1, "2": 10, "3": 2}
METRIC_KEYS = ("classes", "num_train_clips", "num_val_clips", "num_test_clips", "val_top1", "test_top1")


@pytest.mark.timeout(600)
def test_three_stage_feedback_run_learns_from_random_weights(tmp_path: Path) -> None:
    root = generate(tmp_path / "data", **DATA)
    cfg = from_dict({}, {**OVERRIDES, "data.root": str(root)})
    out = tmp_path / "run"
    metrics = train(cfg, out, progress=False)

    for name in (
        "metrics.json",
        "confusion_test.png",
        "per_class_test.csv",
        "config.yaml",
        "checkpoints/stage1_best.pt",
        "checkpoints/stage2_best.pt",
        "checkpoints/stage3_best.pt",
        "checkpoints/last.pt",
    ):
        assert (out / name).is_file(), name

    saved = json.loads((out / "metrics.json").read_text())
    for key in (*METRIC_KEYS, "stages", "history"):
        assert key in saved, key
    assert saved["val_top1"] == metrics["val_top1"] and saved["test_top1"] == metrics["test_top1"]
    assert len(saved["classes"]) == CLASSES
    total = CLASSES * DATA["clips_per_class"] * DATA["users"] - DATA["clips_per_class"]  # S1 lacks a class
    assert saved["num_train_clips"] + saved["num_val_clips"] + saved["num_test_clips"] == total
    assert saved["num_test_clips"] == CLASSES * DATA["clips_per_class"]
    assert saved["num_val_clips"] >= 25, "too few validation clips for the bound below to mean much"
    assert set(saved["stages"]) == set(EPOCHS)
    for stage, epochs in EPOCHS.items():
        assert 1 <= saved["stages"][stage]["best_epoch"] <= epochs
    assert [(h["stage"], h["epoch"]) for h in saved["history"]] == [
        (int(s), e) for s, n in EPOCHS.items() for e in range(1, n + 1)
    ]

    curve = [(h["stage"], round(h["train_top1"], 2), round(h["val_top1"], 2)) for h in saved["history"]]
    assert saved["val_top1"] >= VAL_MIN, (
        f"val top-1 {saved['val_top1']:.3f} < {VAL_MIN:.3f} (chance {CHANCE:.3f}); (stage, train, val): {curve}"
    )
    assert saved["test_top1"] is not None  # evaluated once on user S2 (not bounded: see the module docstring)
    control = untrained_control(out / "checkpoints" / "stage3_best.pt", tmp_path / "control")
    control_top1 = sum(c for _, c in control.values()) / sum(n for n, _ in control.values())
    assert control_top1 < VAL_MIN, f"the untrained control meets the bound: {control_top1:.3f}"
