"""Stage-2/3 training steps: the authors' per-frame loop in fp32 versus this project's defaults.

Works on any device: on CUDA each timing synchronises, and peak memory is read from the allocator.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from egomodel.config import ModelConfig
from egomodel.model import EgoRNN
from egomodel.model.attention import cam_attention
from egomodel.model.backbone import backbone_features
from egomodel.training.losses import total_loss
from egomodel.training.stages import apply_stage
from egomodel.training.steps import autocast

STAGE2 = ["convlstm", "classifier", "layer4", "fc", "ms_head"]
STAGE3 = ["convlstm", "classifier", "fc", "feedback", "conv1", "layer4"]


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


@dataclass(frozen=True)
class StepSetup:
    """One benchmarked step: the model's setting and the shapes."""

    naive: bool = False  # the authors' per-frame loop (implies fp32, NCHW, separate gates)
    precision: str = "fp32"  # "fp32", "bf16" or "auto" (egomodel.training.steps.autocast)
    channels_last: bool = False
    gates: str = "separate"
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile's backend: inductor generates kernels, aot_eager does not
    stage: int = 2  # 2: the ms variant's stage-2 trainable set; 3: feedback's stage 3
    batch: int = 4
    frames: int = 7
    size: int = 224
    backbone: str = "resnet34"  # model.backbone


@dataclass(frozen=True)
class StepTiming:
    seconds: float  # median seconds per training step
    warmup_s: float  # the first step (includes torch.compile's compilation when on)
    peak_mem_gb: float | None  # CUDA only: the allocator's peak during the steps

    def clips_per_s(self, batch: int) -> float:
        return batch / self.seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(setup: StepSetup, reps: int, device: torch.device | str = "cpu") -> StepTiming:
    """Median seconds per training step (after one warm-up step) on ``device``."""
    device = torch.device(device)
    torch.manual_seed(0)
    variant = "feedback" if setup.stage == 3 else "ms"
    model = EgoRNN(ModelConfig(variant=variant, pretrained="none", backbone=setup.backbone), 61, setup.size).to(device)
    model.convlstm.gates = setup.gates
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    apply_stage(model, STAGE3 if setup.stage == 3 else STAGE2)
    if setup.compile:
        model.compile(backend=setup.compile_backend)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    s = setup.size
    x = torch.randn(setup.batch, setup.frames, 3, s, s, device=device)
    y = torch.randint(0, 61, (setup.batch,), device=device)
    mm = torch.rand(setup.batch, setup.frames, s // 32, s // 32, device=device)

    def step() -> float:
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, "fp32" if setup.naive else setup.precision):
            if setup.naive:
                logits, ms = naive_forward(model, x)
            else:
                out = model(x)
                logits, ms = out.logits, out.ms
        loss, _ = total_loss(logits, y, ms, mm, "classification", 1.0, 0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = step()
    times = [step() for _ in range(reps)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model = opt = None  # free the device memory before the next setup is timed
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return StepTiming(statistics.median(times), warm, peak)


def time_steps(naive: bool, batch: int, frames: int, size: int, reps: int, precision: str = "fp32",
               channels_last: bool = False) -> float:
    """CPU seconds per stage-2 step (the shape ``benchmarks.run`` uses)."""
    setup = StepSetup(naive=naive, precision=precision, channels_last=channels_last, batch=batch, frames=frames,
                      size=size)
    return time_step(setup, reps).seconds
