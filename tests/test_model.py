"""Shapes, gradients per stage, freezing, and the feedback branch's causality."""

import pytest
import torch
from torch import nn

from egomodel.config import RGB_VARIANTS as VARIANTS
from egomodel.config import ConfigError, ModelConfig, TrainConfig, from_dict
from egomodel.model import EgoRNN
from egomodel.model.backbone import BACKBONES, WeightsError, build_resnet
from egomodel.training.losses import total_loss
from egomodel.training.stages import apply_stage, stage_plan

SIZE, T, B, C = 64, 3, 2, 5


def make(variant, **kw):
    torch.manual_seed(0)
    return EgoRNN(ModelConfig(variant=variant, pretrained="none", hidden=16, **kw), C, SIZE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(variant):
    model = make(variant)
    apply_stage(model, ["conv1", "feedback"], optional=("feedback",))  # the feedback variant: time loop path
    out = model(torch.randn(B, T, 3, SIZE, SIZE))
    assert out.logits.shape == (B, C)
    s = SIZE // 32
    assert (out.ms is None) == (variant in ("convlstm", "attention"))
    if out.ms is not None:
        assert out.ms.shape == (B, T, 2, s, s)
    assert (out.cams is None) == (variant == "convlstm")
    if out.cams is not None:
        assert out.cams.shape == (B, T, s, s)
        assert torch.allclose(out.cams.sum(dim=(2, 3)), torch.ones(B, T))


def test_regression_head_has_one_channel():
    out = make("ms", ms_task="regression_l1")(torch.randn(1, 2, 3, SIZE, SIZE))
    assert out.ms.shape == (1, 2, 1, 2, 2)


@pytest.mark.parametrize("shape", [(B, 3, SIZE, SIZE), (B, T, 1, SIZE, SIZE), (B, T, 3, 96, 96)])
def test_bad_shapes_are_clear_errors(shape):
    with pytest.raises(ValueError, match="expected frames|built for"):
        make("attention")(torch.randn(*shape))


@pytest.mark.parametrize("point", ["conv1", "layer1", "layer2", "layer3", "layer4"])
def test_every_insertion_point_runs(point):
    model = make("feedback", insertion=point)
    apply_stage(model, ["feedback"])
    for p in model.feedback.parameters():
        nn.init.normal_(p, std=0.1)
    ref = model(torch.randn(1, T, 3, SIZE, SIZE))
    assert ref.logits.shape == (1, C)


def _grad_check(model, trainable, optional=()):
    active = apply_stage(model, trainable, optional)
    model.zero_grad(set_to_none=True)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    got = {n: False for n, p in model.named_parameters() if p.requires_grad}
    x, y = torch.randn(B, T, 3, SIZE, SIZE), torch.tensor([0, 1])
    mm = torch.rand(B, T, 2, 2)
    for _ in range(2):  # the feedback branch's last conv starts at zero: its first conv learns from step 2
        out = model(x)
        loss, _ = total_loss(out.logits, y, out.ms, mm, "classification", 1.0, 0.2)
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                got[n] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
            else:
                assert p.grad is None, f"frozen {n} got a gradient"
        opt.step()
    missing = [n for n, ok in got.items() if not ok]
    assert not missing, f"trainable parameters without gradient: {missing}"
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), f"frozen {n} changed"
    blocks = model.block_modules()
    for name, mods in blocks.items():
        for m in mods:
            for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
                assert bn.training == (name in active), f"BN of {name} training={bn.training}"
    return active


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_stage_trains_exactly_its_blocks(variant):
    model = make(variant)
    model.train()
    for stage in stage_plan(variant, TrainConfig()):
        active = _grad_check(model, list(stage.trainable), stage.optional)
        assert set(active) <= set(stage.trainable)
    if variant == "feedback":
        assert bool(model.feedback_on)


def test_stage3_trainable_is_configurable():
    model = make("feedback")
    active = _grad_check(model, ["feedback", "layer2", "convlstm", "classifier"])
    assert set(active) == {"feedback", "layer2", "convlstm", "classifier"}


def test_feedback_is_identity_at_init():
    model = make("feedback").eval()
    x = torch.randn(1, T, 3, SIZE, SIZE)
    off = model(x).logits
    model.feedback_on.fill_(True)
    assert torch.allclose(model(x).logits, off, atol=1e-5)
    up = torch.randn(1, 100, 32, 32)
    beta, gamma = model.feedback.coefficients(up)
    assert torch.equal(beta, torch.ones_like(beta)) and torch.equal(gamma, torch.zeros_like(gamma))


