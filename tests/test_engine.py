"""The engine's contract: callback, checkpoints, resume == uninterrupted, bad data up front."""

from __future__ import annotations

import shutil

import pytest
import torch

from egomodel.data.layout import DataError
from egomodel.model import checkpoint as ck
from egomodel.training.engine import ResumeError, train
from tests.conftest import tiny_config

WAIT_KEYS = ("data_wait_fraction",)


class Stop(Exception):
    pass


def _strip(history):
    return [{k: v for k, v in h.items() if k not in WAIT_KEYS} for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_root):
    out = tmp_path_factory.mktemp("ref")
    reports = []
    metrics = train(tiny_config(tiny_root, model__variant="feedback"), out, callback=reports.append, progress=False)
    return out, metrics, reports


def test_callback_sees_every_epoch_with_a_resumable_checkpoint(reference):
    out, metrics, reports = reference
    assert [(r.stage, r.epoch) for r in reports] == [(1, 1), (1, 2), (2, 1), (3, 1)]
    assert [r.global_epoch for r in reports] == [1, 2, 3, 4]
    for r in reports:
        assert {"train_loss", "train_top1", "val_top1", "val_loss", "lr", "data_wait_fraction"} <= set(r.metrics)
        assert 0.0 <= r.metrics["data_wait_fraction"] <= 1.0
        assert (r.checkpoint_dir / ck.LAST).exists()
    last = ck.load(out / "checkpoints" / ck.LAST)
    assert last["stage"] == 3 and last["epoch"] == 1 and "optimizer" in last and "rng" in last
    for n in (1, 2, 3):
        assert (out / "checkpoints" / ck.best_name(n)).exists()
    assert set(metrics["stages"]) == {"1", "2", "3"} and metrics["test_top1"] is not None
    for f in ("metrics.json", "config.yaml", "confusion_test.png", "per_class_test.csv", "confusion_val.png"):
        assert (out / f).exists(), f


