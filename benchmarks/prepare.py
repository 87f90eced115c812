"""The data-preparation figures of docs/benchmarks.md, run by hand: ``python -m benchmarks.prepare [--out FILE]``.

* speed: frames per second on one core (the process pinned to CPU 0, OpenCV on one thread) for TV-L1 and
  DIS, at 320x240 and at a short side of 256 (456x256, EPIC-Kitchens' 16:9), over ego-motion synthetic
  frames; a frame is what ``egomodel.prepare`` does per frame: flow, camera homography, compensated flow,
  motion map and flow images (decoding and PNG writing not included);
* quality: ego-motion synthetic videos at 320x240 prepared by ``python -m egomodel.prepare videos`` with each
  flow method, with and without camera compensation: the motion maps' mean IoU with the true masks, and the
  median warp-flow magnitude on the background and on the object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np

from benchmarks.machine import output_file
from egomodel.data.prepare.motion import FLOW_METHODS, MotionSettings, encode_flow, motion_map, warp_flow
from egomodel.data.synthetic_ego import generate_ego, mask_figures, render_ego_clip
from egomodel.prepare import main as prepare

SIZES = {"320x240": (320, 240), "short side 256": (456, 256)}
# Frames to prepare, upper bounds (whole videos, not only the annotated segments): EPIC-Kitchens-100 is
# 100 hours, about 20 M frames; EGTEA Gaze+ is 28 hours at 24 fps. GTEA61's frame count is not known to
# us: per 100,000 frames instead.
DATASET_FRAMES = {"GTEA61 (per 100k frames)": 100_000, "EGTEA Gaze+": 28 * 3600 * 24, "EPIC-Kitchens-100": 20_000_000}
CPUS = {"one 16-core node": 16, "cluster.yaml (8-CPU head + 4 workers x 8 CPUs)": 40}


def speed(pairs: int = 8) -> dict[str, float]:
    """Frames per second on one core for each flow method and size."""
    out = {}
    for name, (width, height) in SIZES.items():
        rgb, _ = render_ego_clip("stir", np.array([200.0, 60, 60]), "disc", width, height, pairs + 1,
                                 np.random.default_rng(0))
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]
        for method in FLOW_METHODS:
            settings = MotionSettings(flow=method)
            warp_flow(gray[0], gray[1], settings)  # first call: OpenCV's set-up
            start = time.perf_counter()
            for t in range(pairs):
                flow, visible = warp_flow(gray[t], gray[t + 1], settings)
                motion_map(flow, visible, settings.threshold)
                encode_flow(flow, settings.bound)
            out[f"{method} {name}"] = pairs / (time.perf_counter() - start)
    return out


def estimates(speeds: dict[str, float]) -> dict[str, dict[str, float]]:
    """Hours to prepare each data set at a short side of 256, from the per-core speeds."""
    return {f"{data}, {method}, {where}": frames / (speeds[f"{method} short side 256"] * cpus) / 3600
            for data, frames in DATASET_FRAMES.items() for method in FLOW_METHODS for where, cpus in CPUS.items()}


def quality(work: Path) -> dict[str, dict[str, float]]:
    """Mask IoU and flow magnitudes at 320x240 for each method, compensated or not."""
    raw = generate_ego(work / "raw", classes=3, clips_per_class=2, frames=8, size=(320, 240), seed=0, users=1)
    out = {}
    for method in FLOW_METHODS:
        for compensate in (True, False):
            root = work / f"{method}-{compensate}"
            args = ["videos", str(raw / "manifest.csv"), "--out", str(root), "--flow", method, "--no-progress"]
            assert prepare(args + ([] if compensate else ["--no-compensation"])) == 0
            out[f"{method} {'compensated' if compensate else 'not compensated'}"] = mask_figures(root, raw)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepare.json"))
    args = parser.parse_args()
    output_file(parser, args.out)
    os.sched_setaffinity(0, {0})  # like taskset -c 0
    cv2.setNumThreads(1)
    result = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores (pinned to CPU 0)", "frames_per_s_one_core": speed()}
    result["hours_at_short_side_256"] = estimates(result["frames_per_s_one_core"])
    print(json.dumps(result, indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        result["quality_320x240"] = quality(Path(tmp))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
