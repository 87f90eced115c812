"""egomodel.reporting.pictures (and its command, egomodel.visualize): training curves, CAM overlays and
feedback β/γ maps of a model, as PNG files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from egomodel import visualize
from egomodel.config import ModelConfig
from egomodel.data.dataset import load_bundle
from egomodel.model import EgoRNN
from egomodel.model import checkpoint as ck
from egomodel.reporting import pictures as vis
from egomodel.training.stages import apply_stage
from tests.conftest import tiny_config

SIZE, T, C = 64, 3, 4


def feedback_model(point: str = "conv1", perturb: bool = True) -> EgoRNN:
    torch.manual_seed(0)
    model = EgoRNN(ModelConfig(variant="feedback", pretrained="none", hidden=16, insertion=point), C, SIZE)
    apply_stage(model, ["feedback", "conv1", "layer4"])  # stage 3: the branch runs
    if perturb:  # away from the identity the branch starts at
        for p in model.feedback.parameters():
            nn.init.normal_(p, std=0.2)
    return model.eval()


def is_png(path, min_side: int = 100) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and min(im.size) >= min_side


HISTORY = [
    {"stage": s, "epoch": e, "global_epoch": g, "train_loss": 2.0 - 0.1 * g, "train_top1": 0.1 * g,
     "val_loss": 2.1 - 0.1 * g, "val_top1": 0.08 * g, "lr": 1e-3}
    for g, (s, e) in enumerate([(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)], start=1)
]


def test_training_curves(tmp_path):
    path = vis.training_curves(HISTORY, tmp_path / "curves.png", "title")
    assert path == tmp_path / "curves.png" and is_png(path)
    assert vis.training_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    # no validation (final re-training): train curves only, no error
    rows = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in HISTORY]
    assert is_png(vis.training_curves(rows, tmp_path / "train_only.png"))


@pytest.mark.parametrize("variant", ["attention", "feedback"])
def test_cam_overlays(tmp_path, variant):
    torch.manual_seed(0)
    model = EgoRNN(ModelConfig(variant=variant, pretrained="none", hidden=16), C, SIZE).eval()
    frames = torch.randn(2, T, 3, SIZE, SIZE)
    path = vis.cam_overlays(model, frames, [0, 3], ["a", "b", "c", "d"], tmp_path / "cam.png")
    assert is_png(path)


def test_no_cam_for_convlstm(tmp_path):
    model = EgoRNN(ModelConfig(variant="convlstm", pretrained="none", hidden=16), C, SIZE)
    assert vis.cam_overlays(model, torch.randn(1, T, 3, SIZE, SIZE), [0], list("abcd"), tmp_path / "x.png") is None


@pytest.mark.parametrize("point", ["conv1", "layer2"])
def test_feedback_tensors_are_what_the_forward_used(point):
    model = feedback_model(point)
    clip = torch.randn(T, 3, SIZE, SIZE)
    recs = vis.feedback_tensors(model, clip)
    assert len(recs) == T - 1  # frame 0 has no previous frame
    # frame t-1's Conv100, recomputed independently: the model's own encoder on the previous frames
    prev = None
    mids = []
    with torch.no_grad():
        for t in range(T):
            _, _, prev, _ = model.encode_frames(clip[t:t + 1], prev)
            mids.append(prev[0])
    for t, rec in enumerate(recs, start=1):
        assert torch.allclose(rec["conv100"], mids[t - 1], atol=1e-5)
        assert rec["beta"].shape == rec["gamma"].shape == rec["before"].shape == rec["after"].shape
        assert torch.allclose(rec["after"], rec["beta"] * rec["before"] + rec["gamma"], atol=1e-5)
        assert not torch.allclose(rec["beta"], torch.ones_like(rec["beta"]))
    assert bool(model.feedback_on)  # the caller's setting is restored


def test_feedback_at_initialisation_is_the_identity():
    model = feedback_model(perturb=False)
    model.feedback_on.fill_(False)
    recs = vis.feedback_tensors(model, torch.randn(T, 3, SIZE, SIZE))
    assert not bool(model.feedback_on)  # restored after the branch was forced on for the pictures
    for rec in recs:
        assert torch.equal(rec["beta"], torch.ones_like(rec["beta"]))
        assert torch.equal(rec["gamma"], torch.zeros_like(rec["gamma"]))
        assert torch.equal(rec["after"], rec["before"])


def test_feedback_maps(tmp_path):
    model = feedback_model()
    assert is_png(vis.feedback_maps(model, torch.randn(T, 3, SIZE, SIZE), tmp_path / "fb.png", channels=3))
    assert vis.feedback_maps(model, torch.randn(1, 3, SIZE, SIZE), tmp_path / "one.png") is None
    with pytest.raises(ValueError, match="no feedback branch"):
        vis.feedback_tensors(EgoRNN(ModelConfig(variant="ms", pretrained="none", hidden=16), C, SIZE),
                             torch.randn(T, 3, SIZE, SIZE))


def test_to_image_inverts_the_normalisation():
    rgb = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    norm = torch.from_numpy(((rgb - vis.MEAN) / vis.STD).transpose(2, 0, 1))
    assert np.allclose(vis.to_image(norm), rgb, atol=1e-6)


def test_pick_clips_spreads_over_classes():
    assert vis.pick_clips([0, 0, 0, 1, 1, 2], 4) == [0, 3, 5, 1]
    assert vis.pick_clips([1, 1], 4) == [0, 1]
    assert vis.pick_clips([], 3) == []


def test_model_plots_from_a_checkpoint(tmp_path, tiny_root):
    cfg = tiny_config(tiny_root)
    bundle = load_bundle(cfg.data, cfg.train.seed, need_mmaps=False)
    torch.manual_seed(0)
    model = EgoRNN(cfg.model, len(bundle.classes), cfg.data.image_size)
    apply_stage(model, ["feedback"])
    path = ck.save(tmp_path / "stage3_best.pt", {"model": model.state_dict(), "config": cfg.to_dict(),
                                                  "classes": bundle.classes, "stage": 3, "epoch": 1})
    files = vis.model_plots(path, tmp_path / "plots", history=HISTORY, clips=3)
    assert sorted(f.name for f in files) == ["cam_val.png", "feedback_val.png", "training_curves.png"]
    assert all(is_png(f) for f in files)
    # the command line does the same
    (tmp_path / "metrics.json").write_text(json.dumps({"history": HISTORY}))
    assert visualize.main(["--checkpoint", str(path), "--out", str(tmp_path / "cli"), "--metrics",
                     str(tmp_path / "metrics.json"), "--clips", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == sorted(f.name for f in files)


# ------------------------------------------------------------------ a search as a whole (tuning.tracking.study_plots)
def _study(n_complete: int, n_pruned: int = 1, n_failed: int = 1):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n_complete + n_pruned + n_failed):
        trial = study.ask()
        alpha = trial.suggest_float("model.alpha", 0.1, 10, log=True)
        trial.suggest_categorical("train.stage3.trainable[conv1]", [True, False])
        if i < n_complete:
            study.tell(trial, alpha / 10)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if i < n_complete + n_pruned
                       else optuna.trial.TrialState.FAIL)
    return study


@pytest.mark.parametrize(("complete", "expected", "note"), [
    (0, set(), "no complete trial"),
    (1, {"optuna_history.png", "optuna_parallel_coordinate.png"}, "importances"),
    (4, {"optuna_history.png", "optuna_importances.png", "optuna_parallel_coordinate.png"}, None),
])
def test_study_plots_skip_what_the_study_cannot_give(tmp_path, complete, expected, note):
    from tuning.tracking.study_plots import study_plots

    files, notes = study_plots(_study(complete), tmp_path)
    assert {f.name for f in files} == expected and all(is_png(f) for f in files)
    assert (note is None and not notes) or (note is not None and any(note in n for n in notes)), notes


def test_study_comes_back_from_the_searcher_state(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    from tuning.tracking.study_plots import load_study

    searcher = OptunaSearch(metric="val_top1", mode="max")
    searcher._ot_study = _study(2)
    searcher._ot_trials = {"abc": searcher._ot_study.trials[1]}
    searcher.save_to_dir(str(tmp_path), session_str="x")
    study, numbers = load_study(tmp_path)
    assert [t.state for t in study.trials] == [t.state for t in searcher._ot_study.trials]
    assert numbers == {"abc": 1}


def test_trials_csv_has_every_trial(tmp_path):
    import csv

    import mlflow

    from tests.conftest import write_space
    from tuning.space import load_space
    from tuning.tracking.callback import MlflowCallback
    from tuning.tracking.mlflow_runs import check_reachable, parent_run
    from tuning.tracking.study_plots import trials_table

    space = load_space(write_space(tmp_path))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = parent_run(check_reachable(uri), "exp", "/ray/exp", space, "fp", resume=False)
    cb = MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0})
    for tid, alpha in (("t0", 0.5), ("t1", 2.0)):
        cb._put(tid, "create", name=f"run_trial_{tid}", start_time=1000 + len(tid) + alpha,
                config={"model.alpha": alpha, "model.tau": 0.1, "train.stage3.lr": 1e-3})
    cb._put("t0", "batch", metrics=[("best_val_top1", 0.75, 0, 7)], tags={"egosearch.outcome": "completed"})
    cb._put("t1", "batch", tags={"egosearch.outcome": "failed", "error": "FloatingPointError: nan"})
    assert cb.flush()  # the writer thread's work, done here
    study = _study(1, n_pruned=0, n_failed=1)
    path = trials_table(mlflow.MlflowClient(uri), parent, space, tmp_path / "trials.csv", study, {"t0": 0, "t1": 1})
    rows = {r["trial_id"]: r for r in csv.DictReader(open(path))}
    assert set(rows) == {"t0", "t1"}
    assert rows["t0"]["outcome"] == "completed" and float(rows["t0"]["val_top1"]) == 0.75
    assert rows["t0"]["optuna_state"] == "COMPLETE" and rows["t1"]["optuna_state"] == "FAIL"
    assert rows["t1"]["error"] == "FloatingPointError: nan" and rows["t1"]["model.alpha"] == "2.0"
    assert {"run_id", "status", "model.tau", "train.stage3.lr"} <= set(rows["t0"])


def test_grid_pictures_are_pasted_one_to_one(tmp_path):
    """The CAM and feedback grids are one pasted picture: each panel lands, unresampled, where the layout says."""
    from egomodel.reporting.mosaic import Layout, colorize, grid_figure, paste

    layout = Layout(rows=2, cols=3, cell=40, left=30)
    red, blue = np.zeros((40, 40, 3), np.float32), np.zeros((40, 40, 3), np.float32)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    panels = [[red, None, blue], [None, blue, red]]
    pic = paste(panels, layout)
    assert pic.shape == (*layout.size, 3)
    y, x = layout.origin(1, 1)
    assert np.array_equal(pic[y:y + 40, x:x + 40], blue)
    assert (pic[:layout.top] == 1.0).all()  # white above the first row (the figure's title)
    path = vis.save_figure(grid_figure(panels, [["a", "", "c"], []], layout, "title", [("row 0", "red")]),
                     tmp_path / "grid.png")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[:2] == layout.size
    y, x = layout.origin(0, 2)
    assert (rgb[y + 5:y + 35, x + 5:x + 35] == [0, 0, 255]).all()
    y, x = layout.origin(1, 0)
    assert (rgb[y + 5:y + 35, x + 5:x + 35] == 255).all()  # an empty panel stays white
    # colour maps clip to the given range
    assert np.allclose(colorize(np.array([[-5.0, 5.0]]), "gray", 0.0, 1.0), [[[0, 0, 0], [1, 1, 1]]], atol=1e-6)