def test_frame_t_is_modulated_by_frame_t_minus_1_only():
    model = make("feedback").eval()
    model.feedback_on.fill_(True)
    for p in model.feedback.parameters():
        nn.init.normal_(p, std=0.1)
    conv100, received = [], []
    model.ms_head.conv100.register_forward_hook(lambda m, i, o: conv100.append(o))
    orig = model.feedback.forward

    def spy(features, prev_ms):
        received.append(prev_ms)
        return orig(features, prev_ms)

    model.feedback.forward = spy
    x = torch.randn(1, T, 3, SIZE, SIZE, requires_grad=True)
    model(x)
    assert len(received) == T - 1  # t = 0 is never modulated: beta = 1, gamma = 0
    for t, prev in enumerate(received, start=1):
        assert torch.equal(prev, conv100[t - 1])
    # what frame t receives does not depend on frame t or later
    conv100.clear(), received.clear()
    x2 = x.detach().clone()
    x2[:, 2] += 1.0
    model(x2)
    assert torch.equal(received[0], conv100[0]) and torch.allclose(received[0], received[0])
    first = received[0].clone()
    conv100.clear(), received.clear()
    model(x.detach())
    assert torch.allclose(received[0], first)


def test_missing_imagenet_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError, match="model.pretrained=none"):
        build_resnet("imagenet")
    with pytest.raises(WeightsError, match="resnet18-.*pth"):  # the file of the backbone asked for
        build_resnet("imagenet", "resnet18")
    with pytest.raises(WeightsError, match="nope.pth"):
        build_resnet(str(tmp_path / "nope.pth"))


def test_weights_from_a_path(tmp_path):
    net = build_resnet("none")
    torch.save(net.state_dict(), tmp_path / "r34.pth")
    loaded = build_resnet(str(tmp_path / "r34.pth"))
    assert torch.equal(loaded.conv1.weight, net.conv1.weight)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # ResNet-34 weights do not fit ResNet-18
        build_resnet(str(tmp_path / "r34.pth"), "resnet18")


@pytest.mark.parametrize("variant", ["feedback", "two_stream"])
def test_resnet18_backbone_same_outputs_half_the_weights(variant):
    """``model.backbone: resnet18``: every head fits (same widths), with about half the parameters."""
    from egomodel.config import BACKBONES as NAMES
    from egomodel.model import build_model

    assert set(NAMES) == set(BACKBONES)
    sizes, shapes = {}, {}
    for name in NAMES:
        cfg = from_dict({}, {"model.variant": variant, "model.backbone": name, "model.pretrained": "none",
                             "model.hidden": 16, "data.image_size": 64, "data.frames": 2, "data.flow_stack": 2})
        model = build_model(cfg, 5).eval()
        inputs = {"frames": torch.randn(1, 2, 3, 64, 64), "flow": torch.randn(1, 4, 64, 64)}
        with torch.no_grad():
            out = model(**{k: inputs[k] for k in model.input_keys})
        shapes[name] = tuple(out.logits.shape)
        sizes[name] = sum(p.numel() for p in model.parameters())
    assert shapes["resnet18"] == shapes["resnet34"] == (1, 5)
    assert 0.4 < sizes["resnet18"] / sizes["resnet34"] < 0.6, sizes
    with pytest.raises(ConfigError, match="model.backbone"):
        from_dict({}, {"model.backbone": "resnet50"})


def test_convlstm_fused_and_separate_gates_agree_and_share_parameters():
    from egomodel.model.convlstm import ConvLSTM

    torch.manual_seed(0)
    cell = ConvLSTM(16, 8)
    keys = set(cell.state_dict())
    x = torch.randn(2, 4, 16, 5, 5)
    outs = {}
    for mode in ("separate", "fused"):
        cell.gates = mode
        cell.zero_grad()
        hid, c = cell(x)
        c.sum().backward()
        outs[mode] = (hid.detach(), c.detach(), cell.xx["f"].weight.grad.clone())
    for a, b in zip(outs["separate"], outs["fused"]):
        assert torch.allclose(a, b, atol=1e-5)
    assert set(cell.state_dict()) == keys
    assert ConvLSTM(4, 4).mode(torch.device("cpu")) == "separate"  # what measured faster on CPU
    assert ConvLSTM(4, 4, gates="fused").mode(torch.device("cpu")) == "fused"
    with pytest.raises(ValueError, match="gates"):
        ConvLSTM(4, 4, gates="both")