@pytest.mark.parametrize("stop_after", [1, 2, 3])  # mid-stage, at a stage boundary, in the last stage
def test_resume_equals_uninterrupted(tmp_path, tiny_root, reference, stop_after):
    ref_out, ref_metrics, _ = reference
    cfg = tiny_config(tiny_root, model__variant="feedback")

    def kill(r):
        if r.global_epoch == stop_after:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path, callback=kill, progress=False)
    metrics = train(cfg, tmp_path, resume=True, progress=False)
    assert _strip(metrics["history"]) == _strip(ref_metrics["history"])
    assert metrics["test_top1"] == ref_metrics["test_top1"]
    a = ck.load(tmp_path / "checkpoints" / ck.best_name(3))["model"]
    b = ck.load(ref_out / "checkpoints" / ck.best_name(3))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config_or_nothing(tmp_path, tiny_root, reference):
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(tiny_config(tiny_root), tmp_path, resume=True, progress=False)
    shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(ResumeError, match="model.alpha"):
        train(tiny_config(tiny_root, model__alpha=0.5), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("variant", ["convlstm", "attention", "ms"])
def test_two_stage_variants_run(tmp_path, tiny_root, variant):
    metrics = train(tiny_config(tiny_root, model__variant=variant), tmp_path, progress=False)
    assert set(metrics["stages"]) == {"1", "2"} and len(metrics["history"]) == 3


def _copy(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    return root


def test_bad_data_is_reported_before_training(tmp_path, tiny_root):
    cases = []
    with pytest.raises(DataError, match="does not exist"):
        train(tiny_config(tmp_path / "missing"), tmp_path / "o1", progress=False)
    empty = tmp_path / "empty" / "processed_frames2"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match="processed_frames2"):
        train(tiny_config(empty.parent), tmp_path / "o2", progress=False)
    with pytest.raises(DataError, match="S9"):
        train(tiny_config(tiny_root, data__test_users=["S9"]), tmp_path / "o3", progress=False)
    with pytest.raises(DataError, match="fewer than"):
        train(tiny_config(tiny_root, data__frames=7), tmp_path / "o4", progress=False)
    root = _copy(tiny_root, tmp_path)
    clip = next((root / "processed_frames2" / "S3").glob("*/*"))
    for m in (clip / "mmaps").glob("map*.png"):
        m.unlink()
    (clip / "mmaps" / "map0006.png").write_bytes(b"")  # only the last map left, and unreadable
    with pytest.raises(DataError, match=str(clip.relative_to(root))):
        train(tiny_config(root, data__mmap_reach=1), tmp_path / "o5", progress=False)
    assert not cases and not any((tmp_path / f"o{i}" / "checkpoints").exists() for i in range(1, 6))


def test_corrupt_frame_names_the_file(tmp_path, tiny_root):
    root = _copy(tiny_root, tmp_path)
    frame = next((root / "processed_frames2" / "S3").glob("*/*/rgb/rgb0001.png"))
    frame.write_bytes(b"not a png")
    with pytest.raises(DataError, match="rgb0001.png"):
        train(tiny_config(root, model__variant="convlstm"), tmp_path / "o", progress=False)


def test_stage1_feature_cache_matches_the_uncached_features(tmp_path, tiny_root):
    from egomodel.config import from_dict
    from egomodel.data import layout
    from egomodel.data.dataset import ClipDataset
    from egomodel.data.transforms import normalize_frames
    from egomodel.model import EgoRNN
    from egomodel.training.feature_cache import VIEW_KEY, FeatureCache

    cfg = tiny_config(tiny_root)
    clips = layout.scan(tiny_root)[:3]
    ds = ClipDataset(clips, layout.class_names(clips), cfg.data, seed=0)
    torch.manual_seed(0)
    model = EgoRNN(from_dict({}, {"model.pretrained": "none", "model.hidden": 8}).model, 4, 64).eval()
    cache = FeatureCache(model, ds, views=2, device=torch.device("cpu"), progress=False)
    assert cache.features.shape[:3] == (3, 2, 3)
    with torch.no_grad():
        for view in range(2):
            direct = model.encode_clips(normalize_frames(ds[(1, VIEW_KEY + view)]["frames"][None]))[0]
            assert torch.allclose(cache.features[1, view], direct, atol=1e-5)
    picked = {tuple(y.tolist()) for _, y in cache.batches(2, epoch_key=5)}
    assert sum(len(p) for p in picked) == 3


def test_stage1_with_the_cache_trains(tmp_path, tiny_root):
    metrics = train(tiny_config(tiny_root, model__variant="attention", train__stage1_views=2), tmp_path,
                    progress=False)
    stage1 = [h for h in metrics["history"] if h["stage"] == 1]
    assert stage1 and all(h["data_wait_fraction"] == 0.0 for h in stage1)


def test_runtime_settings_reach_the_model(tmp_path, tiny_root, monkeypatch):
    """``train.compile`` compiles the model in place (checkpoints keep their parameter names) and
    ``train.convlstm_gates`` picks the ConvLSTM's mode; ``data.packed_cache`` fills its folder;
    ``data.device_clips`` trains from clips held on the device (here the CPU)."""
    from egomodel.model.convlstm import ConvLSTM

    compiled, gates = [], []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    real_forward = ConvLSTM.forward

    def spy(self, x):
        gates.append(self.mode(x.device))
        return real_forward(self, x)

    monkeypatch.setattr(ConvLSTM, "forward", spy)
    out = train(tiny_config(tiny_root, train__compile=True, train__convlstm_gates="fused", data__device_clips=True,
                            data__packed_cache=str(tmp_path / "packed")), tmp_path / "run", progress=False)
    assert compiled == ["EgoRNN"] and set(gates) == {"fused"}
    assert list(ck.load(tmp_path / "run" / "checkpoints" / ck.best_name(3))["model"]) == list(
        build_model_state_keys(tiny_root))
    assert any((tmp_path / "packed").rglob("*.npy"))
    assert 0.0 <= out["val_top1"] <= 1.0
    assert {h["stage"] for h in out["history"]} == {1, 2, 3} and all(h["train_loss"] > 0 for h in out["history"])


def build_model_state_keys(root):
    from egomodel.model import build_model

    return build_model(tiny_config(root), 4).state_dict().keys()


def test_precise_bn_recomputes_the_trainable_bn_statistics_only():
    """``train.precise_bn``: after an epoch, each BN layer that trains gets the exact mean and variance of
    its inputs over the training clips with the final weights; frozen blocks keep their statistics."""
    from torch import nn

    from egomodel.config import from_dict
    from egomodel.model import build_model
    from egomodel.training.stages import apply_stage
    from egomodel.training.steps import precise_bn

    torch.manual_seed(0)
    cfg = from_dict({}, {"model.variant": "flow", "model.pretrained": "none", "data.image_size": 32,
                         "data.flow_stack": 2, "train.precision": "fp32"})
    model = build_model(cfg, 3)
    apply_stage(model, ["layer4", "classifier"])
    frozen_before = model.backbone.bn1.running_mean.clone()
    bn = model.backbone.layer4[0].bn1
    batches = [{"flow": torch.randn(4, 4, 32, 32), "label": torch.zeros(4, dtype=torch.long)} for _ in range(3)]
    seen = []
    hook = bn.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    assert precise_bn(model, batches, cfg, torch.device("cpu")) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.backbone.layer4.modules())
    hook.remove()
    x = torch.cat(seen)  # (N, C, H, W): the same count of values per batch, so the mean of means is exact
    assert torch.allclose(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([s.var((0, 2, 3), unbiased=True) for s in seen]).mean(0)
    assert torch.allclose(bn.running_var, per_batch_var, rtol=1e-4)  # BN averages each batch's unbiased variance
    assert torch.equal(model.backbone.bn1.running_mean, frozen_before)
    assert bn.momentum == 0.1  # the layer's own momentum is back for the next epoch
