"""One ablation trial, stage by stage: where its time goes, and ablation trials per GPU-hour.

The ``trial`` section of ``python -m benchmarks.device``. It trains the ablation space's first point (the
paper's setting, ``search_spaces/ablation.yaml``: its ``base`` and ``points[0]``) with
``egomodel.training.engine.train`` for a fixed number of epochs per stage on a synthetic set of the
chosen shape (``SHAPES``: ``real`` is GTEA61-sized, 469 clips of 320 x 240 sampled at 7 x 224), timing
each epoch from inside the engine (its ``train_epoch`` and ``evaluate`` are wrapped while it runs, and its
per-epoch callback closes each epoch). From the measured epochs it extrapolates the space's full schedule
(the stage epochs of the space's config: 300/150/200) with stage 1 shared by the space's ``num_samples``
trials, validation every epoch and one trial on the device at a time (``extrapolate``).

Keys of the JSON (``trials_per_gpu_hour`` at the top, the rest under ``trial``; seconds are wall time):

- ``trials_per_gpu_hour``: 3600 / ``full_trial_s`` (named so on a CPU too; ``trial.device`` says where).
- ``trial.device``, ``shape`` (its name), ``clips`` / ``train_clips`` / ``val_clips``, ``clip_size``
  ([width, height]), ``clip_frames`` (frames generated per clip), ``image_size``, ``frames``, ``backbone``,
  ``epochs_per_stage`` (measured), ``eval_batch_size``, ``data_workers``, ``device_clips_setting``
  (``data.device_clips``), ``generate_s`` (writing the synthetic set), ``measured_at`` (UTC date and time).
- ``trial.trial_s``: the whole ``train`` call; ``setup_s`` (before stage 1's first epoch: data set
  loaded, model built and calibrated, first loader made) + the stages' ``seconds`` + ``finish_s`` (the
  final evaluation and metrics after the last epoch) add up to it.
- ``trial.stages.<n>`` for each stage: ``seconds`` (from the end of the stage before, or from stage 1's
  first epoch, to its last epoch's end), ``fixed_s`` (``seconds`` less its epochs: loading the previous
  stage's best weights, the stage's optimiser and loader), ``epochs``, ``batch_size``, ``steps_per_epoch``,
  ``loader`` (``DataLoader``: loader processes; ``DeviceLoader``: clips held on the device), ``epoch_s``
  (each epoch: training, validation, checkpoints), ``train_s`` (each epoch's training loop), ``step_s``
  (median training-loop seconds per step, data waits included), ``data_wait_fraction`` (the trainer's
  own: time waiting on the loader / time of the training loop, mean over epochs), ``val_s`` (each epoch's
  validation pass), ``val_share`` (validation / epoch time), ``gpu_util`` (mean NVML utilisation over the
  stage, percent of time a kernel ran; null on a CPU or without NVML), ``peak_mem_gb`` with
  ``peak_mem_kind`` (``cuda_max_allocated``: the allocator's peak during the stage; ``process_peak_rss``:
  the trainer process's peak resident memory during the stage, loader processes not included).
- ``trial.gpu_util_source``: ``nvml`` or why there is no figure; ``trial.device_driver`` on CUDA.
- ``trial.full``: ``extrapolate``'s output: ``schedule`` (full epochs per stage), ``stage1_shared_by``,
  ``stage_full_s`` (each stage over its full schedule, unshared), ``full_trial_s`` (one trial's share),
  ``val_share_full`` (validation's share of it), ``steady_epoch_s``, ``steady_from_first_epoch`` (true
  when a stage measured one epoch only, whose warm-up then counts for every epoch: an overestimate).
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import describe
from egomodel.data.layout import FLOW_X_DIR, FLOW_Y_DIR, FRAMES_DIR


@dataclass(frozen=True)
class TrialShape:
    classes: int
    clips_per_class: int  # per user; 4 users, S1 lacking one class (as GTEA61 does)
    width: int  # of the generated frames
    height: int
    image_size: int  # data.image_size
    frames: int  # data.frames
    hidden: int | None = None  # model.hidden (None: the space's)
    users: int = 4

    def clips(self) -> int:
        from egomodel.data.synthetic import missing_class

        lacking = self.clips_per_class if missing_class(self.classes, self.users) else 0
        return self.classes * self.clips_per_class * self.users - lacking


SHAPES = {
    "real": TrialShape(17, 7, 320, 240, 224, 7),  # 469 clips: GTEA61 has about 460
    "small": TrialShape(4, 2, 96, 72, 64, 7),  # 30 clips: a CPU's run
    "tiny": TrialShape(4, 1, 64, 48, 32, 3, hidden=32),  # 15 clips: the test's
}


# --- the arithmetic -------------------------------------------------------------------------------------

def _steady(xs: list[float]) -> float:
    """An epoch after the first: the median of the measured later ones, or the first when it is alone."""
    return statistics.median(xs[1:]) if len(xs) > 1 else xs[0]


def extrapolate(stages: dict[int, dict[str, Any]], schedule: dict[int, int], shared_by: dict[int, int],
                setup_s: float, finish_s: float) -> dict[str, Any]:
    """One trial's time over the full schedule from its measured epochs.

    ``stages[n]`` holds the measured ``fixed_s``, ``epoch_s`` (a list, first epoch first) and ``val_s`` (the
    epochs' validation seconds); ``schedule[n]`` is stage n's full epoch count; ``shared_by[n]`` the trials
    that share stage n (1 where absent). A stage over its schedule takes its fixed cost, its first epoch as
    measured (warm-up included) and every later epoch at ``_steady``; a trial pays its setup, its finish and
    each stage divided by the trials sharing it. One trial on the device at a time."""
    if set(stages) != set(schedule):
        raise ValueError(f"measured stages {sorted(stages)} differ from the schedule's {sorted(schedule)}")
    full, val, steady = {}, {}, {}
    for n, m in stages.items():
        epochs = schedule[n]
        if epochs < 1 or not m["epoch_s"] or len(m["val_s"]) != len(m["epoch_s"]):
            raise ValueError(f"stage {n}: needs a full epoch count >= 1 and one validation time per epoch")
        steady[n] = _steady(m["epoch_s"])
        full[n] = m["fixed_s"] + m["epoch_s"][0] + (epochs - 1) * steady[n]
        val[n] = m["val_s"][0] + (epochs - 1) * _steady(m["val_s"])
    share = {n: 1 / shared_by.get(n, 1) for n in stages}
    trial = setup_s + finish_s + sum(full[n] * share[n] for n in stages)
    return {"schedule": {str(n): schedule[n] for n in sorted(schedule)},
            "stage1_shared_by": shared_by.get(1, 1),
            "stage_full_s": {str(n): full[n] for n in sorted(full)},
            "steady_epoch_s": {str(n): steady[n] for n in sorted(steady)},
            "steady_from_first_epoch": any(len(m["epoch_s"]) == 1 for m in stages.values()),
            "full_trial_s": trial,
            "val_share_full": sum(val[n] * share[n] for n in stages) / trial,
            "trials_per_gpu_hour": 3600 / trial}


# --- the synthetic set ----------------------------------------------------------------------------------

def generate_set(out: Path, shape: TrialShape, clip_frames: int, processes: int) -> Path:
    """The shape's synthetic set, written by up to ``processes`` processes: part j writes some clips of
    every class with seed j, and its clip folders are renumbered after part 0's."""
    from egomodel.data.synthetic import generate

    parts = max(1, min(processes, shape.clips_per_class))
    counts = [shape.clips_per_class // parts + (j < shape.clips_per_class % parts) for j in range(parts)]
    args = [dict(out=out / f"part{j}", classes=shape.classes, clips_per_class=counts[j], frames=clip_frames,
                 size=(shape.width, shape.height), seed=j, users=shape.users) for j in range(parts)]
    if parts == 1:
        roots = [generate(**args[0])]
    else:  # spawned: the children need numpy and Pillow, not this process's torch threads or CUDA
        with ProcessPoolExecutor(parts, mp_context=multiprocessing.get_context("spawn")) as pool:
            roots = [f.result() for f in [pool.submit(generate, **a) for a in args]]
    offset = counts[0]
    for root, count in zip(roots[1:], counts[1:], strict=True):
        for top in (FRAMES_DIR, FLOW_X_DIR, FLOW_Y_DIR):
            for clip in (root / top).glob("*/*/*"):
                clip.rename(roots[0] / top / clip.parent.parent.name / clip.parent.name / str(offset + int(clip.name)))
        offset += count
        shutil.rmtree(root)
    return roots[0]


# --- measuring inside the engine ------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Memory:
    """The peak since the last ``reset``: CUDA's allocator, or (Linux) the process's resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):  # 5: reset the peak resident set size (Linux 4.0 on)
            Path("/proc/self/clear_refs").write_text("5")

    def peak_gb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return None
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return None if kb is None else kb / 2**20


class _Utilisation:
    """NVML's GPU utilisation (``torch.cuda.utilization``) sampled every ``every`` seconds in a thread."""

    def __init__(self, device: torch.device, every: float = 0.1) -> None:
        self.device, self.every, self.samples = device, every, []
        self.source = "none: not a CUDA device"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        try:
            torch.cuda.utilization(device)
        except Exception as e:  # noqa: BLE001 - no NVML: the figure is null, with the reason
            self.source = f"none: {type(e).__name__}: {e}"
            return
        self.source = "nvml"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.perf_counter(), torch.cuda.utilization(self.device)))

    def mean(self, start: float, end: float) -> float | None:
        xs = [u for t, u in list(self.samples) if start <= t <= end]
        return statistics.mean(xs) if xs else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Clock:
    """Times a ``train`` call's epochs: wraps the engine's ``train_epoch`` and ``evaluate`` (``patched``)
    and closes each epoch in the engine's callback (``callback``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.t0 = time.perf_counter()
        self.boundary: float | None = None  # where the current stage began
        self.setup_s: float | None = None
        self.epoch: dict[str, float] | None = None
        self.finish_val_s = 0.0
        self.stages: dict[int, dict[str, Any]] = {}
        self.memory = _Memory(device)
        self.util = _Utilisation(device)
        self.memory.reset()

    def _train_epoch(self, fn: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
        def timed(model: Any, loader: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            start = time.perf_counter()
            if self.boundary is None:
                self.boundary, self.setup_s = start, start - self.t0
            out = fn(model, loader, *args, **kwargs)
            _sync(self.device)
            self.epoch = {"start": start, "train_s": time.perf_counter() - start, "steps": len(loader),
                          "val_s": 0.0, "loader": type(loader).__name__}
            return out
        return timed

    def _evaluate(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            seconds = time.perf_counter() - start
            if self.epoch is not None:
                self.epoch["val_s"] += seconds
            else:  # after the last epoch: the final evaluation
                self.finish_val_s += seconds
            return out
        return timed

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        from egomodel.training import engine

        saved = engine.train_epoch, engine.evaluate
        engine.train_epoch, engine.evaluate = self._train_epoch(saved[0]), self._evaluate(saved[1])
        try:
            yield
        finally:
            engine.train_epoch, engine.evaluate = saved
            self.util.stop()

    def callback(self, report: Any) -> None:
        _sync(self.device)
        now = time.perf_counter()
        if self.epoch is None or self.boundary is None:
            raise RuntimeError(f"stage {report.stage} epoch {report.epoch} ended without a timed training loop "
                               "(a cached or stored stage, which this benchmark does not run)")
        e, self.epoch = self.epoch, None
        stage = self.stages.setdefault(report.stage, {"start": self.boundary, "rows": []})
        stage["rows"].append({**e, "epoch_s": now - e["start"], "wait": report.metrics["data_wait_fraction"]})
        if report.epoch == report.stage_epochs:
            stage.update(end=now, peak_mem_gb=self.memory.peak_gb(), gpu_util=self.util.mean(stage["start"], now))
            self.boundary = now
            self.memory.reset()

    def summary(self, batch_sizes: dict[int, int]) -> dict[str, dict[str, Any]]:
        out = {}
        for n, s in self.stages.items():
            rows = s["rows"]
            epoch_s = [r["epoch_s"] for r in rows]
            out[str(n)] = {
                "seconds": s["end"] - s["start"], "fixed_s": s["end"] - s["start"] - sum(epoch_s),
                "epochs": len(rows), "batch_size": batch_sizes[n], "steps_per_epoch": rows[-1]["steps"],
                "epoch_s": epoch_s, "train_s": [r["train_s"] for r in rows],
                "loader": rows[-1]["loader"],
                "step_s": statistics.median(r["train_s"] / max(r["steps"], 1) for r in rows),
                "data_wait_fraction": statistics.mean(r["wait"] for r in rows),
                "val_s": [r["val_s"] for r in rows], "val_share": sum(r["val_s"] for r in rows) / sum(epoch_s),
                "gpu_util": s["gpu_util"], "peak_mem_gb": s["peak_mem_gb"], "peak_mem_kind": self.memory.kind,
            }
        return out


# --- the section ----------------------------------------------------------------------------------------

def _driver() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    return None


def measure(device: torch.device, shape: TrialShape, epochs: int, clip_frames: int, backbone: str,
            workers: int | None = None, processes: int = 1, space: str = "ablation") -> dict[str, Any]:
    """The trial section: ``epochs`` epochs of each stage of ``space``'s first point on a synthetic set of
    ``shape`` with ``clip_frames`` frames per clip; ``workers`` loader processes (None: the space's)."""
    if epochs < 1:
        raise ValueError(f"epochs per stage must be >= 1, got {epochs}")
    if clip_frames < shape.frames:
        raise ValueError(f"clip frames ({clip_frames}) must be at least the frames sampled per clip ({shape.frames})")
    from egomodel.config import from_dict
    from egomodel.training.engine import train
    from egomodel.training.stages import VARIANT_STAGES, stage_plan
    from tuning.space import load_space

    loaded = load_space(space)
    values = {**loaded.base, **(loaded.points[0] if loaded.points else {})}
    full = from_dict({}, values)
    schedule = {s.number: s.epochs for s in stage_plan(full.model.variant, full.train)}
    tmp = Path(tempfile.mkdtemp(prefix="egotrial-"))
    try:
        t0 = time.perf_counter()
        root = generate_set(tmp / "data", shape, clip_frames, processes)
        generate_s = time.perf_counter() - t0
        overrides = {**values, "data.root": str(root), "data.image_size": shape.image_size,
                     "data.frames": shape.frames, "data.packed_cache": str(tmp / "packed"),
                     "model.pretrained": "none", "model.backbone": backbone, "train.device": device.type}
        if shape.hidden is not None:
            overrides["model.hidden"] = shape.hidden
        if workers is not None:
            overrides["data.num_workers"] = workers
        for name in VARIANT_STAGES[full.model.variant]:
            overrides.update({f"train.{name}.epochs": epochs, f"train.{name}.milestones": []})
        cfg = from_dict({}, overrides)
        if cfg.train.stage1_views > 0:
            raise ValueError("train.stage1_views > 0: stage 1 would train on cached features, not timed here")
        clock = Clock(device)
        with clock.patched():
            metrics = train(cfg, tmp / "run", callback=clock.callback, evaluate_test=False, progress=False)
        trial_s = time.perf_counter() - clock.t0
        stages = clock.summary({s.number: s.batch_size for s in stage_plan(cfg.model.variant, cfg.train)})
        finish_s = trial_s - clock.setup_s - sum(s["seconds"] for s in stages.values())
        extra = extrapolate({int(n): s for n, s in stages.items()}, schedule, {1: loaded.num_samples},
                            clock.setup_s, finish_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    detail = {
        "device": describe(device), "device_driver": _driver() if device.type == "cuda" else None,
        "shape": next((k for k, v in SHAPES.items() if v == shape), "custom"), "space": loaded.name,
        "clips": shape.clips(), "train_clips": metrics["num_train_clips"], "val_clips": metrics["num_val_clips"],
        "clip_size": [shape.width, shape.height], "clip_frames": clip_frames, "image_size": shape.image_size,
        "frames": shape.frames, "backbone": backbone, "epochs_per_stage": epochs,
        "eval_batch_size": cfg.train.eval_batch_size, "data_workers": cfg.data.num_workers,
        "device_clips_setting": cfg.data.device_clips, "generate_s": generate_s,
        "measured_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "trial_s": trial_s, "setup_s": clock.setup_s, "finish_s": finish_s, "finish_val_s": clock.finish_val_s,
        "stages": stages, "gpu_util_source": clock.util.source, "full": extra,
    }
    return {"trials_per_gpu_hour": extra["trials_per_gpu_hour"], "trial": detail}
