"""The ResNet backbone (ResNet-34 as in the paper; ResNet-18, same widths, for half the FLOPs): weight
loading without network access, and a forward that exposes the features the rest of the model needs
(docs/design.md §4)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet, resnet18, resnet34

from egomodel.model.imagenet import WEIGHT_URLS, WeightsError, check_weights, imagenet_weights_path

# model.backbone -> (constructor, ImageNet weights); both are BasicBlock ResNets with the same widths
BACKBONES: dict[str, tuple[Callable[..., ResNet], str]] = {
    "resnet34": (resnet34, WEIGHT_URLS["resnet34"]),
    "resnet18": (resnet18, WEIGHT_URLS["resnet18"]),
}
IMAGENET_URL = BACKBONES["resnet34"][1]


def build_resnet(pretrained: str, backbone: str = "resnet34") -> ResNet:
    """``pretrained`` is "imagenet" (torchvision cache), "none" (random) or a path to a state dict;
    ``backbone`` a key of :data:`BACKBONES`.

    Never downloads: a missing or damaged file is an error that names ``python -m egomodel.weights fetch``.
    """
    make, _url = BACKBONES[backbone]
    net = make(weights=None)
    if pretrained == "none":
        return net
    problem = check_weights(backbone, pretrained)  # ImageNet's file: its SHA-256 checked once per process
    if problem:
        raise WeightsError(problem)
    path = imagenet_weights_path(backbone) if pretrained == "imagenet" else Path(pretrained).expanduser()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net


Modulate = Callable[[str, torch.Tensor], torch.Tensor]


def backbone_features(
    net: ResNet, x: torch.Tensor, modulate: Modulate | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the ResNet up to layer 4.

    Returns the normal layer-4 output (BN + ReLU) and Ego-RNN's "no-BN" features of the last
    block: its ``conv2`` output plus the residual, without ``bn2`` and the final ReLU.
    ``modulate(point, features)`` is called at each insertion point: at "conv1" on the conv output
    before ``bn1``, at "layerK" on the input of layer K.
    """
    mod = modulate or (lambda _point, f: f)
    x = mod("conv1", net.conv1(x))  # (N, 64, H/2, W/2)
    x = net.maxpool(net.relu(net.bn1(x)))
    x = net.layer1(mod("layer1", x))
    x = net.layer2(mod("layer2", x))
    x = net.layer3(mod("layer3", x))
    x = mod("layer4", x)
    *head, last = net.layer4
    for block in head:
        x = block(x)
    residual = x if last.downsample is None else last.downsample(x)
    out = last.conv2(last.relu(last.bn1(last.conv1(x))))
    no_bn = out + residual  # (N, 512, s, s)
    feats = last.relu(last.bn2(out) + residual)
    return feats, no_bn


def resnet_blocks(net: ResNet) -> dict[str, list[nn.Module]]:
    """The backbone's named blocks: conv1 (with bn1) and layer1..layer4."""
    return {"conv1": [net.conv1, net.bn1], **{f"layer{i}": [getattr(net, f"layer{i}")] for i in range(1, 5)}}


# channels and stride of each insertion point's features
POINT_SHAPES = {"conv1": (64, 2), "layer1": (64, 4), "layer2": (64, 4), "layer3": (128, 8), "layer4": (256, 16)}


@contextlib.contextmanager
def cumulative_bn_stats(bns: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Inside: ``bns`` in train mode with reset statistics that average every batch seen equally
    (momentum None); after: their own momentum and mode again, the new statistics kept."""
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        yield
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)


@torch.no_grad()
def calibrate_batchnorm(net: ResNet, batches: list[torch.Tensor]) -> None:
    """Set BN running statistics from data (cumulative average over ``batches`` of frames).

    Used only for random weights (``model.pretrained=none``): frozen BN layers in eval mode with
    the default statistics (mean 0, var 1) let activations grow through 16 residual blocks and
    saturate the ConvLSTM gates, so a frozen random backbone would teach stage 1 nothing.
    """
    with cumulative_bn_stats([m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]):
        for x in batches:
            backbone_features(net, x)
