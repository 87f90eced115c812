"""Ego-RNN's class-activation spatial attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cam_attention(
    feats: torch.Tensor, no_bn: torch.Tensor, fc: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``no_bn`` by the softmax CAM of the backbone's top-1 ImageNet class.

    feats, no_bn: (N, 512, s, s). Returns the attended features and the map (N, s, s).
    Only ``fc.weight`` receives a gradient (through the selected row); the top-1 choice is discrete.
    """
    n, c, h, w = feats.shape
    logits = fc(feats.mean(dim=(2, 3)))  # (N, 1000)
    top1 = logits.argmax(dim=1)
    rows = fc.weight[top1]  # (N, 512)
    cam = torch.einsum("nc,ncp->np", rows, feats.flatten(2))  # (N, s*s)
    attn = F.softmax(cam, dim=1).view(n, 1, h, w)
    return no_bn * attn, attn.view(n, h, w)
