"""One training epoch and one evaluation pass; shared by the engine and ``egomodel.evaluate``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from egomodel.config import Config
from egomodel.data.transforms import normalize_frames
from egomodel.model.backbone import cumulative_bn_stats
from egomodel.model.staged import StagedModel
from egomodel.training.losses import total_loss


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPUs where bf16 autocast is faster than fp32 (elsewhere it is slower)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and on bf16-capable CPUs by default, or where ``train.precision=bf16``."""
    auto_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    use_bf16 = precision == "bf16" or (precision == "auto" and auto_bf16)
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A loader's batch on the device, its uint8 frames normalised there."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "frames" in out:
        out["frames"] = normalize_frames(out["frames"])
    return out


def inputs(model: StagedModel, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The batch entries the model's forward takes (frames, flow or both)."""
    return [batch[k] for k in model.input_keys]


@contextlib.contextmanager
def running_bn_for_one_clip(model: StagedModel, clips: int) -> Iterator[None]:
    """A batch of one clip runs the BatchNorm layers that train on their running statistics.

    Training-mode BN needs more than one value per channel: stage 3 runs the backbone one frame at a
    time, so at small image sizes (layer4 is 1x1 at 32 px) a last batch of one clip would crash; and a
    one-clip batch's own statistics would be noise anyway. The step still learns from that clip."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if clips != 1 or not bns:
        yield
        return
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


def train_epoch(
    model: StagedModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    device: torch.device,
    desc: str = "",
    progress: bool = True,
    ms_on: bool = True,
) -> dict[str, float]:
    """Returns mean loss, top-1 and the fraction of step time spent waiting for data.

    ``ms_on=False`` leaves the MS term out of the loss (when nothing before the MS head trains it
    changes no weight, and leaving it out makes such stages identical across MS settings)."""
    model.train()
    m = cfg.model
    loss_sum = correct = seen = 0.0
    wait = busy = 0.0
    bar = tqdm(total=len(loader), desc=desc, leave=False, disable=not progress, unit="batch")
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = to_device(next(it), device)
        except StopIteration:
            break
        t1 = time.perf_counter()
        with running_bn_for_one_clip(model, batch["label"].numel()), autocast(device, cfg.train.precision):
            out = model(*inputs(model, batch))
        mm = batch.get("mmaps") if ms_on else None
        loss, _ = total_loss(out.logits, batch["label"], out.ms, mm, m.ms_task, m.alpha, m.tau)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} ({desc}); lower the learning rate or alpha")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = batch["label"].numel()
        loss_sum += float(loss.detach()) * n
        correct += float((out.logits.argmax(1) == batch["label"]).sum())
        seen += n
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        wait += t1 - t0
        busy += t2 - t1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
    bar.close()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "data_wait_fraction": wait / max(wait + busy, 1e-9),
    }


@torch.no_grad()
def precise_bn(model: StagedModel, loader: DataLoader, cfg: Config, device: torch.device) -> int:
    """Recompute the running statistics of the BatchNorm layers that train (frozen blocks keep theirs)
    as the exact average over ``loader`` with the weights as they are now (SlowFast's "precise BN").

    A few hundred steps are too few for the running averages to catch up with weights that move fast:
    on the synthetic set a flow stream trained from random weights reached 0.81 top-1 on its training
    clips in train mode and predicted one class for every clip in eval mode; with recomputed statistics
    it scored 0.89 on the unseen test user. Returns the number of layers recomputed."""
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    with cumulative_bn_stats(bns):
        for batch in loader:
            batch = to_device(batch, device)
            with running_bn_for_one_clip(model, batch["label"].numel()), autocast(device, cfg.train.precision):
                model(*inputs(model, batch))  # a one-clip batch adds nothing to the statistics
    return len(bns)


@dataclass
class EvalResult:
    loss: float
    top1: float
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray


@torch.no_grad()
def evaluate(
    model: StagedModel, loader: DataLoader, cfg: Config, device: torch.device, ms_on: bool = True
) -> EvalResult:
    model.eval()
    m = cfg.model
    losses, labels, probs = [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, cfg.train.precision):
            out = model(*inputs(model, batch))
        mm = batch.get("mmaps") if ms_on else None
        loss, _ = total_loss(out.logits, batch["label"], out.ms, mm, m.ms_task, m.alpha, m.tau)
        losses.append(float(loss) * batch["label"].numel())
        labels.append(batch["label"].cpu())
        probs.append(torch.softmax(out.logits.float(), 1).cpu())
    y = torch.cat(labels).numpy()
    p = torch.cat(probs).numpy()
    preds = p.argmax(1)
    return EvalResult(sum(losses) / max(len(y), 1), float((preds == y).mean()) if len(y) else 0.0, y, preds, p)
