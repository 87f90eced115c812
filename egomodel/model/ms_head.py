"""Motion-segmentation head (Planamente et al.): per-frame motion map from layer-4 features."""

from __future__ import annotations

import torch
from torch import nn


class MSHead(nn.Module):
    """ReLU, 1x1 conv 512->100 ("Conv100"), flatten, linear to 2*s^2 (classification) or s^2."""

    def __init__(self, size: int, classification: bool, in_channels: int = 512, mid: int = 100) -> None:
        super().__init__()
        self.size = size
        self.out_channels = 2 if classification else 1
        self.conv100 = nn.Conv2d(in_channels, mid, 1)
        self.fc = nn.Linear(mid * size * size, self.out_channels * size * size)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (N, 512, s, s) -> logits (N, K, s, s) and the Conv100 features (N, 100, s, s)."""
        if feats.shape[-1] != self.size or feats.shape[-2] != self.size:
            raise ValueError(f"MS head built for {self.size}x{self.size} features, got {tuple(feats.shape)}")
        mid = self.conv100(torch.relu(feats))
        out = self.fc(mid.flatten(1)).view(-1, self.out_channels, self.size, self.size)
        return out, mid
