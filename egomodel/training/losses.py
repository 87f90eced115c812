"""L = CE(class) + alpha * sum_t L_ms(t) (paper eq. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_loss(ms: torch.Tensor, target: torch.Tensor, task: str, tau: float) -> torch.Tensor:
    """Motion-segmentation loss summed over frames, each frame's loss a mean over batch and cells.

    ms: (B, T, K, s, s) head output; target: (B, T, s, s) fraction of moving pixels per cell.
    Classification labels a cell as moving when its fraction exceeds ``tau``.
    """
    b, t = target.shape[:2]
    if task == "classification":
        labels = (target > tau).long()
        per = F.cross_entropy(ms.flatten(0, 1).float(), labels.flatten(0, 1), reduction="none")
    else:
        pred = ms[:, :, 0].float()
        fn = F.mse_loss if task == "regression_mse" else F.l1_loss
        per = fn(pred, target, reduction="none")
    return per.reshape(b, t, -1).mean(dim=(0, 2)).sum()


def total_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ms: torch.Tensor | None,
    mmaps: torch.Tensor | None,
    task: str,
    alpha: float,
    tau: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    cls = F.cross_entropy(logits.float(), labels)
    parts = {"cls_loss": float(cls.detach())}
    if ms is None or mmaps is None or alpha == 0:
        return cls, parts
    msl = ms_loss(ms, mmaps, task, tau)
    parts["ms_loss"] = float(msl.detach())
    return cls + alpha * msl, parts
