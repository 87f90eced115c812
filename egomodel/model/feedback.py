"""The paper's feedback branch: frame t-1's MS features -> (beta, gamma) modulating frame t."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _branch(in_ch: int, mid: int, out_ch: int) -> nn.Sequential:
    last = nn.Conv2d(mid, out_ch, 1)
    nn.init.zeros_(last.weight)  # identity at initialisation: beta = 1, gamma = 0
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(in_ch, mid, 1), nn.ReLU(inplace=True), last)


class FeedbackBranch(nn.Module):
    """Upsample Conv100 features to the insertion point's size, then 1x1 convs give beta and gamma.

    The authors' branch for conv1 is 1x1 100->64, ReLU, 1x1 64->64; other points end in their own
    channel count. beta is parametrised as 1 + branch output so that a zero-initialised last conv
    leaves pretrained features untouched at stage 3's first step.
    """

    def __init__(self, channels: int, in_channels: int = 100, mid: int = 64) -> None:
        super().__init__()
        self.beta = _branch(in_channels, mid, channels)
        self.gamma = _branch(in_channels, mid, channels)

    def forward(self, features: torch.Tensor, prev_ms: torch.Tensor | None) -> torch.Tensor:
        """features (N, C, h, w); prev_ms (N, 100, s, s) from frame t-1, or None at t = 0."""
        if prev_ms is None:
            return features
        up = F.interpolate(prev_ms.detach(), size=features.shape[-2:], mode="bilinear", align_corners=False)
        beta, gamma = self.coefficients(up)
        return beta * features + gamma

    def coefficients(self, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 1.0 + self.beta(up), self.gamma(up)
