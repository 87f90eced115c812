"""The per-clip worker: decode a clip, compute its warp flow and motion maps, write it into the GTEA61
layout, published whole.

A clip is written under ``ROOT/.prepare-tmp/`` and then renamed into place: its flow folders first, its
frame folder ``processed_frames2/<user>/<label>/<inst>`` last. The loader only looks at frame folders, so
a killed run never leaves a half clip that anything reads, and a clip whose frame folder exists is done
(flow folders left by a publish killed half-way are removed and written again). ``egomodel.prepare``
runs this in processes, ``tuning.prepare`` as Ray tasks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from egomodel.data.layout import FLOW_X_DIR, FLOW_Y_DIR, FRAMES_DIR
from egomodel.data.prepare.motion import MotionSettings, clip_motion
from egomodel.data.prepare.sources import FrameFiles, PrepareError, VideoSegment, resize_short

TMP_DIR = ".prepare-tmp"
FRAME_FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class PrepareOptions:
    """What every clip of a run shares; part of the root's identity (``prepare.json``)."""

    motion: MotionSettings = field(default_factory=MotionSettings)
    short_side: int | None = None
    frame_format: str = "png"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame format must be one of {', '.join(FRAME_FORMATS)}, got {self.frame_format!r}")
        if self.short_side is not None and self.short_side < 16:
            raise ValueError(f"short side must be at least 16 px, got {self.short_side}")


@dataclass(frozen=True)
class ClipJob:
    """One clip to write: where its frames come from, where it goes, and what to call it in errors."""

    user: str
    label: str
    instance: int
    source: VideoSegment | FrameFiles
    origin: str  # "manifest.csv row 4", "EPIC_100_train.csv row 17", ...

    @property
    def rel(self) -> Path:
        return Path(self.user, self.label, str(self.instance))

    @property
    def num_frames(self) -> int:
        return self.source.num_frames

    def done(self, root: Path) -> bool:
        return is_done(root, self.rel)


@dataclass(frozen=True)
class ClipResult:
    key: str
    user: str
    label: str
    frames: int
    seconds: float
    skipped: bool = False  # already complete in the root


def is_done(root: Path, rel: Path) -> bool:
    """True when the clip was published (its frame folder is renamed into place last)."""
    return (root / FRAMES_DIR / rel).is_dir()


def write_image(path: Path, array: np.ndarray, jpeg_quality: int = 95) -> None:
    """PNG (fast compression) or JPEG by suffix; RGB arrays are converted to OpenCV's BGR."""
    image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if not cv2.imwrite(str(path), image, params):
        raise OSError(f"cannot write {path}")


def publish(staged: dict[str, Path], finals: dict[str, Path]) -> None:
    """Rename staged folders into place in the order of ``finals`` (frame folder last): stale targets
    (from a publish killed half-way) are removed first."""
    for key, final in finals.items():
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged[key], final)


def staging(root: Path, job_name: str) -> Path:
    """A fresh temporary folder inside the root (same file system, so a rename publishes)."""
    base = root / TMP_DIR
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=job_name.replace("/", "__") + ".", dir=base))


def prepare_clip(job: ClipJob, root: Path | str, options: PrepareOptions) -> ClipResult:
    """Write one clip (frames, motion maps, flow) into ``root``, skipping it when it is already there."""
    root = Path(root)
    key = job.rel.as_posix()
    if job.done(root):
        return ClipResult(key, job.user, job.label, job.num_frames, 0.0, skipped=True)
    start = time.perf_counter()
    frames = [resize_short(f, options.short_side) for f in job.source.read()]
    if len(frames) < 2:
        raise PrepareError(f"{job.origin}: a clip needs at least 2 frames, {key} has {len(frames)}")
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    maps, flow_x, flow_y = clip_motion(gray, options.motion)
    tmp = staging(root, key)
    try:
        clip = tmp / "clip"
        for sub in ("clip/rgb", "clip/mmaps", "flow_x", "flow_y"):
            (tmp / sub).mkdir(parents=True)
        for t, (frame, mmap) in enumerate(zip(frames, maps), start=1):
            write_image(clip / "rgb" / f"rgb{t:04d}.{options.frame_format}", frame, options.jpeg_quality)
            write_image(clip / "mmaps" / f"map{t:04d}.png", mmap)
        for t, (fx, fy) in enumerate(zip(flow_x, flow_y), start=1):
            write_image(tmp / "flow_x" / f"flow_x_{t:05d}.png", fx)
            write_image(tmp / "flow_y" / f"flow_y_{t:05d}.png", fy)
        publish({"flow_x": tmp / "flow_x", "flow_y": tmp / "flow_y", "clip": clip},
                {"flow_x": root / FLOW_X_DIR / job.rel, "flow_y": root / FLOW_Y_DIR / job.rel,
                 "clip": root / FRAMES_DIR / job.rel})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ClipResult(key, job.user, job.label, len(frames), time.perf_counter() - start)
