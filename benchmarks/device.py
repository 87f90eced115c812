"""``python -m benchmarks.device --json OUT.json``: one trial's training on one device (a GPU when there is one).

Plain PyTorch (needs egomodel only, not Ray/Optuna/MLflow), so it runs on a bare GPU machine. Measures:

- the stage-2 step at batch ``--batch`` x 7 x 224: the authors' per-frame fp32 loop vs this project's
  defaults (bf16 autocast, channels_last, the device's ConvLSTM gate mode): seconds, clips/s, peak memory;
- peak memory of a stage-3 step (feedback variant) at the same batch: what one trial needs on the device;
- ConvLSTM gates fused vs separate, alone and in the full step;
- optional ``torch.compile`` of the model (compilation time and step time);
- the data path: loader clips/s at 7 x 224 against the model's clips/s, and the data-wait fraction the
  trainer reports in a short three-stage run at that scale;
- the whole trial (``trial``, ``benchmarks.trial``): an ablation trial's stages for a few epochs each on a
  GTEA61-sized synthetic set (small shapes on a CPU), timed stage by stage, and ``trials_per_gpu_hour``
  extrapolated to the full schedule.

Each section is written to the JSON as soon as it is measured, so a cut-off run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import describe, output_file
from benchmarks.step import StepSetup, StepTiming, sync, time_step
from egomodel.config import BACKBONES
from egomodel.model.convlstm import ConvLSTM
from egomodel.training.steps import autocast, pick_device

SECTIONS = ["step", "memory", "gates", "compile", "data", "device_clips", "trial"]


def _timing(prefix: str, t: StepTiming, batch: int) -> dict[str, Any]:
    out = {f"{prefix}_step_s": t.seconds, f"{prefix}_clips_per_s": t.clips_per_s(batch),
           f"{prefix}_warmup_s": t.warmup_s}
    if t.peak_mem_gb is not None:
        out[f"{prefix}_peak_mem_gb"] = t.peak_mem_gb
    return out


def time_gates(mode: str, batch: int, frames: int, reps: int, device: torch.device) -> float:
    """Median seconds of the ConvLSTM alone (512 -> 512 at 7 x 7), forward and backward, at the default precision."""
    torch.manual_seed(0)
    cell = ConvLSTM(512, 512, gates=mode).to(device)
    x = torch.randn(batch, frames, 512, 7, 7, device=device, requires_grad=True)
    times = []
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, "auto"):
            _, c = cell(x)
        c.float().sum().backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def loader_rate(data: Path, batch: int, workers: int, size: int, frames: int, batches: int, packed: str = "") -> float:
    """Training clips/s the data loader delivers (decode or packed read, augment), nothing else running.
    With ``packed`` set, one pass fills the cache first, so this is the warm rate of later epochs."""
    from egomodel.config import from_dict
    from egomodel.data.dataset import ClipDataset, load_bundle, make_loader

    cfg = from_dict({}, {"data.root": str(data), "data.image_size": size, "data.frames": frames,
                         "data.packed_cache": packed})
    bundle = load_bundle(cfg.data, 0, need_mmaps=True)
    ds = ClipDataset(bundle.train, bundle.classes, cfg.data, 0, with_mmaps=True)
    loader = make_loader(ds, batch, workers, epoch_key=0)
    if packed:
        for _ in loader:
            pass
    n, t0 = 0, None
    for epoch in range(1, 100):
        loader.sampler.set_epoch(epoch)
        for b in loader:
            if t0 is None:  # the first batch pays the workers' start-up
                t0 = time.perf_counter()
                continue
            n += b["frames"].shape[0]
            if n >= batches * batch:
                return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def short_training(data: Path, out: Path, device: torch.device, batch: int, workers: int, size: int,
                   frames: int, packed: str, device_clips: bool = False, epochs_scale: float = 0.005,
                   backbone: str = "resnet34") -> dict[str, Any]:
    """Three stages of the feedback model at full image size (2/1/1 epochs at scale 0.005): the trainer's data-wait
    figure, with loader processes or (``device_clips``) clips held on the device."""
    from egomodel.config import from_dict
    from egomodel.training.engine import train

    cfg = from_dict({}, {
        "data.root": str(data), "data.image_size": size, "data.frames": frames, "data.num_workers": workers,
        "data.packed_cache": packed, "data.device_clips": device_clips, "model.pretrained": "none",
        "model.backbone": backbone, "train.device": device.type,
        "train.epochs_scale": epochs_scale, "train.stage1.batch_size": batch, "train.stage2.batch_size": batch,
        "train.stage3.batch_size": batch, "train.eval_batch_size": batch,
    })
    t0 = time.perf_counter()
    metrics = train(cfg, out, evaluate_test=False, progress=False)
    waits: dict[int, list[float]] = {}
    for h in metrics["history"]:
        waits.setdefault(h["stage"], []).append(h["data_wait_fraction"])
    last = metrics["history"][-1]["data_wait_fraction"]
    name = "device_clips_training" if device_clips else "short_training"
    return {f"{name}_s": time.perf_counter() - t0, f"{name}_data_wait_fraction": metrics["data_wait_fraction"],
            f"{name}_last_epoch_data_wait": last,
            **{f"{name}_stage{s}_data_wait": statistics.mean(w) for s, w in waits.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda or cpu")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default 32 on CUDA, 4 on CPU)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="CI: 64 px, batch 2, 1 rep: checks that it runs")
    p.add_argument("--backbone", default="resnet34", choices=BACKBONES,
                   help="model.backbone of every section (docs/benchmarks.md's figures: resnet34, the paper's)")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager"],
                   help="torch.compile backend of the compile section (aot_eager: traced and differentiated "
                        "like inductor, no kernels generated; a quick check that the model compiles)")
    p.add_argument("--workers", type=int, default=8, help="loader processes for the data-path figures")
    p.add_argument("--epochs-scale", type=float, default=0.005,
                   help="train.epochs_scale of the short runs (0.005: 2/1/1 epochs of 3 batches)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    p.add_argument("--only", nargs="*", default=None, choices=SECTIONS, help="run these sections alone")
    p.add_argument("--trial-shape", default=None, choices=["real", "small", "tiny"],
                   help="the trial section's data and image sizes (benchmarks.trial.SHAPES; default: real on "
                        "CUDA, small on a CPU, tiny with --tiny)")
    p.add_argument("--trial-epochs", type=int, default=None,
                   help="epochs of each stage in the trial section (default 2; 1 with --tiny)")
    p.add_argument("--trial-clip-frames", type=int, default=None,
                   help="frames generated per clip for the trial section (default: the frames sampled + 3; "
                        "at least the frames sampled)")
    args = p.parse_args(argv)
    from benchmarks.trial import SHAPES

    trial_shape = SHAPES[args.trial_shape or ("tiny" if args.tiny else None) or
                         ("real" if pick_device(args.device).type == "cuda" else "small")]
    trial_epochs = args.trial_epochs if args.trial_epochs is not None else 1 if args.tiny else 2
    clip_frames = args.trial_clip_frames if args.trial_clip_frames is not None else trial_shape.frames + 3
    if trial_epochs < 1:
        p.error(f"--trial-epochs must be >= 1, got {trial_epochs}")
    if clip_frames < trial_shape.frames:
        p.error(f"--trial-clip-frames {clip_frames} is fewer than the {trial_shape.frames} frames the trial samples")
    if args.only is not None:
        args.skip = [s for s in SECTIONS if s not in args.only]
    device = pick_device(args.device)
    size, frames = (64, 3) if args.tiny else (224, 7)
    batch = args.batch or (2 if args.tiny else 32 if device.type == "cuda" else 4)
    reps = 1 if args.tiny else args.reps
    out: dict[str, Any] = {"device": describe(device), "batch": batch, "frames": frames, "size": size,
                           "backbone": args.backbone,
                           "short_training_epochs_scale": args.epochs_scale}
    path = output_file(p, args.json)

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name in args.skip:
            return
        t0 = time.perf_counter()
        try:
            out.update(fn())
        except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' figures
            out[f"{name}_error"] = f"{type(e).__name__}: {e}"
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        path.write_text(json.dumps(out, indent=2))

    ours = StepSetup(precision="auto", channels_last=True, gates="auto", batch=batch, frames=frames, size=size,
                     backbone=args.backbone)
    naive = StepSetup(naive=True, batch=batch, frames=frames, size=size, backbone=args.backbone)

    def step() -> dict[str, Any]:
        n, o = time_step(naive, reps, device), time_step(ours, reps, device)
        return {**_timing("naive", n, batch), **_timing("ours", o, batch),
                "step_speedup_vs_naive": n.seconds / o.seconds,
                "ours_gates": ConvLSTM(8, 8).mode(device)}

    def memory() -> dict[str, Any]:
        return _timing("stage3", time_step(replace(ours, stage=3), reps, device), batch)

    def gates() -> dict[str, Any]:
        sep = time_gates("separate", batch, frames, reps, device)
        fus = time_gates("fused", batch, frames, reps, device)
        step_sep = time_step(replace(ours, gates="separate"), reps, device).seconds
        step_fus = time_step(replace(ours, gates="fused"), reps, device).seconds
        return {"convlstm_separate_s": sep, "convlstm_fused_s": fus, "convlstm_fused_speedup": sep / fus,
                "step_s_gates_separate": step_sep, "step_s_gates_fused": step_fus}

    def compiled() -> dict[str, Any]:
        t = time_step(replace(ours, compile=True, compile_backend=args.compile_backend), reps, device)
        return {**_timing("compiled", t, batch), "compile_backend": args.compile_backend,
                "compile_speedup": out.get("ours_step_s", float("nan")) / t.seconds}

    synthetic: dict[str, Path] = {}

    def dataset() -> Path:
        """The data-path sections' synthetic clips at 320 x 240 (generated once)."""
        if not synthetic:
            from egomodel.data.synthetic import generate

            tmp = Path(tempfile.mkdtemp(prefix="egodevice-"))
            synthetic["tmp"] = tmp
            # tiny: 4 classes x 1 clip x 4 users, the least that keeps a clip of each class for validation
            classes, clips = (4, 1) if args.tiny else (8, 12)
            synthetic["root"] = generate(tmp / "data", classes=classes, clips_per_class=clips,
                                         frames=frames + 3, size=(80, 64) if args.tiny else (320, 240), seed=0)
        return synthetic["root"]

    def data() -> dict[str, Any]:
        root, tmp = dataset(), synthetic["tmp"]
        workers = 0 if args.tiny else args.workers
        n = 2 if args.tiny else 12
        decoded = loader_rate(root, batch, workers, size, frames, n)
        packed = loader_rate(root, batch, workers, size, frames, n, packed=str(tmp / "packed"))
        res = {"loader_clips_per_s_decoding": decoded, "loader_clips_per_s_packed": packed, "loader_workers": workers}
        if "ours_clips_per_s" in out:
            res["loader_over_model_rate"] = packed / out["ours_clips_per_s"]
        # the trainer's own figure, with the packed cache filled in its first epoch
        return {**res, **short_training(root, tmp / "run", device, batch, workers, size, frames, str(tmp / "packed2"),
                                        epochs_scale=args.epochs_scale, backbone=args.backbone)}

    def on_device() -> dict[str, Any]:
        """The same short run with the training clips on the device (``data.device_clips``), batches made
        ahead in a thread (the default on CUDA) and, on CUDA, to compare, made inline."""
        from egomodel.data import device_clips

        root, tmp = dataset(), synthetic["tmp"]
        workers = 0 if args.tiny else args.workers
        res = short_training(root, tmp / "run2", device, batch, workers, size, frames, str(tmp / "packed2"),
                             device_clips=True, epochs_scale=args.epochs_scale, backbone=args.backbone)
        if device.type != "cuda":  # made inline there anyway
            return res
        default, device_clips.PREFETCH_CUDA = device_clips.PREFETCH_CUDA, 0
        try:
            inline = short_training(root, tmp / "run3", device, batch, workers, size, frames, str(tmp / "packed2"),
                                    device_clips=True, epochs_scale=args.epochs_scale, backbone=args.backbone)
        finally:
            device_clips.PREFETCH_CUDA = default
        return {**res, **{k.replace("device_clips_training", "device_clips_inline"): v for k, v in inline.items()}}

    def trial() -> dict[str, Any]:
        from benchmarks.trial import measure

        return measure(device, trial_shape, trial_epochs, clip_frames, args.backbone,
                       workers=0 if args.tiny else None, processes=os.cpu_count() or 1)

    try:
        for name, fn in (("step", step), ("memory", memory), ("gates", gates), ("data", data),
                         ("device_clips", on_device), ("compile", compiled), ("trial", trial)):
            section(name, fn)
    finally:  # the synthetic clips, packed caches and short runs: close to 1 GB even in tiny mode
        if synthetic:
            shutil.rmtree(synthetic["tmp"], ignore_errors=True)
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
