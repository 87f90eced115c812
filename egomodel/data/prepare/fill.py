"""``python -m egomodel.prepare fill ROOT``: a GTEA61-layout root with frames but without motion maps or
flow (such as the frames and warp flow released with Ego-RNN) gets the missing parts computed in place.

A clip's missing parts are computed from its RGB frames at their size and published whole, each by a
rename: flow folders first, then ``mmaps``. What the root already has is never touched: a clip with some
motion maps keeps them (the loader borrows a neighbour's for the few missing), a clip with flow keeps it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from egomodel.data import layout
from egomodel.data.layout import FLOW_X_DIR, FLOW_Y_DIR, FRAMES_DIR
from egomodel.data.prepare.clip import ClipResult, PrepareOptions, publish, staging, write_image
from egomodel.data.prepare.motion import clip_motion
from egomodel.data.prepare.sources import FrameFiles


def _has_maps(root: Path, rel: Path) -> bool:
    folder = root / FRAMES_DIR / rel / "mmaps"
    return folder.is_dir() and any(folder.glob("map*.png"))


def _has_flow(root: Path, rel: Path) -> bool:
    return all((root / sub / rel).is_dir() and any((root / sub / rel).glob("flow_*.png"))
               for sub in (FLOW_X_DIR, FLOW_Y_DIR))


@dataclass(frozen=True)
class FillJob:
    """One clip of an existing root and the parts it lacks."""

    user: str
    label: str
    instance: str
    source: FrameFiles
    origin: str

    @property
    def rel(self) -> Path:
        return Path(self.user, self.label, self.instance)

    @property
    def num_frames(self) -> int:
        return self.source.num_frames

    def done(self, root: Path) -> bool:
        return _has_maps(root, self.rel) and _has_flow(root, self.rel)


def fill_clip(job: FillJob, root: Path | str, options: PrepareOptions) -> ClipResult:
    """Compute and publish the motion maps and/or flow that the clip lacks."""
    root = Path(root)
    start = time.perf_counter()
    need_maps, need_flow = not _has_maps(root, job.rel), not _has_flow(root, job.rel)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in job.source.read()]
    maps, flow_x, flow_y = clip_motion(gray, options.motion)
    tmp = staging(root, job.rel.as_posix())
    try:
        staged, finals = {}, {}
        if need_flow:
            for axis, images in (("x", flow_x), ("y", flow_y)):
                folder = staged[axis] = tmp / f"flow_{axis}"
                folder.mkdir()
                for t, image in enumerate(images, start=1):
                    write_image(folder / f"flow_{axis}_{t:05d}.png", image)
                finals[axis] = root / (FLOW_X_DIR if axis == "x" else FLOW_Y_DIR) / job.rel
        if need_maps:
            folder = staged["maps"] = tmp / "mmaps"
            folder.mkdir()
            for t, image in enumerate(maps, start=1):
                write_image(folder / f"map{t:04d}.png", image)
            finals["maps"] = root / FRAMES_DIR / job.rel / "mmaps"
        publish(staged, finals)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ClipResult(job.rel.as_posix(), job.user, job.label, job.num_frames, time.perf_counter() - start)


def fill_jobs(root: Path) -> list[FillJob]:
    """A job per clip of the root (scanned by the loader's own reader, so its errors name the path)."""
    return [FillJob(c.user, c.label_name, c.instance, FrameFiles(tuple(str(p) for p in c.rgb)), str(c.folder))
            for c in layout.scan(root, min_frames=2)]
