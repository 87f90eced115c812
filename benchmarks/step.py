"""Stage-2 training step: the authors' per-frame loop in fp32 versus this project's defaults."""

from __future__ import annotations

import statistics
import time

import torch

from egomodel.config import ModelConfig
from egomodel.losses import total_loss
from egomodel.model import EgoRNN
from egomodel.model.attention import cam_attention
from egomodel.model.backbone import backbone_features
from egomodel.stages import apply_stage

STAGE2 = ["convlstm", "classifier", "layer4", "fc", "ms_head"]


def naive_forward(model: EgoRNN, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone called once per frame in a loop over time, as Ego-RNN's code does."""
    lstm_in, ms = [], []
    for t in range(frames.shape[1]):
        feats, no_bn = backbone_features(model.backbone, frames[:, t])
        att, _ = cam_attention(feats, no_bn, model.backbone.fc)
        lstm_in.append(att)
        ms.append(model.ms_head(feats)[0])
    _, cell = model.convlstm(torch.stack(lstm_in, 1))
    return model.classifier(cell.mean(dim=(2, 3))), torch.stack(ms, 1)


def _step(model, opt, frames, labels, mmaps, naive: bool, precision: str) -> None:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with ctx:
        if naive:
            logits, ms = naive_forward(model, frames)
        else:
            out = model(frames)
            logits, ms = out.logits, out.ms
    loss, _ = total_loss(logits, labels, ms, mmaps, "classification", 1.0, 0.2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_steps(naive: bool, batch: int, frames: int, size: int, reps: int, precision: str = "fp32",
               channels_last: bool = False) -> float:
    """Median seconds per stage-2 step (after one warm-up step)."""
    torch.manual_seed(0)
    model = EgoRNN(ModelConfig(variant="ms", pretrained="none"), 61, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    apply_stage(model, STAGE2)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, frames, 3, size, size)
    y = torch.randint(0, 61, (batch,))
    mm = torch.rand(batch, frames, size // 32, size // 32)
    _step(model, opt, x, y, mm, naive, precision)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _step(model, opt, x, y, mm, naive, precision)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
