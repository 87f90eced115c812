"""Ego-RNN's temporal-warp flow stream: the ResNet (ResNet-34 in the paper) over ``stack`` stacked flow x/y frames."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet

from egomodel.model.backbone import build_resnet, resnet_blocks
from egomodel.model.network import ModelOutput
from egomodel.model.staged import StagedModel


def flow_resnet(pretrained: str, channels: int, backbone: str = "resnet34") -> ResNet:
    """The ResNet whose conv1 takes ``channels`` flow planes.

    With ImageNet weights, conv1's kernel is averaged over its 3 RGB planes and repeated over the
    flow planes (the usual cross-modality initialisation), so each flow plane starts like a grey image.
    """
    net = build_resnet(pretrained, backbone)
    old = net.conv1.weight.detach()  # (64, 3, 7, 7)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained != "none":
        with torch.no_grad():
            net.conv1.weight.copy_(old.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1))
    net.fc = nn.Identity()
    return net


class FlowNet(StagedModel):
    """Input (B, 2*stack, H, W), or (B, S, 2*stack, H, W) for S segments whose logits are averaged."""

    input_keys = ("flow",)

    def __init__(self, pretrained: str, num_classes: int, stack: int, dropout: float, image_size: int,
                 backbone: str = "resnet34") -> None:
        super().__init__()
        self.channels = 2 * stack
        self.image_size = image_size
        self.backbone = flow_resnet(pretrained, self.channels, backbone)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, num_classes))

    def block_modules(self) -> dict[str, list[nn.Module]]:
        return {**resnet_blocks(self.backbone), "classifier": [self.classifier]}

    def features(self, flow: torch.Tensor) -> torch.Tensor:
        """(B, [S,] 2*stack, H, W) -> pooled layer-4 features per segment (B, S, 512)."""
        if flow.dim() == 4:
            flow = flow.unsqueeze(1)
        if flow.dim() != 5 or flow.shape[2] != self.channels:
            raise ValueError(f"expected flow of shape (B, [S,] {self.channels}, H, W), got {tuple(flow.shape)}")
        if tuple(flow.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"model built for {self.image_size}x{self.image_size} input, got {tuple(flow.shape[-2:])}")
        b, s = flow.shape[:2]
        return self.backbone(flow.flatten(0, 1)).unflatten(0, (b, s))  # (B, S, 512)

    def forward(self, flow: torch.Tensor) -> ModelOutput:
        """Logits (B, classes); with several segments, their mean (Ego-RNN's 5-segment test)."""
        return ModelOutput(self.classifier(self.features(flow)).mean(1), None, None)
