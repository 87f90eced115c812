"""The flow stream and the two-stream model (issue: flow, two-stream and Table 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from egomodel.config import ConfigError, from_dict
from egomodel.data import layout
from egomodel.data.dataset import ClipDataset
from egomodel.data.layout import DataError
from egomodel.data.synthetic import generate
from egomodel.data.transforms import View
from egomodel.model import FlowNet, TwoStream, build_model
from egomodel.model.backbone import imagenet_weights_path
from egomodel.model.flow import flow_resnet
from egomodel.training.engine import train
from egomodel.training.losses import total_loss
from egomodel.training.stages import apply_stage, stage_plan
from tests.conftest import per_class, tiny_config, untrained_control

SIZE, B, C = 64, 2, 5


def _cfg(variant: str, **kw):
    return from_dict({}, {"model.variant": variant, "model.pretrained": "none", "model.hidden": 16,
                          "data.image_size": SIZE, **kw})


def _inputs(model, segments: int = 1) -> list[torch.Tensor]:
    x = {"frames": torch.randn(B, 3, 3, SIZE, SIZE), "flow": torch.randn(B, segments, 10, SIZE, SIZE)}
    return [x[k] for k in model.input_keys]


@pytest.mark.parametrize("variant", ["flow", "two_stream"])
def test_shapes_and_gradients_in_the_trainable_set(variant):
    torch.manual_seed(0)
    cfg = _cfg(variant)
    model = build_model(cfg, C)
    (stage,) = stage_plan(variant, cfg.train)
    active = apply_stage(model, stage.trainable)
    assert set(active) == set(stage.trainable)
    model.train()
    opt = stage.optimizer_for(model, cfg.train.eps)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    out = model(*_inputs(model))
    assert out.logits.shape == (B, C)
    loss, _ = total_loss(out.logits, torch.tensor([0, 1]), out.ms, None, "classification", 1.0, 0.2)
    loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"trainable {n} got no gradient"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    for name, mods in model.block_modules().items():  # frozen blocks keep their BN in eval
        for bn in (m for mod in mods for m in mod.modules() if isinstance(m, nn.BatchNorm2d)):
            assert bn.training == (name in active), f"BN of {name} training={bn.training}"
    if variant == "two_stream":  # flow layer4 at the slow lr (1e-4), the rest at lr (1e-2)
        lrs = sorted(g["lr"] for g in opt.param_groups)
        assert lrs == [1e-4, 1e-2] and isinstance(opt, torch.optim.SGD)
        slow = {id(p) for g in opt.param_groups if g["lr"] == 1e-4 for p in g["params"]}
        assert slow == {id(p) for p in model.flow.backbone.layer4.parameters()}


def test_wrong_flow_shapes_are_clear_errors():
    model = FlowNet("none", C, 5, 0.5, SIZE)
    with pytest.raises(ValueError, match="expected flow of shape"):
        model(torch.randn(B, 6, SIZE, SIZE))
    with pytest.raises(ValueError, match="built for 64x64"):
        model(torch.randn(B, 10, 32, 32))


def test_pretrained_conv1_is_the_rgb_mean_repeated(tmp_path, monkeypatch):
    path = tmp_path / "r34.pth"
    torch.manual_seed(0)
    rgb = flow_resnet("none", 3)  # any weights saved as a ResNet-34 state dict stand in for ImageNet's
    from torchvision.models import resnet34

    ref = resnet34(weights=None)
    torch.save(ref.state_dict(), path)
    net = flow_resnet(str(path), 10)
    want = ref.conv1.weight.mean(dim=1, keepdim=True).expand(-1, 10, -1, -1)
    assert torch.allclose(net.conv1.weight, want)
    assert rgb.conv1.in_channels == 3 and net.conv1.in_channels == 10
    assert imagenet_weights_path().name.startswith("resnet34")


def test_five_segment_test_averages_the_segments_logits():
    torch.manual_seed(0)
    model = FlowNet("none", C, 5, 0.5, SIZE).eval()
    x = torch.randn(B, 5, 10, SIZE, SIZE)
    with torch.no_grad():
        each = torch.stack([model(x[:, i]).logits for i in range(5)], 1)
        assert torch.allclose(model(x).logits, each.mean(1), atol=1e-5)


def test_flow_stacks_training_and_test(tiny_root):
    cfg = tiny_config(tiny_root, model__variant="flow", data__flow_stack=3, data__flow_segments=4)
    clips = layout.scan(tiny_root, need_flow=True)
    ds = ClipDataset(clips, layout.class_names(clips), cfg.data, 0, with_flow=True, with_frames=False)
    n = len(clips[0].flow_x)
    test = ds[0]
    assert "frames" not in test and test["flow"].shape == (4, 6, SIZE, SIZE)
    assert ds.flow_starts(0, n) == [int(v) for v in np.linspace(0, n - 3, 4).round()]
    assert ds.flow_starts(0, n)[0] == 0 and ds.flow_starts(0, n)[-1] == n - 3  # the segments span the clip
    starts = {ds.flow_starts((0, key), n)[0] for key in range(50)}
    assert starts == set(range(n - 3 + 1))  # training: a random start, every one reachable
    assert ds[(0, 7)]["flow"].shape == (1, 6, SIZE, SIZE)
    # channels interleave x and y of consecutive frames: plane 2 is flow_x of the stack's 2nd frame
    from egomodel.data.transforms import centre_view, flow_tensor

    view = centre_view(*layout.load_rgb(clips[0].rgb[0]).size)
    want = flow_tensor(layout.load_gray(clips[0].flow_x[ds.flow_starts(0, n)[1] + 1]), view, SIZE, True)
    assert np.allclose(test["flow"][1, 2].numpy(), want)


def test_flow_flip_inverts_flow_x_and_mirrors_both(tiny_root):
    cfg = tiny_config(tiny_root, model__variant="flow")
    clips = layout.scan(tiny_root, need_flow=True)
    ds = ClipDataset(clips, layout.class_names(clips), cfg.data, 0, with_flow=True, with_frames=False)
    w, h = layout.load_rgb(clips[0].rgb[0]).size
    plain = torch.from_numpy(ds._flow(clips[0], [0], View(0, 0, h, False), SIZE))[0]
    flipped = torch.from_numpy(ds._flow(clips[0], [0], View(0, 0, h, True), SIZE))[0]
    assert plain[0::2].abs().sum() > 0  # there is horizontal motion to invert
    assert torch.allclose(flipped[0::2], -plain[0::2].flip(-1))  # x: mirrored and negated
    assert torch.allclose(flipped[1::2], plain[1::2].flip(-1))  # y: mirrored only


def test_missing_flow_folder_names_it(tmp_path):
    root = generate(tmp_path / "d", classes=2, clips_per_class=2, frames=6, size=(48, 40), seed=0)
    gone = next((root / layout.FLOW_X_DIR / "S3").iterdir())
    import shutil

    shutil.rmtree(gone)
    with pytest.raises(DataError, match=str(gone.name)):
        train(tiny_config(root, model__variant="flow"), tmp_path / "out", progress=False)
    # RGB variants never read flow: the same data trains them
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_two_stream_without_its_streams_is_a_clear_error(tmp_path, tiny_root):
    with pytest.raises(ConfigError, match="model.flow_checkpoint is not set"):
        train(tiny_config(tiny_root, model__variant="two_stream"), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="model.rgb_checkpoint: /nope.pt does not exist"):
        train(tiny_config(tiny_root, model__variant="two_stream", model__flow_checkpoint=__file__,
                          model__rgb_checkpoint="/nope.pt"), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_two_stream_trains_from_stream_checkpoints(tmp_path, tiny_root):
    flow = train(tiny_config(tiny_root, model__variant="flow"), tmp_path / "flow", progress=False,
                 evaluate_test=False)
    rgb = train(tiny_config(tiny_root, model__variant="attention"), tmp_path / "rgb", progress=False,
                evaluate_test=False)
    cfg = tiny_config(tiny_root, model__variant="two_stream", model__flow_checkpoint=flow["best_checkpoint"],
                      model__rgb_checkpoint=rgb["best_checkpoint"])
    out = train(cfg, tmp_path / "two", progress=False)
    assert out["test_top1"] is not None and set(out["stages"]) == {"1"}
    model, _, _ = __import__("egomodel.model.checkpoint", fromlist=["load_model"]).load_model(out["best_checkpoint"])
    assert isinstance(model, TwoStream)
    flow_state = torch.load(flow["best_checkpoint"], weights_only=True)["model"]
    # the flow stream's frozen blocks are the trained flow model's
    assert torch.equal(model.flow.backbone.conv1.weight, flow_state["backbone.conv1.weight"])
    # a trial's pictures: curves for both, CAMs of the two-stream model's RGB stream, none for flow
    from egomodel.reporting.pictures import model_plots

    drawn = model_plots(out["best_checkpoint"], tmp_path / "plots_two", history=out["history"], clips=2)
    assert sorted(p.name for p in drawn) == ["cam_val.png", "training_curves.png"]
    flow_plots = model_plots(flow["best_checkpoint"], tmp_path / "plots_flow", history=flow["history"])
    assert [p.name for p in flow_plots] == ["training_curves.png"]
    # swapped checkpoints are refused by name
    bad = tiny_config(tiny_root, model__variant="two_stream", model__flow_checkpoint=rgb["best_checkpoint"],
                      model__rgb_checkpoint=flow["best_checkpoint"])
    with pytest.raises(ConfigError, match="model.flow_checkpoint: .* holds a attention model"):
        train(bad, tmp_path / "bad", progress=False)


# The flow test's setting: Adam instead of Ego-RNN's SGD (lr 1e-2 from random weights diverged: losses
# of 3-6 after a few epochs), and BN statistics recomputed after each epoch (without, eval mode
# predicted one class for every clip while train mode had 0.8 top-1).
FLOW_SETTING = {
    "model.variant": "flow", "model.backbone": "resnet34", "model.pretrained": "none", "model.dropout": 0.0,
    "data.image_size": 32,
    "data.frames": 2, "data.num_workers": 0, "train.device": "cpu", "train.precision": "fp32",
    "train.precise_bn": True, "train.flow.optimizer": "adam", "train.flow.lr": 3e-4, "train.flow.epochs": 10,
    "train.flow.milestones": [], "train.flow.batch_size": 8,
}
PAIR = ("shake_cup", "stir_cup")
RUNS = ((0, 1), (1, 4))  # (train seed, data seed): two runs, 24 test clips of the pair in all
PAIR_MIN = 16  # of 24: two thirds; a model that puts every clip of the pair in one class gets 12


@pytest.mark.timeout(600)
def test_flow_model_learns_the_motion_only_classes(tmp_path: Path):
    """shake_cup and stir_cup share their object and differ by motion alone: from random weights the
    flow stream separates them on the unseen test user, counted over two runs of different seeds.

    Measured with this setting on the 2-core AMD EPYC (AVX-512 BF16) and with ATEN_CPU_CAPABILITY=avx2
    ONEDNN_MAX_CPU_ISA=AVX2 (another CPU's kernels), seeds (t, (3t+1) mod 8) for t = 0-7, 16 runs: 7-12 of
    12 per run (median 10.5), so one run alone says little (7/12 is one clip above a one-class model);
    over two runs, the pairs t = (0, 1), (2, 3), (4, 5), (6, 7) on both paths: 19-22 of 24 (this test's
    two runs: 19 and 20). On a 2-core Intel Xeon with AMX (its own kernels, where this test once failed at
    6/12 on one run), the same 8 seeds: 11, 10, 10, 11, 7, 12, 10, 8 of 12, pairs 18-21 of 24 (this test's:
    21). The bound sits 2 clips under the worst pair. About 35-45 s per run on one core.
    The control, the same models at their initial weights, must stay under the bound."""
    correct = clips = control_correct = 0
    for seed, data_seed in RUNS:
        work = tmp_path / f"seed{seed}"
        root = generate(work / "d", classes=3, clips_per_class=6, frames=8, size=(64, 64), seed=data_seed, users=4)
        cfg = from_dict({}, {**FLOW_SETTING, "train.seed": seed, "data.root": str(root)})
        out = train(cfg, work / "flow", progress=False)
        rows = per_class(work / "flow" / "per_class_test.csv")
        correct += sum(rows[c][1] for c in PAIR)
        clips += sum(rows[c][0] for c in PAIR)
        control = untrained_control(out["best_checkpoint"], work / "control")
        control_correct += sum(control[c][1] for c in PAIR)
    assert clips == 24 and correct >= PAIR_MIN, f"motion-only pair: {correct}/{clips} correct over {RUNS}"
    assert control_correct < PAIR_MIN, f"the untrained control meets the bound: {control_correct}/{clips}"


def _champion(tmp_path, cfg):
    """A random model of ``cfg`` saved as a checkpoint, and the champion pyfunc loaded from it."""
    from types import SimpleNamespace

    from egomodel.model import checkpoint as ck
    from tuning.tracking.champion import EgoRNNModel

    torch.manual_seed(0)
    model = build_model(cfg, C)
    path = ck.save(tmp_path / "best.pt", {"model": model.state_dict(), "config": cfg.to_dict(),
                                          "classes": [f"c{i}" for i in range(C)], "stage": 1, "epoch": 1})
    pyfunc = EgoRNNModel()
    pyfunc.load_context(SimpleNamespace(artifacts={"checkpoint": str(path)}))
    return model, pyfunc


def test_champion_pyfunc_takes_named_inputs_for_flow_models(tmp_path):
    """A flow or two-stream champion predicts from {"flow": ...} / {"frames": ..., "flow": ...}."""
    model, pyfunc = _champion(tmp_path, _cfg("flow", **{"data.flow_stack": 2}))
    flow = np.random.default_rng(0).standard_normal((2, 3, 4, SIZE, SIZE)).astype(np.float32)
    probs = pyfunc.predict(None, {"flow": flow})
    assert probs.shape == (2, C) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with torch.no_grad():
        want = torch.softmax(model.eval()(torch.from_numpy(flow)).logits, 1).numpy()
    assert np.allclose(probs, want, atol=1e-5)
    with pytest.raises(ValueError, match=r"needs inputs \['flow'\]; missing \['flow'\]"):
        pyfunc.predict(None, {"frames": flow})


def test_champion_pyfunc_normalises_uint8_frames(tmp_path):
    """ClipDataset gives uint8 frames: the champion takes them as they are (or as float pixel values),
    or float32 already normalised when params say normalized."""
    from egomodel.data.transforms import normalize_frames

    _, pyfunc = _champion(tmp_path, _cfg("attention"))
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 3, SIZE, SIZE), dtype=np.uint8)
    as_uint8 = pyfunc.predict(None, raw)
    as_float = pyfunc.predict(None, normalize_frames(torch.from_numpy(raw)).numpy(), params={"normalized": True})
    assert np.allclose(as_uint8, as_float, atol=1e-6)
    assert np.allclose(as_uint8, pyfunc.predict(None, raw.astype(np.float32)), atol=1e-6)  # 0..255 as floats
